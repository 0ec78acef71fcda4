// The dm-crypt sector engine: encrypts/decrypts runs of sectors in place exactly like the kernel's dm-crypt target
// (and so like cryptsetup 2.6.1's userspace reencryption and LUKS2 keyslot area handling).
//
// IV sector number (dm-crypt.rst): sector·(sectorSize/512) + ivOffset, or sector + ivOffset with iv_large_sectors;
// ivOffset is in IV units (512-byte units unless ivLargeSectors). A dm table's <iv_offset> is always in 512-byte
// sectors; with iv_large_sectors pass table_iv_offset / (sectorSize/512) here (the kernel requires it aligned).
import { createHash } from "node:crypto";
import { availableParallelism } from "node:os";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { parseCipherSpec, validKeySizes, type CipherSpec } from "./cipher-spec.js";
import { JsSectorEngine } from "./js-backend.js";
import { loadNative, NativeIv, type NativeAddon, type NativeHandle } from "./native.js";
import { U64 } from "./iv.js";

export interface SectorCipherOptions {
  /** dm-crypt cipher specification, e.g. "aes-xts-plain64", "aes-cbc-essiv:sha256". */
  cipher: string;
  key: Uint8Array;
  /** 512..4096, a power of two. */
  sectorSize: number;
  ivLargeSectors?: boolean;
  /** In IV units (512-byte units unless ivLargeSectors). */
  ivOffset?: bigint | number;
  backend?: "auto" | "native" | "js";
}

export interface SectorCipher {
  readonly sectorSize: number;
  readonly backend: "native" | "js";
  /** In place. `sector` = index (in sectorSize units) of data[0] relative to the segment start; data.length a multiple of sectorSize. */
  encrypt(data: Uint8Array, sector: number | bigint): void;
  decrypt(data: Uint8Array, sector: number | bigint): void;
  /**
   * Like encrypt/decrypt, spread over up to `threads` cores (default: the cores libuv's thread pool can use) on the
   * native engine, with the event loop free meanwhile; the fallback engine runs synchronously. `data` must not
   * be read or written until the promise settles. Optional only for implementations outside this module.
   */
  encryptAsync?(data: Uint8Array, sector: number | bigint, threads?: number): Promise<void>;
  decryptAsync?(data: Uint8Array, sector: number | bigint, threads?: number): Promise<void>;
  /**
   * Wipes the key copies / key schedules; the object is unusable afterwards. (The context copies of encryptAsync jobs
   * still running are freed, and cleansed by OpenSSL, when those jobs end.)
   */
  dispose(): void;
}

/** The native handle and IV numbering behind a cipher made here on the native engine (for the fused file paths). */
const NATIVE = new WeakMap<SectorCipher, { addon: NativeAddon; handle(): NativeHandle | null; iv(sector: number | bigint): bigint }>();

/** The native side of a fused copy with these ciphers, or null: a cipher on the fallback engine, or no fused copy. */
function recryptCopyNative(from: SectorCipher | null, to: SectorCipher | null) {
  const f = from ? NATIVE.get(from) : null;
  const t = to ? NATIVE.get(to) : null;
  if ((from && !f) || (to && !t)) return null;
  const a = f?.addon ?? t?.addon ?? loadNative();
  return a?.recryptCopyAsync ? { f, t, a } : null;
}

/** Whether nativeRecryptCopy can run for these ciphers (native contexts, the addon's fused copy). */
export function canRecryptCopy(from: SectorCipher | null, to: SectorCipher | null): boolean {
  return recryptCopyNative(from, to) !== null;
}

/**
 * Re-encryption's fused data path: read [src, src+len) of the open file `fd`, decrypt it with `from`, encrypt it with
 * `to` (either or both may be null: a plain copy) and write it at dst, on the native addon's thread pool in L2-sized slices split over up
 * to `parts` cores. `at` is the data-area byte offset of the first byte (each cipher's sector = at / its sector size).
 * Source and destination must not overlap; nothing is synced. Null when it cannot run natively (a cipher on the
 * fallback engine, or an addon without it): the caller reads, re-encrypts and writes itself.
 */
