// The fallback sector engine over node:crypto (TypeScript, plus one WebAssembly SIMD kernel for XTS), used when the
// native addon is missing.
//
// XTS ("batched ECB"): for a batch of sectors, one AES-ECB call with the tweak key turns all IV blocks into the
// sectors' initial tweaks; the per-block tweaks T_j = T_0·α^j (GF(2^128), little-endian, reduction 0x87) are
// computed inside the XOR passes; C = E_K1(P ⊕ T) ⊕ T is one XOR pass, one ECB call with the data key over the whole
// batch and another XOR pass. The XOR passes run in a WebAssembly SIMD kernel (xts-wasm.ts) where the runtime has
// one, else on 32-bit words in TypeScript (xorTweaks below); TRUSTVOL_JS_XTS=js|wasm forces either. CBC decryption
// is batched the same way (ECB-decrypt everything, XOR with the previous ciphertext block or the sector IV); CBC
// encryption is serial per sector, so it uses one createCipheriv per sector. Sector sizes are multiples of 16, so XTS never needs ciphertext stealing.
import { createCipheriv, createDecipheriv, createSecretKey, type Cipheriv, type Decipheriv, type KeyObject } from "node:crypto";
import { endianness } from "node:os";
import type { CipherSpec } from "./cipher-spec.js";
import { fillIvBlocks } from "./iv.js";
import { wipe } from "../util/secret.js";
import { TrustvolError } from "../util/errors.js";
import { createXtsWasmKernel, type XtsWasmKernel } from "./xts-wasm.js";

const LE = endianness() === "LE";
/** Bytes per batch: large enough to amortise the node:crypto calls (each allocates its output), small enough to stay
 * in L2 (the batch, node's ECB output). 64 KiB measured best here, 32 KiB ~5 % slower, 128 KiB no better; with the
 * wasm kernel too (best of 60 runs: 16 and 32 KiB ~10-20 % slower, 128 KiB no better). */
const BATCH_BYTES = 64 * 1024;
/** The wasm kernel's memory: the batch at 0, the sectors' initial tweaks after it (16 bytes per 512-byte sector). */
const WASM_T0S = BATCH_BYTES;
const WASM_PAGES = Math.ceil((BATCH_BYTES + (BATCH_BYTES / 512) * 16) / 65536);

export type XtsKernelChoice = "auto" | "js" | "wasm";

/** TRUSTVOL_JS_XTS: which XOR kernel the fallback engine's XTS uses (unset or "auto": wasm where available). */
export function xtsKernelFromEnv(): XtsKernelChoice {
  const v = process.env.TRUSTVOL_JS_XTS ?? "";
  if (v === "" || v === "auto" || v === "js" || v === "wasm") return v === "" ? "auto" : v;
  throw new TrustvolError("EUSAGE", `TRUSTVOL_JS_XTS=${v} is not a known XTS kernel`, "use js, wasm or auto (or unset it)");
}

type Ecb = Cipheriv | Decipheriv;

const transfer = (ArrayBuffer.prototype as { transfer?: (length?: number) => ArrayBuffer }).transfer;

/**
 * Frees a node:crypto output buffer now instead of at a later GC, through ArrayBuffer.prototype.transfer (Node ≥ 21;
 * a no-op on Node 20). V8 frees external buffers only when it collects them, after tens of MiB of them: each batch's
 * output was then fresh memory, page-faulted in and cold in the cache. Measured with Node 20's
 * --harmony-rab-gsab-transfer, 2 GiB at 4 KiB sectors through the wasm kernel (load average 17-21): 60k-250k page
 * faults and 1.8-2.5 CPU-s without, none beyond start-up (12k) and 1.5-1.6 CPU-s with (start-up alone 0.45 CPU-s).
 * Only for a buffer that owns its whole ArrayBuffer (as update()'s output does); b is empty afterwards.
 */
function release(b: Uint8Array): void {
  if (transfer && b.byteOffset === 0 && b.buffer instanceof ArrayBuffer && b.byteLength === b.buffer.byteLength) transfer.call(b.buffer, 0);
}

