// Decryption with a data shift: cryptsetup 2.6+'s `reencrypt --decrypt --header NEW_FILE` of a device whose header is on
// it (requirement online-reencrypt-v3, resilience datashift-checksum / datashift-journal; lib/luks2/luks2_reencrypt.c
// reencrypt_decrypt_with_datashift_init, reencrypt_make_hot_segments_decrypt_shift, _dec_create_segments_shift_after,
// reencrypt_offset_forward_moved). The header goes to the file; the first L bytes of ciphertext are copied to the
// device's start (the crypt "moved segment"); then forward, hotzone by hotzone of the shift's length, plain data
// [x, x+shift) is decrypted from x+shift to x, which overwrites only what earlier hotzones (or the header) left; the
// moved segment is decrypted in place last, under checksum or journal protection. Pure over metadata.
import type { Luks2Metadata } from "./metadata.js";
import { dataSegments, type Segment } from "./segment.js";
import type { ReencryptState } from "./reencrypt-metadata.js";
import { bad, segAt, setSegments, strip, type Part } from "./reencrypt-segments.js";

/** Is this state a decryption with a data shift? */
export const isDecryptShift = (st: ReencryptState): boolean => st.mode === "decrypt" && !!st.movedSeg;

const shiftOf = (st: ReencryptState) => st.keyslot.area.shiftSize!;
const movedLen = (st: ReencryptState) => st.movedSeg!.size!;

/** The plain data's size on a device of devSize bytes: what follows the old data offset (the shift). */
export function decryptShiftDataSize(st: ReencryptState, devSize: number): number {
  return devSize - shiftOf(st);
}

/** The backup segments and the data segments' shape, checked on load before anything is written. */
export function checkDecryptShiftLayout(m: Luks2Metadata, st: ReencryptState): void {
  const moved = st.movedSeg!, old = st.oldSeg, fin = st.newSeg, shift = shiftOf(st);
  if (st.direction !== "forward") throw bad("a decryption with a data shift runs forward");
  if (old.type !== "crypt" || old.offset !== shift || old.size !== null) throw bad("the backup-previous segment of a decryption with a data shift must be the encrypted data at the shift, to the end");
  if (fin.type !== "linear" || fin.offset !== 0 || fin.size !== null) throw bad("the backup-final segment of a decryption with a data shift must be linear from offset 0");
  if (moved.type !== "crypt" || moved.offset !== 0 || moved.size === null || moved.size <= 0 || moved.size > shift || moved.size % old.sectorSize || moved.ivTweak !== old.ivTweak || moved.encryption !== old.encryption || moved.sectorSize !== old.sectorSize)
    throw bad("the moved segment must be the first chunk of the encrypted data, at offset 0, at most the shift long");
  const L = moved.size;
  if (shift % old.sectorSize) throw bad(`the data shift ${shift} is not a multiple of the ${old.sectorSize}-byte sector`);
  const segs = dataSegments(m);
  // every boundary on the sector grid: the engine's ciphers work in whole sectors
  for (const sg of segs) if (sg.offset % old.sectorSize || (sg.size ?? 0) % old.sectorSize) throw bad(`segment ${sg.id} does not start and end on the ${old.sectorSize}-byte sector grid`);
  const s0 = segs[0]!;
  if (s0.type === "linear") {
    // the moved segment is being (or has been) decrypted in place, the last hotzone: everything else is plain
    if (s0.offset !== 0) throw bad("segment 0 is not at offset 0");
    const hot = s0.flags.includes("in-reencryption");
    if (hot ? s0.size !== L : s0.size !== null || segs.length > 1) throw bad("the moved segment's hotzone does not match the moved segment");
    // (the plain rest dynamic, or sized to the device's end: checkDecryptShiftDevice holds it to the device)
    if (segs.length > 2 || (segs[1] && (segs[1].type !== "linear" || segs[1].offset !== L || segs[1].flags.length))) throw bad("the data after the moved segment is not plain to the end");
    return;
  }
  if (s0.offset !== 0 || s0.size !== L || s0.ivTweak !== moved.ivTweak || s0.encryption !== moved.encryption || s0.sectorSize !== moved.sectorSize || s0.flags.length) throw bad("segment 0 is not the moved segment");
  let p = L;
  let sawHot = false;
  for (let i = 1; i < segs.length; i++) {
    const sg = segs[i]!, last = i === segs.length - 1;
    if (sg.type === "linear") {
      if (sawHot) throw bad(`linear segment ${sg.id} follows the hotzone`);
      if (sg.offset !== p) throw bad(`segment ${sg.id} is not where the plain data ${p} goes`);
      const hot = sg.flags.includes("in-reencryption");
      if (hot && (sg.size === null || sg.size > shift)) throw bad(`the hotzone in segment ${sg.id} does not fit the data shift`);
      if (sg.size === null && !last) throw bad(`segment ${sg.id} is dynamic but not the last`);
      sawHot ||= hot;
      p += sg.size ?? 0;
    } else {
      // (the end, dynamic or sized to the device's end: checkDecryptShiftDevice holds it to the device)
      if (!last) throw bad(`encrypted segment ${sg.id} is not the end`);
      if (sg.offset !== shift + p || sg.ivTweak !== old.ivTweak + BigInt(p / 512) || sg.encryption !== old.encryption || sg.sectorSize !== old.sectorSize || sg.flags.length)
        throw bad(`segment ${sg.id} is not the encrypted data from plain offset ${p}`);
    }
  }
}

