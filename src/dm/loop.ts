// Loop devices for image files: `losetup -f --show`, then the autoclear flag set through LOOP_SET_STATUS64 (what
// cryptsetup does), so the loop device goes away by itself when the dm-crypt mapping on top of it is removed.
// The caller keeps the returned handle open until the mapping holds the loop device: closing it earlier, with
// autoclear set and nobody else holding the device, would detach it at once.
import { spawnSync } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, statSync, constants } from "node:fs";
import { basename } from "node:path";
import { TrustvolError } from "../util/errors.js";
import { errnoName, ioctlAvailable, ioctlRaw } from "./ioctl.js";

export const LOOP_MAJOR = 7;
const LOOP_SET_STATUS64 = 0x4c04;
const LOOP_GET_STATUS64 = 0x4c05;
const LO_FLAGS_AUTOCLEAR = 4;
/** struct loop_info64: 5×u64, 4×u32 (lo_flags at 52), 64+64+32 bytes of names and key, 2×u64 = 232 bytes. */
const LOOP_INFO64_SIZE = 232;
const LO_FLAGS_OFFSET = 52;

export interface LoopHandle {
  device: string;
  /** True when the kernel will detach the loop device once its last user (the mapping) closes it. */
  autoclear: boolean;
  /** Release our own hold on the device (after the mapping took it). */
  release(): void;
  /** Detach now (on failure before the mapping exists). */
  detach(): void;
}

function losetup(args: string[]): string {
  const r = spawnSync("losetup", args, { encoding: "utf8", timeout: 60_000 });
  if (r.error && (r.error as NodeJS.ErrnoException).code === "ENOENT") throw new TrustvolError("EUNSUPPORTED", "losetup not found", "install util-linux (mount) to open image files");
  if (r.status !== 0) {
    const msg = (r.stderr || "").trim();
    if (/No such file|cannot find an unused|failed to set up loop|Permission denied|not permitted/i.test(msg) && !existsSync("/dev/loop-control"))
      throw new TrustvolError("EUNSUPPORTED", `no loop devices (${msg})`, "enable CONFIG_BLK_DEV_LOOP (or load the loop module); needs root");
    throw new TrustvolError("EDEVICE", `losetup ${args[0]} failed: ${msg}`, "needs root and a free loop device");
  }
  return r.stdout.trim();
}

/** Set LO_FLAGS_AUTOCLEAR on an open loop device. Returns false (and changes nothing) when that is not possible. */
function setAutoclear(fd: number): boolean {
  if (!ioctlAvailable()) return false;
  const info = Buffer.alloc(LOOP_INFO64_SIZE);
  if (ioctlRaw(fd, LOOP_GET_STATUS64, info) < 0) return false;
  const flags = info.readUInt32LE(LO_FLAGS_OFFSET);
  info.writeUInt32LE(flags | LO_FLAGS_AUTOCLEAR, LO_FLAGS_OFFSET);
  const r = ioctlRaw(fd, LOOP_SET_STATUS64, info);
  if (r < 0) {
    if (process.env.TRUSTVOL_DEBUG) process.stderr.write(`trustvol: LOOP_SET_STATUS64: ${errnoName(-r)}\n`);
    return false;
  }
  return true;
}

/** Attach `file` to a free loop device. */
export function loopAttach(file: string, opts: { readOnly?: boolean } = {}): LoopHandle {
  const device = losetup(["-f", "--show", ...(opts.readOnly ? ["-r"] : []), file]);
  const backing = loopBackingFile(device);
  let fd: number | undefined;
  let autoclear = false;
  try {
    fd = openSync(device, constants.O_RDONLY);
    autoclear = setAutoclear(fd);
  } catch {
    /* without autoclear the caller detaches on close */
  }
  const release = () => {
    if (fd !== undefined) closeSync(fd);
    fd = undefined;
  };
  return {
    device,
    autoclear,
    release,
    detach: () => {
      release();
      // Only ours: after autoclear the same /dev/loopN may already serve another file.
      if (loopBackingFile(device) !== undefined && loopBackingFile(device) === backing) spawnSync("losetup", ["-d", device]);
    },
  };
}

/** The file behind /dev/loopN, or undefined when it is not attached. */
export function loopBackingFile(device: string): string | undefined {
  try {
    return readFileSync(`/sys/block/${basename(device)}/loop/backing_file`, "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}

export function loopAutoclear(device: string): boolean {
  try {
    return readFileSync(`/sys/block/${basename(device)}/loop/autoclear`, "utf8").trim() === "1";
  } catch {
    return false;
  }
}

/** /dev/loopN for a major:minor pair (loop devices are major 7, minor = N without partitions). */
export function loopDeviceFor(major: number, minor: number): string | undefined {
  if (major !== LOOP_MAJOR) return undefined;
  try {
    const dev = readFileSync(`/sys/dev/block/${major}:${minor}/uevent`, "utf8").match(/^DEVNAME=(\S+)$/m)?.[1];
    return dev ? `/dev/${dev}` : `/dev/loop${minor}`;
  } catch {
    return `/dev/loop${minor}`;
  }
}

export function loopDetach(device: string): void {
  if (loopBackingFile(device) === undefined) return;
  losetup(["-d", device]);
}

export function isBlockDevice(path: string): boolean {
  try {
    return statSync(path).isBlockDevice();
  } catch {
    return false;
  }
}
