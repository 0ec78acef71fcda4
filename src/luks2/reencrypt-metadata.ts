// LUKS2 re-encryption metadata (LUKS2 spec §4.9; cryptsetup lib/luks2/luks2_reencrypt.c, luks2_keyslot_reenc.c):
// the `reencrypt` keyslot, the online-reencrypt-v2 requirement, backup segments, and the pure hotzone state machine
// that computes the "hot" (hotzone in-reencryption) and "post" (hotzone done) segment sets cryptsetup commits.
// Pure over metadata objects: no I/O.
import { TrustvolError } from "../util/errors.js";
import type { Json, Luks2Keyslot, Luks2Metadata } from "./metadata.js";
import { allSegments, dataSegments, segmentByFlag, segmentJson, type Segment } from "./segment.js";
import { bad, segAt, setSegments, strip, type Kind, type Part } from "./reencrypt-segments.js";
import { validateReencryptKeyslot } from "./reencrypt-validate.js";
import { reencryptDigestIds, reencryptKeyslotId, reencryptRequirementVersion } from "./reencrypt-digest.js";
import { checkDecryptShiftLayout, decryptShiftHot, decryptShiftNext, decryptShiftPost, decryptShiftSource, isDecryptShift } from "./reencrypt-shift-decrypt.js";

export type ReencryptMode = "reencrypt" | "encrypt" | "decrypt";
export type ReencryptDirection = "forward" | "backward";
export type ResilienceType = "none" | "checksum" | "journal" | "datashift";
export const REQUIREMENT_V2 = "online-reencrypt-v2";
/** cryptsetup 2.6+ writes v3 for decryption with a data shift only (LUKS2_DECRYPT_DATASHIFT_REQ_VERSION). */
export const REQUIREMENT_V3 = "online-reencrypt-v3";

export interface ReencryptKeyslot {
  id: number;
  mode: ReencryptMode;
  direction: ReencryptDirection;
  area: { type: string; offset: number; size: number; hash?: string; sectorSize?: number; shiftSize?: number };
}

export type ReencryptStatus = "none" | "clean" | "crash";

const U64 = /^[0-9]{1,20}$/;
const num = (v: unknown, what: string): number => {
  if (typeof v !== "string" || !U64.test(v) || BigInt(v) > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`${what} must be a decimal string`);
  return Number(v);
};
const HASHES = new Set(["sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160", "whirlpool", "sha3-256", "sha3-512", "blake2b512"]);

export function parseReencryptKeyslot(m: Luks2Metadata): ReencryptKeyslot | undefined {
  const id = reencryptKeyslotId(m);
  if (id === undefined) return undefined;
  const ks = m.keyslots[id] as Luks2Keyslot & Record<string, unknown>;
  validateReencryptKeyslot(ks, `keyslot ${id}`);
  const a = ks.area as Record<string, Json>;
  return {
    id: Number(id),
    mode: ks.mode as ReencryptMode,
    direction: ks.direction as ReencryptDirection,
    area: {
      type: a.type as string,
      offset: num(a.offset, "area.offset"),
      size: num(a.size, "area.size"),
      hash: typeof a.hash === "string" ? a.hash : undefined,
      sectorSize: typeof a.sector_size === "number" ? a.sector_size : undefined,
      shiftSize: a.shift_size !== undefined ? num(a.shift_size, "area.shift_size") : undefined,
    },
  };
}

/** cryptsetup LUKS2_reencrypt_status: none (no requirement), clean (stopped safely), crash (a hotzone in flight). */
export function reencryptStatus(m: Luks2Metadata): ReencryptStatus {
  if (reencryptRequirementVersion(m) === undefined) return "none";
  return dataSegments(m).some((s) => s.flags.includes("in-reencryption")) ? "crash" : "clean";
}

