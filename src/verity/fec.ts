// dm-verity forward error correction: Reed-Solomon parity over the data and the hash tree, byte-identical to
// `veritysetup format --fec-device` (cryptsetup 2.6.1) and laid out the way the kernel's dm-verity-fec reads it.
//
// Facts (cryptsetup lib/verity/verity_fec.c, rs_encode_char.c; kernel drivers/md/dm-verity-fec.[ch]):
//  - RS(255, rsn) over GF(2^8) with field polynomial 0x11d, generator roots α^0 … α^(roots-1) (fcr 0, prim 1),
//    rsn = 255 - roots, roots from 2 to 24; systematic: parity = message·x^roots mod g(x), highest degree first.
//  - Input = data blocks [0, dataBlocks) then the hash device from the tree start block (just after the superblock) to
//    its end (or to the FEC offset when FEC lives on the hash device); blocks past the end read as zeros.
//    fecBlocks = dataBlocks + hash device blocks - tree start block. Data and hash block sizes must match.
//  - rounds = ceil(fecBlocks / rsn). In round n the codeword for byte b takes byte b of input blocks
//    i·rounds + n for i = 0 … rsn-1 (interleaving: one lost block costs one byte per codeword).
//  - Parity is written round by round, byte column by column, `roots` bytes each, from the FEC offset:
//    the FEC area is rounds · roots blocks.
//  - Kernel table: use_fec_from_device <dev> fec_start <offset/blocksize> fec_blocks <fecBlocks> fec_roots <roots>.
import { TrustvolError, usage } from "../util/errors.js";
import type { BlockDevice } from "../blockdev/types.js";
import type { VerityGeometry, VerityParams } from "./superblock.js";
import { loadNative } from "../dmcrypt/native.js";
import { defaultThreads } from "./pool.js";
import { uvThreadPoolSize } from "../util/threads.js";

export const FEC_MIN_ROOTS = 2;
export const FEC_MAX_ROOTS = 24;
export const FEC_DEFAULT_ROOTS = 2;

export interface VerityFecOptions {
  /** Parity bytes per RS codeword (2 … 24, veritysetup --fec-roots; default 2). */
  roots?: number;
  /** Byte offset of the FEC area in the FEC device (veritysetup --fec-offset; multiple of the block size). */
  offset?: number;
}

export interface VerityFecLayout {
  roots: number;
  /** Blocks covered by the codes (data + hash area): the table's fec_blocks. */
  fecBlocks: bigint;
  rounds: bigint;
  /** FEC area size in blocks (rounds × roots; veritysetup dump's "FEC blocks"). */
  rsBlocks: bigint;
  /** FEC area size in bytes. */
  size: bigint;
  offset: number;
  /** The table's fec_start (offset in data blocks). */
  start: bigint;
}

// ---------------------------------------------------------------- GF(2^8), polynomial 0x11d
const EXP = new Uint8Array(512);
const LOG = new Uint8Array(256);
{
  let x = 1;
  for (let i = 0; i < 255; i++) {
    EXP[i] = x;
    LOG[x] = i;
    x <<= 1;
    if (x & 0x100) x ^= 0x11d;
  }
  for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255]!;
}
const gfMul = (a: number, b: number): number => (a === 0 || b === 0 ? 0 : EXP[LOG[a]! + LOG[b]!]!);

/** g(x) = Π (x + α^i), i = 0 … roots-1; gen[k] is the coefficient of x^k (gen[roots] = 1). */
function generator(roots: number): Uint8Array {
  let g = new Uint8Array([1]);
  for (let i = 0; i < roots; i++) {
    const a = EXP[i]!;
    const n = new Uint8Array(g.length + 1);
    for (let k = 0; k < g.length; k++) {
      n[k + 1]! ^= g[k]!; // x · g
      n[k]! ^= gfMul(g[k]!, a); // α^i · g
    }
    g = n;
  }
  return g;
}

