// Header backup/restore in cryptsetup's format: a raw copy of [0, 2*hdr_size + keyslots_size) of the header device.
import { readFileSync } from "node:fs";
import type { BlockDevice } from "../blockdev/types.js";
import { MemoryBlockDevice } from "../blockdev/memory.js";
import { TrustvolError, fsErrorCode, fsReason } from "../util/errors.js";
import { atomicWriteFileSync } from "../util/atomic.js";
import { readHeader, probeLuksVersion, encodeHeaderCopies, writeHeader } from "./header.js";
import { LUKS2_MAGIC_PRIMARY, LUKS2_MAGIC_SECONDARY, ALIGN_4K } from "./constants.js";
import { u64Num, type Luks2Metadata } from "./metadata.js";

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

type Range = [number, number]; // [start, end) in bytes

const overlaps = (a: Range, b: Range) => a[0] < b[1] && b[0] < a[1];

function keyslotRanges(m: Luks2Metadata): { id: string; range: Range }[] {
  return Object.entries(m.keyslots).map(([id, ks]) => {
    const off = u64Num(ks.area.offset, "area.offset");
    return { id, range: [off, off + u64Num(ks.area.size, "area.size")] as Range };
  });
}

/** Lowest 4 KiB-aligned offset in [lo, hi) where `size` bytes avoid every taken range, or -1. Pure. */
function firstFit(lo: number, hi: number, size: number, taken: Range[]): number {
  let pos = lo;
  for (const [s, e] of [...taken].sort((a, b) => a[0] - b[0])) {
    if (s - pos >= size) break;
    if (e > pos) pos = Math.ceil(e / ALIGN_4K) * ALIGN_4K;
  }
  return pos + size <= hi ? pos : -1;
}

async function sameBytes(dev: BlockDevice, offset: number, data: Buffer): Promise<boolean> {
  if (offset + data.length > dev.size) return false;
  const cur = Buffer.alloc(data.length);
  await dev.read(cur, offset);
  return cur.equals(data);
}

/** Commit two header copies: secondary, flush, primary, flush (the caller has made sure both current copies agree). */
async function commitCopies(dev: BlockDevice, [p, s]: [Buffer, Buffer], hdrSize: number): Promise<void> {
  await dev.write(s, hdrSize);
  await dev.flush();
  await dev.write(p, 0);
  await dev.flush();
}

/**
 * Restore a header backup onto a device. Validates the backup fully before touching the device; if it is interrupted
 * the device opens with its old or with the restored passphrases, and the same command can be run again.
 */