function ecb(bits: number, key: Uint8Array, enc: boolean): Ecb {
  const c = enc ? createCipheriv(`aes-${bits}-ecb`, key, null) : createDecipheriv(`aes-${bits}-ecb`, key, null);
  c.setAutoPadding(false);
  return c;
}

/**
 * Int32 view of a Uint8Array (copying only when it is not 4-byte aligned). Int32, not Uint32: V8 keeps int32 values
 * unboxed, while uint32 words ≥ 2^31 would turn the hot loops into float arithmetic.
 */
function i32(b: Uint8Array): Int32Array {
  if ((b.byteOffset & 3) === 0) return new Int32Array(b.buffer, b.byteOffset, b.byteLength >>> 2);
  const c = new Uint8Array(b.byteLength);
  c.set(b);
  return new Int32Array(c.buffer, 0, c.byteLength >>> 2);
}

/**
 * dst = src ⊕ T for n sectors, where sector s's block tweaks are T_0 (from t0s) and T_{j+1} = T_j·α in GF(2^128):
 * the 128-bit little-endian value shifted left by one, the carry folded back as x^7+x^2+x+1 (0x87).
 * Little-endian host words. The tweaks are recomputed by each of the two passes rather than stored: a few shifts
 * per block are cheaper than writing and re-reading a tweak buffer. dst may alias src.
 */
function xorTweaks(src: Int32Array, dst: Int32Array, t0s: Int32Array, n: number, wordsPerSector: number): void {
  let w = 0;
  for (let s = 0; s < n; s++) {
    let a = t0s[s * 4] | 0,
      b = t0s[s * 4 + 1] | 0,
      c = t0s[s * 4 + 2] | 0,
      e = t0s[s * 4 + 3] | 0;
    const end = w + wordsPerSector;
    // Two blocks per iteration (sectors are at least 512 bytes): half the loop overhead, measured ~10 % faster.
    for (; w < end; w += 8) {
      dst[w] = src[w] ^ a;
      dst[w + 1] = src[w + 1] ^ b;
      dst[w + 2] = src[w + 2] ^ c;
      dst[w + 3] = src[w + 3] ^ e;
      let carry = (e >> 31) & 0x87;
      e = (e << 1) | (c >>> 31);
      c = (c << 1) | (b >>> 31);
      b = (b << 1) | (a >>> 31);
      a = (a << 1) ^ carry;
      dst[w + 4] = src[w + 4] ^ a;
      dst[w + 5] = src[w + 5] ^ b;
      dst[w + 6] = src[w + 6] ^ c;
      dst[w + 7] = src[w + 7] ^ e;
      carry = (e >> 31) & 0x87;
      e = (e << 1) | (c >>> 31);
      c = (c << 1) | (b >>> 31);
      b = (b << 1) | (a >>> 31);
      a = (a << 1) ^ carry;
    }
  }
}

export class JsSectorEngine {
  private readonly spec: CipherSpec;
  private readonly sectorSize: number;
  private readonly ivStep: number;
  private readonly bits: number;
  private dataEnc: Ecb | null;
  private dataDec: Ecb | null;
  private tweakEnc: Ecb | null = null;
  private essiv: Ecb | null = null;
  /** For per-sector createCipheriv paths (CBC encryption; XTS on big-endian hosts without WebAssembly). */
  private keyObj: KeyObject | null;
  private readonly ivBuf: Buffer;
  /** XTS's XOR passes in WebAssembly, or null for the TypeScript loops. */
  private wasm: XtsWasmKernel | null = null;
  /** Which kernel XTS uses ("js" too for other chain modes). */
  readonly xtsKernel: "js" | "wasm";