/** Reed-Solomon RS(255, 255-roots) encoder working on a whole block's byte columns at once. */
export class RsColumnEncoder {
  readonly mul: Uint8Array[]; // mul[j][f] = f · gen[roots-1-j]
  private readonly ring: Uint8Array[];
  private readonly fb: Uint8Array;
  private head = 0;
  constructor(readonly roots: number, readonly columns: number) {
    if (!Number.isInteger(roots) || roots < FEC_MIN_ROOTS || roots > FEC_MAX_ROOTS) throw usage(`verity: ${roots} FEC roots is invalid`, `use ${FEC_MIN_ROOTS} to ${FEC_MAX_ROOTS}`);
    const gen = generator(roots);
    this.mul = Array.from({ length: roots }, (_, j) => {
      const c = gen[roots - 1 - j]!;
      const t = new Uint8Array(256);
      for (let f = 1; f < 256; f++) t[f] = gfMul(f, c);
      return t;
    });
    this.ring = Array.from({ length: roots }, () => new Uint8Array(columns));
    this.fb = new Uint8Array(columns);
  }
  reset(): void {
    for (const r of this.ring) r.fill(0);
    this.head = 0;
  }
  /** Feed the next message symbol of every column (null = a zero block). */
  push(row: Uint8Array | null): void {
    const { roots, columns, ring, fb, mul } = this;
    const r0 = ring[this.head]!;
    if (row) for (let b = 0; b < columns; b++) fb[b] = row[b]! ^ r0[b]!;
    else fb.set(r0);
    for (let j = 0; j < roots - 1; j++) {
      const row2 = ring[(this.head + 1 + j) % roots]!;
      const t = mul[j]!;
      for (let b = 0; b < columns; b++) row2[b]! ^= t[fb[b]!]!;
    }
    const last = mul[roots - 1]!;
    for (let b = 0; b < columns; b++) r0[b] = last[fb[b]!]!;
    this.head = (this.head + 1) % roots;
  }
  /** Parity of every column, column-major: out[b·roots + j] (what the FEC area stores). */
  parity(out: Uint8Array): void {
    const { roots, columns, ring } = this;
    for (let j = 0; j < roots; j++) {
      const row = ring[(this.head + j) % roots]!;
      for (let b = 0; b < columns; b++) out[b * roots + j] = row[b]!;
    }
  }
}

/** Encode one 255-byte-or-shorter message (tests / single codewords): parity, highest degree first. */
export function rsEncode(message: Uint8Array, roots: number): Uint8Array {
  const e = new RsColumnEncoder(roots, 1);
  for (const m of message) e.push(Uint8Array.of(m));
  const out = new Uint8Array(roots);
  e.parity(out);
  return out;
}

/** Where the FEC area goes and how big it is. hashDeviceBytes: the hash device size the codes cover (see header). */
export function verityFecLayout(p: VerityParams, g: VerityGeometry, hashDeviceBytes: bigint, o: VerityFecOptions = {}): VerityFecLayout {
  const roots = o.roots ?? FEC_DEFAULT_ROOTS;
  if (!Number.isInteger(roots) || roots < FEC_MIN_ROOTS || roots > FEC_MAX_ROOTS) throw usage(`verity: --fec-roots ${roots} is invalid`, `use ${FEC_MIN_ROOTS} to ${FEC_MAX_ROOTS}`);
  if (p.dataBlockSize !== p.hashBlockSize) throw usage("verity: FEC needs equal data and hash block sizes", "use the same --data-block-size and --hash-block-size");
  const bs = BigInt(p.dataBlockSize);
  const offset = o.offset ?? 0;
  if (!Number.isSafeInteger(offset) || offset < 0 || BigInt(offset) % bs !== 0n) throw usage(`verity: FEC offset ${offset} is invalid`, `use a multiple of the block size (${p.dataBlockSize})`);
  let hashBlocks = hashDeviceBytes / bs;
  hashBlocks = hashBlocks > g.treeStartBlock ? hashBlocks - g.treeStartBlock : 0n;
  const fecBlocks = p.dataBlocks + hashBlocks;
  const rsn = BigInt(255 - roots);
  const rounds = (fecBlocks + rsn - 1n) / rsn;
  const rsBlocks = rounds * BigInt(roots);
  return { roots, fecBlocks, rounds, rsBlocks, size: rsBlocks * bs, offset, start: BigInt(offset) / bs };
}

