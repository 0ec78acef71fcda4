// The head move of in-place encryption with a data shift (cryptsetup's reencrypt_move_data): the device's first chunk
// is copied to the free end before the header is written over it. Until the first header copy lands nothing on disk
// says how far this got, so a completed copy leaves a record in free space that the first hotzone overwrites: the
// record, not a guess from which bytes match, lets a restart take the copy as the source. Then a mark goes over the
// head's first bytes: where the record is depends on the shift, the mark is always at offset 0, so a rerun with another
// --reduce-device-size (or a detached --header) finds it and refuses instead of copying a head the header overwrote.
//
// What holds at every instant (each step flushed before the next):
//   - a mark of this move ⇒ a record of it vouches for the copy (the mark is written only after one; records are
//     erased only after the mark is gone) — so the head's header bytes and first bytes can be taken from the copy;
//   - a record is never rewritten in place: a wider one (another attempt's larger keyslot area) goes to the other of
//     two slots, so a torn rewrite leaves the narrower one, which is what has been overwritten so far;
//   - the mark's bytes are the same for every write of one move: a torn mark is a prefix of them over the data's first
//     bytes, whatever number of times it was written.
import { createHash } from "node:crypto";
import type { BlockDevice } from "../blockdev/types.js";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { fusedCopy } from "./reencrypt-io.js";

const MAGIC = Buffer.from("trustvol-headmv3"); // the record's, 16 bytes
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
 * the data, so the record carries the SHA-256 of the copy's [0, guardTo); everywhere else the copy must equal the head.
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
  if (len <= 0 || at < len || guardFrom > guardTo || guardTo > len || (guardFrom < GUARD_MIN && guardFrom < guardTo)) return null;
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

/** The move a mark names, or null. Also a mark of the previous format (a record's first 112 bytes). */
export function decodeHeadMark(b: Buffer): { len: number; at: number } | null {
  if (b.length < HEAD_MARK_SIZE) return null;
  if (b.subarray(0, 16).equals(MARK_MAGIC)) {
    if (!createHash("sha256").update(b.subarray(0, 80)).digest().equals(b.subarray(80, 112))) return null;
    const [len, at] = u64s(b, 16, 2) as [number, number];
    return len > 0 && at >= len ? { len, at } : null;
  }
  const r = decodeHeadMoveRecord(b);
  return r && { len: r.len, at: r.at };
}

/**
 * The mark at the head of a device whose head move was cut before its first header copy landed, or null. A mark whose
 * copy lies past the device's end is still one (the image was shrunk since): the caller refuses, it does not go on.
 */
export async function readHeadMark(dev: BlockDevice): Promise<{ len: number; at: number } | null> {
  if (dev.size < HEAD_MARK_SIZE) return null;
  const b = Buffer.alloc(HEAD_MARK_SIZE);
  await dev.read(b, 0);
  return decodeHeadMark(b);
}

