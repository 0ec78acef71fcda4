// The `systemd-tpm2` LUKS2 token, as systemd-cryptenroll 252 writes it (and the underscore / array spellings of
// newer systemd on input). Pure JSON <-> typed object codecs with strict validation of hostile JSON, plus unlock and
// create against a TPM. The LUKS passphrase is the base64 of the 32 unsealed bytes.
import { pbkdf2Sync } from "node:crypto";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { isHashName, type HashName } from "../trust/tpm2/constants.js";
import { pinToAuthValue, sealSecret, splitBlob, unsealSecret } from "../trust/tpm2/seal.js";
import type { PrimaryAlg } from "../trust/tpm2/structures.js";
import { Tpm } from "../trust/tpm2/tpm.js";

export interface SystemdTpm2Token {
  type: "systemd-tpm2";
  /** LUKS2 keyslot numbers the token unlocks. */
  keyslots: number[];
  /** TPM2B_PRIVATE ‖ TPM2B_PUBLIC. */
  blob: Buffer;
  pcrs: number[];
  pcrBank: HashName;
  primaryAlg: PrimaryAlg;
  policyHash: Buffer;
  pin: boolean;
  /** Newer systemd (254+): PBKDF2 salt applied to the PIN before hashing. */
  salt?: Buffer;
}

const bad = (what: string) => new TrustvolError("ECORRUPT", `systemd-tpm2 token: ${what}`, "the LUKS2 token is damaged or was not written by systemd-cryptenroll; use another keyslot");
const B64 = /^[A-Za-z0-9+/]*={0,2}$/;
const HEX = /^(?:[0-9a-fA-F]{2})+$/;
const MAX_JSON = 64 * 1024;

