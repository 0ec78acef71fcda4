// File-system superblock probe (pure, Buffer in): which file system an image holds and the smallest I/O unit it needs,
// i.e. what libblkid reports as BLOCK_SIZE (`blkid -p -o export`), so an encryption sector never exceeds it.
import { TrustvolError } from "../util/errors.js";

export interface FsProbe {
  /** libblkid's TYPE: ext2, ext3, ext4, xfs, btrfs, f2fs, erofs, squashfs, exfat, vfat. */
  type: string;
  /** libblkid's BLOCK_SIZE in bytes; absent when libblkid reports none (squashfs: the kernel reads it at any sector size). */
  blockSize?: number;
}

/** Bytes from the start of the image the probe looks at (the btrfs superblock sits at 64 KiB). */
export const FS_PROBE_BYTES = 0x10000 + 4096;

const pow2In = (n: number, lo: number, hi: number) => n >= lo && n <= hi && (n & (n - 1)) === 0;

function has(buf: Buffer, off: number, len: number): boolean {
  return buf.length >= off + len;
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
  return { type, blockSize: 1024 << log };
}

function probeXfs(buf: Buffer): FsProbe | undefined {
  if (!has(buf, 0, 104) || buf.toString("latin1", 0, 4) !== "XFSB") return undefined;
  const sect = buf.readUInt16BE(102); // sb_sectsize: libblkid's BLOCK_SIZE for xfs (the fs block size is at 4)
  return pow2In(sect, 512, 32768) ? { type: "xfs", blockSize: sect } : undefined;
}

function probeBtrfs(buf: Buffer): FsProbe | undefined {
  const sb = 0x10000;
  if (!has(buf, sb, 0x98) || buf.toString("latin1", sb + 0x40, sb + 0x48) !== "_BHRfS_M") return undefined;
  const sect = buf.readUInt32LE(sb + 0x90);
  return pow2In(sect, 512, 65536) ? { type: "btrfs", blockSize: sect } : undefined;
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
  const label = buf.toString("latin1", 82, 87) === "FAT32" || buf.toString("latin1", 54, 57) === "FAT" || buf.readUInt16LE(22) === 0;
  return label ? { type: "vfat", blockSize: bytesPerSector } : undefined;
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