/** Everything the engine needs, checked as strictly as cryptsetup's context load (refuse, never guess). */
export interface ReencryptState {
  keyslot: ReencryptKeyslot;
  mode: ReencryptMode;
  direction: ReencryptDirection;
  resilience: ResilienceType;
  oldSeg: Segment; // backup-previous
  newSeg: Segment; // backup-final
  /** backup-moved-segment: where --encrypt --reduce-device-size copied the device's first chunk. */
  movedSeg?: Segment;
  digestOld: number; // -1 for encrypt
  digestNew: number; // -1 for decrypt
  status: ReencryptStatus;
  /** Decryption with a data shift (datashift-checksum / datashift-journal): how the moved segment's hotzone is kept. */
  movedResilience?: "checksum" | "journal";
}

export function loadReencryptState(m: Luks2Metadata): ReencryptState {
  const version = reencryptRequirementVersion(m);
  if (version === undefined) throw new TrustvolError("EUSAGE", "the device is not in re-encryption");
  if (version < 2) throw new TrustvolError("EUNSUPPORTED", "re-encryption metadata of the old online-reencrypt (v1) kind", "run `cryptsetup repair` first");
  if (version > 3) throw new TrustvolError("EUNSUPPORTED", `re-encryption requirement online-reencrypt-v${version} is newer than this engine (v3)`, "finish it with the cryptsetup that started it");
  const ks = parseReencryptKeyslot(m);
  if (!ks) throw bad("the online-reencrypt-v2 requirement is set but there is no reencrypt keyslot");
  if (Object.values(m.keyslots).filter((k) => k.type === "reencrypt").length > 1) throw bad("more than one reencrypt keyslot");
  const oldSeg = segmentByFlag(m, "backup-previous");
  const newSeg = segmentByFlag(m, "backup-final");
  if (!oldSeg || !newSeg) throw bad("backup-previous or backup-final segment missing");
  const ids = reencryptDigestIds(m);
  const t = ks.area.type;
  const shifted = t === "datashift-checksum" || t === "datashift-journal";
  const resilience: ResilienceType = t === "checksum" ? "checksum" : t === "journal" ? "journal" : t === "none" ? "none" : t === "datashift" || shifted ? "datashift" : (undefined as never);
  if (!resilience) throw bad(`resilience "${t}" is unknown`);
  // v3 and the datashift-* resiliences go together (cryptsetup picks the version from the resilience; the
  // re-encryption digest covers the version, so a mismatch could only be a forged header)
  if (shifted !== (version === 3)) throw bad(`resilience "${t}" with requirement online-reencrypt-v${version}`);
  if (ks.mode === "encrypt" && (oldSeg.type !== "linear" || newSeg.type !== "crypt" || ids.new < 0)) throw bad("encrypt mode needs a linear backup-previous and a crypt backup-final with a digest");
  if (ks.mode === "decrypt" && (oldSeg.type !== "crypt" || newSeg.type !== "linear" || ids.old < 0)) throw bad("decrypt mode needs a crypt backup-previous with a digest and a linear backup-final");
  if (ks.mode === "reencrypt" && (oldSeg.type !== "crypt" || newSeg.type !== "crypt" || ids.old < 0 || ids.new < 0)) throw bad("reencrypt mode needs crypt backup segments bound to the old and new digests");
  const segs = dataSegments(m);
  if (segs.length === 0 || segs.length > 4) throw bad(`${segs.length} data segments (1..4 expected)`);
  if (segs.filter((s) => s.flags.includes("in-reencryption")).length > 1) throw bad("more than one segment in re-encryption");
  for (const s of segs) if (s.flags.some((f) => f !== "in-reencryption")) throw bad(`data segment ${s.id} has an unknown flag`);
  // (cryptsetup writes --resilience-hash as given: SHA256 too)
  if ((ks.area.type === "checksum" || ks.area.type === "datashift-checksum") && ks.area.hash && !HASHES.has(ks.area.hash.toLowerCase())) throw new TrustvolError("EUNSUPPORTED", `resilience hash "${ks.area.hash}" is not supported`);
  const movedSeg = segmentByFlag(m, "backup-moved-segment");
  if (shifted) {
    if (ks.mode !== "decrypt" || !movedSeg) throw bad(`resilience "${t}" is for decryption with a data shift (a moved segment)`);
  } else if (resilience === "datashift") {
    if (ks.mode !== "encrypt" || ks.direction !== "backward" || !movedSeg || movedSeg.type !== "linear" || movedSeg.size === null)
      throw new TrustvolError("EUNSUPPORTED", "data-shift re-encryption other than cryptsetup 2.6.1's --encrypt --reduce-device-size (backward, moved first segment)", "finish it with the cryptsetup that started it");
    if (ks.area.shiftSize !== newSeg.offset || oldSeg.offset !== 0) throw new TrustvolError("EUNSUPPORTED", "a data shift that differs from the new data offset");
    for (const sg of segs) if (sg.size === null && sg.type === "linear") throw bad("a linear segment of a data-shift encryption has no fixed size");
  } else if (movedSeg) throw bad("a backup-moved-segment without a data shift");
  for (const b of allSegments(m)) if (b.flags.some((f) => f.startsWith("backup-")) && b.flags.includes("in-reencryption")) throw bad(`backup segment ${b.id} is also flagged in-reencryption`);
  const st: ReencryptState = { keyslot: ks, mode: ks.mode, direction: ks.direction, resilience, oldSeg, newSeg, movedSeg, digestOld: ids.old, digestNew: ids.new, status: segs.some((s) => s.flags.includes("in-reencryption")) ? "crash" : "clean" };
  if (shifted) st.movedResilience = t === "datashift-checksum" ? "checksum" : "journal";
  if (isDecryptShift(st)) {
    checkDecryptShiftLayout(m, st); // (its IV tweaks included: the moved segment's follows from the old data's start)
    return st;
  }
  checkIvTweaks(segs, st);
  if (movedSeg) checkShiftLayout(m, st);
  return st;
}

