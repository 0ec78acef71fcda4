// File-system superblock probe (pure, Buffer in): which file system an image holds and the smallest I/O unit it needs,
// i.e. what libblkid reports as BLOCK_SIZE (`blkid -p -o export`), so an encryption sector never exceeds it.
import { TrustvolError } from "../util/errors.js";

export interface FsProbe {
  /** libblkid's TYPE: ext2, ext3, ext4, xfs, btrfs, f2fs, erofs, squashfs, exfat, vfat. */
  type: string;
  /** libblkid's BLOCK_SIZE in bytes; absent when libblkid reports none (squashfs: the kernel reads it at any sector size). */
  blockSize?: number;
  /** libblkid's LABEL (ext2/3/4, xfs, btrfs, vfat); absent when the file system has none. */
  label?: string;
  /** libblkid's UUID as it prints it (ext2/3/4, xfs, btrfs: 8-4-4-4-12 hex; vfat: XXXX-XXXX). */
  uuid?: string;
}

/** Bytes from the start of the image the probe looks at (the btrfs superblock sits at 64 KiB). */
export const FS_PROBE_BYTES = 0x10000 + 4096;

const pow2In = (n: number, lo: number, hi: number) => n >= lo && n <= hi && (n & (n - 1)) === 0;

function has(buf: Buffer, off: number, len: number): boolean {
  return buf.length >= off + len;
}