function toSafe(n: bigint, what: string): number {
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw usage(`verity: ${what} too large`);
  return Number(n);
}

/**
 * Compute the FEC parity for data + hash tree and write it at layout.offset of fec (veritysetup format --fec-device).
 * The hash tree must already be written. Returns the layout.
 */
export async function verityFecEncode(
  data: BlockDevice,
  hash: BlockDevice,
  fec: BlockDevice,
  p: VerityParams,
  g: VerityGeometry,
  o: VerityFecOptions & { onProgress?: (done: number, total: number) => void } = {},
): Promise<VerityFecLayout> {
  if (fec.readOnly) throw new TrustvolError("EDEVICE", `verity: FEC device ${fec.name} is read-only`);
  return fecRun(data, hash, fec, p, g, o, "write");
}

/**
 * Recompute the parity and compare it with the FEC area (for `verity verify --fec-device`, after the tree verified):
 * throws ECORRUPT naming the first round whose stored parity differs, ETRUNCATED when the FEC area is short.
 */
export async function verityFecCheck(
  data: BlockDevice,
  hash: BlockDevice,
  fec: BlockDevice,
  p: VerityParams,
  g: VerityGeometry,
  o: VerityFecOptions & { onProgress?: (done: number, total: number) => void } = {},
): Promise<VerityFecLayout> {
  return fecRun(data, hash, fec, p, g, o, "check");
}