/**
 * A crypt data segment's IV tweak is its backup's plus its distance from it in 512-byte sectors (cryptsetup derives
 * it so; it trusts the field, and a wrong one decrypts to garbage). The engine derives it too: refuse a mismatch.
 */
function checkIvTweaks(segs: Segment[], st: ReencryptState): void {
  for (const sg of segs) {
    if (sg.type !== "crypt") continue;
    const fits = [st.newSeg, st.oldSeg].some((b) => b.type === "crypt" && b.encryption === sg.encryption && b.sectorSize === sg.sectorSize && sg.offset >= b.offset && sg.ivTweak === b.ivTweak + BigInt((sg.offset - b.offset) / 512));
    if (!fits) throw bad(`segment ${sg.id}'s iv_tweak ${sg.ivTweak} does not follow from its offset ${sg.offset} and the backup segment's`);
  }
}

/**
 * The data shift's segments as cryptsetup's backward run leaves them, checked before anything is written: they tile
 * the plain data [0, L) in order (the moved copy of the first chunk, the rest in place, then the encrypted part at the
 * new offset), and every hotzone left reads a linear range the segments hold and writes over none still to be read.
 */
function checkShiftLayout(m: Luks2Metadata, st: ReencryptState): void {
  const moved = st.movedSeg!, shift = st.keyslot.area.shiftSize!;
  const total = st.oldSeg.size;
  if (total === null || moved.size === null || moved.size > shift || moved.offset < st.newSeg.offset + total) throw bad("the data shift's moved copy does not fit the shift");
  let p = 0;
  const segs = dataSegments(m);
  segs.forEach((sg, i) => {
    const want = sg.type === "crypt" ? st.newSeg.offset + p : p === 0 ? moved.offset : st.oldSeg.offset + p;
    if (sg.offset !== want || (sg.type === "linear" && p === 0 && sg.size !== moved.size)) throw bad(`segment ${sg.id} is not where the data shift left plain data ${p}`);
    if (sg.type === "linear" && i > 0 && segs[i - 1]!.type === "crypt") throw bad(`linear segment ${sg.id} follows an encrypted one`);
    if (sg.size === null) {
      if (i !== segs.length - 1 || sg.type !== "crypt") throw bad(`segment ${sg.id} is dynamic but not the encrypted end`);
      p = total;
    } else if (p === 0 && total < shift && sg.size === shift && sg.flags.includes("in-reencryption")) {
      p = total; // data shorter than the shift: its one hotzone is the shift long (cryptsetup's too)
    } else p += sg.size;
  });
  if (p !== total) throw bad(`the segments cover ${p} bytes of plain data, the data shift ${total}`);
  // dry run of the next hotzones (recovery first in a crash state): each reads the tail the segments give up (as
  // sourceOf does) and writes over no linear segment still to be read; the layout above holds after each, so a few
  // steps cover every kind (the moved copy last), not one per hotzone of a large device
  const overwrites = (segsLeft: Segment[], off: number, len: number) => segsLeft.some((x) => x.type === "linear" && st.newSeg.offset + off < x.offset + x.size! && x.offset < st.newSeg.offset + off + len);
  let cur = m;
  const hot = segs.find((x) => x.flags.includes("in-reencryption"));
  if (hot) {
    if (hot.size === null || hot.size > shift || overwrites(segs, hot.offset - st.newSeg.offset, hot.size)) throw bad(`the hotzone in segment ${hot.id} does not fit the data shift`);
    cur = postShift(m, st, hot.offset - st.newSeg.offset, hot.size);
  }
  for (let steps = 0; steps < 3; steps++) {
    const hz = nextShiftHotzone(cur, st);
    if (!hz) return;
    const last = dataSegments(cur).filter((x) => x.type === "linear").at(-1);
    const next = hotShift(cur, st, hz.off, hz.len);
    const src = shiftSource(st, hz.off, dataSegments(next).findIndex((x) => x.flags.includes("in-reencryption")));
    // (a data shorter than the shift is one hotzone of the shift's length over the moved copy alone)
    const n = Math.min(hz.len, last?.size ?? 0);
    if (!last || hz.len > shift || src < last.offset || src + n !== last.offset + last.size!) throw bad(`hotzone ${hz.off}+${hz.len} would read outside the linear segments`);
    if (overwrites(dataSegments(next), hz.off, hz.len)) throw bad(`hotzone ${hz.off}+${hz.len} would overwrite plain data still to be read`);
    cur = postShift(next, st, hz.off, hz.len);
  }
}

