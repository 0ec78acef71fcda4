// The head move of in-place encryption with a data shift (cryptsetup's reencrypt_move_data): the device's first chunk
// is copied to the free end before the header is written over it. Until the first header copy lands nothing on disk
// says how far this got, so a completed copy leaves a record in free space that the first hotzone overwrites: the
// record, not a guess from which bytes match, lets a restart take the copy as the source. Then a mark goes over the
// head's first bytes: where the record is depends on the shift, the mark is always at offset 0, so a rerun with another
// --reduce-device-size (or a detached --header) finds it and refuses instead of copying a head the header overwrote.
//
// What holds at every instant (each step flushed before the next):
//   - a mark of this move ⇒ a record vouches for the copy's first bytes and guarded bytes (the mark is written only
//     after one; records are erased only when no mark is there) — the head's bytes there are taken from the copy;
//   - the record's digest covers only those bytes: the rest of the copy may be brought up to date from the head (a
//     file system mounted in between) under the mark without ever leaving the copy unvouched;
//   - a record is never rewritten in place: a wider one (another attempt's larger keyslot area) goes to the other of
//     two slots, so a torn rewrite leaves the narrower one, which is what has been overwritten so far;
//   - nothing but the mark is ever written over the head's first bytes before the header, and the mark's bytes are the
//     same for every write of one move: a torn mark is a prefix of them over the data's first bytes.
import { createHash } from "node:crypto";
import type { BlockDevice } from "../blockdev/types.js";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { fusedCopy } from "./reencrypt-io.js";

const MAGIC = Buffer.from("trustvol-headmv4"); // the record's, 16 bytes
const MAGIC_V3 = Buffer.from("trustvol-headmv3"); // the previous format's record (its first bytes were the mark)
const MARK_MAGIC = Buffer.from("trustvol-headmk4"); // the mark's, 16 bytes
export const HEAD_MOVE_RECORD_SIZE = 4096;
/** Record slots: at recordAt and one record below it (the caller keeps both in free space). */
export const HEAD_MOVE_RECORD_SLOTS = 2;
/** Bytes of the mark over the head's first bytes: magic ‖ len, at: u64 BE ‖ zeros ‖ SHA-256 of the 80 bytes before. */
export const HEAD_MARK_SIZE = 112;
/** The least guardFrom a record may name: the header's secondary copy is at 16 KiB at least (LUKS2 hdr_size). */
const GUARD_MIN = 16384;
/** Bytes of the mark's magic that, without a mark or record of this move, say "a torn mark of another run". */
const TORN_MARK_MIN = 8;

/**
 * The first chunk [0, len) of the device is copied, complete, at `at`. The header may overwrite the head's
 * [guardFrom, guardTo) before a header copy is valid, and the mark its [0, HEAD_MARK_SIZE): there only the copy holds
 * the data, so the record carries the SHA-256 of the copy's bytes there (first bytes ‖ guarded bytes); everywhere else
 * the head is the data.
 */
export interface HeadMoveRecord {
  len: number;
  at: number;
  guardFrom: number;
  guardTo: number;
  digest: Buffer;
}

/** magic(16) ‖ len, at, guardFrom, guardTo: u64 BE ‖ digest(32) ‖ SHA-256 of the 80 bytes before it; zero-padded. */
export function encodeHeadMoveRecord(r: HeadMoveRecord): Buffer {
  const b = Buffer.alloc(HEAD_MOVE_RECORD_SIZE);
  MAGIC.copy(b, 0);
  [r.len, r.at, r.guardFrom, r.guardTo].forEach((v, i) => b.writeBigUInt64BE(BigInt(v), 16 + 8 * i));
  r.digest.copy(b, 48);
  createHash("sha256").update(b.subarray(0, 80)).digest().copy(b, 80);
  return b;
}

const u64s = (b: Buffer, at: number, n: number) => Array.from({ length: n }, (_, i) => b.readBigUInt64BE(at + 8 * i)).map((v) => (v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : -1));

/** The record, or null when these bytes are not a whole, consistent one (never written, torn, or other data). */
export function decodeHeadMoveRecord(b: Buffer): HeadMoveRecord | null {
  if (b.length < 112 || !b.subarray(0, 16).equals(MAGIC)) return null;
  if (!createHash("sha256").update(b.subarray(0, 80)).digest().equals(b.subarray(80, 112))) return null;
  const [len, at, guardFrom, guardTo] = u64s(b, 16, 4) as [number, number, number, number];
  // (a guard starts at the secondary header or later; an empty one only on a data area smaller than that)
  if (len <= 0 || at < len || guardFrom < 0 || guardFrom > guardTo || guardTo > len || (guardFrom < GUARD_MIN && guardFrom < guardTo)) return null;
  return { len, at, guardFrom, guardTo, digest: Buffer.from(b.subarray(48, 80)) };
}