  constructor(
    spec: CipherSpec,
    key: Uint8Array,
    sectorSize: number,
    ivStep: number,
    essivKey: Uint8Array | null,
    xts: XtsKernelChoice = xtsKernelFromEnv(),
  ) {
    this.spec = spec;
    this.sectorSize = sectorSize;
    this.ivStep = ivStep;
    const batch = Math.max(sectorSize, BATCH_BYTES - (BATCH_BYTES % sectorSize));
    this.ivBuf = Buffer.alloc((batch / sectorSize) * 16);
    this.keyObj = createSecretKey(key);
    if (spec.chainMode === "xts") {
      const half = key.length / 2;
      this.bits = half * 8;
      this.dataEnc = ecb(this.bits, key.subarray(0, half), true);
      this.dataDec = ecb(this.bits, key.subarray(0, half), false);
      this.tweakEnc = ecb(this.bits, key.subarray(half), true);
    } else {
      this.bits = key.length * 8;
      this.dataEnc = ecb(this.bits, key, true);
      this.dataDec = ecb(this.bits, key, false);
    }
    if (essivKey) this.essiv = ecb(256, essivKey, true);
    if (spec.chainMode === "xts" && xts !== "js") {
      this.wasm = createXtsWasmKernel(WASM_PAGES);
      if (!this.wasm && xts === "wasm") {
        throw new TrustvolError("EUNSUPPORTED", "TRUSTVOL_JS_XTS=wasm: this runtime has no WebAssembly SIMD", "unset TRUSTVOL_JS_XTS");
      }
    }
    this.xtsKernel = this.wasm ? "wasm" : "js";
  }

  private get batchSectors(): number {
    return this.ivBuf.length / 16;
  }

  crypt(data: Uint8Array, ivFirst: bigint, encrypt: boolean): void {
    if (!this.dataEnc || !this.dataDec) throw new Error("sector cipher used after dispose()");
    const ss = this.sectorSize;
    const per = this.batchSectors;
    let iv = ivFirst;
    const stepBig = BigInt(this.ivStep) * BigInt(per);
    for (let off = 0; off < data.length; off += per * ss) {
      const n = Math.min(per, (data.length - off) / ss);
      const chunk = data.subarray(off, off + n * ss);
      switch (this.spec.chainMode) {
        case "ecb": {
          const out = (encrypt ? this.dataEnc : this.dataDec).update(chunk);
          chunk.set(out);
          release(out);
          break;
        }
        case "xts":
          if (this.wasm) this.xtsBatchWasm(chunk, iv, n, encrypt);
          else if (LE) this.xtsBatch(chunk, iv, n, encrypt);
          else this.perSector(chunk, iv, n, encrypt);
          break;
        case "cbc":
          if (encrypt) this.perSector(chunk, iv, n, true);
          else this.cbcDecryptBatch(chunk, iv, n);
          break;
      }
      iv = (iv + stepBig) & 0xffffffffffffffffn;
    }
  }

  /** IV blocks (after ESSIV) for n sectors; a view into ivBuf. */
  private ivs(first: bigint, n: number): Uint8Array {
    const b = this.ivBuf.subarray(0, n * 16);
    fillIvBlocks(b, this.spec.ivMode, first, this.ivStep, n);
    if (this.essiv) {
      const e = this.essiv.update(b);
      b.set(e);
      wipe(e);
      release(e);
    }
    return b;
  }

  private xtsBatch(chunk: Uint8Array, ivFirst: bigint, n: number, encrypt: boolean): void {
    const tb = this.tweakEnc!.update(this.ivs(ivFirst, n));
    const t0s = i32(tb);
    const wps = this.sectorSize >>> 2;
    // In place: C = E_K1(P ⊕ T) ⊕ T. The working set (the batch and node's ECB output) stays in L2.
    const d = i32(chunk);
    xorTweaks(d, d, t0s, n, wps);
    const pre = d.buffer === chunk.buffer ? chunk : new Uint8Array(d.buffer, d.byteOffset, chunk.length);
    const yb = (encrypt ? this.dataEnc! : this.dataDec!).update(pre);
    xorTweaks(i32(yb), d, t0s, n, wps);
    if (d.buffer !== chunk.buffer) chunk.set(new Uint8Array(d.buffer, d.byteOffset, chunk.length));
    release(yb);
    wipe(tb);
    release(tb);
  }