export async function restoreHeader(dev: BlockDevice, path: string, opts: RestoreOptions = {}): Promise<{ uuid: string }> {
  let img: Buffer;
  try {
    img = readFileSync(path);
  } catch (e) {
    throw new TrustvolError(fsErrorCode(e), `cannot read header backup ${path}: ${fsReason(e)}`, "check the --file path");
  }
  const mem = new MemoryBlockDevice(img, true);
  let backup;
  try {
    backup = await readHeader(mem);
  } catch (e) {
    if (e instanceof TrustvolError) throw new TrustvolError("ECORRUPT", `${path} is not a valid LUKS2 header backup: ${e.message.replace(/^memory:? /, "")}`, "use another backup");
    throw e;
  }
  const size = backupSize(backup.header.hdrSize, u64Num(backup.header.metadata.config.keyslots_size, "keyslots_size"));
  if (img.length < size) throw new TrustvolError("ETRUNCATED", `header backup ${path} is truncated (${img.length} of ${size} bytes)`);
  const seg = Object.values(backup.header.metadata.segments)[0];
  const dataOffset = seg ? u64Num(seg.offset, "segment.offset") : 0;
  if (dataOffset > 0 && dev.size < dataOffset && (dev as { isBlockDevice?: boolean }).isBlockDevice)
    throw new TrustvolError("ENOSPC", `${dev.name} is smaller than the backup's data offset (${dataOffset})`);
  // Only a device that holds this same volume (or a LUKS header too damaged to read) is restored without --force.
  const cur = await readHeader(dev).catch(() => null);
  if (cur) {
    if (cur.header.uuid !== backup.header.uuid && !opts.force)
      throw new TrustvolError("EUSAGE", `${dev.name} holds a different LUKS2 volume (UUID ${cur.header.uuid}, backup is ${backup.header.uuid})`, "pass --force to overwrite it");
    // A header from outside this re-encryption does not describe the data it has already re-encrypted
    const inReencryption = (m: Luks2Metadata) => Object.values(m.keyslots).some((k) => k.type === "reencrypt");
    if (inReencryption(cur.header.metadata) && !inReencryption(backup.header.metadata) && !opts.force)
      throw new TrustvolError("EUSAGE", `${dev.name} is in the middle of a re-encryption: a header from before it would not open the data re-encrypted since`, `finish it first (\`trustvol reencrypt --resume-only ${dev.name}\`) and restore a backup taken after; --force restores it anyway (that data is then lost)`);
  } else if (!opts.force && !(await hasLuksMagic(dev, backup.header.hdrSize))) {
    const v = await probeLuksVersion(dev).catch(() => null);
    throw new TrustvolError("EUSAGE", `${dev.name} ${v === 1 ? "is a LUKS1 volume" : "has no LUKS header"}; restoring would overwrite its first ${size} bytes`, "pass --force if that is really the device");
  }

  // Invariant: at every instant the header a reader picks is either the current one with all its keyslot areas intact
  // or the restored one (perhaps staged with moved areas) with all its areas written: restored areas go only where the
  // current header keeps nothing, a commit writes the secondary (higher seqid) before the primary over two agreeing
  // copies, and bytes the current header uses are overwritten only once a restored header has superseded it.
  const hs = backup.header.hdrSize;
  const oldHs = cur?.header.hdrSize ?? hs;
  const live: Range[] = cur ? [[0, 2 * oldHs], ...keyslotRanges(cur.header.metadata).map((k) => k.range)] : [];
  // A larger restored header would write over live keyslots in the same writes that replace the current copies.
  if (cur && hs > oldHs && keyslotRanges(cur.header.metadata).some((k) => overlaps(k.range, [0, 2 * hs])))
    throw new TrustvolError("EUNSUPPORTED", `${dev.name}: the backup's larger header would overwrite live keyslots before it takes over; refusing`, "remove the keyslots at the start of the device's keyslots area first, or restore onto a wiped device");
  const areas = keyslotRanges(backup.header.metadata);
  const staged = structuredClone(backup.header.metadata); // the backup's metadata with colliding areas moved aside
  const taken: Range[] = [...live, ...areas.map((a) => a.range)];
  const firstWrites: { off: number; data: Buffer }[] = [];
  const finalWrites: { off: number; data: Buffer }[] = [];
  for (const { id, range } of areas) {
    const data = img.subarray(range[0], range[1]);
    if (await sameBytes(dev, range[0], data)) continue; // already in place (the same keyslot on the same volume)
    if (!live.some((r) => overlaps(r, range))) {
      firstWrites.push({ off: range[0], data });
      continue;
    }
    const at = firstFit(2 * hs, size, data.length, taken);
    if (at < 0)
      throw new TrustvolError("ENOSPC", `${dev.name}: no free space in the keyslots area to stage the backup's keyslot ${id} without destroying the live one`, "remove unused keyslots on the device first, or zero its header (then nothing old needs keeping) and restore with --force");
    taken.push([at, at + data.length]);
    staged.keyslots[id]!.area.offset = String(at);
    firstWrites.push({ off: at, data });
    finalWrites.push({ off: range[0], data });
  }

  // Make both current copies agree first, so either can be overwritten while the other still holds the current state.
  let seqid = -1n;
  if (cur) {
    if (cur.needsRepair) {
      const p = cur.primary, s = cur.secondary;
      const primaryIsStale = !p.ok || (s.ok && (s.seqid ?? 0n) > (p.seqid ?? 0n));
      await writeHeader(dev, cur.header, { firstCopy: primaryIsStale ? "primary" : "secondary" });
    }
    seqid = cur.header.seqid;
  }
  for (const w of firstWrites) await dev.write(w.data, w.off);
  await dev.flush();
  if (finalWrites.length) {
    seqid += 1n;
    await commitCopies(dev, encodeHeaderCopies({ ...backup.header, seqid, metadata: staged }), hs);
    for (const w of finalWrites) await dev.write(w.data, w.off);
    await dev.flush();
  }
  // The backup's own copies, byte for byte, unless a newer header has been on the device: then they must outrank it.
  if (seqid < backup.header.seqid) await commitCopies(dev, [img.subarray(0, hs), img.subarray(hs, 2 * hs)], hs);
  else await commitCopies(dev, encodeHeaderCopies({ ...backup.header, seqid: seqid + 1n }), hs);
  // Now only the restored header is live: the rest of its keyslots area (free space, old material) as in the backup.
  const used = areas.map((a) => a.range).sort((a, b) => a[0] - b[0]);
  let pos = 2 * hs;
  for (const [s, e] of [...used, [size, size] as Range]) {
    if (s > pos) await dev.write(img.subarray(pos, s), pos);
    pos = Math.max(pos, e);
  }
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