/** The mark of the move of [0, len) to at: the same bytes whenever it is written. */
export function encodeHeadMark(len: number, at: number): Buffer {
  const b = Buffer.alloc(HEAD_MARK_SIZE);
  MARK_MAGIC.copy(b, 0);
  b.writeBigUInt64BE(BigInt(len), 16);
  b.writeBigUInt64BE(BigInt(at), 24);
  createHash("sha256").update(b.subarray(0, 80)).digest().copy(b, 80);
  return b;
}

/** The move a mark names, or null. */
export function decodeHeadMark(b: Buffer): { len: number; at: number } | null {
  if (b.length < HEAD_MARK_SIZE) return null;
  // (the previous format's mark was its record's first 112 bytes: the same place and length fields and self-check;
  // its record is not read any more, so such a mark is refused as one whose record is gone — never taken as data)
  const magic = b.subarray(0, 16);
  if (!(magic.equals(MARK_MAGIC) || magic.equals(MAGIC_V3))) return null;
  if (!createHash("sha256").update(b.subarray(0, 80)).digest().equals(b.subarray(80, 112))) return null;
  const [len, at] = u64s(b, 16, 2) as [number, number];
  return len > 0 && at >= len ? { len, at } : null;
}

/** How many of b's first bytes equal ref's. */
function commonPrefix(b: Uint8Array, ref: Uint8Array): number {
  let k = 0;
  while (k < b.length && k < ref.length && b[k] === ref[k]) k++;
  return k;
}

/** What a device's first bytes say of a head move. */
export interface HeadMarkState {
  /** The move a whole mark names (one whose copy lies past the device's end too: the image was shrunk since). */
  mark: { len: number; at: number } | null;
  /** How many of them are the mark's magic: a whole or torn mark begins so (0 for a file system). */
  magicBytes: number;
  /** At least TORN_MARK_MIN bytes of the magic: a mark, or a torn one even with no record of this move. */
  tornMagic: boolean;
}

/** The head move state of the device's first HEAD_MARK_SIZE bytes (fewer: none). */
export function headMarkOf(b: Buffer): HeadMarkState {
  const magicBytes = b.length < HEAD_MARK_SIZE ? 0 : commonPrefix(b.subarray(0, MARK_MAGIC.length), MARK_MAGIC);
  return { mark: decodeHeadMark(b), magicBytes, tornMagic: magicBytes >= TORN_MARK_MIN };
}

/** The device's first bytes, read once: see HeadMarkState. */
export async function readHeadMarkState(dev: BlockDevice): Promise<HeadMarkState> {
  const b = Buffer.alloc(dev.size < HEAD_MARK_SIZE ? 0 : HEAD_MARK_SIZE);
  await dev.read(b, 0);
  return headMarkOf(b);
}

/** The mark at the head of a device whose head move was cut before its first header copy landed, or null. */
export async function readHeadMark(dev: BlockDevice): Promise<{ len: number; at: number } | null> {
  return (await readHeadMarkState(dev)).mark;
}

export interface HeadMove {
  /** Bytes of the device's head to move: [0, len). */
  len: number;
  /** Where the copy goes. */
  at: number;
  /**
   * Where the record goes (and, one record below, its second slot): free space outside [0, len) and [at, at + len),
   * overwritten only after the header lands.
   */
  recordAt: number;
  /** [from, to): what the header's keyslot material and secondary copy overwrite before a header copy is valid. */
  touched: readonly [number, number];
}

/**
 * Copy [0, len) to `at` unless an earlier attempt did: then the copy is the source where the header (and the mark) may
 * have overwritten the head. The copy is trusted only through a record of this same move whose digest it matches
 * (the widest of the two slots), and only for the bytes the record vouches for — under a mark, the first bytes and the
 * guarded bytes; without one (no header byte written yet), at most the first bytes, when they are a torn mark.
 * Everywhere else the head is the data: where it has changed since (a file system mounted in between), the copy is
 * brought up to date from it, under a mark (a torn one is completed first). A mark of this move with no record
 * vouching for its copy, or a torn mark with no record of this move (another --reduce-device-size), is refused, nothing
 * written. Order on disk for a new copy: records erased → copy → flush → record → flush → mark → flush; the caller
 * writes the header after this returns. Returns whether the copy was made now.
 */