/**
 * Every fixed-size data segment ends on the device (cryptsetup LUKS2_reencrypt_check_device_size), checked before any
 * write: a progress past the end would finish a run on the header's word. One segment alone is a run not started
 * (its size unused, as in cryptsetup's _offset_forward).
 */
export function checkSegmentsOnDevice(m: Luks2Metadata, devSize: number, name: string): void {
  const segs = dataSegments(m);
  if (segs.length > 1) for (const sg of segs)
    if (sg.size !== null && sg.offset + sg.size > devSize)
      throw new TrustvolError("ETRUNCATED", `${name} (${devSize} bytes) is too small for data segment ${sg.id}, which ends at ${sg.offset + sg.size}`, "this header belongs to a larger device: use that device, or restore its header backup");
}

/** Is the one remaining data segment already the final one (a run that stopped after its last hotzone)? */
function isFinal(st: ReencryptState, s: Segment, m: Luks2Metadata): boolean {
  if (s.type !== st.newSeg.type || s.offset !== st.newSeg.offset || s.size !== null) return false;
  if (s.type === "linear") return true;
  const d = Object.keys(m.digests).filter((k) => m.digests[k]!.segments.includes(String(s.id))).map(Number);
  return s.encryption === st.newSeg.encryption && s.sectorSize === st.newSeg.sectorSize && d.length === 1 && d[0] === st.digestNew;
}

