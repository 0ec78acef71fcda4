// Anti-forensic splitter (LUKS1 spec §2.4 "AF-Splitter", used unchanged by LUKS2 keyslots of af.type "luks1").
import * as nodeCrypto from "node:crypto";
import { createHash, randomFillSync } from "node:crypto";
import { wipe } from "../util/secret.js";
import { loadNative, type NativeAddon, type NativeHasher } from "../dmcrypt/native.js";

// The merge runs once per unlock over stripes × key bytes (4000 × 64): 4000-8000 small hashes, each depending on the
// previous stripe, so they cannot be batched across stripes. The cost is per call, not per byte: the native addon runs
// the whole loop in one call (afStripes; one hasher per chunk index, pre-seeded with the big-endian index, SHA-NI for
// SHA-256); without it, Node's one-shot crypto.hash (>= 20.12) into no new Hash object, else createHash.

type Diffuse = (buf: Buffer) => void;

/** crypto.hash(alg, data, "buffer") where this Node has it (20.12+), else undefined. */
const oneShot = (nodeCrypto as unknown as { hash?: (alg: string, data: Uint8Array, enc: "buffer") => Buffer }).hash;

function hashLen(hash: string): number {
  return createHash(hash).digest().length;
}

/** One native hasher per digest-sized chunk of a `len`-byte block (H(be32(i) ‖ chunk)), or undefined (no addon, old
 * addon, a hash OpenSSL does not fetch). */
function nativeHashers(a: NativeAddon | null, hash: string, len: number, ds: number): NativeHasher[] | undefined {
  if (!a?.hasherCreate || !a.hashBlocks) return undefined;
  const hashers: NativeHasher[] = [];
  try {
    for (let i = 0; i < Math.ceil(len / ds); i++) {
      const iv = Buffer.alloc(4);
      iv.writeUInt32BE(i);
      hashers.push(a.hasherCreate(hash, iv, 1)); // type 1: H(iv ‖ block)
    }
  } catch {
    return undefined;
  }
  return hashers;
}

/** The native diffuser for blocks of `len` bytes, or undefined (no addon, old addon, hash OpenSSL does not fetch). */
function nativeDiffuser(hash: string, len: number, ds: number): Diffuse | undefined {
  const a: NativeAddon | null = loadNative();
  const hashers = nativeHashers(a, hash, len, ds);
  if (!hashers) return undefined;
  const hashBlocks = a!.hashBlocks!;
  const chunks = hashers.length;
  const tail = Buffer.alloc(ds);
  // The merge diffuses the same block buffer thousands of times: its chunk views are made once.
  let last: Buffer | undefined;
  let views: Buffer[] = [];
  return (buf) => {
    if (buf !== last) {
      last = buf;
      views = hashers.map((_, i) => buf.subarray(i * ds, Math.min(len, (i + 1) * ds)));
    }
    for (let i = 0; i < chunks; i++) {
      const v = views[i]!;
      if (v.length === ds) hashBlocks(hashers[i]!, v, 1, ds, v);
      else {
        hashBlocks(hashers[i]!, v, 1, v.length, tail);
        tail.copy(v, 0, 0, v.length);
        wipe(tail);
      }
    }
  };
}

/** H(i ‖ block) over each digest-sized chunk, i as big-endian u32; a short tail uses a truncated digest. */
function jsDiffuser(hash: string, ds: number): Diffuse {
  const scratch = Buffer.alloc(4 + ds);
  return (buf) => {
    const blocks = Math.floor(buf.length / ds);
    const pad = buf.length % ds;
    for (let i = 0; i < blocks + (pad ? 1 : 0); i++) {
      const start = i * ds;
      const len = i < blocks ? ds : pad;
      let d: Buffer;
      if (oneShot) {
        scratch.writeUInt32BE(i);
        buf.copy(scratch, 4, start, start + len);
        d = oneShot(hash, scratch.subarray(0, 4 + len), "buffer");
      } else {
        const iv = Buffer.alloc(4);
        iv.writeUInt32BE(i);
        d = createHash(hash).update(iv).update(buf.subarray(start, start + len)).digest();
      }
      d.copy(buf, start, 0, len);
      wipe(d);
    }
    wipe(scratch);
  };
}

/** block ^= stripe, then diffuse(block), for each of the first `count` stripes of block.length bytes in `material`. */
type Stripes = (block: Buffer, material: Uint8Array, count: number) => void;