export function nativeRecryptCopy(fd: number, src: number, dst: number, len: number, at: number, from: SectorCipher | null, to: SectorCipher | null, parts: number): Promise<void> | null {
  const n = recryptCopyNative(from, to);
  if (!n) return null;
  const { f, t, a } = n;
  const fh = f?.handle() ?? null;
  const th = t?.handle() ?? null;
  if ((f && !fh) || (t && !th)) throw internal("sector cipher used after dispose()");
  if (len % (from?.sectorSize ?? 1) || len % (to?.sectorSize ?? 1)) throw internal(`length ${len} is not whole sectors`);
  return a.recryptCopyAsync!(fd, src, dst, len, fh, f ? f.iv(at / from!.sectorSize) : 0n, th, t ? t.iv(at / to!.sectorSize) : 0n, Math.max(1, Math.floor(parts)));
}

/** True when the native addon is built and loadable (and not disabled by TRUSTVOL_NO_NATIVE=1). */
export function nativeAvailable(): boolean {
  return loadNative() !== null;
}

function internal(msg: string): TrustvolError {
  return new TrustvolError("EINTERNAL", msg, "this is a bug in the caller of the sector engine");
}

function toU64(v: bigint | number, what: string): bigint {
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v) || v < 0) throw internal(`${what} must be a non-negative safe integer, got ${v}`);
    return BigInt(v);
  }
  if (typeof v !== "bigint" || v < 0n || v > U64) throw internal(`${what} must be a 64-bit unsigned integer, got ${String(v)}`);
  return v;
}

function evpName(spec: CipherSpec, keyLen: number): string {
  const bits = (spec.chainMode === "xts" ? keyLen / 2 : keyLen) * 8;
  return `AES-${bits}-${spec.chainMode.toUpperCase()}`;
}

function nativeIvCode(spec: CipherSpec): number {
  if (spec.chainMode === "ecb") return NativeIv.none;
  switch (spec.ivMode) {
    case "plain64":
      return NativeIv.plain64;
    case "plain":
      return NativeIv.plain;
    case "plain64be":
      return NativeIv.plain64be;
    case "essiv:sha256":
      return NativeIv.essiv;
    case "null":
      return NativeIv.null;
  }
}

/** Runs below this size are not worth splitting across threads. */
const MIN_PART_BYTES = 256 * 1024;

function defaultParts(): number {
  const uv = Number(process.env.UV_THREADPOOL_SIZE);
  return Math.max(1, Math.min(availableParallelism(), Number.isInteger(uv) && uv > 0 ? uv : 4));
}