async function fecRun(
  data: BlockDevice,
  hash: BlockDevice,
  fec: BlockDevice,
  p: VerityParams,
  g: VerityGeometry,
  o: VerityFecOptions & { onProgress?: (done: number, total: number) => void },
  mode: "write" | "check",
): Promise<VerityFecLayout> {
  const sameAsHash = fec === hash;
  const layout = verityFecLayout(p, g, sameAsHash ? BigInt(o.offset ?? 0) : BigInt(hash.size), o);
  const bs = p.dataBlockSize;
  const rsn = 255 - layout.roots;
  const dataBlocks = toSafe(p.dataBlocks, "data block count");
  const total = toSafe(layout.fecBlocks, "FEC block count");
  const rounds = toSafe(layout.rounds, "FEC rounds");
  const treeStart = toSafe(g.treeStartBlock, "hash offset");
  const offset = layout.offset;
  if (sameAsHash && BigInt(offset) < g.hashDeviceSize)
    throw usage(`verity: FEC offset ${offset} overlaps the hash tree (ends at ${g.hashDeviceSize})`, `use --fec-offset of at least ${g.hashDeviceSize}`);
  if (fec === data && BigInt(offset) < p.dataBlocks * BigInt(bs))
    throw usage(`verity: FEC offset ${offset} overlaps the data`, `use --fec-offset of at least ${p.dataBlocks * BigInt(bs)}`);
  if (mode === "check" && BigInt(fec.size) < BigInt(offset) + layout.size)
    throw new TrustvolError("ETRUNCATED", `verity: FEC device ${fec.name} has ${fec.size} bytes, ${layout.rsBlocks} parity blocks at offset ${offset} need ${BigInt(offset) + layout.size}`,
      "check --fec-roots and --fec-offset (give the values used at format), or restore the FEC device");
  const enc = new RsColumnEncoder(layout.roots, bs);
  const stored = mode === "check" ? Buffer.alloc(bs * layout.roots) : undefined;
  const out = Buffer.alloc(bs * layout.roots);
  // Native encoder (native/src/trustvol_native.c rsParity: the same arithmetic, 16 columns per SSSE3 lookup pair);
  // rsParityAsync runs the rounds of one batch on libuv's thread pool, up to `threads` at once (all cores).
  const addon = loadNative();
  const rsParity = addon?.rsParity?.bind(addon);
  const rsParityAsync = addon?.rsParityAsync?.bind(addon);
  const threads = Math.max(1, Math.min(defaultThreads(), uvThreadPoolSize())); // more jobs would only queue
  const mulFlat = new Uint8Array(layout.roots * 256);
  enc.mul.forEach((t, j) => mulFlat.set(t, j * 256));
  // Input block idx (data blocks, then the hash device from the tree start; zeros past the end) — `count` consecutive
  // blocks into dst with as few reads as possible.
  const readRange = async (idx: number, count: number, dst: Uint8Array): Promise<void> => {
    let k = 0;
    while (k < count) {
      const i = idx + k;
      const view = (n: number) => dst.subarray(k * bs, (k + n) * bs);
      if (i >= total) {
        view(count - k).fill(0);
        return;
      }
      if (i < dataBlocks) {
        const n = Math.min(count - k, dataBlocks - i);
        await data.read(view(n), i * bs);
        k += n;
        continue;
      }
      const n = Math.min(count - k, total - i);
      const pos = (treeStart + i - dataBlocks) * bs;
      const v = view(n);
      // FEC on the hash device past the tree: the gap up to the FEC area reads as zeros (it is, once parity is written).
      if (sameAsHash && pos + n * bs > hash.size) {
        v.fill(0);
        if (pos < hash.size) await hash.read(v.subarray(0, hash.size - pos), pos);
      } else await hash.read(v, pos);
      k += n;
    }
  };
  // K rounds at a time: row i of rounds n … n+K-1 are the consecutive input blocks i·rounds+n …, one read per row.
  const K = Math.max(1, Math.min(rounds, Math.floor((8 << 20) / (rsn * bs))));
  const rows = Buffer.alloc(K * bs);
  const roundBufs = Array.from({ length: K }, () => Buffer.alloc(rsn * bs));
  const outs = rsParityAsync && threads > 1 ? Array.from({ length: K }, () => Buffer.alloc(bs * layout.roots)) : null;
  for (let n0 = 0; n0 < rounds; n0 += K) {
    const k = Math.min(K, rounds - n0);
    for (let i = 0; i < rsn; i++) {
      await readRange(i * rounds + n0, k, rows);
      for (let r = 0; r < k; r++) rows.copy(roundBufs[r]!, i * bs, r * bs, (r + 1) * bs);
    }
    if (outs) {
      // the batch's rounds on the thread pool, `threads` at a time; written/compared below in order
      let next = 0;
      const lane = async (): Promise<void> => {
        for (let r = next++; r < k; r = next++) await rsParityAsync!(mulFlat, layout.roots, roundBufs[r]!, rsn, bs, outs[r]!);
      };
      await Promise.all(Array.from({ length: Math.min(threads, k) }, lane));
    }
    for (let r = 0; r < k; r++) {
      const n = n0 + r;
      const rb = roundBufs[r]!;
      const parity = outs ? outs[r]! : out; // computed above on the thread pool, or here
      if (!outs && rsParity) rsParity(mulFlat, layout.roots, rb, rsn, bs, out);
      else if (!outs) {
        enc.reset();
        for (let i = 0; i < rsn; i++) enc.push(rb.subarray(i * bs, (i + 1) * bs));
        enc.parity(out);
      }
      if (stored) {
        await fec.read(stored, offset + n * out.length);
        if (!stored.equals(parity))
          throw new TrustvolError("ECORRUPT", `verity: FEC parity differs in RS round ${n} at position ${offset + n * out.length} of FEC device ${fec.name}`,
            "the FEC device is damaged, belongs to another image, or --fec-roots/--fec-offset differ from format; re-create it with verity format --fec-device");
      } else await fec.write(parity, offset + n * out.length);
      o.onProgress?.(n + 1, rounds);
    }
  }
  if (mode === "write") await fec.flush();
  return layout;
}
