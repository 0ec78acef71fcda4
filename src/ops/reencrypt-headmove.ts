// The head move of in-place encryption with a data shift (cryptsetup's reencrypt_move_data): the device's first chunk
// is copied to the free end before the header is written over it. Until the first header copy lands nothing on disk
// says how far this got, so a completed copy leaves a record in free space that the first hotzone overwrites: the
// record, not a guess from which bytes match, lets a restart take the copy as the source. The record's first bytes also
// go over the head's first bytes (the mark): where the record is depends on the shift, the mark is always at offset 0,
// so a rerun with another --reduce-device-size finds it and refuses instead of copying a head the header overwrote.
import { createHash } from "node:crypto";
import type { BlockDevice } from "../blockdev/types.js";
import { wipe } from "../util/secret.js";
import { fusedCopy } from "./reencrypt-io.js";

const MAGIC = Buffer.from("trustvol-headmv3"); // 16 bytes
export const HEAD_MOVE_RECORD_SIZE = 4096;
/** Bytes of the record written over the head's first bytes (all a decoder reads): magic, ranges, digest, self-check. */
export const HEAD_MARK_SIZE = 112;

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

/** The record, or null when these bytes are not a whole, consistent one (never written, torn, or other data). */
export function decodeHeadMoveRecord(b: Buffer): HeadMoveRecord | null {
  if (b.length < 112 || !b.subarray(0, 16).equals(MAGIC)) return null;
  if (!createHash("sha256").update(b.subarray(0, 80)).digest().equals(b.subarray(80, 112))) return null;
  const [len, at, guardFrom, guardTo] = [0, 1, 2, 3].map((i) => b.readBigUInt64BE(16 + 8 * i)).map((v) => (v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : -1)) as [number, number, number, number];
  if (len <= 0 || at < len || guardFrom < 0 || guardFrom > guardTo || guardTo > len) return null;
  return { len, at, guardFrom, guardTo, digest: Buffer.from(b.subarray(48, 80)) };
}

/** The mark at the head of a device whose head move was cut before its first header copy landed, or null. */
export async function readHeadMark(dev: BlockDevice): Promise<HeadMoveRecord | null> {
  if (dev.size < HEAD_MARK_SIZE) return null;
  const b = Buffer.alloc(HEAD_MARK_SIZE);
  await dev.read(b, 0);
  const r = decodeHeadMoveRecord(b);
  return r && r.at + r.len <= dev.size ? r : null; // a copy past the end is no move of this device
}

export interface HeadMove {
  /** Bytes of the device's head to move: [0, len). */
  len: number;
  /** Where the copy goes. */
  at: number;
  /** Where the record goes: free space outside [0, len) and [at, at + len), overwritten only after the header lands. */
  recordAt: number;
  /** [from, to): what the header's keyslot material and secondary copy overwrite before a header copy is valid. */
  touched: readonly [number, number];
}

/**
 * Copy [0, len) to `at` unless an earlier attempt did: then the copy is the source, since the header may have
 * overwritten part of the head since. The copy is trusted only through a whole record of this same move: its guarded
 * bytes must match the record's digest and all others (but the mark's) the head (a head changed since, e.g. a file
 * system mounted in between, is copied again — its first bytes from the copy while the mark covers them). Order on
 * disk: copy → flush → record → flush → mark → flush; the caller checks for a mark of another move first
 * (readHeadMark) and writes the header after this returns. A trusted record that guards less than this run's header
 * overwrites is widened first (the attempt before may have had other options). Returns whether the copy was made now.
 */