export function createSectorCipher(opts: SectorCipherOptions): SectorCipher {
  const spec = parseCipherSpec(opts.cipher);
  const { key, sectorSize } = opts;
  if (!(key instanceof Uint8Array)) throw internal("key must be a Uint8Array");
  if (!Number.isInteger(sectorSize) || sectorSize < 512 || sectorSize > 4096 || (sectorSize & (sectorSize - 1)) !== 0) {
    throw new TrustvolError("EUNSUPPORTED", `sector size ${sectorSize} is not supported`, "use 512, 1024, 2048 or 4096");
  }
  const sizes = validKeySizes(spec.chainMode);
  if (!sizes.includes(key.length)) {
    throw new TrustvolError(
      "EUNSUPPORTED",
      `a ${key.length * 8}-bit key does not fit ${opts.cipher}`,
      `use a key of ${sizes.map((s) => s * 8).join(" or ")} bits`,
    );
  }
  if (spec.chainMode === "xts") {
    const h = key.length / 2;
    let diff = 0;
    for (let i = 0; i < h; i++) diff |= key[i] ^ key[h + i];
    if (diff === 0) {
      throw new TrustvolError(
        "EUNSUPPORTED",
        `the XTS key's two halves are identical (OpenSSL refuses such ${opts.cipher} keys)`,
        "generate a new random volume key",
      );
    }
  }
  const ivStep = opts.ivLargeSectors ? 1 : sectorSize / 512;
  const ivOffset = toU64(opts.ivOffset ?? 0n, "ivOffset");
  const stepBig = BigInt(ivStep);

  const want = opts.backend ?? "auto";
  let addon: NativeAddon | null = null;
  if (want !== "js") {
    addon = loadNative();
    if (!addon && want === "native") {
      throw new TrustvolError(
        "EUNSUPPORTED",
        "the native sector engine is not available",
        process.env.TRUSTVOL_NO_NATIVE === "1" ? "unset TRUSTVOL_NO_NATIVE" : "build it with `npm run build:native`",
      );
    }
  }

  // The ESSIV salt is sha256 of the whole volume key (both XTS halves), used as an AES-256 key.
  const essivKey = spec.ivMode === "essiv:sha256" && spec.chainMode !== "ecb" ? createHash("sha256").update(key).digest() : null;

  const ivFor = (sector: number | bigint): bigint => (toU64(sector, "sector") * stepBig + ivOffset) & U64;
  const check = (data: Uint8Array): void => {
    if (!(data instanceof Uint8Array)) throw internal("data must be a Uint8Array");
    if (data.length % sectorSize !== 0) throw internal(`data length ${data.length} is not a multiple of the ${sectorSize}-byte sector size`);
  };

  try {
    if (addon) {
      const a = addon;
      let h: NativeHandle | null = a.create(evpName(spec, key.length), key, essivKey, nativeIvCode(spec), ivStep, sectorSize);
      const run = (data: Uint8Array, sector: number | bigint, enc: boolean): void => {
        check(data);
        if (!h) throw internal("sector cipher used after dispose()");
        if (data.length) a.crypt(h, data, enc, ivFor(sector));
      };
      const runAsync = async (data: Uint8Array, sector: number | bigint, enc: boolean, threads?: number): Promise<void> => {
        check(data);
        if (!h) throw internal("sector cipher used after dispose()");
        if (!data.length) return;
        const parts = Math.max(1, Math.min(Math.floor(threads ?? defaultParts()), Math.floor(data.length / MIN_PART_BYTES)));
        if (!a.cryptAsync) return run(data, sector, enc);
        await a.cryptAsync(h, data, enc, ivFor(sector), parts);
      };
      const cipher: SectorCipher = {
        sectorSize,
        backend: "native",
        encrypt: (d, s) => run(d, s, true),
        decrypt: (d, s) => run(d, s, false),
        encryptAsync: (d, s, t) => runAsync(d, s, true, t),
        decryptAsync: (d, s, t) => runAsync(d, s, false, t),
        dispose() {
          if (h) a.destroy(h);
          h = null;
        },
      };
      NATIVE.set(cipher, { addon: a, handle: () => h, iv: ivFor });
      return cipher;
    }
    let eng: JsSectorEngine | null = new JsSectorEngine(spec, key, sectorSize, ivStep, essivKey);
    const run = (data: Uint8Array, sector: number | bigint, enc: boolean): void => {
      check(data);
      if (!eng) throw internal("sector cipher used after dispose()");
      if (data.length) eng.crypt(data, ivFor(sector), enc);
    };
    return {
      sectorSize,
      backend: "js",
      encrypt: (d, s) => run(d, s, true),
      decrypt: (d, s) => run(d, s, false),
      encryptAsync: async (d, s) => run(d, s, true),
      decryptAsync: async (d, s) => run(d, s, false),
      dispose() {
        eng?.dispose();
        eng = null;
      },
    };
  } catch (e) {
    if (e instanceof TrustvolError) throw e;
    throw new TrustvolError("EUNSUPPORTED", `cannot set up ${opts.cipher}: ${(e as Error).message}`, undefined, { cause: e });
  } finally {
    wipe(essivKey);
  }
}
