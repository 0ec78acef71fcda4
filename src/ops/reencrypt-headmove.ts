// The head move of in-place encryption with a data shift (cryptsetup's reencrypt_move_data): the device's first chunk
// is copied to the free end before the header is written over it. Until the first header copy lands nothing on disk
// says how far this got, so a completed copy leaves a record in free space the first hotzone overwrites: the record,
// not a guess from which bytes match, is what lets a restart take the copy as the source.
import { createHash } from "node:crypto";
import type { BlockDevice } from "../blockdev/types.js";
import { wipe } from "../util/secret.js";
import { fusedCopy } from "./reencrypt-io.js";

const MAGIC = Buffer.from("trustvol-headmv1"); // 16 bytes
export const HEAD_MOVE_RECORD_SIZE = 4096;

/** Where the first chunk [0, len) of the device was copied, and the SHA-256 of the copy. */
export interface HeadMoveRecord {
  len: number;
  at: number;
  sha256: Buffer;
}

/** magic(16) ‖ len u64 BE ‖ at u64 BE ‖ sha256(copy) ‖ sha256(the 64 bytes before it); zero-padded to 4096. */
export function encodeHeadMoveRecord(r: HeadMoveRecord): Buffer {
  const b = Buffer.alloc(HEAD_MOVE_RECORD_SIZE);
  MAGIC.copy(b, 0);
  b.writeBigUInt64BE(BigInt(r.len), 16);
  b.writeBigUInt64BE(BigInt(r.at), 24);
  r.sha256.copy(b, 32);
  createHash("sha256").update(b.subarray(0, 64)).digest().copy(b, 64);
  return b;
}

/** The record, or null when these bytes are not a whole one (never written, torn, or other data). */
export function decodeHeadMoveRecord(b: Buffer): HeadMoveRecord | null {
  if (b.length < 96 || !b.subarray(0, 16).equals(MAGIC)) return null;
  if (!createHash("sha256").update(b.subarray(0, 64)).digest().equals(b.subarray(64, 96))) return null;
  const len = b.readBigUInt64BE(16), at = b.readBigUInt64BE(24);
  if (len > BigInt(Number.MAX_SAFE_INTEGER) || at > BigInt(Number.MAX_SAFE_INTEGER)) return null;
  return { len: Number(len), at: Number(at), sha256: Buffer.from(b.subarray(32, 64)) };
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
 * Copy [0, len) to `at` unless an earlier attempt already did: then the copy is the source (the header may have
 * overwritten part of the head since). The copy is trusted only with a whole record whose hash matches it, and with
 * the head equal to it outside `touched` (a head changed there since, e.g. a file system mounted in between, is
 * copied again). Order on disk: copy → flush → record → flush; the caller writes the header after this returns.
 * Returns whether the copy was made now.
 */
export async function moveHead(dev: BlockDevice, m: HeadMove, piece = 1 << 20): Promise<boolean> {
  const rec = Buffer.alloc(HEAD_MOVE_RECORD_SIZE);
  await dev.read(rec, m.recordAt);
  const old = decodeHeadMoveRecord(rec);
  const head = Buffer.allocUnsafeSlow(Math.min(piece, m.len));
  const copy = Buffer.allocUnsafeSlow(head.length);
  try {
    if (old && old.len === m.len && old.at === m.at) {
      const h = createHash("sha256");
      let same = true;
      for (let p = 0; p < m.len && same; p += head.length) {
        const n = Math.min(head.length, m.len - p);
        await dev.read(head.subarray(0, n), p);
        await dev.read(copy.subarray(0, n), m.at + p);
        h.update(copy.subarray(0, n));
        for (const [a, b] of [[0, m.touched[0]], [m.touched[1], m.len]] as const) {
          const lo = Math.max(a, p), hi = Math.min(b, p + n);
          if (lo < hi && !head.subarray(lo - p, hi - p).equals(copy.subarray(lo - p, hi - p))) same = false;
        }
      }
      if (same && h.digest().equals(old.sha256)) return false;
      // a stale record must not vouch for a half-made new copy
      await dev.write(Buffer.alloc(HEAD_MOVE_RECORD_SIZE), m.recordAt);
      await dev.flush();
    }
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
    // the hash is of what the copy reads back as, not of what was meant to be written
    const h = createHash("sha256");
    for (let p = 0; p < m.len; p += copy.length) {
      const n = Math.min(copy.length, m.len - p);
      await dev.read(copy.subarray(0, n), m.at + p);
      h.update(copy.subarray(0, n));
    }
    await dev.write(encodeHeadMoveRecord({ len: m.len, at: m.at, sha256: h.digest() }), m.recordAt);
    await dev.flush();
    return true;
  } finally {
    wipe(head, copy);
  }
}
