// Kernel trusted keys (Documentation/security/keys/trusted-encrypted.rst): random keys generated and sealed by the
// kernel's trust source (TPM, OP-TEE, CAAM, DCP). User space only ever sees the sealed blob (hex text from
// `keyctl pipe`), stores it, and hands it back with `load` at the next boot. dm-crypt can then use the key by
// reference (`:64:trusted:<desc>`) without the plaintext ever leaving the kernel.
//
// Every source uses the same interface ("new <len> [options]", "load <hex> [options]", chosen at boot by
// trusted.source=tpm|tee|caam|dcp); only the options differ, so one code path validates them per source:
//   tpm (2.0): keyhandle= (required: the kernel has no default parent), keyauth=, blobauth=, hash=, policydigest=,
//              policyhandle=, migratable=.   tpm (1.2): keyhandle=, keyauth=, blobauth=, pcrinfo=, pcrlock=, migratable=.
//   tee, caam, dcp: no options.
// Payloads go to keyctl on stdin (paddKey): keyauth/blobauth are secrets and blobs are sealed material.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { TrustvolError, corrupt, fsErrorCode, fsReason, usage } from "../../util/errors.js";
import { atomicWriteFileSync } from "../../util/atomic.js";
import { wipe } from "../../util/secret.js";
import { paddKey, pipeKey, searchKey, unlinkKey, type KeyRef, type KeyctlOptions } from "./keyring.js";

export type TrustedKeySource = "tpm" | "tee" | "caam" | "dcp";
export const TRUSTED_KEY_SOURCES: readonly TrustedKeySource[] = ["tpm", "tee", "caam", "dcp"]; // the kernel's probe order
export const TRUSTED_KEY_MIN = 32;
export const TRUSTED_KEY_MAX = 128;
/** UUID of the OP-TEE trusted-keys TA: its device appears on the TEE bus when OP-TEE offers the service. */
const OPTEE_TRUSTED_KEYS_TA = "optee-ta-f04a0fe7-1f5d-4b9b-abf7-619b85b4ce8c";

export type TpmHash = "sha1" | "sha256" | "sha384" | "sha512" | "sm3-256";
const HASH_LEN: Record<TpmHash, number> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64, "sm3-256": 32 };

export interface TrustedKeyOptions {
  /** TPM: handle of the sealing (parent) key, e.g. 0x81000001. Required for TPM 2.0. */
  keyhandle?: number;
  /** TPM: authorisation of the parent key (20 bytes). Secret. */
  keyauth?: Uint8Array;
  /** TPM: authorisation of the sealed blob (20 bytes). Secret. */
  blobauth?: Uint8Array;
  /** TPM 2.0: name algorithm of the sealed object (kernel default sha1; sha256 recommended). */
  hash?: TpmHash;
  /** TPM 2.0: policy the sealed object is bound to (e.g. a PolicyPCR digest), same size as `hash`. */
  policydigest?: Uint8Array;
  /** TPM 2.0: a policy session that satisfies policydigest at load time. */
  policyhandle?: number;
  /** TPM 1.2 only: PCR_INFO structure to seal to. */
  pcrinfo?: Uint8Array;
  /** TPM 1.2 only: extend this PCR after sealing/unsealing so the key cannot be unsealed again until reboot. */
  pcrlock?: number;
  /** TPM: whether the key may be resealed (update) later; kernel default true. */
  migratable?: boolean;
}

export interface TrustedSourceInfo {
  source: TrustedKeySource | undefined;
  /** How it was found: the module parameter, the kernel command line, or probing devices in the kernel's order. */
  how: "sysfs" | "cmdline" | "probe" | "none";
  tpmVersion?: 1 | 2;
}

/**
 * The trust source the kernel uses for trusted keys. /sys/module/trusted/parameters/source is read when the kernel
 * exposes it (6.1 registers the parameter with mode 0, so it usually does not); then trusted.source= on the command
 * line; then the devices, in the order the kernel itself tries them (tpm, tee, caam, dcp). `root` is for tests.
 */