/**
 * The plain data a device of devSize bytes must hold for these segments: every fixed-size end matches it (a header of a
 * larger or smaller device is refused before any write).
 */
export function checkDecryptShiftDevice(m: Luks2Metadata, st: ReencryptState, devSize: number, name: string): void {
  const T = decryptShiftDataSize(st, devSize);
  const segs = dataSegments(m);
  const last = segs[segs.length - 1]!;
  // plain-data offset where the last segment starts, and where it ends (null: to the device's end)
  const start = segs.length > 1 && last.type === "crypt" ? last.offset - shiftOf(st) : last.offset;
  const end = last.size === null ? null : start + last.size;
  if (T < movedLen(st) || (end === null ? start >= T : end !== T))
    throw bad(`the segments describe ${end ?? `more than ${start}`} bytes of plain data, ${name} holds ${T} after the data shift`);
}

/** The next hotzone (cryptsetup reencrypt_offset_forward_moved): the shifted data forward, then the moved segment. */
export function decryptShiftNext(m: Luks2Metadata, st: ReencryptState, T: number): { off: number; len: number } | null {
  const segs = dataSegments(m);
  if (segs.some((sg) => sg.flags.includes("in-reencryption"))) throw bad("a hotzone must be recovered first");
  if (segs[0]!.type === "linear") return null;
  const last = segs[segs.length - 1]!;
  if (segs.length === 1 || last.type === "linear") return { off: 0, len: movedLen(st) };
  const off = last.offset - shiftOf(st);
  if (off >= T) throw bad("the encrypted data starts past the device's end");
  return { off, len: Math.min(shiftOf(st), T - off) };
}

/** The segments with hotzone [off, off+len) in re-encryption (reencrypt_make_hot_segments_decrypt_shift). */
export function decryptShiftHot(m: Luks2Metadata, st: ReencryptState, off: number, len: number, T: number): Luks2Metadata {
  const out = structuredClone(m);
  const segs = dataSegments(m);
  const L = movedLen(st);
  const parts: Part[] = [];
  if (off === 0) {
    parts.push({ seg: segAt(st.newSeg, 0, L, ["in-reencryption"]), kind: "hot" });
    if (segs[1]) parts.push({ seg: strip(segs[1]), kind: "new" });
  } else {
    parts.push({ seg: strip(segs[0]!), kind: "old" });
    if (off > L) parts.push({ seg: segAt(st.newSeg, L, off - L), kind: "new" });
    parts.push({ seg: segAt(st.newSeg, off, len, ["in-reencryption"]), kind: "hot" });
    if (off + len < T) parts.push({ seg: segAt(st.oldSeg, off + len, null), kind: "old" });
  }
  setSegments(out, st, parts);
  return out;
}

/** The segments once hotzone [off, off+len) is done (_dec_create_segments_shift_after). */
export function decryptShiftPost(m: Luks2Metadata, st: ReencryptState, off: number, len: number, T: number): Luks2Metadata {
  const out = structuredClone(m);
  const L = movedLen(st);
  const parts: Part[] = [];
  if (off === 0) parts.push({ seg: segAt(st.newSeg, 0, null), kind: "new" });
  else {
    const end = off + len;
    parts.push({ seg: strip(dataSegments(m)[0]!), kind: "old" });
    parts.push({ seg: segAt(st.newSeg, L, end < T ? end - L : null), kind: "new" });
    if (end < T) parts.push({ seg: segAt(st.oldSeg, end, null), kind: "old" });
  }
  setSegments(out, st, parts);
  return out;
}

/** Where the hotzone at off reads its ciphertext: in place for the moved segment, else one shift further on. */
export function decryptShiftSource(st: ReencryptState, off: number): number {
  return off === 0 ? 0 : off + shiftOf(st);
}

/**
 * The segments cryptsetup's init writes (reencrypt_set_decrypt_shift_segments + reencrypt_make_backup_segments): the
 * moved first chunk at 0, the rest where it is, then the backups (moved copy, the old data at the shift, plain at 0).
 */
export function decryptShiftInitSegments(seg: Segment, L: number, T: number): Omit<Segment, "id">[] {
  const shift = seg.offset;
  const first: Omit<Segment, "id"> = { ...strip(seg), offset: 0, size: L, flags: [] };
  const out = [first];
  if (T > L) out.push({ ...strip(seg), offset: shift + L, size: null, ivTweak: seg.ivTweak + BigInt(L / 512), flags: [] });
  out.push({ ...first, flags: ["backup-moved-segment"] });
  out.push({ ...strip(seg), size: null, flags: ["backup-previous"] });
  out.push({ type: "linear", offset: 0, size: null, ivTweak: 0n, sectorSize: 512, flags: ["backup-final"] });
  return out;
}
