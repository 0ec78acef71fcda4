// cryptsetup's re-encryption lock, so trustvol and cryptsetup never re-encrypt (or activate mid-re-encryption) the same
// LUKS2 device at once. cryptsetup 2.6 (lib/utils_device_locking.c, lib/luks2/luks2_reencrypt.c): a named lock
// "LUKS2-reencryption-<uuid>" is the file /run/cryptsetup/LN_LUKS2-reencryption-<uuid> (directory 0700, created on
// demand), held with flock(LOCK_EX | LOCK_NB); the holder verifies after flock that the path still names the inode it
// locked (a releasing process unlinks the file) and unlinks it when it releases. Busy → EBUSY, never a wait.
//
// Node has no flock(2): this process opens the file and locks it through the native addon (`flock`), else one
// util-linux `flock -n FD` child locks that descriptor and exits — a flock belongs to the open file description, which
// stays ours, so the lock is held until we close it (release) or die in any way (SIGKILL too). Under emulation a
// process start costs most of a second, hence the addon first.
import { spawn } from "node:child_process";
import { closeSync, constants, fstatSync, mkdirSync, openSync, statSync, unlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { TrustvolError } from "../util/errors.js";
import { loadIoctl } from "./ioctl.js";

/** Directory of cryptsetup's lock files (its build default; TRUSTVOL_LUKS2_LOCK_DIR overrides it for tests). */
export function luks2LockDir(): string {
  return process.env.TRUSTVOL_LUKS2_LOCK_DIR || "/run/cryptsetup";
}

export function reencryptLockPath(uuid: string): string {
  if (!/^[0-9a-fA-F-]{8,64}$/.test(uuid)) throw new TrustvolError("EUSAGE", `bad LUKS2 UUID "${uuid.slice(0, 40)}" for the re-encryption lock`);
  return join(luks2LockDir(), `LN_LUKS2-reencryption-${uuid}`);
}

export interface HeldLock {
  path: string;
  release(): Promise<void>;
}

const sameFile = (a: { dev: number; ino: number }, b: { dev: number; ino: number }) => a.dev === b.dev && a.ino === b.ino;

const EWOULDBLOCK = 11; // EAGAIN on Linux

/** flock(LOCK_EX | LOCK_NB) on `fd` (the addon, else `flock -n`): 0 locked, 75 busy, else the failure. */
function flockFd(fd: number): Promise<{ code: number; err: string }> {
  const a = loadIoctl() as { flock?: (fd: number, exclusive: boolean, nonblocking: boolean) => number } | null;
  if (typeof a?.flock === "function") {
    const r = a.flock(fd, true, true);
    return Promise.resolve(r === 0 ? { code: 0, err: "" } : r === -EWOULDBLOCK ? { code: 75, err: "" } : { code: -1, err: `flock: errno ${-r}` });
  }
  return new Promise((resolve) => {
    const c = spawn("flock", ["-n", "-E", "75", "3"], { stdio: ["ignore", "ignore", "pipe", fd] });
    let err = "";
    c.stderr!.on("data", (d: Buffer) => (err += d.toString()));
    c.on("error", (e) => resolve({ code: -1, err: e.message }));
    c.on("close", (code) => resolve({ code: code ?? -1, err }));
  });
}

/**
 * Take cryptsetup's re-encryption lock for the LUKS2 device with this UUID (non-blocking). `optional`: when the lock
 * directory cannot be written at all (not root: EACCES/EPERM, or a read-only /run), go on without it — an offline
 * run on an image file a user owns, where no other process can be re-encrypting through device-mapper either.
 */
export async function lockReencryption(uuid: string, o: { optional?: boolean } = {}): Promise<HeldLock> {
  const path = reencryptLockPath(uuid);
  for (let i = 0; i < 5; i++) {
    let fd: number;
    try {
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (o.optional && (code === "EACCES" || code === "EPERM" || code === "EROFS")) return { path, release: async () => {} };
      throw new TrustvolError("EIO", `cannot take the re-encryption lock ${path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, "check that /run is writable");
    }
    const r = await flockFd(fd);
    if (r.code !== 0) {
      closeSync(fd);
      if (r.code === 75) throw new TrustvolError("EBUSY", "the device is being re-encrypted (or activated mid-re-encryption) by another process (cryptsetup or trustvol)", `wait for it to finish; the lock is ${path}`);
      throw new TrustvolError("EIO", `cannot take the re-encryption lock ${path} (${r.err.trim().split("\n").pop() || `flock exit ${r.code}`})`, "check that util-linux flock is installed");
    }
    // a releasing holder unlinks the file after we opened it: our lock is then on a file nobody else sees — retry
    let same = false;
    try {
      same = sameFile(fstatSync(fd), statSync(path));
    } catch {
      same = false;
    }
    if (!same) {
      closeSync(fd);
      continue;
    }
    let released = false;
    return {
      path,
      release: async () => {
        if (released) return;
        released = true;
        try {
          if (sameFile(fstatSync(fd), statSync(path))) unlinkSync(path);
        } catch {
          /* already gone */
        }
        closeSync(fd);
      },
    };
  }
  throw new TrustvolError("EBUSY", `the re-encryption lock ${path} keeps being replaced`, "another process is taking and releasing it; try again");
}