/** A 16-byte UUID as libblkid prints it; undefined when all zero (libblkid reports none). */
function uuid16(b: Buffer): string | undefined {
  if (b.every((x) => x === 0)) return undefined;
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A NUL-padded label field (UTF-8); undefined when empty. */
function cLabel(b: Buffer): string | undefined {
  const end = b.indexOf(0);
  const s = b.subarray(0, end < 0 ? b.length : end).toString("utf8");
  return s.length ? s : undefined;
}

/** Copy label/uuid onto a probe result, leaving absent ones out (deepEqual-friendly). */
function withIds(r: FsProbe, label: string | undefined, uuid: string | undefined): FsProbe {
  if (label !== undefined) r.label = label;
  if (uuid !== undefined) r.uuid = uuid;
  return r;
}

function probeExt(buf: Buffer): FsProbe | undefined {
  const sb = 1024;
  if (!has(buf, sb, 104) || buf.readUInt16LE(sb + 56) !== 0xef53) return undefined;
  const log = buf.readUInt32LE(sb + 24);
  if (log > 6) return undefined;
  const compat = buf.readUInt32LE(sb + 92), incompat = buf.readUInt32LE(sb + 96), roCompat = buf.readUInt32LE(sb + 100);
  if (incompat & 0x8) return undefined; // an external journal device (libblkid "jbd"), not a mountable file system
  // libblkid: any feature beyond ext3's set (incompat filetype|recover|meta_bg, ro_compat sparse|large_file|btree) is ext4.
  const type = incompat & ~0x16 || roCompat & ~0x7 ? "ext4" : compat & 0x4 ? "ext3" : "ext2";
  return withIds({ type, blockSize: 1024 << log }, cLabel(buf.subarray(sb + 120, sb + 136)), uuid16(buf.subarray(sb + 104, sb + 120)));
}

function probeXfs(buf: Buffer): FsProbe | undefined {
  if (!has(buf, 0, 104) || buf.toString("latin1", 0, 4) !== "XFSB") return undefined;
  const sect = buf.readUInt16BE(102); // sb_sectsize: libblkid's BLOCK_SIZE for xfs (the fs block size is at 4)
  if (!pow2In(sect, 512, 32768)) return undefined;
  return withIds({ type: "xfs", blockSize: sect }, cLabel(buf.subarray(108, 120)), uuid16(buf.subarray(32, 48))); // sb_fname, sb_uuid
}

function probeBtrfs(buf: Buffer): FsProbe | undefined {
  const sb = 0x10000;
  if (!has(buf, sb, 0x98) || buf.toString("latin1", sb + 0x40, sb + 0x48) !== "_BHRfS_M") return undefined;
  const sect = buf.readUInt32LE(sb + 0x90);
  if (!pow2In(sect, 512, 65536)) return undefined;
  const label = has(buf, sb, 0x12b + 256) ? cLabel(buf.subarray(sb + 0x12b, sb + 0x12b + 256)) : undefined;
  return withIds({ type: "btrfs", blockSize: sect }, label, uuid16(buf.subarray(sb + 0x20, sb + 0x30))); // fsid
}

function probeF2fs(buf: Buffer): FsProbe | undefined {
  const sb = 1024;
  if (!has(buf, sb, 20) || buf.readUInt32LE(sb) !== 0xf2f52010) return undefined;
  const log = buf.readUInt32LE(sb + 16);
  return log >= 9 && log <= 16 ? { type: "f2fs", blockSize: 1 << log } : undefined;
}

function probeErofs(buf: Buffer): FsProbe | undefined {
  const sb = 1024;
  if (!has(buf, sb, 13) || buf.readUInt32LE(sb) !== 0xe0f5e1e2) return undefined;
  const bits = buf[sb + 12]!;
  return bits >= 9 && bits <= 16 ? { type: "erofs", blockSize: 1 << bits } : undefined;
}

function probeSquashfs(buf: Buffer): FsProbe | undefined {
  if (!has(buf, 0, 32) || buf.toString("latin1", 0, 4) !== "hsqs" || buf.readUInt16LE(28) < 4) return undefined;
  return { type: "squashfs" };
}

function probeExfat(buf: Buffer): FsProbe | undefined {
  if (!has(buf, 0, 512) || buf.toString("latin1", 3, 11) !== "EXFAT   ") return undefined;
  const shift = buf[108]!;
  return shift >= 9 && shift <= 12 ? { type: "exfat", blockSize: 1 << shift } : undefined;
}

function probeVfat(buf: Buffer): FsProbe | undefined {
  if (!has(buf, 0, 512) || buf[510] !== 0x55 || buf[511] !== 0xaa) return undefined;
  if (buf[0] !== 0xeb && buf[0] !== 0xe9) return undefined;
  const bytesPerSector = buf.readUInt16LE(11), perCluster = buf[13]!, reserved = buf.readUInt16LE(14), fats = buf[16]!, media = buf[21]!;
  if (!pow2In(bytesPerSector, 512, 4096) || !pow2In(perCluster, 1, 128) || reserved === 0 || fats < 1 || fats > 4) return undefined;
  if (media !== 0xf0 && media < 0xf8) return undefined;
  const fat32 = buf.readUInt16LE(22) === 0; // sectors per FAT (16-bit) 0: the FAT32 extended boot record
  const marked = buf.toString("latin1", 82, 87) === "FAT32" || buf.toString("latin1", 54, 57) === "FAT" || fat32;
  if (!marked) return undefined;
  // Extended boot record (signature 0x29): volume id and label at 67/71 (FAT32) or 39/43 (FAT12/16). libblkid prefers
  // the root directory's volume-label entry, which mkfs.vfat -n writes with the same text.
  const ebr = fat32 ? 64 : 36;
  let label: string | undefined, uuid: string | undefined;
  if (buf[ebr + 2] === 0x29) {
    const id = buf.readUInt32LE(ebr + 3);
    uuid = `${(id >>> 16).toString(16).padStart(4, "0")}-${(id & 0xffff).toString(16).padStart(4, "0")}`.toUpperCase();
    const l = buf.toString("latin1", ebr + 7, ebr + 18).replace(/[ \0]+$/, "");
    if (l && l !== "NO NAME") label = l;
  }
  return withIds({ type: "vfat", blockSize: bytesPerSector }, label, uuid);
}

/** Identify the file system at the start of `head` (at least FS_PROBE_BYTES of the image, or all of it). Pure. */
export function probeFilesystem(head: Buffer): FsProbe | undefined {
  for (const p of [probeXfs, probeBtrfs, probeExt, probeF2fs, probeErofs, probeSquashfs, probeExfat, probeVfat]) {
    const r = p(head);
    if (r) return r;
  }
  return undefined;
}

export const ENCRYPTION_SECTOR_SIZES = [4096, 2048, 1024, 512] as const;

export interface SectorSizeInput {
  /** The file system's BLOCK_SIZE (probeFilesystem); undefined when none was recognised or it imposes none. */
  fsBlockSize?: number;
  /** An explicit sector size (--sector-size); refused when the file system could not be mounted on it. */
  requested?: number;
  /** The underlying device's logical sector size (encryption in place): dm-crypt cannot go below it. */
  deviceLogicalSize?: number;
  /** For messages: the file system type. */
  fsType?: string;
}

/**
 * The encryption sector size for data that holds a file system: never larger than its block size (the kernel refuses
 * to mount a file system whose blocks are smaller than the device's sectors), else the largest of 4096..512.
 */
export function chooseEncryptionSectorSize(i: SectorSizeInput): number {
  const fs = i.fsBlockSize !== undefined ? `the ${i.fsType ? `${i.fsType} ` : ""}file system's block size (${i.fsBlockSize})` : "";
  const floor = i.deviceLogicalSize ?? 512;
  if (i.requested !== undefined) {
    if (!(ENCRYPTION_SECTOR_SIZES as readonly number[]).includes(i.requested))
      throw new TrustvolError("EUSAGE", `sector size ${i.requested} is not one of 512, 1024, 2048, 4096`);
    if (i.fsBlockSize !== undefined && i.requested > i.fsBlockSize)
      throw new TrustvolError("EUSAGE", `sector size ${i.requested} is larger than ${fs}: the kernel could not mount it`, `omit --sector-size, or use ${Math.max(512, Math.min(4096, i.fsBlockSize))} or less`);
    if (i.requested < floor) throw new TrustvolError("EUSAGE", `sector size ${i.requested} is smaller than the device's logical sector size (${floor})`, `use ${floor} or more`);
    return i.requested;
  }
  const ceiling = i.fsBlockSize ?? 4096;
  const pick = ENCRYPTION_SECTOR_SIZES.find((s) => s <= ceiling && s >= floor);
  if (pick === undefined) throw new TrustvolError("EUNSUPPORTED", `${fs || "the block size"} is smaller than the device's logical sector size (${floor}): it cannot be mounted there`);
  return pick;
}
