// Device-mapper ioctls in-process (linux/dm-ioctl.h, interface 4.x), for the calls online re-encryption makes per
// hotzone (table load, suspend, resume): cryptsetup makes them through libdevmapper in-process, and a dmsetup process
// per call is what dominates a hotzone under emulation. Needs the native ioctl addon; opt-in with
// TRUSTVOL_DM_IOCTL=1 until it has run on more kernels (dmsetup.ts falls back to dmsetup otherwise).
import { closeSync, openSync } from "node:fs";
import { TrustvolError } from "../util/errors.js";
import { ioc, ioctlAvailable, ioctlRaw, errnoName } from "./ioctl.js";

const DM_IOCTL_SIZE = 312; // struct dm_ioctl
const SPEC_SIZE = 40; // struct dm_target_spec
const DM_DEV_SUSPEND = 6;
const DM_TABLE_LOAD = 9;
export const DM_SUSPEND_FLAG = 1 << 1;
export const DM_SKIP_LOCKFS_FLAG = 1 << 10;
export const DM_NOFLUSH_FLAG = 1 << 11;

export function dmIoctlEnabled(): boolean {
  return process.env.TRUSTVOL_DM_IOCTL === "1" && ioctlAvailable();
}

function header(name: string, dataSize: number, flags: number, targets = 0): Buffer {
  const b = Buffer.alloc(dataSize);
  b.writeUInt32LE(4, 0); // version 4.0.0
  b.writeUInt32LE(0, 4);
  b.writeUInt32LE(0, 8);
  b.writeUInt32LE(dataSize, 12);
  b.writeUInt32LE(DM_IOCTL_SIZE, 16); // data_start
  b.writeUInt32LE(targets, 20);
  b.writeUInt32LE(flags >>> 0, 28);
  const n = Buffer.from(name, "utf8");
  if (n.length >= 128) throw new TrustvolError("EUSAGE", `mapping name ${name} is too long for device-mapper`);
  n.copy(b, 48);
  return b;
}

function call(cmd: number, buf: Buffer, what: string): void {
  const fd = openSync("/dev/mapper/control", "r+");
  try {
    const r = ioctlRaw(fd, ioc("rw", 0xfd, cmd, DM_IOCTL_SIZE), buf);
    if (r < 0) throw new TrustvolError("EDEVICE", `device-mapper ${what} failed (${errnoName(-r)})`, "check dmesg");
  } finally {
    closeSync(fd);
  }
}

/** Load a (multi-line) table as the inactive table of `name` (DM_TABLE_LOAD). */
export function dmIoctlLoad(name: string, table: string): void {
  const lines = table.split("\n").map((l) => l.trim()).filter(Boolean);
  const specs = lines.map((l) => {
    const f = l.split(/\s+/);
    if (f.length < 3) throw new TrustvolError("EUSAGE", `bad table line "${l.slice(0, 60)}"`);
    const params = Buffer.from(f.slice(3).join(" ") + "\0", "utf8");
    const size = Math.ceil((SPEC_SIZE + params.length) / 8) * 8;
    return { start: BigInt(f[0]!), len: BigInt(f[1]!), type: f[2]!, params, size };
  });
  const total = DM_IOCTL_SIZE + specs.reduce((a, s) => a + s.size, 0);
  const b = header(name, total, 0, specs.length);
  let at = DM_IOCTL_SIZE;
  for (const s of specs) {
    b.writeBigUInt64LE(s.start, at);
    b.writeBigUInt64LE(s.len, at + 8);
    b.writeUInt32LE(s.size, at + 20); // next: from this spec to the next one
    if (Buffer.byteLength(s.type) >= 16) throw new TrustvolError("EUSAGE", `bad target type ${s.type}`);
    b.write(s.type, at + 24, "utf8");
    s.params.copy(b, at + SPEC_SIZE);
    at += s.size;
  }
  call(DM_TABLE_LOAD, b, `table load for ${name}`);
}

/** Suspend `name` (DM_DEV_SUSPEND with DM_SUSPEND_FLAG). */
export function dmIoctlSuspend(name: string, o: { noflush?: boolean; nolockfs?: boolean } = {}): void {
  call(DM_DEV_SUSPEND, header(name, DM_IOCTL_SIZE, DM_SUSPEND_FLAG | (o.noflush ? DM_NOFLUSH_FLAG : 0) | (o.nolockfs ? DM_SKIP_LOCKFS_FLAG : 0)), `suspend of ${name}`);
}

/** Resume `name`, making a loaded inactive table live (DM_DEV_SUSPEND without DM_SUSPEND_FLAG). */
export function dmIoctlResume(name: string): void {
  call(DM_DEV_SUSPEND, header(name, DM_IOCTL_SIZE, 0), `resume of ${name}`);
}