export function detectTrustedSource(root = "/"): TrustedSourceInfo {
  const p = (...s: string[]) => join(root, ...s);
  const read = (f: string) => {
    try {
      return readFileSync(f, "utf8").trim();
    } catch {
      return undefined;
    }
  };
  const tpmVersion = (): 1 | 2 | undefined => {
    const v = read(p("sys/class/tpm/tpm0/tpm_version_major"));
    return v === "2" ? 2 : v === "1" ? 1 : existsSync(p("sys/class/tpm/tpm0")) ? 1 : undefined;
  };
  const withTpm = (source: TrustedKeySource, how: TrustedSourceInfo["how"]): TrustedSourceInfo => {
    const v = source === "tpm" ? tpmVersion() : undefined;
    return v ? { source, how, tpmVersion: v } : { source, how };
  };
  const param = read(p("sys/module/trusted/parameters/source"));
  if (param && (TRUSTED_KEY_SOURCES as readonly string[]).includes(param)) return withTpm(param as TrustedKeySource, "sysfs");
  const m = /(?:^|\s)trusted\.source=(\S+)/.exec(read(p("proc/cmdline")) ?? "");
  if (m && (TRUSTED_KEY_SOURCES as readonly string[]).includes(m[1]!)) return withTpm(m[1] as TrustedKeySource, "cmdline");
  const nonEmpty = (d: string) => {
    try {
      return readdirSync(d).some((n) => !["bind", "unbind", "uevent", "module", "new_id", "remove_id"].includes(n));
    } catch {
      return false;
    }
  };
  if (existsSync(p("sys/class/tpm/tpm0"))) return withTpm("tpm", "probe");
  if (existsSync(p("sys/bus/tee/devices", OPTEE_TRUSTED_KEYS_TA))) return { source: "tee", how: "probe" };
  if (nonEmpty(p("sys/bus/platform/drivers/caam_jr"))) return { source: "caam", how: "probe" };
  if (nonEmpty(p("sys/bus/platform/drivers/mxs-dcp"))) return { source: "dcp", how: "probe" };
  return { source: undefined, how: "none" };
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");
}

function handle(n: number, what: string): string {
  if (!Number.isInteger(n) || n <= 0 || n > 0xffffffff) throw usage(`${what} must be a 32-bit handle, got ${n}`);
  return `0x${n.toString(16)}`;
}

