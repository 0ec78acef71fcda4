// Keyslot KDFs (LUKS2 spec §3.2.2): PBKDF2 via OpenSSL, Argon2i/Argon2id via the `argon2` addon (raw output).
import { pbkdf2Sync, pbkdf2, createHash } from "node:crypto";
import { totalmem, availableParallelism } from "node:os";
import { promisify } from "node:util";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import type { Kdf } from "./metadata.js";

const pbkdf2Async = promisify(pbkdf2);

type Argon2Mod = typeof import("argon2");
let argon2Mod: Argon2Mod | null = null;
async function argon2(): Promise<Argon2Mod> {
  if (!argon2Mod) {
    try {
      argon2Mod = (await import("argon2")) as Argon2Mod;
      if ((argon2Mod as unknown as { default?: Argon2Mod }).default?.hash) argon2Mod = (argon2Mod as unknown as { default: Argon2Mod }).default;
    } catch (e) {
      // A bundle ships without its native modules: say which one is missing, not just that something failed.
      const missing = ["ERR_MODULE_NOT_FOUND", "MODULE_NOT_FOUND"].includes((e as NodeJS.ErrnoException)?.code ?? "");
      throw new TrustvolError(
        "EUNSUPPORTED",
        missing ? "Argon2 needs the argon2 native module, which is not installed" : "Argon2 is not available (the argon2 module failed to load)",
        missing ? "install argon2 next to trustvol (npm install argon2), or use --pbkdf pbkdf2" : "reinstall trustvol, or use --pbkdf pbkdf2",
        { cause: e },
      );
    }
  }
  return argon2Mod;
}

const OPENSSL_HASH: Record<string, string> = { sha1: "sha1", sha224: "sha224", sha256: "sha256", sha384: "sha384", sha512: "sha512", ripemd160: "ripemd160", whirlpool: "whirlpool", "sha3-256": "sha3-256", "sha3-512": "sha3-512", blake2b512: "blake2b512" };
/** OpenSSL's name for a LUKS hash spec; EUNSUPPORTED (exit 6) when unknown or not loadable in this process. */
export function opensslHash(h: string): string {
  const n = OPENSSL_HASH[String(h).toLowerCase()];
  if (!n) throw new TrustvolError("EUNSUPPORTED", `hash "${String(h).slice(0, 32)}" is not supported`);
  if (!hashAvailable(n))
    // whirlpool and ripemd160 live in OpenSSL 3's legacy provider, which Node loads only when started with the flag.
    throw new TrustvolError("EUNSUPPORTED", `hash "${n}" is not available in this Node.js (OpenSSL legacy provider not loaded)`, "run trustvol with NODE_OPTIONS=--openssl-legacy-provider");
  return n;
}
const available = new Map<string, boolean>();
function hashAvailable(n: string): boolean {
  let ok = available.get(n);
  if (ok === undefined) {
    try {
      createHash(n).digest();
      ok = true;
    } catch {
      ok = false;
    }
    available.set(n, ok);
  }
  return ok;
}

// Beyond these a header asks for hours of CPU or gigabytes of RAM in the boot path: refuse the keyslot instead.
export const PBKDF2_MAX_ITERATIONS = 0x7fffffff; // OpenSSL's PKCS5_PBKDF2_HMAC takes an int
export const ARGON2_MAX_MEMORY_KIB = 4 * 1024 * 1024; // cryptsetup MAX_PBKDF_MEMORY
export const ARGON2_MAX_THREADS = 16; // cryptsetup MAX_PBKDF_THREADS
export const ARGON2_MAX_TIME = 1 << 20;

/** Refuse KDF parameters this process cannot (or must not) run; the header stays readable, only the keyslot is refused. */
export function checkKdfRunnable(kdf: Kdf): void {
  const no = (what: string) => new TrustvolError("EUNSUPPORTED", `keyslot KDF ${what}`, "this keyslot cannot be used; unlock with another keyslot or a token");
  if (kdf.type === "pbkdf2") {
    opensslHash(kdf.hash);
    if (!(kdf.iterations >= 1 && kdf.iterations <= PBKDF2_MAX_ITERATIONS)) throw no(`pbkdf2 iterations ${kdf.iterations} out of range (1..${PBKDF2_MAX_ITERATIONS})`);
  } else if (kdf.type === "argon2i" || kdf.type === "argon2id") {
    if (!(kdf.time >= 1 && kdf.time <= ARGON2_MAX_TIME)) throw no(`argon2 time ${kdf.time} out of range (1..${ARGON2_MAX_TIME})`);
    if (!(kdf.cpus >= 1 && kdf.cpus <= ARGON2_MAX_THREADS)) throw no(`argon2 cpus ${kdf.cpus} out of range (1..${ARGON2_MAX_THREADS})`);
    if (!(kdf.memory >= 8 * kdf.cpus && kdf.memory <= ARGON2_MAX_MEMORY_KIB)) throw no(`argon2 memory ${kdf.memory} KiB out of range (${8 * kdf.cpus}..${ARGON2_MAX_MEMORY_KIB})`);
  } else throw no(`"${String((kdf as { type: unknown }).type).slice(0, 32)}" is not supported`);
}