/** The whole stripe loop in one native call (afStripes), or undefined (no addon, old addon, hash OpenSSL lacks). */
function nativeStripes(hash: string, len: number, ds: number): Stripes | undefined {
  const a = loadNative();
  // the addon takes up to 64 chunks (a 1024-byte key with a 16-byte digest); anything longer goes the other way
  const hashers = a?.afStripes && Math.ceil(len / ds) <= 64 ? nativeHashers(a, hash, len, ds) : undefined;
  return hashers && ((block, material, count) => a!.afStripes!(hashers, block, material, count));
}

/** The stripe loop for `len`-byte blocks: native in one call, else diffuseStripes over the best diffuser there is. */
function stripeLoop(hash: string, len: number): { run: Stripes; native: boolean } {
  const ds = hashLen(hash);
  const native = nativeStripes(hash, len, ds);
  if (native) return { run: native, native: true };
  const diffuse = nativeDiffuser(hash, len, ds) ?? jsDiffuser(hash, ds);
  return { run: (block, material, count) => diffuseStripes(block, material, count, diffuse), native: false };
}

/** One implementation of the diffusion step, for tests that compare them; undefined when the native one is absent. */
export function afDiffuser(hash: string, len: number, impl: "native" | "js"): ((buf: Buffer) => void) | undefined {
  const ds = hashLen(hash);
  return impl === "native" ? nativeDiffuser(hash, len, ds) : jsDiffuser(hash, ds);
}

/** One implementation of the stripe loop, for tests that compare them; undefined when the native one is absent. */
export function afStripeLoop(hash: string, len: number, impl: "native" | "js"): Stripes | undefined {
  const ds = hashLen(hash);
  if (impl === "native") return nativeStripes(hash, len, ds);
  const diffuse = jsDiffuser(hash, ds);
  return (block, material, count) => diffuseStripes(block, material, count, diffuse);
}

function xorInto(dst: Buffer, a: Uint8Array, b: Uint8Array): void {
  for (let i = 0; i < dst.length; i++) dst[i] = a[i]! ^ b[i]!;
}

/**
 * block ^= stripe, then diffuse(block), for each of the first `count` stripes of block.length bytes in `material`. A word
 * at a time when the stripes are whole words at an aligned offset: a quarter of the iterations of the byte loop and no
 * view per stripe — this runs cold once per unlock or keyslot, so its iteration count is what costs.
 */
function diffuseStripes(block: Buffer, material: Uint8Array, count: number, diffuse: Diffuse): void {
  const n = block.length;
  if (n % 4 === 0 && material.byteOffset % 4 === 0 && block.byteOffset % 4 === 0) {
    const words = n / 4;
    const b32 = new Uint32Array(block.buffer, block.byteOffset, words);
    const m32 = new Uint32Array(material.buffer, material.byteOffset, words * count);
    for (let i = 0, o = 0; i < count; i++, o += words) {
      for (let j = 0; j < words; j++) b32[j]! ^= m32[o + j]!;
      diffuse(block);
    }
  } else {
    for (let i = 0; i < count; i++) {
      xorInto(block, block, material.subarray(i * n, (i + 1) * n));
      diffuse(block);
    }
  }
}

/** Split `key` into `stripes` blocks of key.length bytes each. */
export function afSplit(key: Uint8Array, stripes: number, hash: string): Buffer {
  const n = key.length;
  const out = Buffer.allocUnsafeSlow(n * stripes);
  const block = Buffer.alloc(n);
  randomFillSync(out, 0, n * (stripes - 1));
  stripeLoop(hash, n).run(block, out, stripes - 1);
  xorInto(out.subarray((stripes - 1) * n), block, key);
  wipe(block);
  return out;
}

/** Merge split material back into the key (keyLen bytes). */
export function afMerge(material: Uint8Array, keyLen: number, stripes: number, hash: string): Buffer {
  if (material.length < keyLen * stripes) throw new RangeError("AF material too short");
  const block = Buffer.alloc(keyLen);
  const loop = stripeLoop(hash, keyLen);
  // in TypeScript, whole words: over an aligned copy of the material, so diffuseStripes can go a word at a time
  const mat = !loop.native && keyLen % 4 === 0 ? Buffer.allocUnsafeSlow(keyLen * (stripes - 1)) : null;
  try {
    mat?.set(material.subarray(0, keyLen * (stripes - 1)));
    loop.run(block, mat ?? material, stripes - 1);
  } finally {
    if (mat) wipe(mat);
  }
  const key = Buffer.allocUnsafeSlow(keyLen);
  xorInto(key, block, material.subarray((stripes - 1) * keyLen, stripes * keyLen));
  wipe(block);
  return key;
}

/** Bytes of AF material for a key, rounded up to whole 512-byte sectors (cryptsetup AF_split_sectors). */
export function afSectorsBytes(keyLen: number, stripes: number): number {
  return Math.ceil((keyLen * stripes) / 512) * 512;
}