export async function moveHead(dev: BlockDevice, m: HeadMove, piece = 1 << 20): Promise<boolean> {
  const rec = Buffer.alloc(HEAD_MOVE_RECORD_SIZE);
  await dev.read(rec, m.recordAt);
  const old = decodeHeadMoveRecord(rec);
  const guard = [Math.min(m.touched[0], m.len), Math.min(m.touched[1], m.len)] as const;
  const head = Buffer.allocUnsafeSlow(Math.min(piece, m.len));
  const copy = Buffer.allocUnsafeSlow(head.length);
  const markLen = Math.min(HEAD_MARK_SIZE, m.len);
  const prior = await readHeadMark(dev);
  const marked = prior !== null && prior.len === m.len && prior.at === m.at;
  const record = async (from: number, to: number) => {
    const digest = createHash("sha256");
    for (let p = 0; p < to; p += copy.length) {
      const n = Math.min(copy.length, to - p);
      await dev.read(copy.subarray(0, n), m.at + p); // what the copy reads back as, not what was meant to be written
      digest.update(copy.subarray(0, n));
    }
    const r = encodeHeadMoveRecord({ len: m.len, at: m.at, guardFrom: from, guardTo: to, digest: digest.digest() });
    await dev.write(r, m.recordAt);
    await dev.flush();
    await mark(r);
  };
  /** The record's first bytes over the head's, in one block with the head's own bytes after them. */
  const mark = async (r: Buffer) => {
    const blk = Buffer.alloc(Math.min(4096, m.len));
    await dev.read(blk, 0);
    r.copy(blk, 0, 0, markLen);
    await dev.write(blk, 0);
    await dev.flush();
  };
  /** The copy's guarded bytes match the record: its first bytes are the data's, whatever (torn) mark the head has. */
  let copyIntact = false;
  try {
    if (old && old.len === m.len && old.at === m.at) {
      const digest = createHash("sha256");
      let same = true;
      for (let p = 0; p < m.len && same; p += head.length) {
        const n = Math.min(head.length, m.len - p);
        await dev.read(head.subarray(0, n), p);
        await dev.read(copy.subarray(0, n), m.at + p);
        if (p < old.guardTo) digest.update(copy.subarray(0, Math.min(n, old.guardTo - p)));
        // the mark's bytes (whole, torn or not written yet) are the copy's only: the digest vouches for them
        for (const [a, b] of [[markLen, old.guardFrom], [Math.max(markLen, old.guardTo), m.len]] as const) {
          const lo = Math.max(a, p), hi = Math.min(b, p + n);
          if (lo < hi && !head.subarray(lo - p, hi - p).equals(copy.subarray(lo - p, hi - p))) same = false;
        }
      }
      copyIntact = digest.digest().equals(old.digest);
      if (same && copyIntact) {
        if (guard[0] < old.guardFrom || guard[1] > old.guardTo) await record(Math.min(guard[0], old.guardFrom), Math.max(guard[1], old.guardTo));
        else if (!marked) await mark(rec); // cut before the mark landed
        return false;
      }
      // a stale record must not vouch for a half-made new copy
      await dev.write(Buffer.alloc(HEAD_MOVE_RECORD_SIZE), m.recordAt);
      await dev.flush();
    }
    // Under a mark of this move (or a torn one over an intact copy) the head's first bytes are the mark's: the copy's,
    // made before it, are the data's.
    const from = marked || copyIntact ? Math.min(4096, m.len) : 0;
    if (from) {
      const blk = Buffer.alloc(from);
      await dev.read(blk, 0);
      await dev.read(blk.subarray(0, markLen), m.at);
      await dev.write(blk, m.at);
    }
    // one native copy on a file or block device, else piece by piece
    const fused = from < m.len ? fusedCopy(dev, from, m.at + from, m.len - from, 0, null, null) : null;
    if (fused) await fused;
    else
      for (let p = from; p < m.len; p += head.length) {
        const n = Math.min(head.length, m.len - p);
        await dev.read(head.subarray(0, n), p);
        await dev.write(head.subarray(0, n), m.at + p);
      }
    await dev.flush();
    await record(guard[0], guard[1]);
    return true;
  } finally {
    wipe(head, copy);
  }
}