/** Options → " key=value ..." for the given source, refusing what that source (or TPM version) cannot honour. */
export function trustedOptionString(source: TrustedKeySource, o: TrustedKeyOptions, op: "new" | "load", tpmVersion: 1 | 2 = 2): string {
  const given = Object.entries(o).filter(([, v]) => v !== undefined).map(([k]) => k);
  if (source !== "tpm") {
    if (given.length) throw usage(`trusted.source=${source} takes no key options (got ${given.join(", ")})`, "drop them; the TEE/CAAM/DCP firmware decides how the key is sealed");
    return "";
  }
  const parts: string[] = [];
  if (o.keyhandle !== undefined) parts.push(`keyhandle=${handle(o.keyhandle, "keyhandle")}`);
  else if (tpmVersion === 2 && op === "new") throw usage("TPM 2.0 trusted keys need keyhandle", "persist a storage primary (e.g. 0x81000001) and pass keyhandle");
  if (o.keyauth !== undefined) {
    if (o.keyauth.length !== 20) throw usage("keyauth must be 20 bytes");
    parts.push(`keyauth=${hex(o.keyauth)}`);
  }
  if (o.blobauth !== undefined) {
    if (o.blobauth.length !== 20) throw usage("blobauth must be 20 bytes");
    parts.push(`blobauth=${hex(o.blobauth)}`);
  }
  if (tpmVersion === 1) {
    for (const k of ["hash", "policydigest", "policyhandle"] as const)
      if (o[k] !== undefined) throw usage(`${k} is a TPM 2.0 option; this TPM is 1.2`);
    if (o.pcrinfo !== undefined) parts.push(`pcrinfo=${hex(o.pcrinfo)}`);
  } else {
    if (o.pcrinfo !== undefined) throw usage("pcrinfo is TPM 1.2 only", "on TPM 2.0 bind to PCRs with hash= and policydigest= (a PolicyPCR digest)");
    if (o.pcrlock !== undefined) throw usage("pcrlock is TPM 1.2 only");
    const h = o.hash;
    if (h !== undefined) {
      if (!(h in HASH_LEN)) throw usage(`hash must be one of ${Object.keys(HASH_LEN).join(", ")}`);
      if (op === "new") parts.push(`hash=${h}`);
    }
    if (o.policydigest !== undefined) {
      const want = HASH_LEN[h ?? "sha1"];
      if (o.policydigest.length !== want) throw usage(`policydigest is ${o.policydigest.length} bytes; hash=${h ?? "sha1"} needs ${want}`, "compute the policy with the same hash as hash=");
      if (op === "new") parts.push(`policydigest=${hex(o.policydigest)}`);
    }
    if (o.policyhandle !== undefined) parts.push(`policyhandle=${handle(o.policyhandle, "policyhandle")}`);
  }
  if (o.pcrlock !== undefined) {
    if (!Number.isInteger(o.pcrlock) || o.pcrlock < 0 || o.pcrlock > 23) throw usage("pcrlock must be a PCR index 0..23");
    parts.push(`pcrlock=${o.pcrlock}`);
  }
  if (o.migratable !== undefined && op === "new") parts.push(`migratable=${o.migratable ? 1 : 0}`);
  return parts.length ? " " + parts.join(" ") : "";
}

export interface TrustedKeyContext {
  /** Trust source; default: detectTrustedSource(). */
  source?: TrustedKeySource;
  tpmVersion?: 1 | 2;
  keyctl?: KeyctlOptions;
}

function resolveSource(ctx: TrustedKeyContext): { source: TrustedKeySource; tpmVersion: 1 | 2 } {
  if (ctx.source) return { source: ctx.source, tpmVersion: ctx.tpmVersion ?? 2 };
  const d = detectTrustedSource();
  if (!d.source)
    throw new TrustvolError("EDEVICE", "no trust source for kernel trusted keys (no TPM, OP-TEE trusted-keys TA, CAAM or DCP found)", "boot with trusted.source=tpm|tee|caam|dcp on a kernel with CONFIG_TRUSTED_KEYS");
  return { source: d.source, tpmVersion: ctx.tpmVersion ?? d.tpmVersion ?? 2 };
}

/** Turn the kernel's terse errno into what went wrong with a trusted key, and what to do. */
function trustedError(e: unknown, op: "new" | "load", source: TrustedKeySource, o: TrustedKeyOptions): unknown {
  if (!(e instanceof TrustvolError)) return e;
  const parent = o.keyhandle !== undefined ? `0x${o.keyhandle.toString(16)}` : "the parent key";
  if (e.code === "EUNSUPPORTED")
    return new TrustvolError("EUNSUPPORTED", `kernel trusted keys are not available (${e.message})`, `need CONFIG_TRUSTED_KEYS and a working trust source (trusted.source=${source})`, { cause: e });
  if (source === "tpm" && (e.code === "EPOLICY" || e.code === "EUSAGE" || e.code === "EIO")) {
    if (op === "new")
      return new TrustvolError("EDEVICE", `the TPM refused to seal a trusted key under ${parent} (${e.message})`, `is a storage primary persisted at ${parent}? (tpm2_createprimary -C o -c srk.ctx && tpm2_evictcontrol -C o -c srk.ctx ${parent}); check keyauth`, { cause: e });
    return new TrustvolError("ENOKEY", `the TPM refused to unseal the trusted key blob (${e.message})`, `the blob was sealed by another TPM or under another parent than ${parent}, or its policy (PCRs, blobauth) is not satisfied`, { cause: e });
  }
  if (op === "load" && (e.code === "EPOLICY" || e.code === "EUSAGE" || e.code === "EIO"))
    return new TrustvolError("ENOKEY", `the ${source} trust source refused to unseal the trusted key blob (${e.message})`, "the blob was sealed on another device or is damaged", { cause: e });
  return e;
}