/** Derive keyLen bytes from a passphrase with the keyslot's KDF. The result must be wiped by the caller. */
export async function deriveKey(kdf: Kdf, passphrase: Uint8Array, keyLen: number): Promise<Buffer> {
  checkKdfRunnable(kdf);
  const salt = Buffer.from(kdf.salt, "base64");
  if (kdf.type === "pbkdf2") return pbkdf2Async(passphrase, salt, kdf.iterations, keyLen, opensslHash(kdf.hash));
  const a = await argon2();
  if (passphrase.length === 0) throw new TrustvolError("EUSAGE", "an empty passphrase cannot be used with Argon2 keyslots");
  const pw = Buffer.from(passphrase); // the addon wants a Buffer; this copy is ours to wipe
  try {
    const out = await a.hash(pw, {
      raw: true,
      salt,
      type: kdf.type === "argon2i" ? a.argon2i : a.argon2id,
      memoryCost: kdf.memory,
      timeCost: kdf.time,
      parallelism: kdf.cpus,
      hashLength: keyLen,
    });
    return out as Buffer;
  } catch (e) {
    // The addon refuses some parameters (salt length, lanes) with a plain Error: one clean line instead of a crash.
    throw new TrustvolError("EUNSUPPORTED", `argon2 refused this keyslot's parameters (${String((e as Error).message ?? e).split("\n")[0]!.slice(0, 80)})`, "this keyslot cannot be used; unlock with another keyslot or a token");
  } finally {
    wipe(pw);
  }
}

export interface PbkdfOptions {
  type?: "pbkdf2" | "argon2i" | "argon2id";
  hash?: string; // pbkdf2 hash
  iterTimeMs?: number; // benchmark target (cryptsetup --iter-time, default 2000)
  forceIterations?: number; // pbkdf2 iterations or argon2 time cost (cryptsetup --pbkdf-force-iterations)
  memoryKiB?: number; // argon2 memory (cryptsetup --pbkdf-memory)
  parallel?: number; // argon2 lanes (cryptsetup --pbkdf-parallel)
  /** Size argon2 memory for the device that will unlock this volume, not the build host (MiB of RAM). */
  targetRamMiB?: number;
}

const ARGON2_DEFAULT_MAX_MEMORY_KIB = 1024 * 1024; // cryptsetup default max: 1 GiB
const ARGON2_MIN_MEMORY_KIB = 32; // cryptsetup minimum
const PBKDF2_MIN_ITERATIONS = 1000;

/** Argon2 memory like cryptsetup: at most 1 GiB and at most half of the (target) machine's RAM. */
export function argon2MemoryFor(opts: PbkdfOptions): number {
  if (opts.memoryKiB) return opts.memoryKiB;
  const ramKiB = opts.targetRamMiB ? opts.targetRamMiB * 1024 : Math.floor(totalmem() / 1024);
  return Math.max(ARGON2_MIN_MEMORY_KIB, Math.min(ARGON2_DEFAULT_MAX_MEMORY_KIB, Math.floor(ramKiB / 2)));
}

/** Choose KDF parameters (benchmarking on this host unless forced) and produce the JSON kdf object with a fresh salt. */
export async function chooseKdf(opts: PbkdfOptions, salt: Buffer, keyLen: number): Promise<Kdf> {
  const type = opts.type ?? "argon2id";
  const iterTime = opts.iterTimeMs ?? 2000;
  if (type === "pbkdf2") {
    const hash = opts.hash ?? "sha256";
    let iterations = opts.forceIterations;
    if (!iterations) {
      const probe = 100_000;
      const t0 = process.hrtime.bigint();
      pbkdf2Sync("benchmark", salt, probe, keyLen, opensslHash(hash));
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      iterations = Math.max(PBKDF2_MIN_ITERATIONS, Math.floor((probe * iterTime) / Math.max(ms, 0.001)));
    }
    return { type: "pbkdf2", hash, iterations, salt: salt.toString("base64") };
  }
  const memory = argon2MemoryFor(opts);
  const cpus = opts.parallel ?? Math.min(4, availableParallelism());
  let time = opts.forceIterations;
  if (!time) {
    // One probe at t=1 with the chosen memory, then scale linearly (cryptsetup's benchmark does the same in steps).
    const a = await argon2();
    const t0 = process.hrtime.bigint();
    await a.hash(Buffer.from("benchmark"), { raw: true, salt, type: a.argon2id, memoryCost: memory, timeCost: 1, parallelism: cpus, hashLength: keyLen });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    time = Math.max(4, Math.floor(iterTime / Math.max(ms, 0.001)));
  }
  return { type, time, memory, cpus, salt: salt.toString("base64") };
}
