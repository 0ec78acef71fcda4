// Kernel encrypted keys (Documentation/security/keys/trusted-encrypted.rst): random (or supplied) keys that the
// kernel encrypts with a master key — a `user` key (software only, for tests and for systems without a trust
// source) or a `trusted` key (sealed by TPM/TEE/CAAM/DCP). User space sees only the blob
// `<format> <master> <len> <hex>`; hex = iv ‖ encrypted data ‖ HMAC, verified at load.
//
// All payloads go to keyctl on stdin: a supplied key (decrypted data) is a secret, and blobs are kept out of argv
// as a rule.
import { readFileSync } from "node:fs";
import { TrustvolError, corrupt, fsErrorCode, fsReason, usage } from "../../util/errors.js";
import { atomicWriteFileSync } from "../../util/atomic.js";
import { wipe, hexBytes } from "../../util/secret.js";
import { paddKey, pipeKey, updateKey, type KeyRef, type KeyctlOptions } from "./keyring.js";

export type EncryptedKeyFormat = "default" | "ecryptfs" | "enc32";
export const ENCRYPTED_KEY_MIN = 20;
export const ENCRYPTED_KEY_MAX = 4096;

/** The master key an encrypted key is wrapped with: `user:<desc>` or `trusted:<desc>` (also `logon:` on newer kernels). */
export interface MasterKey {
  type: "user" | "trusted" | "logon";
  description: string;
}

export function masterKeyString(m: MasterKey): string {
  if (!["user", "trusted", "logon"].includes(m.type)) throw usage(`encrypted key master must be user:, trusted: or logon:, got ${m.type}:`);
  if (!m.description || /[\s\0]/.test(m.description)) throw usage(`bad master key description "${m.description}"`);
  return `${m.type}:${m.description}`;
}

export interface NewEncryptedKey {
  master: MasterKey;
  /** Bytes of key material: 20..4096; enc32 needs 32, ecryptfs 64. */
  length: number;
  format?: EncryptedKeyFormat;
  /** Import this key material instead of letting the kernel generate it (needs CONFIG_USER_DECRYPTED_DATA). Not wiped here. */
  decryptedData?: Uint8Array;
}

function checkLength(format: EncryptedKeyFormat, length: number): void {
  if (!Number.isInteger(length) || length < ENCRYPTED_KEY_MIN || length > ENCRYPTED_KEY_MAX) throw usage(`encrypted key length must be ${ENCRYPTED_KEY_MIN}..${ENCRYPTED_KEY_MAX} bytes, got ${length}`);
  if (format === "enc32" && length !== 32) throw usage("enc32 encrypted keys are exactly 32 bytes");
  if (format === "ecryptfs" && length !== 64) throw usage("ecryptfs encrypted keys are exactly 64 bytes");
}

function encryptedError(e: unknown, op: string, master?: MasterKey): unknown {
  if (!(e instanceof TrustvolError)) return e;
  if (e.code === "ENOENT" || e.code === "EUSAGE" || e.code === "EPOLICY") {
    const m = master ? masterKeyString(master) : "its master key";
    return new TrustvolError(e.code === "ENOENT" ? "ENOKEY" : e.code, `${op} encrypted key failed (${e.message})`, `is ${m} loaded in a keyring this process possesses, and is it the key the blob was made with?`, { cause: e });
  }
  return e;
}

/** Create an encrypted key in `keyring`; returns its serial. */
export function createEncryptedKey(description: string, spec: NewEncryptedKey, keyring: KeyRef = "@u", o?: KeyctlOptions): number {
  const format = spec.format ?? "default";
  checkLength(format, spec.length);
  let data: Buffer | undefined;
  if (spec.decryptedData) {
    if (spec.decryptedData.length !== spec.length) throw usage(`decryptedData is ${spec.decryptedData.length} bytes, length says ${spec.length}`);
    data = hexBytes(spec.decryptedData); // key material as hex straight into a wipeable Buffer, never a JS string
  }
  const head = Buffer.from(`new ${format} ${masterKeyString(spec.master)} ${spec.length}`);
  const payload = data ? Buffer.concat([head, Buffer.from(" "), data]) : head;
  wipe(data);
  try {
    return paddKey("encrypted", description, payload, keyring, o);
  } catch (e) {
    if (spec.decryptedData && e instanceof TrustvolError && e.code === "EUSAGE")
      throw new TrustvolError("EUNSUPPORTED", `the kernel refused supplied key material for an encrypted key (${e.message})`, "it needs CONFIG_USER_DECRYPTED_DATA; or let the kernel generate the key", { cause: e });
    throw encryptedError(e, "creating", spec.master);
  } finally {
    wipe(payload);
  }
}

export interface EncryptedBlob {
  format: EncryptedKeyFormat;
  master: MasterKey;
  length: number;
  hex: string;
}

/** Parse `<format> <type>:<desc> <len> <hex>` (what keyctl pipe prints for an encrypted key). */
export function parseEncryptedBlob(blob: Uint8Array | string): EncryptedBlob {
  const s = (typeof blob === "string" ? blob : Buffer.from(blob).toString("latin1")).trim();
  const m = /^(default|ecryptfs|enc32) (user|trusted|logon):(\S+) (\d+) ([0-9a-fA-F]+)$/.exec(s);
  if (!m) throw corrupt("not an encrypted key blob (expected '<format> <user|trusted>:<name> <len> <hex>')", "restore the blob file from backup");
  return { format: m[1] as EncryptedKeyFormat, master: { type: m[2] as MasterKey["type"], description: m[3]! }, length: Number(m[4]), hex: m[5]! };
}

/** Load an encrypted key from its blob; its master key must already be in a keyring this process possesses. */
export function loadEncryptedKey(description: string, blob: Uint8Array | string, keyring: KeyRef = "@u", o?: KeyctlOptions): number {
  const b = parseEncryptedBlob(blob);
  const payload = Buffer.from(`load ${b.format} ${masterKeyString(b.master)} ${b.length} ${b.hex}`);
  try {
    return paddKey("encrypted", description, payload, keyring, o);
  } catch (e) {
    throw encryptedError(e, "loading", b.master);
  } finally {
    wipe(payload);
  }
}

/** Re-wrap a loaded encrypted key under another master (export the blob again afterwards). */
export function changeEncryptedKeyMaster(key: KeyRef, master: MasterKey, o?: KeyctlOptions): void {
  try {
    updateKey(key, Buffer.from(`update ${masterKeyString(master)}`), o);
  } catch (e) {
    throw encryptedError(e, "re-wrapping", master);
  }
}

export function exportEncryptedKey(key: KeyRef, o?: KeyctlOptions): Buffer {
  return pipeKey(key, o);
}

/** Write the blob to `path` (0600, fsync, atomic rename). */
export function saveEncryptedKeyBlob(key: KeyRef, path: string, o?: KeyctlOptions): void {
  const blob = exportEncryptedKey(key, o);
  parseEncryptedBlob(blob);
  atomicWriteFileSync(path, blob, 0o600);
}

export function loadEncryptedKeyFile(description: string, path: string, keyring: KeyRef = "@u", o?: KeyctlOptions): number {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (e) {
    throw new TrustvolError(fsErrorCode(e), `cannot read encrypted key blob ${path}: ${fsReason(e)}`, undefined, { cause: e });
  }
  return loadEncryptedKey(description, data, keyring, o);
}
