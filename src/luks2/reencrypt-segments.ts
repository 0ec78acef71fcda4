// Building blocks of the re-encryption segment sets (cryptsetup lib/luks2/luks2_reencrypt.c reencrypt_make_*_segments,
// reencrypt_assign_segments*): a segment of the old/new kind at a data-relative offset, and the commit of a data
// segment list with backups re-appended and digests re-bound. Pure; shared by the key-rotation and data-shift planners.
import { TrustvolError } from "../util/errors.js";
import type { Luks2Metadata } from "./metadata.js";
import { allSegments, segmentJson, firstUnusedSegmentId, type Segment } from "./segment.js";
import type { ReencryptState } from "./reencrypt-metadata.js";

const hint = "the header is damaged or was not written by cryptsetup; restore a header backup";
export const bad = (msg: string) => new TrustvolError("ECORRUPT", `LUKS2 re-encryption metadata: ${msg}`, hint);

/** A segment of the new (or old) kind covering data-relative [off, off+len) (len null = to the end). */
export function segAt(proto: Segment, off: number, len: number | null, flags: string[] = []): Omit<Segment, "id"> {
  return { type: proto.type, offset: proto.offset + off, size: len, ivTweak: proto.type === "crypt" ? proto.ivTweak + BigInt(off / 512) : 0n, encryption: proto.encryption, sectorSize: proto.sectorSize, flags };
}

export type Kind = "old" | "new" | "hot";
export type Part = { seg: Omit<Segment, "id">; kind: Kind };

export const strip = (sg: Segment): Omit<Segment, "id"> => ({ type: sg.type, offset: sg.offset, size: sg.size, ivTweak: sg.ivTweak, encryption: sg.encryption, sectorSize: sg.sectorSize, flags: sg.flags });

/** Set the data segments (ids 0..n-1), re-append backup segments, re-bind digests the way cryptsetup does. */
export function setSegments(m: Luks2Metadata, st: ReencryptState, parts: Part[]): void {
  const backups = allSegments(m).filter((s) => s.flags.some((f) => f.startsWith("backup-")));
  for (const d of Object.values(m.digests)) d.segments = [];
  m.segments = {};
  parts.forEach((p, i) => (m.segments[String(i)] = segmentJson(p.seg)));
  const bind = (segId: number, digest: number) => {
    if (digest < 0) return;
    const d = m.digests[String(digest)];
    if (!d) throw bad(`digest ${digest} is missing`);
    if (!d.segments.includes(String(segId))) d.segments.push(String(segId));
  };
  parts.forEach((p, i) => {
    if (st.mode !== "reencrypt") {
      // encrypt/decrypt: every crypt segment holds the one key there is (reencrypt_assign_segments_simple)
      if (p.seg.type === "crypt") bind(i, st.mode === "encrypt" ? st.digestNew : st.digestOld);
      return;
    }
    if (p.kind !== "old") bind(i, st.digestNew);
    if (p.kind !== "new") bind(i, st.digestOld);
  });
  for (const flag of ["backup-previous", "backup-final", "backup-moved-segment"]) {
    const b = backups.find((s) => s.flags.includes(flag));
    if (!b) continue;
    const id = firstUnusedSegmentId(m);
    m.segments[String(id)] = segmentJson(b);
    // a crypt moved segment (decryption with a data shift) holds the old key (reencrypt_add_moved_segment)
    if (b.type === "crypt") bind(id, flag === "backup-final" ? st.digestNew : st.digestOld);
  }
  for (const d of Object.values(m.digests)) d.segments.sort((a, b) => Number(a) - Number(b));
}