  /** xtsBatch with the XOR passes in the wasm kernel: the batch is copied into its memory and the result out. */
  private xtsBatchWasm(chunk: Uint8Array, ivFirst: bigint, n: number, encrypt: boolean): void {
    const k = this.wasm!;
    const mem = k.mem;
    const len = chunk.length;
    const t0s = this.tweakEnc!.update(this.ivs(ivFirst, n));
    mem.set(t0s, WASM_T0S);
    wipe(t0s);
    release(t0s);
    mem.set(chunk, 0);
    const blocks = this.sectorSize >>> 4;
    k.xorTweaks(0, WASM_T0S, n, blocks);
    const y = (encrypt ? this.dataEnc! : this.dataDec!).update(mem.subarray(0, len));
    mem.set(y, 0);
    release(y);
    k.xorTweaks(0, WASM_T0S, n, blocks);
    mem.fill(0, WASM_T0S, WASM_T0S + n * 16); // the tweaks now; the batch (the caller's result) in dispose()
    chunk.set(mem.subarray(0, len));
  }

  private cbcDecryptBatch(chunk: Uint8Array, ivFirst: bigint, n: number): void {
    const ivs = i32(this.ivs(ivFirst, n));
    const pb = this.dataDec!.update(chunk);
    const p = i32(pb);
    const d = i32(chunk);
    const aligned = d.buffer === chunk.buffer;
    const wps = this.sectorSize >>> 2;
    // Walk backwards so the previous ciphertext block is still intact when it is needed.
    for (let s = n - 1; s >= 0; s--) {
      const first = s * wps;
      for (let w = first + wps - 4; w > first; w -= 4) {
        d[w] = p[w] ^ d[w - 4];
        d[w + 1] = p[w + 1] ^ d[w - 3];
        d[w + 2] = p[w + 2] ^ d[w - 2];
        d[w + 3] = p[w + 3] ^ d[w - 1];
      }
      d[first] = p[first] ^ ivs[s * 4];
      d[first + 1] = p[first + 1] ^ ivs[s * 4 + 1];
      d[first + 2] = p[first + 2] ^ ivs[s * 4 + 2];
      d[first + 3] = p[first + 3] ^ ivs[s * 4 + 3];
    }
    if (!aligned) chunk.set(new Uint8Array(d.buffer, d.byteOffset, chunk.length));
    release(pb);
  }

  /** One createCipheriv per sector: CBC encryption (inherently serial) and XTS on big-endian hosts. */
  private perSector(chunk: Uint8Array, ivFirst: bigint, n: number, encrypt: boolean): void {
    const ivs = this.ivs(ivFirst, n);
    const ss = this.sectorSize;
    const algo = `aes-${this.bits}-${this.spec.chainMode}`;
    for (let s = 0; s < n; s++) {
      const iv = ivs.subarray(s * 16, s * 16 + 16);
      const c = encrypt ? createCipheriv(algo, this.keyObj!, iv) : createDecipheriv(algo, this.keyObj!, iv);
      c.setAutoPadding(false);
      const sec = chunk.subarray(s * ss, (s + 1) * ss);
      const out = c.update(sec);
      c.final();
      sec.set(out);
    }
  }

  dispose(): void {
    // final() on an ECB context with nothing buffered ends it: node frees the EVP context, which cleanses the schedule.
    for (const c of [this.dataEnc, this.dataDec, this.tweakEnc, this.essiv]) {
      try {
        c?.final();
      } catch {
        /* already finished */
      }
    }
    this.dataEnc = this.dataDec = this.tweakEnc = this.essiv = null;
    this.keyObj = null; // a KeyObject's native copy is freed when collected; node offers no explicit wipe
    wipe(this.ivBuf);
    // The wasm kernel's memory held the sectors' initial tweaks (key-derived) and the last batch: wiped here.
    if (this.wasm) wipe(this.wasm.mem);
    this.wasm = null;
  }
}
