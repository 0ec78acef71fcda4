// cryptsetup's re-encryption lock, so trustvol and cryptsetup never re-encrypt (or activate mid-re-encryption) the same
// LUKS2 device at once. cryptsetup 2.6 (lib/utils_device_locking.c, lib/luks2/luks2_reencrypt.c): a named lock
// "LUKS2-reencryption-<uuid>" is the file /run/cryptsetup/LN_LUKS2-reencryption-<uuid> (directory 0700, created on
// demand), held with flock(LOCK_EX | LOCK_NB); the holder verifies after flock that the path still names the inode it
// locked (a releasing process unlinks the file) and unlinks it when it releases. Busy → EBUSY, never a wait.
//
// Node has no flock(2): a small child shell (util-linux flock) opens, locks and verifies the file, says "locked", and
// holds the lock until its stdin closes — when we release it, or when this process dies in any way (SIGKILL too).
// It runs in an initramfs too (opening a volume mid-re-encryption): only sh, mkdir, flock, stat, head and rm, which
// the boot hooks copy in (klibc's initramfs has no dirname).
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { TrustvolError } from "../util/errors.js";

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

// $1 = lock file. Exit 75 = busy, 76 = the file was replaced under us (retry), 0 after the release.
const HOLDER = `umask 077
d=\${1%/*}; [ -d "$d" ] || mkdir -p -m 0700 "$d" 2>/dev/null || [ -d "$d" ] || exit 71
exec 9>>"$1" || exit 71
flock -n 9 || exit 75
a=$(stat -L -c %d:%i /proc/$$/fd/9); b=$(stat -c %d:%i "$1" 2>/dev/null)
[ "$a" = "$b" ] || exit 76
echo locked
head -c 1 >/dev/null
b=$(stat -c %d:%i "$1" 2>/dev/null)
[ "$a" = "$b" ] && rm -f "$1"
exit 0
`;

function tryOnce(path: string): Promise<{ held?: ChildProcess; code?: number; err?: string }> {
  return new Promise((resolve) => {
    const c = spawn("sh", ["-c", HOLDER, "trustvol-lock", path], { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    let done = false;
    c.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (!done && out.includes("locked\n")) {
        done = true;
        resolve({ held: c });
      }
    });
    c.stderr!.on("data", (d: Buffer) => (err += d.toString()));
    c.on("error", (e) => {
      if (!done) (done = true), resolve({ code: -1, err: e.message });
    });
    c.on("exit", (code) => {
      if (!done) (done = true), resolve({ code: code ?? -1, err });
    });
  });
}

/** Take cryptsetup's re-encryption lock for the LUKS2 device with this UUID (non-blocking). */
export async function lockReencryption(uuid: string): Promise<HeldLock> {
  const path = reencryptLockPath(uuid);
  for (let i = 0; i < 5; i++) {
    const r = await tryOnce(path);
    if (r.held) {
      const c = r.held;
      c.stdout!.resume();
      // The lock must not keep the event loop alive, nor outlive us: the pipe closes when we exit.
      c.unref();
      (c.stdin as unknown as { unref?: () => void }).unref?.();
      (c.stdout as unknown as { unref?: () => void }).unref?.();
      (c.stderr as unknown as { unref?: () => void }).unref?.();
      let released = false;
      return {
        path,
        release: async () => {
          if (released) return;
          released = true;
          await new Promise<void>((res) => {
            if (c.exitCode !== null || c.signalCode !== null) return res();
            c.ref(); // wait for the holder to drop the lock (and its file) before we go on or exit
            c.once("exit", () => res());
            c.stdin!.end();
            setTimeout(() => {
              c.kill("SIGKILL");
              res();
            }, 5000).unref();
          });
        },
      };
    }
    if (r.code === 76) continue;
    if (r.code === 75) throw new TrustvolError("EBUSY", "the device is being re-encrypted (or activated mid-re-encryption) by another process (cryptsetup or trustvol)", `wait for it to finish; the lock is ${path}`);
    throw new TrustvolError("EIO", `cannot take the re-encryption lock ${path} (${(r.err ?? "").trim().split("\n").pop() || `exit ${r.code}`})`, "check that /run is writable and util-linux flock is installed");
  }
  throw new TrustvolError("EBUSY", `the re-encryption lock ${path} keeps being replaced`, "another process is taking and releasing it; try again");
}