function parseObject(json: string | Uint8Array | Record<string, unknown>): Record<string, unknown> {
  let v: unknown = json;
  if (typeof json === "string" || json instanceof Uint8Array) {
    const s = typeof json === "string" ? json : Buffer.from(json).toString("utf8");
    if (s.length > MAX_JSON) throw bad("JSON too large");
    try {
      v = JSON.parse(s);
    } catch {
      throw bad("not valid JSON");
    }
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw bad("not a JSON object");
  return v as Record<string, unknown>;
}

/** A field under its 252 name ("tpm2-blob") or newer underscore name ("tpm2_blob"). */
function field(o: Record<string, unknown>, dashed: string): unknown {
  const own = (k: string) => (Object.prototype.hasOwnProperty.call(o, k) ? o[k] : undefined);
  const a = own(dashed);
  const b = own(dashed.replace(/-/g, "_"));
  if (a !== undefined && b !== undefined) throw bad(`both '${dashed}' and '${dashed.replace(/-/g, "_")}' present`);
  return a ?? b;
}

function b64(v: unknown, what: string, max: number): Buffer {
  if (typeof v !== "string" || !B64.test(v) || v.length % 4 !== 0) throw bad(`'${what}' is not base64`);
  const b = Buffer.from(v, "base64");
  if (b.length === 0 || b.length > max) throw bad(`'${what}' has an implausible size (${b.length} bytes)`);
  return b;
}

/** A single value, or (newer systemd) an array holding exactly one. */
function single(v: unknown, what: string): unknown {
  if (!Array.isArray(v)) return v;
  if (v.length !== 1) throw new TrustvolError("EUNSUPPORTED", `systemd-tpm2 token: ${v.length} values in '${what}' (multi-blob tokens) are not supported yet`, "enroll with systemd-cryptenroll 252-style options or use the recovery key");
  return v[0];
}

export function decodeSystemdTpm2Token(json: string | Uint8Array | Record<string, unknown>): SystemdTpm2Token {
  const o = parseObject(json);
  if (o.type !== "systemd-tpm2") throw bad(`type is ${JSON.stringify(o.type)}, expected "systemd-tpm2"`);

  const ks = o.keyslots;
  if (!Array.isArray(ks) || ks.length > 32) throw bad("'keyslots' must be an array");
  const keyslots = ks.map((k) => {
    if (typeof k !== "string" || !/^(?:0|[1-9][0-9]?)$/.test(k) || Number(k) > 31) throw bad(`invalid keyslot id ${JSON.stringify(k)}`);
    return Number(k);
  });
  if (new Set(keyslots).size !== keyslots.length) throw bad("duplicate keyslot ids");

  const blobV = single(field(o, "tpm2-blob"), "tpm2-blob");
  if (blobV === undefined) throw bad("missing 'tpm2-blob'");
  const blob = b64(blobV, "tpm2-blob", 4096);
  splitBlob(blob); // structure check: TPM2B_PRIVATE ‖ TPM2B_PUBLIC of a sealed object

  const pcrsV = field(o, "tpm2-pcrs");
  if (pcrsV === undefined) throw bad("missing 'tpm2-pcrs'");
  if (!Array.isArray(pcrsV) || pcrsV.length > 24) throw bad("'tpm2-pcrs' must be an array of PCR indexes");
  const pcrs = pcrsV.map((p) => {
    if (typeof p !== "number" || !Number.isInteger(p) || p < 0 || p > 23) throw bad(`invalid PCR index ${JSON.stringify(p)}`);
    return p;
  });
  if (new Set(pcrs).size !== pcrs.length) throw bad("duplicate PCR indexes");

  const bankV = field(o, "tpm2-pcr-bank") ?? "sha256"; // absent in tokens of systemd < 249: sha256
  if (!isHashName(bankV)) throw bad(`unknown PCR bank ${JSON.stringify(bankV)}`);

  const algV = field(o, "tpm2-primary-alg") ?? "ecc"; // absent in older tokens: ECC
  if (algV !== "ecc" && algV !== "rsa") throw bad(`unknown primary algorithm ${JSON.stringify(algV)}`);

  const phV = single(field(o, "tpm2-policy-hash"), "tpm2-policy-hash");
  if (typeof phV !== "string" || !HEX.test(phV) || phV.length < 40 || phV.length > 128) throw bad("'tpm2-policy-hash' must be a hex digest");
  const policyHash = Buffer.from(phV, "hex");

  const pinV = field(o, "tpm2-pin") ?? false;
  if (typeof pinV !== "boolean") throw bad("'tpm2-pin' must be a boolean");

  const saltV = field(o, "tpm2-salt");
  const salt = saltV === undefined ? undefined : b64(saltV, "tpm2_salt", 1024);

  for (const k of ["tpm2-pubkey", "tpm2-pubkey-pcrs", "tpm2-pcrlock", "tpm2-srk"]) {
    const v = field(o, k);
    if (v === undefined || (Array.isArray(v) && v.length === 0) || v === "") continue;
    throw new TrustvolError("EUNSUPPORTED", `systemd-tpm2 token uses '${k}' (newer systemd feature), which trustvol does not support yet`, "unlock with another keyslot (recovery key) or re-enroll with PCR-only binding");
  }

  return { type: "systemd-tpm2", keyslots, blob, pcrs, pcrBank: bankV, primaryAlg: algV, policyHash, pin: pinV, ...(salt ? { salt } : {}) };
}

/** JSON exactly as systemd-cryptenroll 252 writes it (field order included). */
export function encodeSystemdTpm2Token(t: SystemdTpm2Token): string {
  const o: Record<string, unknown> = {
    type: "systemd-tpm2",
    keyslots: t.keyslots.map(String),
    "tpm2-blob": t.blob.toString("base64"),
    "tpm2-pcrs": [...t.pcrs],
    "tpm2-pcr-bank": t.pcrBank,
    "tpm2-primary-alg": t.primaryAlg,
    "tpm2-policy-hash": t.policyHash.toString("hex"),
    "tpm2-pin": t.pin,
  };
  if (t.salt) o["tpm2_salt"] = t.salt.toString("base64");
  return JSON.stringify(o);
}

/** TPM authValue for a PIN: 252 = sha256(PIN); with tpm2_salt (254+) = sha256(base64(PBKDF2-HMAC-SHA256(PIN, salt, 10000))). */
export function systemdPinAuthValue(pin: Uint8Array, salt?: Uint8Array): Buffer {
  if (!salt) return pinToAuthValue(pin);
  const k = pbkdf2Sync(pin, salt, 10000, 32, "sha256");
  const s = Buffer.from(k.toString("base64"), "ascii");
  wipe(k);
  try {
    return pinToAuthValue(s);
  } finally {
    wipe(s);
  }
}

type TpmLike = Tpm | { tpm: Tpm };
const tpmOf = (t: TpmLike): Tpm => (t instanceof Tpm ? t : t.tpm);

/** Unseal a systemd-tpm2 token's secret and return the LUKS passphrase (ASCII base64 bytes). Caller wipes it. */
export async function unlockSystemdTpm2Token(tokenJson: string | Uint8Array | Record<string, unknown>, tpm: TpmLike, opts: { pin?: Uint8Array } = {}): Promise<Buffer> {
  const t = decodeSystemdTpm2Token(tokenJson);
  if (t.pin && !opts.pin?.length) throw new TrustvolError("EBADPASS", "this TPM2 token needs a PIN", "supply the PIN");
  const authValue = t.pin && opts.pin ? systemdPinAuthValue(opts.pin, t.salt) : undefined;
  let secret: Buffer | undefined;
  try {
    secret = await unsealSecret(tpmOf(tpm), { blob: t.blob, pcrs: t.pcrs, bank: t.pcrBank, primaryAlg: t.primaryAlg, policyHash: t.policyHash, pin: t.pin }, authValue ? { authValue } : {});
    return base64Ascii(secret);
  } finally {
    wipe(authValue, secret);
  }
}

const B64_ALPHABET = Buffer.from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", "ascii");

/** base64 (with padding) of a secret as ASCII bytes, built without an intermediate JS string holding it. */
export function base64Ascii(secret: Uint8Array): Buffer {
  const out = Buffer.allocUnsafeSlow(Math.ceil(secret.length / 3) * 4);
  let o = 0;
  for (let i = 0; i < secret.length; i += 3) {
    const a = secret[i]!;
    const b = i + 1 < secret.length ? secret[i + 1]! : 0;
    const c = i + 2 < secret.length ? secret[i + 2]! : 0;
    out[o++] = B64_ALPHABET[a >> 2]!;
    out[o++] = B64_ALPHABET[((a & 3) << 4) | (b >> 4)]!;
    out[o++] = i + 1 < secret.length ? B64_ALPHABET[((b & 15) << 2) | (c >> 6)]! : 0x3d;
    out[o++] = i + 2 < secret.length ? B64_ALPHABET[c & 63]! : 0x3d;
  }
  return out;
}

/** Seal 32 fresh TPM random bytes like systemd-cryptenroll 252 and return the token plus the passphrase to add. */
export async function createSystemdTpm2Token(
  tpm: TpmLike,
  opts: { pcrs: readonly number[]; bank?: HashName; pin?: Uint8Array; keyslot: number; primaryAlg?: PrimaryAlg; pcrValues?: Map<number, Uint8Array> },
): Promise<{ tokenJson: string; token: SystemdTpm2Token; passphrase: Buffer }> {
  if (!Number.isInteger(opts.keyslot) || opts.keyslot < 0 || opts.keyslot > 31) throw new TrustvolError("EUSAGE", `invalid keyslot ${opts.keyslot}`);
  const t = tpmOf(tpm);
  const bank = opts.bank ?? "sha256";
  const secret = await t.getRandom(32);
  const authValue = opts.pin?.length ? pinToAuthValue(opts.pin) : undefined;
  try {
    const s = await sealSecret(t, secret, { pcrs: opts.pcrs, bank, primaryAlg: opts.primaryAlg ?? "ecc", ...(authValue ? { authValue } : {}), ...(opts.pcrValues ? { pcrValues: opts.pcrValues } : {}) });
    const token: SystemdTpm2Token = { type: "systemd-tpm2", keyslots: [opts.keyslot], blob: s.blob, pcrs: s.pcrs, pcrBank: bank, primaryAlg: s.primaryAlg, policyHash: s.policyHash, pin: s.pin };
    return { tokenJson: encodeSystemdTpm2Token(token), token, passphrase: base64Ascii(secret) };
  } finally {
    wipe(secret, authValue);
  }
}
