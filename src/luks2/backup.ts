// Header backup/restore in cryptsetup's format: a raw copy of [0, 2*hdr_size + keyslots_size) of the header device.
import { readFileSync } from "node:fs";
import type { BlockDevice } from "../blockdev/types.js";
import { MemoryBlockDevice } from "../blockdev/memory.js";
import { TrustvolError } from "../util/errors.js";
import { atomicWriteFileSync } from "../util/atomic.js";
import { readHeader, probeLuksVersion, encodeHeaderCopies } from "./header.js";
import { LUKS2_MAGIC_PRIMARY, LUKS2_MAGIC_SECONDARY } from "./constants.js";
import { u64Num } from "./metadata.js";

/** Bytes the backup covers: both metadata copies and the keyslots area (cryptsetup LUKS2_hdr_and_areas_size). */
export function backupSize(hdrSize: number, keyslotsSize: number): number {
  return 2 * hdrSize + keyslotsSize;
}

export async function readHeaderBackupImage(dev: BlockDevice): Promise<Buffer> {
  const { header, needsRepair } = await readHeader(dev);
  if (needsRepair) throw new TrustvolError("ECORRUPT", `${dev.name}: one header copy is damaged or stale`, "run `trustvol repair` before taking a backup");
  const size = backupSize(header.hdrSize, u64Num(header.metadata.config.keyslots_size, "keyslots_size"));
  if (size > dev.size) throw new TrustvolError("ETRUNCATED", `${dev.name} is smaller than its own metadata area`);
  const buf = Buffer.alloc(size);
  await dev.read(buf, 0);
  return buf;
}

/** Write a backup file (0600, atomic: a crash never leaves a half-written backup under the final name). */
export async function backupHeader(dev: BlockDevice, path: string): Promise<number> {
  const img = await readHeaderBackupImage(dev);
  atomicWriteFileSync(path, img, 0o600);
  return img.length;
}

export interface RestoreOptions {
  /** Overwrite a device whose current LUKS header has a different UUID. */
  force?: boolean;
}

/**
 * Restore a header backup onto a device. Validates the backup fully before touching the device; the write is
 * idempotent, so if it is interrupted the same command can be run again from the intact backup file.
 */
export async function restoreHeader(dev: BlockDevice, path: string, opts: RestoreOptions = {}): Promise<{ uuid: string }> {
  let img: Buffer;
  try {
    img = readFileSync(path);
  } catch (e) {
    throw new TrustvolError("ENOENT", `cannot read header backup ${path}: ${(e as Error).message}`);
  }
  const mem = new MemoryBlockDevice(img, true);
  let backup;
  try {
    backup = await readHeader(mem);
  } catch (e) {
    if (e instanceof TrustvolError) throw new TrustvolError("ECORRUPT", `${path} is not a valid LUKS2 header backup: ${e.message}`, "use another backup");
    throw e;
  }
  const size = backupSize(backup.header.hdrSize, u64Num(backup.header.metadata.config.keyslots_size, "keyslots_size"));
  if (img.length < size) throw new TrustvolError("ETRUNCATED", `header backup ${path} is truncated (${img.length} of ${size} bytes)`);
  const seg = Object.values(backup.header.metadata.segments)[0];
  const dataOffset = seg ? u64Num(seg.offset, "segment.offset") : 0;
  if (dataOffset > 0 && dev.size < dataOffset && (dev as { isBlockDevice?: boolean }).isBlockDevice)
    throw new TrustvolError("ENOSPC", `${dev.name} is smaller than the backup's data offset (${dataOffset})`);
  // Only a device that holds this same volume (or a LUKS header too damaged to read) is restored without --force.
  let currentSeqid = -1n;
  const cur = await readHeader(dev).catch(() => null);
  if (cur) {
    currentSeqid = cur.header.seqid;
    if (cur.header.uuid !== backup.header.uuid && !opts.force)
      throw new TrustvolError("EUSAGE", `${dev.name} holds a different LUKS2 volume (UUID ${cur.header.uuid}, backup is ${backup.header.uuid})`, "pass --force to overwrite it");
  } else if (!opts.force && !(await hasLuksMagic(dev, backup.header.hdrSize))) {
    const v = await probeLuksVersion(dev).catch(() => null);
    throw new TrustvolError("EUSAGE", `${dev.name} ${v === 1 ? "is a LUKS1 volume" : "has no LUKS header"}; restoring would overwrite its first ${size} bytes`, "pass --force if that is really the device");
  }
  // Keyslots area first, then the secondary, then the primary header: the header copies are what make it "live".
  // If the device's current header is newer, the restored copies get a higher seqid so they win over any leftover copy.
  const hs = backup.header.hdrSize;
  let copies: [Buffer, Buffer] = [img.subarray(0, hs), img.subarray(hs, 2 * hs)];
  if (currentSeqid >= backup.header.seqid) copies = encodeHeaderCopies({ ...backup.header, seqid: currentSeqid + 1n });
  await dev.write(img.subarray(2 * hs, size), 2 * hs);
  await dev.flush();
  await dev.write(copies[1], hs);
  await dev.flush();
  await dev.write(copies[0], 0);
  await dev.flush();
  return { uuid: backup.header.uuid };
}

/** A LUKS magic at the primary or the secondary position: a damaged LUKS device rather than some other data. */
async function hasLuksMagic(dev: BlockDevice, hdrSize: number): Promise<boolean> {
  for (const [off, magic] of [[0, LUKS2_MAGIC_PRIMARY], [hdrSize, LUKS2_MAGIC_SECONDARY]] as const) {
    if (dev.size < off + 6) continue;
    const b = Buffer.alloc(6);
    await dev.read(b, off);
    if (b.equals(magic)) return true;
  }
  return false;
}
