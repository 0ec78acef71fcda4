// The guest's initramfs: a static busybox plus test/vm/guest/init.sh, as a gzipped newc cpio archive.
// Written here (no cpio(1) needed) and cached by content hash, so it is rebuilt only when busybox or init.sh change.
import { createHash, randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";

interface CpioEntry {
  name: string;
  mode: number; // full st_mode (type bits included)
  data?: Buffer;
  rdev?: [number, number];
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFCHR = 0o020000;

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** SVR4 "newc" archive, the format the kernel unpacks into its rootfs. */
export function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const push = (e: CpioEntry) => {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(e.name + "\0");
    const f = [ino++, e.mode, 0, 0, e.mode & S_IFDIR ? 2 : 1, 0, data.length, 0, 0, e.rdev?.[0] ?? 0, e.rdev?.[1] ?? 0, name.length, 0];
    const hdr = Buffer.from("070701" + f.map((v) => v.toString(16).padStart(8, "0")).join(""), "ascii");
    parts.push(hdr, name, Buffer.alloc(pad4(hdr.length + name.length)), data, Buffer.alloc(pad4(data.length)));
  };
  for (const e of entries) push(e);
  push({ name: "TRAILER!!!", mode: 0 });
  return Buffer.concat(parts);
}

/** True when the ELF file has no PT_INTERP program header (no dynamic loader needed). */
export function isStaticElf(path: string): boolean {
  const fd = openSync(path, "r");
  try {
    const h = Buffer.alloc(64);
    readSync(fd, h, 0, 64, 0);
    if (h.readUInt32BE(0) !== 0x7f454c46 || h[4] !== 2 || h[5] !== 1) return false; // 64-bit little-endian only
    const phoff = Number(h.readBigUInt64LE(32));
    const phentsize = h.readUInt16LE(54);
    const phnum = h.readUInt16LE(56);
    const ph = Buffer.alloc(phentsize * phnum);
    readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) if (ph.readUInt32LE(i * phentsize) === 3) return false; // PT_INTERP
    return true;
  } finally {
    closeSync(fd);
  }
}

export function findStaticBusybox(): string {
  const candidates = [process.env.TRUSTVOL_BUSYBOX, "/bin/busybox", "/usr/bin/busybox"].filter((p): p is string => !!p);
  for (const p of candidates) if (existsSync(p) && isStaticElf(p)) return p;
  throw new Error(`no statically linked busybox (looked at ${candidates.join(", ")}): apt-get install busybox-static, or set TRUSTVOL_BUSYBOX`);
}

/** Path of the cached initramfs for this busybox + init.sh, building it when missing. */
export function ensureInitramfs(cacheDir: string, initScript: string): string {
  const busybox = findStaticBusybox();
  const bb = readFileSync(busybox);
  const init = readFileSync(initScript);
  const id = createHash("sha256").update(bb).update("\0").update(init).digest("hex").slice(0, 16);
  const out = join(cacheDir, `guest-initramfs-${id}.cpio.gz`);
  if (existsSync(out)) return out;
  mkdirSync(cacheDir, { recursive: true });
  const dirs = ["bin", "dev", "proc", "sys", "run", "tmp", "newroot", "lower", "rw"];
  const archive = cpioNewc([
    ...dirs.map((d) => ({ name: d, mode: S_IFDIR | 0o755 })),
    { name: "dev/console", mode: S_IFCHR | 0o600, rdev: [5, 1] as [number, number] },
    { name: "bin/busybox", mode: S_IFREG | 0o755, data: bb },
    { name: "init", mode: S_IFREG | 0o755, data: init },
  ]);
  const tmp = `${out}.${randomBytes(4).toString("hex")}.tmp`; // parallel test files may build at once: last rename wins
  writeFileSync(tmp, gzipSync(archive, { level: 1 }));
  renameSync(tmp, out);
  return out;
}
