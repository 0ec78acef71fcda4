// Loader for the optional N-API addon (native/, built by scripts/build-native.mjs). Missing or broken addon ⇒ null,
// silently: the fallback engine (js-backend.ts) takes over. TRUSTVOL_NO_NATIVE=1 forces the fallback engine.
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** IV generator codes shared with native/src/trustvol_native.c */
export const NativeIv = { none: 0, plain64: 1, plain: 2, plain64be: 3, essiv: 4, null: 5 } as const;

/**
 * create() flags shared with native/src/trustvol_native.c: force one XTS implementation (tests, benchmarks). Without
 * them XTS runs on VAES (AVX-512) where the CPU has it, else as tweak-masked ECB (≤ 1 KiB sectors) or EVP per sector.
 */
export const NativeFlags = { xtsEvp: 1, xtsEcb: 2 } as const;

export type NativeHandle = object & { readonly __trustvolCipher: unique symbol };
export type NativeHasher = object & { readonly __trustvolHasher: unique symbol };

export interface NativeAddon {
  create(evpName: string, key: Uint8Array, essivKey: Uint8Array | null, ivMode: number, ivStep: number, sectorSize: number, flags?: number): NativeHandle;
  crypt(h: NativeHandle, data: Uint8Array, encrypt: boolean, ivSector: bigint): void;
  /** The same split into up to `parts` runs on libuv's thread pool (own context copies per run); absent in old builds. */
  cryptAsync?(h: NativeHandle, data: Uint8Array, encrypt: boolean, ivSector: bigint, parts: number): Promise<void>;
  /**
   * Read len bytes at src of fd, decrypt (old) then encrypt (new), write them at dst: thread pool, 256 KiB slices, up
   * to `parts` runs; IVs are each cipher's IV sector number of the first byte. Absent in old builds.
   */
  recryptCopyAsync?(fd: number, src: number, dst: number, len: number, old: NativeHandle | null, oldIv: bigint, nu: NativeHandle | null, newIv: bigint, parts: number): Promise<void>;
  /** Test hook: the n-th slice write of recryptCopyAsync from now is torn and it and all later ones fail; n < 0: off. */
  recryptCopyCutAfter?(n: number): void;
  destroy(h: NativeHandle): void;
  /** Which sector loop crypt() runs for this handle; absent in old builds. */
  cipherEngine?(h: NativeHandle): "xts-vaes" | "xts-ecb" | "evp";
  opensslVersion(): string;
  /** dm-verity block hashing (src/verity/pool.ts); absent in addons built before it existed. */
  /** flags 1: EVP per block even where a SHA-256 engine of the addon could run; 2: not AVX-512; 4: not SHA-NI (tests, bench). */
  hasherCreate?(algorithm: string, salt: Uint8Array, hashType: number, flags?: number): NativeHasher;
  /**
   * "avx512-x16": SHA-256 on AVX-512, sixteen blocks at once; "sha-ni-x2": on the CPU's SHA extensions, two blocks
   * interleaved; "evp": OpenSSL per block.
   */
  hasherEngine?(h: NativeHasher): "avx512-x16" | "sha-ni-x2" | "evp";
  hashBlocks?(h: NativeHasher, inp: Uint8Array, count: number, blockSize: number, out: Uint8Array): void;
  /** The AF splitter's stripe loop (src/luks2/af.ts): block ^= stripe i, then chunk j = H(be32(j) ‖ chunk j), count times. */
  afStripes?(hashers: NativeHasher[], block: Uint8Array, material: Uint8Array, count: number): void;
  hasherDigestSize?(h: NativeHasher): number;
  /** dm-verity FEC: one Reed-Solomon round over whole block columns (src/verity/fec.ts). */
  rsParity?(mul: Uint8Array, roots: number, inp: Uint8Array, rsn: number, blockSize: number, out: Uint8Array): void;
  /** The same round on a libuv thread-pool thread (several rounds on several cores); buffers untouched until it settles. */
  rsParityAsync?(mul: Uint8Array, roots: number, inp: Uint8Array, rsn: number, blockSize: number, out: Uint8Array): Promise<void>;
  /**
   * On a libuv thread-pool thread: dst[i] = XOR over k of src[k·chunk + i] for i in [from, to) (the last chunk
   * zero-padded), re-encryption's parity; disjoint ranges on several cores; buffers untouched until it settles. With a
   * hasher, also sums[b] = H(block b of src) for every block folded, in the same pass (whole blocks only).
   */
  xorFoldAsync?(src: Uint8Array, chunk: number, dst: Uint8Array, from: number, to: number, hasher?: NativeHasher, blockSize?: number, sums?: Uint8Array): Promise<void>;
  /** On a libuv thread-pool thread; fd >= 0: pread count·blockSize bytes at pos into inp first. */
  hashBlocksAsync?(h: NativeHasher, fd: number, pos: number, inp: Uint8Array, count: number, blockSize: number, out: Uint8Array): Promise<void>;
  /** Zeroed memory at a multiple of `align` for O_DIRECT I/O (src/blockdev/aligned.ts); cleansed and freed when collected. */
  alignedAlloc?(size: number, align: number): ArrayBuffer;
}

/** Absolute path of the built addon, or null (for worker threads that load it themselves). */
export function nativeAddonPath(): string | null {
  if (process.env.TRUSTVOL_NO_NATIVE === "1") return null;
  return loadNative() ? addonPath() : null;
}

const ADDON = join("native", "build", "Release", "trustvol_native.node");
let cached: NativeAddon | null | undefined;

/** Walk up from this module (src/dmcrypt/ under tsx, dist/src/dmcrypt/ when compiled) to the package root. */
function addonPath(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const p = join(dir, ADDON);
    if (existsSync(p)) return p;
    dir = dirname(dir);
  }
  return null;
}

export function loadNative(): NativeAddon | null {
  if (process.env.TRUSTVOL_NO_NATIVE === "1") return null;
  if (cached !== undefined) return cached;
  cached = null;
  try {
    const p = addonPath();
    if (p) {
      const m = createRequire(import.meta.url)(p) as Partial<NativeAddon>;
      if (typeof m.create === "function" && typeof m.crypt === "function" && typeof m.destroy === "function") cached = m as NativeAddon;
    }
  } catch {
    cached = null; // wrong ABI, missing symbols, …: fall back to the TypeScript engine
  }
  return cached;
}