/** Where the next hotzone starts (data-relative bytes), forward direction; devSize when everything is done. */
export function forwardOffset(m: Luks2Metadata, st: ReencryptState, devSize: number): number {
  const segs = dataSegments(m);
  const hot = segs.find((s) => s.flags.includes("in-reencryption"));
  if (hot) return hot.offset - st.newSeg.offset;
  if (segs.length === 1) return isFinal(st, segs[0]!, m) ? devSize : 0;
  if (segs.length === 2 && segs[0]!.size) {
    const off = segs[0]!.size;
    if (segs[1]!.offset - st.oldSeg.offset !== off) throw bad("old and new segments do not meet");
    return off;
  }
  throw bad("cannot locate the re-encryption offset in the segments");
}

/** The next hotzone [off, off+len) of at most `max` bytes, or null when every byte is done. */
export function nextHotzone(m: Luks2Metadata, st: ReencryptState, devSize: number, max: number): { off: number; len: number } | null {
  if (isDecryptShift(st)) return decryptShiftNext(m, st, devSize);
  if (st.movedSeg) return nextShiftHotzone(m, st);
  if (st.direction === "forward") {
    const off = forwardOffset(m, st, devSize);
    return off >= devSize ? null : { off, len: Math.min(max, devSize - off) };
  }
  const end = backwardEnd(m, st, devSize);
  if (end <= 0) return null;
  const len = Math.min(max, end);
  return { off: end - len, len };
}

/** Backward direction: the old data is [0, end) (cryptsetup _offset_backward); 0 when done. */
export function backwardEnd(m: Luks2Metadata, st: ReencryptState, devSize: number): number {
  const segs = dataSegments(m);
  if (segs.some((s) => s.flags.includes("in-reencryption"))) throw bad("a hotzone must be recovered first");
  if (segs.length === 1) return isFinal(st, segs[0]!, m) ? 0 : devSize;
  if (segs.length === 2 && segs[0]!.size) {
    const end = segs[0]!.size;
    if (segs[1]!.offset - st.newSeg.offset !== end) throw bad("old and new segments do not meet");
    return end;
  }
  throw bad("cannot locate the re-encryption offset in the segments");
}

/** Metadata with the hotzone [off, off+len) marked in-reencryption. Returns a new object. */
export function hotMetadata(m: Luks2Metadata, st: ReencryptState, off: number, len: number, devSize: number): Luks2Metadata {
  if (isDecryptShift(st)) return decryptShiftHot(m, st, off, len, devSize);
  if (st.movedSeg) return hotShift(m, st, off, len);
  const out = structuredClone(m);
  const parts: Part[] = [];
  const hot: Part = { seg: segAt(st.newSeg, off, len, ["in-reencryption"]), kind: "hot" };
  if (st.direction === "forward") {
    if (off) parts.push({ seg: segAt(st.newSeg, 0, off), kind: "new" });
    parts.push(hot);
    if (off + len < devSize) parts.push({ seg: segAt(st.oldSeg, off + len, null), kind: "old" });
  } else {
    if (off) parts.push({ seg: segAt(st.oldSeg, 0, off), kind: "old" });
    parts.push(hot);
    if (off + len < devSize) parts.push({ seg: segAt(st.newSeg, off + len, null), kind: "new" });
  }
  setSegments(out, st, parts);
  return out;
}

/** Metadata after the hotzone [off, off+len) is done. */
export function postMetadata(m: Luks2Metadata, st: ReencryptState, off: number, len: number, devSize: number): Luks2Metadata {
  if (isDecryptShift(st)) return decryptShiftPost(m, st, off, len, devSize);
  if (st.movedSeg) return postShift(m, st, off, len);
  const out = structuredClone(m);
  const parts: Part[] = [];
  if (st.direction === "forward") {
    const end = off + len;
    parts.push({ seg: segAt(st.newSeg, 0, end < devSize ? end : null), kind: "new" });
    if (end < devSize) parts.push({ seg: segAt(st.oldSeg, end, null), kind: "old" });
  } else {
    if (off) parts.push({ seg: segAt(st.oldSeg, 0, off), kind: "old" });
    parts.push({ seg: segAt(st.newSeg, off, null), kind: "new" });
  }
  setSegments(out, st, parts);
  return out;
}

