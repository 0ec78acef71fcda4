// What a device already holds, from its on-disk signatures (the subset of blkid that matters before overwriting):
// `format` asks for confirmation when this finds anything, like cryptsetup luksFormat.
import { existsSync } from "node:fs";
import type { BlockDevice } from "../blockdev/types.js";
import { FileBlockDevice } from "../blockdev/file.js";

interface Signature {
  name: string;
  offset: number;
  magic: Buffer;
}

const sig = (name: string, offset: number, magic: string | number[]): Signature => ({ name, offset, magic: typeof magic === "string" ? Buffer.from(magic, "latin1") : Buffer.from(magic) });

const SIGNATURES: Signature[] = [
  sig("LUKS volume", 0, "LUKS\xba\xbe"),
  sig("LUKS2 volume (secondary header)", 0x4000, "SKUL\xba\xbe"),
  sig("dm-verity hash device", 0, "verity\0\0"),
  sig("ext2/3/4 file system", 0x438, [0x53, 0xef]),
  sig("XFS file system", 0, "XFSB"),
  sig("btrfs file system", 0x10040, "_BHRfS_M"),
  sig("squashfs file system", 0, "hsqs"),
  sig("EROFS file system", 1024, [0xe2, 0xe1, 0xf5, 0xe0]),
  sig("F2FS file system", 1024, [0x10, 0x20, 0xf5, 0xf2]),
  sig("swap space", 4086, "SWAPSPACE2"),
  sig("FAT file system", 0x52, "FAT32   "),
  sig("FAT file system", 0x36, "FAT1"),
  sig("GPT partition table", 512, "EFI PART"),
];

/** The first signature found ("ext2/3/4 file system", "LUKS volume", ...), or undefined for an empty or unknown device. */
export async function probeSignature(dev: BlockDevice): Promise<string | undefined> {
  const len = Math.min(dev.size, 0x10040 + 8);
  if (len <= 0) return undefined;
  const head = Buffer.alloc(len);
  await dev.read(head, 0);
  for (const s of SIGNATURES) {
    if (s.offset + s.magic.length <= len && head.subarray(s.offset, s.offset + s.magic.length).equals(s.magic)) return s.name;
  }
  // An MBR (boot signature with a non-empty partition entry): a disk with partitions, not a blank one.
  if (len >= 512 && head[510] === 0x55 && head[511] === 0xaa && head.subarray(446, 510).some((b) => b !== 0)) return "partition table";
  return undefined;
}

/** probeSignature for a path; undefined when the path does not exist yet (format creates it). */
export async function probePath(path: string): Promise<string | undefined> {
  if (!existsSync(path)) return undefined;
  const dev = await FileBlockDevice.open(path, { readOnly: true });
  try {
    return await probeSignature(dev);
  } finally {
    await dev.close();
  }
}