/** Whether the head's first bytes begin with the mark's magic (at least TORN_MARK_MIN bytes of it): a torn mark. */
export async function headHasTornMark(dev: BlockDevice): Promise<boolean> {
  if (dev.size < HEAD_MARK_SIZE) return false;
  const b = Buffer.alloc(TORN_MARK_MIN);
  await dev.read(b, 0);
  return b.equals(MARK_MAGIC.subarray(0, TORN_MARK_MIN));
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
 * (the widest of the two slots), and only where a header write may have gone: under a mark of this move, the guarded
 * bytes and the first bytes; without one (no header byte written yet), at most the first bytes, when they are a torn
 * mark. Everywhere else the head is the data: when it has changed since (a file system mounted in between), the head
 * is first made whole again from the copy and then copied afresh. A mark of this move with no record vouching for
 * its copy, or a torn mark with no record of this move (another --reduce-device-size), is refused, nothing written.
 * Order on disk: records erased → copy → flush → record → flush → mark → flush; the caller writes the header after this
 * returns. Returns whether the copy was made now.
 */
export async function moveHead(dev: BlockDevice, m: HeadMove, piece = 1 << 20): Promise<boolean> {
  const slots = Array.from({ length: HEAD_MOVE_RECORD_SLOTS }, (_, i) => m.recordAt - i * HEAD_MOVE_RECORD_SIZE);
  const guard = [Math.min(m.touched[0], m.len), Math.min(m.touched[1], m.len)] as const;
  const markLen = Math.min(HEAD_MARK_SIZE, m.len);
  const markBytes = encodeHeadMark(m.len, m.at).subarray(0, markLen);
  const head = Buffer.allocUnsafeSlow(Math.min(piece, m.len));
  const copy = Buffer.allocUnsafeSlow(head.length);
  const first = Buffer.alloc(markLen), copyFirst = Buffer.alloc(markLen);
  try {
    const prior = await readHeadMark(dev);
    const marked = prior !== null && prior.len === m.len && prior.at === m.at;
    /** Records of this move whose digest the copy matches (the copy read back, not what was meant to be written). */
    const trusted: { r: HeadMoveRecord; slot: number }[] = [];
    for (const slot of slots) {
      const b = Buffer.alloc(HEAD_MOVE_RECORD_SIZE);
      await dev.read(b, slot);
      const r = decodeHeadMoveRecord(b);
      if (r && r.len === m.len && r.at === m.at && (await copyDigest(r.guardTo)).equals(r.digest)) trusted.push({ r, slot });
    }
    const best = trusted.sort((a, b) => b.r.guardTo - b.r.guardFrom - (a.r.guardTo - a.r.guardFrom))[0] ?? null;
    await dev.read(first, 0);
    await dev.read(copyFirst, m.at);
    // A torn mark: a prefix of the mark's bytes, the data's first bytes after it (the copy's, vouched by a record).
    const tornMark = !marked && best !== null && Array.from({ length: markLen }, (_, k) => k + 1).some((k) => first.subarray(0, k).equals(markBytes.subarray(0, k)) && first.subarray(k).equals(copyFirst.subarray(k)));
    if (marked && !best)
      throw new TrustvolError("ECORRUPT", `${dev.name}: an in-place encryption was cut before its header was written, and the record of its copy of the first ${m.len} bytes is gone or the copy damaged`, "the device's first bytes may hold header bytes: restore them from a backup (the rest of the device is intact)");
    if (!marked && !best && (await headHasTornMark(dev)))
      throw new TrustvolError("EUSAGE", `${dev.name}: its first bytes are a torn mark of an in-place encryption cut before its header was written, with another --reduce-device-size`, "run it again with the --reduce-device-size it was started with");
    if (best) {
      // The head against the copy wherever no header byte (nor the mark) can have gone.
      const skip: [number, number][] = [[0, markLen], ...(marked ? [[best.r.guardFrom, best.r.guardTo] as [number, number]] : [])];
      const same = await headMatchesCopy(skip);
      const firstOk = marked || tornMark || first.equals(copyFirst);
      if (same && firstOk) {
        if (guard[0] < best.r.guardFrom || guard[1] > best.r.guardTo) {
          // this run's header reaches further: a wider record in the other slot (the narrower one stays till it lands)
          await writeRecord(Math.min(guard[0], best.r.guardFrom), Math.max(guard[1], best.r.guardTo), slots.find((x) => x !== best.slot)!);
        }
        if (!marked) await writeMark();
        return false;
      }
      // The head changed since (or the record is stale): make it whole from the copy where a header write or the mark
      // may have gone, flushed (a cut here finds the same state again), then move it afresh.
      if (marked) await restoreHead(best.r.guardFrom, best.r.guardTo);
      if (marked || tornMark) await restoreFirst();
    }
    // records erased before the copy changes (none may vouch for a half-made copy; no mark is left at this point)
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
  } finally {
    wipe(head, copy, first, copyFirst);
  }

  async function copyDigest(to: number): Promise<Buffer> {
    const digest = createHash("sha256");
    for (let p = 0; p < to; p += copy.length) {
      const n = Math.min(copy.length, to - p);
      await dev.read(copy.subarray(0, n), m.at + p);
      digest.update(copy.subarray(0, n));
    }
    return digest.digest();
  }
  /** Whether the head equals the copy outside the `skip` ranges. */
  async function headMatchesCopy(skip: [number, number][]): Promise<boolean> {
    for (let p = 0; p < m.len; p += head.length) {
      const n = Math.min(head.length, m.len - p);
      await dev.read(head.subarray(0, n), p);
      await dev.read(copy.subarray(0, n), m.at + p);
      let lo = p;
      for (const [a, b] of [...skip.filter(([a, b]) => b > p && a < p + n).sort((x, y) => x[0] - y[0]), [p + n, p + n] as [number, number]]) {
        const hi = Math.min(Math.max(a, lo), p + n);
        if (lo < hi && !head.subarray(lo - p, hi - p).equals(copy.subarray(lo - p, hi - p))) return false;
        lo = Math.max(lo, b);
      }
    }
    return true;
  }
  /** The copy's [from, to) back over the head's, flushed. */
  async function restoreHead(from: number, to: number): Promise<void> {
    for (let p = from; p < to; p += copy.length) {
      const n = Math.min(copy.length, to - p);
      await dev.read(copy.subarray(0, n), m.at + p);
      await dev.write(copy.subarray(0, n), p);
    }
    await dev.flush();
  }
  /** The copy's first bytes over the mark's (whole or torn), in one block with the head's own bytes after them. */
  async function restoreFirst(): Promise<void> {
    const blk = Buffer.alloc(Math.min(4096, m.len));
    await dev.read(blk, 0);
    copyFirst.copy(blk, 0);
    await dev.write(blk, 0);
    await dev.flush();
    wipe(blk);
  }
  async function writeRecord(from: number, to: number, slot: number): Promise<void> {
    await dev.write(encodeHeadMoveRecord({ len: m.len, at: m.at, guardFrom: from, guardTo: to, digest: await copyDigest(to) }), slot);
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