// --- Encryption with a data shift (cryptsetup: encrypt, backward, "backup-moved-segment"). The plain data is
// [moved first chunk][linear rest] (logical), re-encrypted chunk by chunk from the end into the crypt segment at the
// new data offset = shift: a chunk's source [x, x+shift) is never overwritten by its own write [x+shift, x+2·shift).

/** cryptsetup reencrypt_offset_backward_moved. */
function nextShiftHotzone(m: Luks2Metadata, st: ReencryptState): { off: number; len: number } | null {
  const segs = dataSegments(m);
  if (segs.some((sg) => sg.flags.includes("in-reencryption"))) throw bad("a hotzone must be recovered first");
  const shift = st.keyslot.area.shiftSize!;
  if (segs.every((sg) => sg.type === "crypt")) return null;
  const linear = segs.filter((sg) => sg.type === "linear").reduce((n, sg) => n + sg.size!, 0);
  if (segs.length === 1) return { off: 0, len: shift };
  if (linear < shift) throw bad("the linear segments are shorter than the data shift");
  const tmp = linear - shift;
  if (tmp && tmp < shift) return { off: shift, len: tmp };
  return { off: tmp, len: shift };
}

/** cryptsetup reencrypt_make_hot_segments_encrypt_shift. */
function hotShift(m: Luks2Metadata, st: ReencryptState, off: number, len: number): Luks2Metadata {
  const out = structuredClone(m);
  const segs = dataSegments(m);
  let sg = -1;
  segs.forEach((x, i) => x.type === "linear" && (sg = i));
  if (sg < 0) throw bad("no linear segment left to encrypt");
  const parts: Part[] = segs.slice(0, sg).map((x) => ({ seg: strip(x), kind: "old" as Kind }));
  const last = segs[sg]!;
  if (last.size! > len) parts.push({ seg: { ...strip(last), size: last.size! - len }, kind: "old" });
  parts.push({ seg: segAt(st.newSeg, off, len, ["in-reencryption"]), kind: "hot" });
  const crypt = segs.find((x) => x.type === "crypt");
  if (crypt) parts.push({ seg: strip(crypt), kind: "new" });
  setSegments(out, st, parts);
  return out;
}

/** cryptsetup _enc_create_segments_shift_after: the finished hotzone merges with the crypt segment after it. */
function postShift(m: Luks2Metadata, st: ReencryptState, off: number, len: number): Luks2Metadata {
  const out = structuredClone(m);
  const segs = dataSegments(m);
  const r = segs.findIndex((x) => x.flags.includes("in-reencryption"));
  if (r < 0) throw bad("no hotzone to finish");
  const parts: Part[] = segs.slice(0, r).map((x) => ({ seg: strip(x), kind: "old" as Kind }));
  const next = segs[r + 1];
  const size = next ? next.size! + len : len;
  parts.push({ seg: segAt(st.newSeg, off, r > 0 ? size : null), kind: "new" });
  setSegments(out, st, parts);
  return out;
}

/** Where a data-shift hotzone's plain source is: the moved copy for the first chunk, else in place (old offset). */
export function shiftSource(st: ReencryptState, off: number, segIndex: number): number {
  if (isDecryptShift(st)) return decryptShiftSource(st, off);
  if (segIndex === 0) return st.movedSeg!.offset;
  return st.newSeg.offset + off - st.keyslot.area.shiftSize!;
}

/**
 * The bytes of a data-shift hotzone that are copied: all of them, except for the moved segment's hotzone of an
 * encryption over data shorter than the shift. Its hot segment is the shift long (cryptsetup's), so the rest of its
 * destination lies over the moved copy itself, the head's only copy until the hotzone is done; past the copy there is
 * no data, so only the copy is copied and a cut can never damage the source a recovery reads.
 */
export function shiftCopyLength(st: ReencryptState, segIndex: number, len: number): number {
  if (isDecryptShift(st) || segIndex !== 0 || !st.movedSeg?.size) return len;
  return Math.min(len, st.movedSeg.size);
}