export async function moveHead(dev: BlockDevice, m: HeadMove, piece = 1 << 20): Promise<boolean> {
  const slots = Array.from({ length: HEAD_MOVE_RECORD_SLOTS }, (_, i) => m.recordAt - i * HEAD_MOVE_RECORD_SIZE);
  const guard = [Math.min(m.touched[0], m.len), Math.min(m.touched[1], m.len)] as const;
  const markLen = Math.min(HEAD_MARK_SIZE, m.len);
  const markBytes = encodeHeadMark(m.len, m.at).subarray(0, markLen);
  const head = Buffer.allocUnsafeSlow(Math.min(piece, m.len));
  const copy = Buffer.allocUnsafeSlow(head.length);
  const head0 = Buffer.alloc(Math.min(HEAD_MARK_SIZE, dev.size)), copyFirst = Buffer.alloc(markLen);
  const first = head0.subarray(0, markLen);
  try {
    await dev.read(head0, 0);
    const { mark: prior, tornMagic } = headMarkOf(head0);
    const marked = prior !== null && prior.len === m.len && prior.at === m.at;
    /** Records of this move whose digest the copy matches (the copy read back, not what was meant to be written). */
    const trusted: { r: HeadMoveRecord; slot: number }[] = [];
    for (const slot of slots) {
      const b = Buffer.alloc(HEAD_MOVE_RECORD_SIZE);
      await dev.read(b, slot);
      const r = decodeHeadMoveRecord(b);
      if (r && r.len === m.len && r.at === m.at && (await copyDigest(r.guardFrom, r.guardTo)).equals(r.digest)) trusted.push({ r, slot });
    }
    const best = trusted.sort((a, b) => b.r.guardTo - b.r.guardFrom - (a.r.guardTo - a.r.guardFrom))[0] ?? null;
    await dev.read(copyFirst, m.at);
    // The head's first n bytes are the mark's; from byte c on they are the copy's (the data's, vouched by a record).
    const n = commonPrefix(first, markBytes);
    let c = markLen;
    while (c > 0 && first[c - 1] === copyFirst[c - 1]) c--;
    // A torn mark: the mark's first k bytes, then the data's, for some 0 < k < markLen.
    const tornMark = !marked && best !== null && Math.max(c, 1) <= Math.min(n, markLen - 1);
    if (marked && !best)
      throw new TrustvolError("ECORRUPT", `${dev.name}: an in-place encryption was cut before its header was written, and the record of its copy of the first ${m.len} bytes is gone or the copy damaged`, "the device's first bytes may hold header bytes: restore them from a backup (the rest of the device is intact)");
    if (!marked && !best && tornMagic)
      throw new TrustvolError("EUSAGE", `${dev.name}: its first bytes are a torn mark of an in-place encryption cut before its header was written, with another --reduce-device-size`, "run it again with the --reduce-device-size it was started with");
    // Without a mark no header byte has been written: the head is the data but for a torn mark's first bytes.
    const same = !marked && best !== null && (await headMatchesCopy([[0, markLen]]));
    // The head begins with the mark's first bytes, a record of this move vouches for a copy, yet the rest is not that
    // copy's: a torn mark over a device changed since, or a stale (planted) record over data that begins so. Which
    // bytes are the data cannot be told: refused, nothing written.
    if (!marked && best && n > 0 && !(tornMark && same)) {
      throw new TrustvolError("ECORRUPT", `${dev.name}: its first ${n} bytes look like a torn mark of an in-place encryption cut before its header was written, but the device has changed since`, `if that run's copy holds the data, put its first ${n} bytes back (dd if=${dev.name} of=${dev.name} bs=1 count=${n} skip=${m.at} conv=notrunc), else the device was made anew since: zero the stale records (dd if=/dev/zero of=${dev.name} bs=512 count=${(2 * HEAD_MOVE_RECORD_SIZE) / 512} seek=${(m.recordAt + HEAD_MOVE_RECORD_SIZE - HEAD_MOVE_RECORD_SLOTS * HEAD_MOVE_RECORD_SIZE) / 512} conv=notrunc); then run the same command again`);
    }
    if (best && (marked || tornMark || first.equals(copyFirst))) {
      if (!marked && !same) return await moveAfresh(); // the data changed since an attempt that never marked: a stale copy
      // under a mark, where the head changed since (a file system mounted in between): the copy brought up to date
      if (marked) await updateCopy([[0, markLen], [best.r.guardFrom, best.r.guardTo]]);
      if (guard[0] < best.r.guardFrom || guard[1] > best.r.guardTo) {
        // this run's header reaches further: a wider record in the other slot (the narrower one stays till it lands)
        await writeRecord(Math.min(guard[0], best.r.guardFrom), Math.max(guard[1], best.r.guardTo), slots.find((x) => x !== best.slot)!);
      }
      if (!marked) await writeMark();
      return false;
    }
    return await moveAfresh();
  } finally {
    wipe(head, copy, head0, copyFirst);
  }

  /** A new copy of the head as it is (no mark is there: records may be erased). */
  async function moveAfresh(): Promise<true> {
    // records erased before the copy changes (none may vouch for a half-made copy)
    for (const slot of slots) await dev.write(Buffer.alloc(HEAD_MOVE_RECORD_SIZE), slot);
    await dev.flush();
    // one native copy on a file or block device, else piece by piece
    const fused = fusedCopy(dev, 0, m.at, m.len, 0, null, null);
    if (fused) await fused;
    else
      for (let p = 0; p < m.len; p += head.length) {
        const n = Math.min(head.length, m.len - p);
        await dev.read(head.subarray(0, n), p);
        await dev.write(head.subarray(0, n), m.at + p);
      }
    await dev.flush();
    await writeRecord(guard[0], guard[1], slots[0]!);
    await writeMark();
    return true;
  }
  /** SHA-256 of the copy's first bytes and its [from, to): what a record vouches for. */
  async function copyDigest(from: number, to: number): Promise<Buffer> {
    const digest = createHash("sha256");
    for (const [a, b] of [[0, markLen], [Math.max(from, markLen), to]] as const)
      for (let p = a; p < b; p += copy.length) {
        const n = Math.min(copy.length, b - p);
        await dev.read(copy.subarray(0, n), m.at + p);
        digest.update(copy.subarray(0, n));
      }
    return digest.digest();
  }
  /** Calls fn(lo, hi) for each part of [p, p+n) outside the `keep` ranges. */
  function outside(keep: [number, number][], p: number, n: number, fn: (lo: number, hi: number) => void): void {
    let lo = p;
    for (const [a, b] of [...keep.filter(([a, b]) => b > p && a < p + n).sort((x, y) => x[0] - y[0]), [p + n, p + n] as [number, number]]) {
      const hi = Math.min(Math.max(a, lo), p + n);
      if (lo < hi) fn(lo, hi);
      lo = Math.max(lo, b);
    }
  }
  /** Whether the head equals the copy outside the `keep` ranges. */
  async function headMatchesCopy(keep: [number, number][]): Promise<boolean> {
    for (let p = 0; p < m.len; p += head.length) {
      const n = Math.min(head.length, m.len - p);
      await dev.read(head.subarray(0, n), p);
      await dev.read(copy.subarray(0, n), m.at + p);
      let same = true;
      outside(keep, p, n, (lo, hi) => (same &&= head.subarray(lo - p, hi - p).equals(copy.subarray(lo - p, hi - p))));
      if (!same) return false;
    }
    return true;
  }
  /** The head's bytes over the copy's outside the `keep` ranges (the bytes the record vouches for), flushed. */
  async function updateCopy(keep: [number, number][]): Promise<void> {
    let wrote = false;
    for (let p = 0; p < m.len; p += head.length) {
      const n = Math.min(head.length, m.len - p);
      await dev.read(head.subarray(0, n), p);
      await dev.read(copy.subarray(0, n), m.at + p);
      const parts: [number, number][] = [];
      outside(keep, p, n, (lo, hi) => {
        if (!head.subarray(lo - p, hi - p).equals(copy.subarray(lo - p, hi - p))) parts.push([lo, hi]);
      });
      for (const [lo, hi] of parts) await dev.write(head.subarray(lo - p, hi - p), m.at + lo);
      wrote ||= parts.length > 0;
    }
    if (wrote) await dev.flush();
  }
  async function writeRecord(from: number, to: number, slot: number): Promise<void> {
    await dev.write(encodeHeadMoveRecord({ len: m.len, at: m.at, guardFrom: from, guardTo: to, digest: await copyDigest(from, to) }), slot);
    await dev.flush();
  }
  /** The mark over the head's first bytes, in one block with the head's own bytes after them. */
  async function writeMark(): Promise<void> {
    const blk = Buffer.alloc(Math.min(4096, m.len));
    await dev.read(blk, 0);
    markBytes.copy(blk, 0);
    await dev.write(blk, 0);
    await dev.flush();
    wipe(blk);
  }
}
