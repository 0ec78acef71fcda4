// ioctl(2) from Node through the optional N-API addon (native/src/trustvol_native.c `ioctl`). Node has no ioctl, and
// two interfaces trustvol drives have no command-line tool: the loop driver's autoclear flag (LOOP_SET_STATUS64) and
// NXP's /dev/caam-keygen. The struct layouts live in TypeScript next to their users; the addon only patches buffer
// addresses into a struct (for embedded user pointers) and makes the call.
import { createRequire } from "node:module";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { constants } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { TrustvolError } from "../util/errors.js";

/** [offset in the struct, buffer whose address is stored there, width of the pointer field in bytes]. */
export type IoctlPointer = [offset: number, target: Uint8Array, width: 4 | 8];

interface IoctlAddon {
  ioctl(fd: number, request: number, arg: Uint8Array, pointers?: IoctlPointer[]): number;
  lockRange?(start: bigint, length: bigint, lock: boolean): number;
}

let cached: IoctlAddon | null | undefined;

/** The addon's ioctl, or null when the addon is not built (the sector engine's TRUSTVOL_NO_NATIVE does not apply here). */
export function loadIoctl(): IoctlAddon | null {
  if (cached !== undefined) return cached;
  cached = null;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const p = join(dir, "native", "build", "Release", "trustvol_native.node");
    if (existsSync(p)) {
      try {
        const m = createRequire(import.meta.url)(p) as Partial<IoctlAddon>;
        if (typeof m.ioctl === "function") cached = m as IoctlAddon;
      } catch {
        cached = null;
      }
      break;
    }
    dir = dirname(dir);
  }
  return cached;
}

export function ioctlAvailable(): boolean {
  return loadIoctl() !== null;
}

const ERRNO_NAMES: Record<number, string> = Object.fromEntries(Object.entries(constants.errno).map(([k, v]) => [v, k]));

export function errnoName(n: number): string {
  return ERRNO_NAMES[n] ?? `errno ${n}`;
}

/** Linux's generic _IOC encoding (x86, arm, arm64, riscv): dir(2) | size(14) | type(8) | nr(8). */
export function ioc(dir: "none" | "w" | "r" | "rw", type: string | number, nr: number, size: number): number {
  const d = { none: 0, w: 1, r: 2, rw: 3 }[dir];
  const t = typeof type === "string" ? type.charCodeAt(0) : type;
  if (size < 0 || size >= 1 << 14) throw new RangeError(`ioctl struct size ${size} does not fit`);
  return ((d << 30) | (size << 16) | (t << 8) | nr) >>> 0;
}

/** Call ioctl; returns the result (>= 0) or -errno. Throws EUNSUPPORTED when the addon is missing. */
export function ioctlRaw(fd: number, request: number, arg: Uint8Array, pointers?: IoctlPointer[]): number {
  const a = loadIoctl();
  if (!a) throw new TrustvolError("EUNSUPPORTED", "ioctl is not available: the trustvol native addon is not built", "build it with `npm run build:native` (needs a C compiler and the Node headers)");
  return a.ioctl(fd, request, arg, pointers);
}

/** Width of a C pointer / `unsigned long` for this process. */
export const POINTER_WIDTH: 4 | 8 = process.arch === "x64" || process.arch === "arm64" || process.arch === "riscv64" || process.arch === "ppc64" || process.arch === "s390x" ? 8 : 4;

/**
 * Lock (true) or unlock (false) this process's file-backed mappings (node, shared libraries, the addon) in memory:
 * online re-encryption of the device this process runs from must not read its own code back from a hotzone it has
 * suspended (cryptsetup mlockall()s; V8's reserved heap ranges make that unusable here). Returns the bytes handled and
 * the first failure (-errno), or null without the addon.
 *
 * `onlyAbove` (a device's major:minor): lock only what may be read through that device — files on it or on a block
 * device stacked above it (sysfs `slaves/`), and files whose file system has no block device we can follow
 * (overlayfs, btrfs, FUSE, unknown). Files on a block device below or beside it, and on file systems that never sit
 * on a local block device (9p, NFS, virtiofs, tmpfs, ...), cannot page-fault into its hotzone: they stay unlocked.
 */
export function lockFileMappings(lock: boolean, onlyAbove?: string): { bytes: number; error?: number } | null {
  const a = loadIoctl();
  if (!a?.lockRange) return null;
  const needed = onlyAbove ? deviceFilter(onlyAbove) : () => true;
  let bytes = 0;
  let error: number | undefined;
  for (const line of readFileSync("/proc/self/maps", "utf8").split("\n")) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (r...) [0-9a-f]+ ([0-9a-f]+):([0-9a-f]+) (\d+)\s+(\/\S.*)$/.exec(line);
    if (!m || m[6] === "0") continue; // readable mappings of a file (inode != 0)
    if (!needed(`${parseInt(m[4]!, 16)}:${parseInt(m[5]!, 16)}`)) continue;
    const start = BigInt(`0x${m[1]}`);
    const len = BigInt(`0x${m[2]}`) - start;
    const r = a.lockRange(start, len, lock);
    if (r === 0) bytes += Number(len);
    else error ??= r;
  }
  return error === undefined ? { bytes } : { bytes, error };
}

/** File systems that never sit on a local block device. */
const NO_BLOCK_DEVICE = new Set(["9p", "nfs", "nfs4", "cifs", "smb3", "virtiofs", "tmpfs", "ramfs", "proc", "sysfs", "devtmpfs", "hugetlbfs"]);

/** Does a file on the file system with this st_dev (major:minor) possibly read through block device `top`? */
function deviceFilter(top: string): (dev: string) => boolean {
  const types = new Map<string, string>();
  try {
    for (const l of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
      const f = l.split(" ");
      const sep = f.indexOf("-");
      if (f[2] && sep > 0 && f[sep + 1]) types.set(f[2], f[sep + 1]);
    }
  } catch {
    /* no mountinfo: the rule below locks every anonymous device */
  }
  const cache = new Map<string, boolean>();
  const above = (dev: string, depth = 0): boolean => {
    if (dev === top) return true;
    if (depth > 16) return true; // a loop in sysfs? be safe
    let slaves: string[];
    try {
      slaves = readdirSync(`/sys/dev/block/${dev}/slaves`).map((n) => readFileSync(`/sys/class/block/${n}/dev`, "utf8").trim());
    } catch {
      return true; // cannot tell: lock
    }
    return slaves.some((s) => above(s, depth + 1));
  };
  return (dev) => {
    let r = cache.get(dev);
    if (r === undefined) {
      if (dev.startsWith("0:")) r = !NO_BLOCK_DEVICE.has(types.get(dev) ?? "");
      else r = existsSync(`/sys/dev/block/${dev}`) ? above(dev) : true;
      cache.set(dev, r);
    }
    return r;
  };
}