/**
 * The metadata once re-encryption is complete (cryptsetup reencrypt_teardown_ok): one final segment, keyslots of the
 * old key removed, backup segments, reencrypt keyslot, its digest and the requirement gone. Returns the removed
 * keyslots' areas so the caller wipes them after the commit.
 */
export function finalMetadata(m: Luks2Metadata, st: ReencryptState): { metadata: Luks2Metadata; wipeAreas: { offset: number; size: number }[] } {
  const out = structuredClone(m);
  const wipeAreas: { offset: number; size: number }[] = [];
  for (const d of Object.values(out.digests)) d.segments = [];
  out.segments = { "0": segmentJson({ ...st.newSeg, flags: [] }) };
  if (st.digestNew >= 0) out.digests[String(st.digestNew)]!.segments = ["0"];
  const drop = (id: string) => {
    delete out.keyslots[id];
    for (const d of Object.values(out.digests)) d.keyslots = d.keyslots.filter((k) => k !== id);
    for (const [tid, t] of Object.entries(out.tokens)) {
      t.keyslots = t.keyslots.filter((k) => k !== id);
      if (!t.keyslots.length) delete out.tokens[tid];
    }
  };
  if (st.digestOld >= 0 && st.digestOld !== st.digestNew) {
    for (const k of [...out.digests[String(st.digestOld)]!.keyslots]) {
      const ks = out.keyslots[k]!;
      wipeAreas.push({ offset: Number(ks.area.offset), size: Number(ks.area.size) });
      drop(k);
    }
  }
  drop(String(st.keyslot.id));
  for (const [id, d] of Object.entries(out.digests)) if (!d.keyslots.length && !d.segments.length) delete out.digests[id];
  const req = out.config.requirements;
  if (req?.mandatory) {
    req.mandatory = req.mandatory.filter((r) => !/^online-reencrypt(-v[0-9]+)?$/.test(r));
    if (!req.mandatory.length) delete req.mandatory;
    if (!Object.keys(req).length) delete out.config.requirements;
  }
  return { metadata: out, wipeAreas };
}

/** The reencrypt keyslot JSON, field order as cryptsetup 2.6.1 writes it. */
export function reencryptKeyslotJson(k: { mode: ReencryptMode; direction: ReencryptDirection; offset: number; size: number; resilience: ResilienceType | "datashift-checksum" | "datashift-journal"; hash?: string; sectorSize?: number; shiftSize?: number }): Luks2Keyslot {
  const area: Record<string, Json> = { offset: String(k.offset), size: String(k.size), type: k.resilience };
  if (k.resilience === "checksum" || k.resilience === "datashift-checksum") {
    area.hash = k.hash ?? "sha256";
    area.sector_size = k.sectorSize ?? 4096;
  }
  if (k.resilience.startsWith("datashift")) area.shift_size = String(k.shiftSize ?? 0);
  return { area, type: "reencrypt", key_size: 1, mode: k.mode, direction: k.direction, priority: 0 } as unknown as Luks2Keyslot;
}

/** The largest free gap of the keyslots area (cryptsetup LUKS2_find_area_max_gap). */
export function maxAreaGap(m: Luks2Metadata, hdrSize: number): { offset: number; size: number } {
  const start = 2 * hdrSize;
  const end = start + Number(m.config.keyslots_size);
  const used = Object.values(m.keyslots)
    .map((ks) => [Number(ks.area.offset), Number(ks.area.offset) + Number(ks.area.size)] as const)
    .sort((a, b) => a[0] - b[0]);
  let best = { offset: 0, size: 0 };
  let pos = start;
  for (const [s, e] of used) {
    if (s - pos > best.size) best = { offset: pos, size: s - pos };
    pos = Math.max(pos, e);
  }
  if (end - pos > best.size) best = { offset: pos, size: end - pos };
  if (best.size === 0) throw new TrustvolError("ENOSPC", "no free space in the LUKS2 keyslots area for the re-encryption area", "remove an unused keyslot first");
  return best;
}
