// Device-mapper ioctls in-process (linux/dm-ioctl.h, interface 4.x), as cryptsetup makes them through libdevmapper:
// a dmsetup process per call is what dominated an online re-encryption hotzone under emulation (~0.9 s each under
// TCG). Used by dmsetup.ts by default whenever the native ioctl addon is built and /dev/mapper/control exists;
// TRUSTVOL_DM_IOCTL=0 forces dmsetup (which stays the fallback, and the only path that makes /dev/mapper nodes
// without udev: Node has no mknod).
import { closeSync, existsSync, openSync } from "node:fs";
import { TrustvolError } from "../util/errors.js";
import { ioc, ioctlAvailable, ioctlRaw, errnoName } from "./ioctl.js";

const DM_IOCTL_SIZE = 312; // struct dm_ioctl
const SPEC_SIZE = 40; // struct dm_target_spec
const DM_LIST_DEVICES = 2;
const DM_DEV_CREATE = 3;
const DM_DEV_REMOVE = 4;
const DM_DEV_SUSPEND = 6;
const DM_DEV_STATUS = 7;
const DM_TABLE_LOAD = 9;
const DM_TABLE_STATUS = 12;
export const DM_READONLY_FLAG = 1 << 0;
export const DM_SUSPEND_FLAG = 1 << 1;
const DM_STATUS_TABLE_FLAG = 1 << 4;
const DM_BUFFER_FULL_FLAG = 1 << 8;
export const DM_SKIP_LOCKFS_FLAG = 1 << 10;
export const DM_NOFLUSH_FLAG = 1 << 11;
const DM_SECURE_DATA_FLAG = 1 << 15;

let forced: boolean | undefined;
/** Tests: force the ioctl path on or off (undefined = decide from the environment). */
export function setDmIoctl(on: boolean | undefined): void {
  forced = on;
}

export function dmIoctlEnabled(): boolean {
  if (forced !== undefined) return forced;
  return process.env.TRUSTVOL_DM_IOCTL !== "0" && controlOpens() && ioctlAvailable();
}

let controlOk = false;
/** /dev/mapper/control exists and opens (a node without device-mapper in the kernel gives ENODEV: dmsetup's answers then). */
function controlOpens(): boolean {
  if (controlOk) return true;
  if (!existsSync("/dev/mapper/control")) return false;
  try {
    closeSync(openSync("/dev/mapper/control", "r+"));
    return (controlOk = true);
  } catch {
    return false;
  }
}

/** A failed ioctl: errno name and number, for the caller to explain. */
export class DmIoctlError extends TrustvolError {
  constructor(readonly errno: string, what: string) {
    super(errno === "EBUSY" ? "EBUSY" : errno === "ENOKEY" ? "ENOKEY" : "EDEVICE", `device-mapper ${what} failed (${errno})`, "check dmesg");
  }
}

function header(name: string, dataSize: number, flags: number, targets = 0, uuid?: string): Buffer {
  const b = Buffer.alloc(dataSize);
  b.writeUInt32LE(4, 0); // version 4.0.0: any 4.x kernel
  b.writeUInt32LE(0, 4);
  b.writeUInt32LE(0, 8);
  b.writeUInt32LE(dataSize, 12);
  b.writeUInt32LE(DM_IOCTL_SIZE, 16); // data_start
  b.writeUInt32LE(targets, 20);
  b.writeUInt32LE(flags >>> 0, 28);
  const n = Buffer.from(name, "utf8");
  if (n.length >= 128) throw new TrustvolError("EUSAGE", `mapping name ${name} is too long for device-mapper`);
  n.copy(b, 48);
  if (uuid !== undefined) {
    const u = Buffer.from(uuid, "utf8");
    if (u.length >= 129) throw new TrustvolError("EUSAGE", `device-mapper UUID ${uuid.slice(0, 40)}… is too long`);
    u.copy(b, 176);
  }
  return b;
}

/** One ioctl on /dev/mapper/control; returns 0 or -errno (never throws for a kernel refusal). */
function raw(cmd: number, buf: Buffer): number {
  const fd = openSync("/dev/mapper/control", "r+");
  try {
    return ioctlRaw(fd, ioc("rw", 0xfd, cmd, DM_IOCTL_SIZE), buf);
  } finally {
    closeSync(fd);
  }
}

function call(cmd: number, buf: Buffer, what: string): void {
  const r = raw(cmd, buf);
  if (r < 0) throw new DmIoctlError(errnoName(-r), what);
}

const cstr = (b: Buffer, at: number, max: number) => {
  const s = b.subarray(at, at + max);
  const z = s.indexOf(0);
  return s.subarray(0, z < 0 ? s.length : z).toString("utf8");
};

/** Load a (multi-line) table as the inactive table of `name` (DM_TABLE_LOAD). */
export function dmIoctlLoad(name: string, table: string, o: { readOnly?: boolean } = {}): void {
  const lines = table.split("\n").map((l) => l.trim()).filter(Boolean);
  const specs = lines.map((l) => {
    const f = l.split(/\s+/);
    if (f.length < 3) throw new TrustvolError("EUSAGE", `bad table line "${l.slice(0, 60)}"`);
    const params = Buffer.from(f.slice(3).join(" ") + "\0", "utf8");
    const size = Math.ceil((SPEC_SIZE + params.length) / 8) * 8;
    return { start: BigInt(f[0]!), len: BigInt(f[1]!), type: f[2]!, params, size };
  });
  const total = DM_IOCTL_SIZE + specs.reduce((a, s) => a + s.size, 0);
  // secure data: the kernel wipes its copy of the table (cryptsetup sets it for crypt tables too)
  const b = header(name, total, DM_SECURE_DATA_FLAG | (o.readOnly ? DM_READONLY_FLAG : 0), specs.length);
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
  try {
    call(DM_TABLE_LOAD, b, `table load for ${name}`);
  } finally {
    b.fill(0);
  }
}