/** Generate a new trusted key of `length` bytes (32..128) in `keyring`; returns its serial. */
export function createTrustedKey(description: string, length: number, options: TrustedKeyOptions = {}, keyring: KeyRef = "@u", ctx: TrustedKeyContext = {}): number {
  if (!Number.isInteger(length) || length < TRUSTED_KEY_MIN || length > TRUSTED_KEY_MAX) throw usage(`trusted key length must be ${TRUSTED_KEY_MIN}..${TRUSTED_KEY_MAX} bytes, got ${length}`);
  const { source, tpmVersion } = resolveSource(ctx);
  const payload = Buffer.from(`new ${length}${trustedOptionString(source, options, "new", tpmVersion)}`);
  try {
    return paddKey("trusted", description, payload, keyring, ctx.keyctl);
  } catch (e) {
    throw trustedError(e, "new", source, options);
  } finally {
    wipe(payload); // holds keyauth/blobauth when given
  }
}

/** Parse a stored blob: the hex text `keyctl pipe` printed (whitespace around it is tolerated). */
export function parseTrustedBlob(blob: Uint8Array | string): string {
  const s = (typeof blob === "string" ? blob : Buffer.from(blob).toString("latin1")).trim();
  if (!s || s.length % 2 || !/^[0-9a-fA-F]+$/.test(s)) throw corrupt("not a trusted key blob (expected the hex text keyctl pipe prints)", "restore the blob file from backup");
  return s.toLowerCase();
}

/** Load (unseal) a sealed blob as a trusted key in `keyring`; returns its serial. */
export function loadTrustedKey(description: string, blob: Uint8Array | string, options: TrustedKeyOptions = {}, keyring: KeyRef = "@u", ctx: TrustedKeyContext = {}): number {
  const { source, tpmVersion } = resolveSource(ctx);
  const payload = Buffer.from(`load ${parseTrustedBlob(blob)}${trustedOptionString(source, options, "load", tpmVersion)}`);
  try {
    return paddKey("trusted", description, payload, keyring, ctx.keyctl);
  } catch (e) {
    throw trustedError(e, "load", source, options);
  } finally {
    wipe(payload);
  }
}

/** The sealed blob (hex text) of a trusted key; safe to store, useless on another device. */
export function exportTrustedKey(key: KeyRef, o?: KeyctlOptions): Buffer {
  return pipeKey(key, o);
}

/** Write the sealed blob to `path` (0600, fsync, atomic rename). */
export function saveTrustedKeyBlob(key: KeyRef, path: string, o?: KeyctlOptions): void {
  const blob = exportTrustedKey(key, o);
  parseTrustedBlob(blob);
  atomicWriteFileSync(path, blob, 0o600);
}

/** Boot-time path: read the blob file and load it. */
export function loadTrustedKeyFile(description: string, path: string, options: TrustedKeyOptions = {}, keyring: KeyRef = "@u", ctx: TrustedKeyContext = {}): number {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (e) {
    throw new TrustvolError(fsErrorCode(e), `cannot read trusted key blob ${path}: ${fsReason(e)}`, "was the key created and saved on this device?", { cause: e });
  }
  return loadTrustedKey(description, data, options, keyring, ctx);
}

/** Find a trusted key by description in `keyring` (recursively). */
export function findTrustedKey(description: string, keyring: KeyRef = "@u", o?: KeyctlOptions): number | undefined {
  return searchKey(keyring, "trusted", description, undefined, o);
}

/** A description nobody else uses, for short-lived keys. */
export function uniqueKeyDescription(prefix = "trustvol"): string {
  return `${prefix}:${randomBytes(8).toString("hex")}`;
}

export { unlinkKey };
