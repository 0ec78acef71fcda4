// LUKS2 data segments as typed values (LUKS2 spec §3.3; cryptsetup lib/luks2/luks2_segment.c): crypt/linear,
// flags, the live data segments in order, backup segments by flag, and which digest covers which segment.
// Offsets and sizes are exact integers (bytes); size null = "dynamic" (to the end of the device).
import { TrustvolError } from "../util/errors.js";
import { u64Num, type Luks2Metadata, type Luks2Segment } from "./metadata.js";

export type SegmentFlag = "in-reencryption" | "backup-previous" | "backup-final" | "backup-moved-segment";
export const BACKUP_FLAGS: readonly SegmentFlag[] = ["backup-previous", "backup-final", "backup-moved-segment"];

export interface Segment {
  id: number;
  type: "crypt" | "linear";
  /** Byte offset on the data device. */
  offset: number;
  /** Bytes, or null for "dynamic". */
  size: number | null;
  /** crypt only: IV of the segment's first sector, in 512-byte units. */
  ivTweak: bigint;
  encryption?: string;
  sectorSize: number;
  flags: string[];
}

const bad = (msg: string) => new TrustvolError("ECORRUPT", `LUKS2 metadata: ${msg}`, "the header is damaged; try `trustvol repair` or restore a header backup");

/** Parse one JSON segment (already validated by validateMetadata for ranges). */
export function parseSegment(id: string, s: Luks2Segment): Segment {
  if (s.type !== "crypt" && s.type !== "linear") throw new TrustvolError("EUNSUPPORTED", `segment ${id} has unsupported type "${String(s.type).slice(0, 32)}"`);
  return {
    id: Number(id),
    type: s.type,
    offset: u64Num(s.offset, `segment ${id}.offset`),
    size: s.size === "dynamic" ? null : u64Num(s.size, `segment ${id}.size`),
    ivTweak: s.type === "crypt" ? BigInt(s.iv_tweak ?? "0") : 0n,
    encryption: s.type === "crypt" ? s.encryption : undefined,
    sectorSize: s.type === "crypt" ? (s.sector_size ?? 512) : 512,
    flags: [...(s.flags ?? [])],
  };
}

/** JSON form, field order as cryptsetup's json_segment_create_crypt/_linear write it. */
export function segmentJson(s: Omit<Segment, "id">): Luks2Segment {
  const size = s.size === null ? "dynamic" : String(s.size);
  const o: Luks2Segment =
    s.type === "crypt"
      ? { type: "crypt", offset: String(s.offset), size, iv_tweak: s.ivTweak.toString(), encryption: s.encryption!, sector_size: s.sectorSize }
      : { type: "linear", offset: String(s.offset), size };
  if (s.flags.length) o.flags = [...s.flags];
  return o;
}

export const isBackup = (s: Segment): boolean => s.flags.some((f) => f.startsWith("backup-"));

export function allSegments(m: Luks2Metadata): Segment[] {
  return Object.keys(m.segments)
    .map((id) => parseSegment(id, m.segments[id]!))
    .sort((a, b) => a.id - b.id);
}

/** The segments that map data (not backups), in id order = device order (cryptsetup requires ids 0..n-1 contiguous). */
export function dataSegments(m: Luks2Metadata): Segment[] {
  const segs = allSegments(m).filter((s) => !isBackup(s));
  segs.forEach((s, i) => {
    if (s.id !== i) throw bad(`data segment ids are not contiguous from 0 (found ${s.id} at position ${i})`);
  });
  return segs;
}

export function segmentByFlag(m: Luks2Metadata, flag: SegmentFlag): Segment | undefined {
  return allSegments(m).find((s) => s.flags.includes(flag));
}

/** The segment flagged in-reencryption (a hotzone a crash interrupted), if any. */
export function segmentInReencryption(m: Luks2Metadata): Segment | undefined {
  return dataSegments(m).find((s) => s.flags.includes("in-reencryption"));
}

/** Digest ids that cover segment id (a segment in re-encryption is covered by both old and new). */
export function digestsOfSegment(m: Luks2Metadata, id: number): number[] {
  return Object.keys(m.digests)
    .filter((d) => m.digests[d]!.segments.includes(String(id)))
    .map(Number)
    .sort((a, b) => a - b);
}

export function digestOfSegment(m: Luks2Metadata, id: number): number | undefined {
  return digestsOfSegment(m, id)[0];
}

export function firstUnusedSegmentId(m: Luks2Metadata): number {
  let i = 0;
  while (String(i) in m.segments) i++;
  return i;
}

/** Resolved byte length of a segment on a data device of devSize bytes. */
export function segmentLength(s: Segment, devSize: number): number {
  return s.size ?? devSize - s.offset;
}