/** Suspend `name` (DM_DEV_SUSPEND with DM_SUSPEND_FLAG). */
export function dmIoctlSuspend(name: string, o: { noflush?: boolean; nolockfs?: boolean } = {}): void {
  call(DM_DEV_SUSPEND, header(name, DM_IOCTL_SIZE, DM_SUSPEND_FLAG | (o.noflush ? DM_NOFLUSH_FLAG : 0) | (o.nolockfs ? DM_SKIP_LOCKFS_FLAG : 0)), `suspend of ${name}`);
}

/** Resume `name`, making a loaded inactive table live (DM_DEV_SUSPEND without DM_SUSPEND_FLAG). */
export function dmIoctlResume(name: string): void {
  call(DM_DEV_SUSPEND, header(name, DM_IOCTL_SIZE, 0), `resume of ${name}`);
}

export interface DmIoctlInfo {
  name: string;
  uuid: string;
  open: number;
  major: number;
  minor: number;
  readOnly: boolean;
  suspended: boolean;
}

function decodeDev(b: Buffer): { major: number; minor: number } {
  const dev = Number(b.readBigUInt64LE(40)); // huge_encode_dev
  return { major: Math.floor(dev / 256) & 0xfff, minor: (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00) };
}

/** DM_DEV_STATUS: undefined when no mapping has this name. */
export function dmIoctlInfo(name: string): DmIoctlInfo | undefined {
  const b = header(name, DM_IOCTL_SIZE, 0);
  const r = raw(DM_DEV_STATUS, b);
  if (r === -6 /* ENXIO */ || r === -19 /* ENODEV */) return undefined;
  if (r < 0) throw new DmIoctlError(errnoName(-r), `status of ${name}`);
  const flags = b.readUInt32LE(28);
  return { name: cstr(b, 48, 128), uuid: cstr(b, 176, 129), open: b.readInt32LE(24), ...decodeDev(b), readOnly: !!(flags & DM_READONLY_FLAG), suspended: !!(flags & DM_SUSPEND_FLAG) };
}

/** DM_TABLE_STATUS of the live table: `dmsetup table` (status = false) or `dmsetup status` (true) lines. */
export function dmIoctlTable(name: string, status = false): string {
  for (let size = 16384; ; size *= 4) {
    const b = header(name, size, status ? 0 : DM_STATUS_TABLE_FLAG | DM_SECURE_DATA_FLAG);
    try {
      const r = raw(DM_TABLE_STATUS, b);
      if (r < 0) throw new DmIoctlError(errnoName(-r), `${status ? "status" : "table"} of ${name}`);
      if (b.readUInt32LE(28) & DM_BUFFER_FULL_FLAG) {
        if (size > 1 << 24) throw new TrustvolError("EIO", `the table of ${name} is too large`);
        continue;
      }
      const count = b.readUInt32LE(20);
      const start = b.readUInt32LE(16);
      const lines: string[] = [];
      let at = start;
      for (let i = 0; i < count; i++) {
        const s = b.readBigUInt64LE(at);
        const len = b.readBigUInt64LE(at + 8);
        const type = cstr(b, at + 24, 16);
        const params = cstr(b, at + SPEC_SIZE, size - at - SPEC_SIZE);
        lines.push(`${s} ${len} ${type} ${params}`); // as dmsetup prints it (a space even without parameters)
        at = start + b.readUInt32LE(at + 20); // output: next is from the start of the data
      }
      return lines.join("\n").trim();
    } finally {
      b.fill(0); // a crypt table's key reference (or an inline key) does not stay in our heap
    }
  }
}

/** DM_LIST_DEVICES: every mapping's name. */
export function dmIoctlNames(): string[] {
  for (let size = 16384; ; size *= 4) {
    const b = header("", size, 0);
    call(DM_LIST_DEVICES, b, "device list");
    if (b.readUInt32LE(28) & DM_BUFFER_FULL_FLAG) {
      if (size > 1 << 24) throw new TrustvolError("EIO", "the device-mapper device list is too large");
      continue;
    }
    const names: string[] = [];
    let at = b.readUInt32LE(16);
    if (b.readBigUInt64LE(at) === 0n) return names; // dev 0: the kernel's empty list
    for (;;) {
      names.push(cstr(b, at + 12, size - at - 12));
      const next = b.readUInt32LE(at + 8); // from this entry to the next, 0 = last
      if (!next) return names;
      at += next;
    }
  }
}

/** DM_DEV_CREATE + DM_TABLE_LOAD + resume; the device is removed again when the table is refused. No /dev/mapper node. */
export function dmIoctlCreate(name: string, table: string, o: { uuid?: string; readOnly?: boolean } = {}): void {
  call(DM_DEV_CREATE, header(name, DM_IOCTL_SIZE, 0, 0, o.uuid), `create of ${name}`);
  try {
    dmIoctlLoad(name, table, { readOnly: o.readOnly });
    dmIoctlResume(name);
  } catch (e) {
    raw(DM_DEV_REMOVE, header(name, DM_IOCTL_SIZE, 0));
    throw e;
  }
}

/** DM_DEV_REMOVE, retried a few times while the device is busy (dmsetup remove --retry). */
export function dmIoctlRemove(name: string): void {
  for (let i = 0; ; i++) {
    const r = raw(DM_DEV_REMOVE, header(name, DM_IOCTL_SIZE, 0));
    if (r >= 0) return;
    if (r === -16 /* EBUSY */ && i < 25) {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
      continue;
    }
    throw new DmIoctlError(errnoName(-r), `remove of ${name}`);
  }
}
