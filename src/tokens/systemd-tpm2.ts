// The `systemd-tpm2` LUKS2 token, as systemd-cryptenroll 252 writes it (and the underscore / array spellings of
// newer systemd on input). Pure JSON <-> typed object codecs with strict validation of hostile JSON, plus unlock and
// create against a TPM. The LUKS passphrase is the base64 of the 32 unsealed bytes.
import { createHash, createPublicKey, pbkdf2Sync, randomBytes, type KeyObject } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { TrustvolError } from "../util/errors.js";
import { wipe, base64Bytes } from "../util/secret.js";
import { HASH_SIZE, TPMA_OBJECT, TPM_ALG, isHashName, type HashName } from "../trust/tpm2/constants.js";
import { PolicyAuthValue, PolicyAuthorize, PolicyPCR, policyDigestOf, runPolicy, type Approval, type PolicyStep } from "../trust/tpm2/policy.js";
import type { TpmtPublic } from "../trust/tpm2/structures.js";
import { pinToAuthValue, sealSecret, splitBlob, unsealSecret } from "../trust/tpm2/seal.js";
import type { PrimaryAlg } from "../trust/tpm2/structures.js";
import { Tpm } from "../trust/tpm2/tpm.js";
import { decodeSerializedKeyHandle, decodeSerializedNvHandle, type SerializedKeyHandle, type SerializedNvHandle } from "../trust/tpm2/esys-tr.js";
import { decodePcrlockPolicy, loadPcrlockPolicy, pcrlockStep, type PcrlockPolicy } from "../trust/tpm2/pcrlock.js";
import { getOrCreateSrk } from "../trust/tpm2/srk.js";

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
  /** Signed PCR policy (systemd 252 --tpm2-public-key): the PEM public key and the PCRs its signatures cover. */
  pubkey?: Buffer;
  pubkeyPcrs?: number[];
  /** systemd 255+: the persistent SRK (serialized ESYS_TR) the blob was sealed under, raw and decoded. */
  srk?: Buffer;
  srkKey?: SerializedKeyHandle;
  /** systemd 255+ pcrlock: the policy is PolicyAuthorizeNV of systemd-pcrlock's NV index (tpm2_pcrlock_nv names it). */
  pcrlock?: boolean;
  pcrlockNv?: Buffer;
  pcrlockNvKey?: SerializedNvHandle;
  /** systemd 255+ may store several blobs, each with its policy hash; any one unlocks. blob/policyHash = the first. */
  blobs: Buffer[];
  policyHashes: Buffer[];
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

/** A single value, or (systemd 255+) an array of them. */
function several(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) return [v];
  if (v.length < 1 || v.length > 16) throw bad(`'${what}' must hold 1..16 values, not ${v.length}`);
  return v;
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

  const blobF = field(o, "tpm2-blob");
  if (blobF === undefined) throw bad("missing 'tpm2-blob'");
  const blobs = several(blobF, "tpm2-blob").map((v) => {
    const b = b64(v, "tpm2-blob", 4096);
    splitBlob(b); // structure check: TPM2B_PRIVATE ‖ TPM2B_PUBLIC of a sealed object
    return b;
  });

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

  const policyHashes = several(field(o, "tpm2-policy-hash"), "tpm2-policy-hash").map((phV) => {
    if (typeof phV !== "string" || !HEX.test(phV) || phV.length < 40 || phV.length > 128) throw bad("'tpm2-policy-hash' must be a hex digest");
    return Buffer.from(phV, "hex");
  });
  // systemd pairs blob i with policy hash i
  if (policyHashes.length !== blobs.length) throw bad(`${blobs.length} blobs but ${policyHashes.length} policy hashes`);

  const pinV = field(o, "tpm2-pin") ?? false;
  if (typeof pinV !== "boolean") throw bad("'tpm2-pin' must be a boolean");

  const saltV = field(o, "tpm2-salt");
  const salt = saltV === undefined ? undefined : b64(saltV, "tpm2_salt", 1024);

  const pkV = field(o, "tpm2-pubkey");
  const pkPcrsV = field(o, "tpm2-pubkey-pcrs");
  let pubkey: Buffer | undefined;
  let pubkeyPcrs: number[] | undefined;
  if (pkV !== undefined && pkV !== "") {
    pubkey = b64(pkV, "tpm2_pubkey", 16 * 1024);
    signingKeyOf(pubkey); // must be an RSA public key
    if (!Array.isArray(pkPcrsV) || pkPcrsV.length > 24) throw bad("'tpm2_pubkey_pcrs' must be an array of PCR indexes");
    pubkeyPcrs = pkPcrsV.map((p) => {
      if (typeof p !== "number" || !Number.isInteger(p) || p < 0 || p > 23) throw bad(`invalid PCR index ${JSON.stringify(p)} in 'tpm2_pubkey_pcrs'`);
      return p;
    });
    if (new Set(pubkeyPcrs).size !== pubkeyPcrs.length) throw bad("duplicate PCR indexes in 'tpm2_pubkey_pcrs'");
  } else if (pkPcrsV !== undefined && !(Array.isArray(pkPcrsV) && pkPcrsV.length === 0)) throw bad("'tpm2_pubkey_pcrs' without 'tpm2_pubkey'");

  const srkV = field(o, "tpm2-srk");
  const srk = srkV === undefined ? undefined : b64(srkV, "tpm2_srk", 1024);
  const srkKey = srk ? decodeSerializedKeyHandle(srk) : undefined;

  // pcrlock (systemd 255+): the policy lives in an NV index (PolicyAuthorizeNV after PolicyPCR/PolicyOR); the
  // allowed values come from the administrator's pcrlock.json, never from a path in this header
  const lockV = field(o, "tpm2-pcrlock") ?? false;
  if (typeof lockV !== "boolean") throw bad("'tpm2_pcrlock' must be a boolean");
  const nvV = field(o, "tpm2-pcrlock-nv");
  if (nvV !== undefined && !lockV) throw bad("'tpm2_pcrlock_nv' without 'tpm2_pcrlock'");
  const pcrlockNv = nvV === undefined ? undefined : b64(nvV, "tpm2_pcrlock_nv", 4096);
  const pcrlockNvKey = pcrlockNv ? decodeSerializedNvHandle(pcrlockNv) : undefined;
  if (lockV && pkV !== undefined && pkV !== "") throw bad("a signed PCR policy and a pcrlock policy together (systemd refuses them too)");
  const argonV = field(o, "tpm2-argon2id");
  if (!(argonV === undefined || argonV === false))
    throw new TrustvolError("EUNSUPPORTED", "systemd-tpm2 token uses 'tpm2_argon2id', which trustvol does not support yet", "unlock with another keyslot (recovery key)");

  return {
    type: "systemd-tpm2", keyslots, blob: blobs[0]!, blobs, pcrs, pcrBank: bankV, primaryAlg: algV, policyHash: policyHashes[0]!, policyHashes, pin: pinV,
    ...(salt ? { salt } : {}), ...(pubkey ? { pubkey, pubkeyPcrs: pubkeyPcrs ?? [] } : {}), ...(srk ? { srk, srkKey } : {}),
    ...(lockV ? { pcrlock: true } : {}), ...(pcrlockNv ? { pcrlockNv, pcrlockNvKey } : {}),
  };
}

/** The RSA public key of a signed PCR policy, from PEM. */
function signingKeyOf(pem: Buffer): KeyObject {
  let k: KeyObject;
  try {
    k = createPublicKey({ key: pem, format: "pem" });
  } catch {
    throw bad("'tpm2_pubkey' is not a PEM public key");
  }
  if (k.asymmetricKeyType !== "rsa") throw new TrustvolError("EUNSUPPORTED", `signed PCR policies with ${k.asymmetricKeyType} keys are not supported`, "systemd 252 uses RSA keys");
  return k;
}

/** The key as systemd 252 loads it for PolicyAuthorize: RSA, sha256, decrypt|sign|userwithauth, no scheme. */
export function systemdPolicyKeyPublic(pem: Buffer): TpmtPublic {
  const jwk = signingKeyOf(pem).export({ format: "jwk" });
  const n = Buffer.from(jwk.n!, "base64url");
  const e = Buffer.from(jwk.e!, "base64url");
  if (e.length > 4) throw new TrustvolError("EUNSUPPORTED", "RSA public exponent too large");
  return {
    type: TPM_ALG.RSA, nameAlg: TPM_ALG.SHA256, objectAttributes: TPMA_OBJECT.decrypt | TPMA_OBJECT.sign | TPMA_OBJECT.userWithAuth, authPolicy: Buffer.alloc(0),
    rsa: { symmetric: { algorithm: TPM_ALG.NULL }, scheme: { scheme: TPM_ALG.NULL }, keyBits: n.length * 8, exponent: e.readUIntBE(0, e.length) },
    unique: n,
  };
}

/** systemd's public-key fingerprint ("pkfp"): sha256 of the PKCS#1 RSAPublicKey DER. */
export function systemdPubkeyFingerprint(pem: Buffer): string {
  return createHash("sha256").update(signingKeyOf(pem).export({ type: "pkcs1", format: "der" })).digest("hex");
}

/** One entry of a systemd-measure signature JSON: {"sha256":[{"pcrs":[11],"pkfp":hex,"pol":hex,"sig":b64}]}. */
export interface PcrSignature {
  bank: HashName;
  pcrs: number[];
  pkfp: string;
  pol: Buffer;
  sig: Buffer;
}

export function decodePcrSignatureJson(json: string | Uint8Array | Record<string, unknown>): PcrSignature[] {
  const o = parseObject(json);
  const out: PcrSignature[] = [];
  for (const [bank, list] of Object.entries(o)) {
    if (!isHashName(bank)) continue;
    if (!Array.isArray(list) || list.length > 256) throw bad(`signature JSON: '${bank}' must be an array`);
    for (const e of list) {
      if (typeof e !== "object" || e === null || Array.isArray(e)) throw bad("signature JSON entry is not an object");
      const r = e as Record<string, unknown>;
      if (!Array.isArray(r.pcrs) || !r.pcrs.every((p) => typeof p === "number" && Number.isInteger(p) && p >= 0 && p < 24)) throw bad("signature JSON: bad 'pcrs'");
      if (typeof r.pkfp !== "string" || !HEX.test(r.pkfp)) throw bad("signature JSON: bad 'pkfp'");
      if (typeof r.pol !== "string" || !HEX.test(r.pol) || r.pol.length !== HASH_SIZE[bank] * 2) throw bad("signature JSON: bad 'pol'");
      out.push({ bank, pcrs: [...(r.pcrs as number[])].sort((a, b) => a - b), pkfp: r.pkfp.toLowerCase(), pol: Buffer.from(r.pol, "hex"), sig: b64(r.sig, "sig", 1024) });
    }
  }
  return out;
}

/** Where systemd 252 looks for the signed PCR policy when none is given. */
export const SYSTEMD_PCR_SIGNATURE_PATHS = ["/run/systemd/tpm2-pcr-signature.json", "/.extra/tpm2-pcr-signature.json"];

/**
 * The policy systemd 252+ builds, as steps: [PolicyAuthorize(key) after PolicyPCR(pubkey PCRs) approved by a
 * signature] [PolicyPCR(bank, pcrs)] [PolicyAuthValue]. Its digest (offline: needs `pcrValues` for the bound PCRs)
 * and its execution (needs `signatures` when there is a key) both follow from this one list.
 */
export function systemdTpm2PolicySteps(
  t: Pick<SystemdTpm2Token, "pcrs" | "pcrBank" | "pin" | "pubkey" | "pubkeyPcrs" | "pcrlock">,
  opts: { pcrValues?: Map<number, Uint8Array>; signatures?: PcrSignature[]; pcrlock?: PcrlockPolicy } = {},
): PolicyStep[] {
  const steps: PolicyStep[] = [];
  if (t.pubkey) {
    const pem = t.pubkey;
    steps.push(PolicyAuthorize(systemdPolicyKeyPublic(pem), Buffer.alloc(0), (tpm) => approveSignedPcrs(tpm, pem, t.pcrBank, t.pubkeyPcrs ?? [], opts.signatures ?? [])));
  }
  if (t.pcrlock) {
    if (!opts.pcrlock) throw new TrustvolError("ENOKEY", "this TPM2 token is bound to a pcrlock policy but none was given", "name the pcrlock.json with --tpm2-pcrlock FILE");
    steps.push(pcrlockStep(opts.pcrlock));
  }
  if (t.pcrs.length) steps.push(PolicyPCR({ hash: t.pcrBank, pcrs: t.pcrs }, opts.pcrValues ? { values: opts.pcrValues } : {}));
  if (t.pin) steps.push(PolicyAuthValue());
  return steps;
}

/** The authPolicy of a token for the given PCR values. */
export function systemdTpm2PolicyDigest(t: Pick<SystemdTpm2Token, "pcrs" | "pcrBank" | "pin" | "pubkey" | "pcrlock">, pcrValues: Map<number, Uint8Array>, pcrlock?: PcrlockPolicy): Buffer {
  return policyDigestOf("sha256", systemdTpm2PolicySteps(t, { pcrValues, ...(pcrlock ? { pcrlock } : {}) }));
}

/**
 * JSON exactly as systemd-cryptenroll writes it (field order included): 252's shape, or 257's when the token has an
 * SRK (no "tpm2-pin" when false, tpm2_srk last; arrays only for several blobs).
 */
export function encodeSystemdTpm2Token(t: SystemdTpm2Token): string {
  const blobs = t.blobs?.length ? t.blobs : [t.blob];
  const hashes = t.policyHashes?.length ? t.policyHashes : [t.policyHash];
  const o: Record<string, unknown> = {
    type: "systemd-tpm2",
    keyslots: t.keyslots.map(String),
    "tpm2-blob": blobs.length > 1 ? blobs.map((b) => b.toString("base64")) : blobs[0]!.toString("base64"),
    "tpm2-pcrs": [...t.pcrs],
    // systemd 257 leaves the bank out when no PCR is bound directly (a pcrlock token)
    ...(!t.srk || t.pcrs.length || t.pubkey ? { "tpm2-pcr-bank": t.pcrBank } : {}),
    "tpm2-primary-alg": t.primaryAlg,
    "tpm2-policy-hash": hashes.length > 1 ? hashes.map((h) => h.toString("hex")) : hashes[0]!.toString("hex"),
  };
  if (t.pin || !t.srk) o["tpm2-pin"] = t.pin;
  if (t.pcrlock) o["tpm2_pcrlock"] = true;
  if (t.pubkey) {
    o["tpm2_pubkey_pcrs"] = [...(t.pubkeyPcrs ?? [])];
    o["tpm2_pubkey"] = t.pubkey.toString("base64");
  }
  if (t.salt) o["tpm2_salt"] = t.salt.toString("base64");
  if (t.srk) o["tpm2_srk"] = t.srk.toString("base64");
  if (t.pcrlockNv) o["tpm2_pcrlock_nv"] = t.pcrlockNv.toString("base64");
  return JSON.stringify(o);
}

/** TPM authValue for a PIN: 252 = sha256(PIN); with tpm2_salt (254+) = sha256(base64(PBKDF2-HMAC-SHA256(PIN, salt, 10000))). */
export function systemdPinAuthValue(pin: Uint8Array, salt?: Uint8Array): Buffer {
  if (!salt) return pinToAuthValue(pin);
  const k = pbkdf2Sync(pin, salt, 10000, 32, "sha256");
  const s = base64Bytes(k);
  wipe(k);
  try {
    return pinToAuthValue(s);
  } finally {
    wipe(s);
  }
}

type TpmLike = Tpm | { tpm: Tpm };
const tpmOf = (t: TpmLike): Tpm => (t instanceof Tpm ? t : t.tpm);

/** The PolicyAuthorize leg of a signed-PCR-policy token: the signature that approves the current PCR state. */
async function approveSignedPcrs(tpm: Tpm, pem: Buffer, bank: HashName, pubkeyPcrs: number[], signatures: PcrSignature[]): Promise<Approval> {
  const pcrs = [...pubkeyPcrs].sort((a, b) => a - b);
  const fp = systemdPubkeyFingerprint(pem);
  const sel = { hash: bank, pcrs };
  const approved = policyDigestOf("sha256", [PolicyPCR(sel, { values: await tpm.pcrRead(bank, pcrs) })]);
  const candidates = signatures.filter((s) => s.bank === bank && s.pkfp === fp && s.pcrs.join() === pcrs.join());
  if (!candidates.length) throw new TrustvolError("EPOLICY", `no PCR signature for this key and PCRs ${pcrs.join(",")} (${bank}) in the signature file`, "install the signed PCR policy that matches this kernel (tpm2-pcr-signature.json)");
  const match = candidates.find((s) => s.pol.equals(approved));
  if (!match) throw new TrustvolError("EPOLICY", `PCR ${pcrs.join(",")} (${bank}) are in a state no signature approves: the boot chain or boot phase differs`, "boot a kernel signed for this enrollment, or use the recovery key");
  // PolicyPCR with the current values, then the TPM checks the signer approved exactly that digest
  return { steps: [PolicyPCR(sel)], approvedPolicy: match.pol, signature: { sigAlg: TPM_ALG.RSASSA, hash: "sha256", sig: match.sig } };
}

function loadSignatures(sig: string | Uint8Array | Record<string, unknown> | undefined): PcrSignature[] {
  if (sig !== undefined) return decodePcrSignatureJson(sig);
  for (const p of SYSTEMD_PCR_SIGNATURE_PATHS) if (existsSync(p)) return decodePcrSignatureJson(readFileSync(p));
  throw new TrustvolError("ENOKEY", "this TPM2 token uses a signed PCR policy but no signature file was found", `provide the tpm2-pcr-signature.json (looked in ${SYSTEMD_PCR_SIGNATURE_PATHS.join(", ")})`);
}

/** The pcrlock policy for a token: given, or read from the administrator's file; it must name the token's NV index. */
function pcrlockFor(t: SystemdTpm2Token, opts: { pcrlock?: string | Uint8Array | Record<string, unknown> | PcrlockPolicy; pcrlockPath?: string }): PcrlockPolicy {
  const p = opts.pcrlock === undefined ? loadPcrlockPolicy(opts.pcrlockPath) : isPcrlockPolicy(opts.pcrlock) ? opts.pcrlock : decodePcrlockPolicy(opts.pcrlock);
  if (t.pcrlockNvKey && (t.pcrlockNvKey.handle !== p.nvIndex || !t.pcrlockNvKey.name.equals(p.nv.name)))
    throw new TrustvolError("EPOLICY", `the pcrlock policy names NV index 0x${p.nvIndex.toString(16)}, the token was enrolled against 0x${t.pcrlockNvKey.handle.toString(16)}`, "name the pcrlock.json this volume was enrolled with (--tpm2-pcrlock), or use the recovery key");
  return p;
}
const isPcrlockPolicy = (v: unknown): v is PcrlockPolicy => typeof v === "object" && v !== null && (v as PcrlockPolicy).pcrValues instanceof Map;

/** Unseal a systemd-tpm2 token's secret and return the LUKS passphrase (ASCII base64 bytes). Caller wipes it. */
export async function unlockSystemdTpm2Token(
  tokenJson: string | Uint8Array | Record<string, unknown>,
  tpm: TpmLike,
  opts: {
    pin?: Uint8Array;
    /** signed PCR policy JSON (systemd-measure sign); default: systemd's well-known paths */
    signature?: string | Uint8Array | Record<string, unknown>;
    /** pcrlock policy (systemd-pcrlock's pcrlock.json contents); default: the administrator's file at `pcrlockPath`, else systemd's search path */
    pcrlock?: string | Uint8Array | Record<string, unknown> | PcrlockPolicy;
    pcrlockPath?: string;
  } = {},
): Promise<Buffer> {
  const t = decodeSystemdTpm2Token(tokenJson);
  if (t.pin && !opts.pin?.length) throw new TrustvolError("EBADPASS", "this TPM2 token needs a PIN", "supply the PIN");
  const signatures = t.pubkey ? loadSignatures(opts.signature) : [];
  const pcrlock = t.pcrlock ? pcrlockFor(t, opts) : undefined;
  const custom = t.pubkey || pcrlock;
  const authValue = t.pin && opts.pin ? systemdPinAuthValue(opts.pin, t.salt) : undefined;
  let secret: Buffer | undefined;
  try {
    // several blobs (systemd 255+): the first that unseals wins; a wrong PIN or lockout stops at once
    let first: unknown;
    for (let i = 0; i < t.blobs.length && !secret; i++) {
      try {
        secret = await unsealSecret(
          tpmOf(tpm),
          { blob: t.blobs[i]!, pcrs: t.pcrs, bank: t.pcrBank, primaryAlg: t.primaryAlg, policyHash: t.policyHashes[i]!, pin: t.pin, ...(t.srkKey ? { srk: t.srkKey } : {}), ...(custom ? { runPolicy: (tp, session) => runPolicy(tp, session, systemdTpm2PolicySteps(t, { signatures, ...(pcrlock ? { pcrlock } : {}) })) } : {}) },
          authValue ? { authValue } : {},
        );
      } catch (e) {
        if (e instanceof TrustvolError && (e.code === "EBADPASS" || e.code === "ELOCKOUT")) throw e;
        first ??= e;
      }
    }
    if (!secret) throw first;
    return base64Ascii(secret);
  } finally {
    wipe(authValue, secret);
  }
}


/** base64 (with padding) of a secret as ASCII bytes, built without an intermediate JS string holding it. */
export function base64Ascii(secret: Uint8Array): Buffer {
  return base64Bytes(secret);
}

/** Seal 32 fresh TPM random bytes like systemd-cryptenroll 252 and return the token plus the passphrase to add. */
export async function createSystemdTpm2Token(
  tpm: TpmLike,
  opts: {
    pcrs: readonly number[];
    bank?: HashName;
    pin?: Uint8Array;
    keyslot: number;
    primaryAlg?: PrimaryAlg;
    pcrValues?: Map<number, Uint8Array>;
    /** Signed PCR policy: PEM RSA public key whose signatures (systemd-measure) approve PCR states of pubkeyPcrs. */
    pubkey?: Buffer;
    pubkeyPcrs?: readonly number[];
    /** Seal under the persistent SRK (0x81000001, created if missing) and record it as tpm2_srk, as systemd 255+ does. */
    srk?: boolean;
    /** Bind to systemd-pcrlock's NV index policy (implies srk, as systemd-cryptenroll --tpm2-pcrlock). */
    pcrlock?: PcrlockPolicy;
  },
): Promise<{ tokenJson: string; token: SystemdTpm2Token; passphrase: Buffer }> {
  if (!Number.isInteger(opts.keyslot) || opts.keyslot < 0 || opts.keyslot > 31) throw new TrustvolError("EUSAGE", `invalid keyslot ${opts.keyslot}`);
  const t = tpmOf(tpm);
  const bank = opts.bank ?? "sha256";
  const secret = await t.getRandom(32);
  // systemd 255+ salts the PIN (PBKDF2) whenever it seals under the SRK; 252-style tokens hash it plainly
  const useSrk = opts.srk || !!opts.pcrlock;
  if (opts.pcrlock && opts.pubkey) throw new TrustvolError("EUSAGE", "a signed PCR policy and a pcrlock policy cannot be combined", "choose --tpm2-public-key or --tpm2-pcrlock");
  const salt = useSrk && opts.pin?.length ? randomBytes(32) : undefined;
  const authValue = opts.pin?.length ? systemdPinAuthValue(opts.pin, salt) : undefined;
  try {
    const pcrs = [...new Set(opts.pcrs)].sort((a, b) => a - b);
    // values given for some PCRs (a boot chain that has not happened yet): the others are read from the TPM
    let pcrValues = opts.pcrValues;
    if (pcrValues) {
      for (const p of pcrValues.keys()) if (!pcrs.includes(p)) throw new TrustvolError("EUSAGE", `a value was given for PCR ${p}, which is not bound`, "list it in --pcrs");
      const missing = pcrs.filter((p) => !pcrValues!.has(p));
      if (missing.length) pcrValues = new Map([...(await t.pcrRead(bank, missing)), ...pcrValues]);
    }
    let authPolicy: Buffer | undefined;
    if (opts.pubkey || opts.pcrlock) {
      const values = pcrValues ?? (pcrs.length ? await t.pcrRead(bank, pcrs) : new Map());
      authPolicy = systemdTpm2PolicyDigest({ pcrs, pcrBank: bank, pin: !!authValue, ...(opts.pubkey ? { pubkey: opts.pubkey } : {}), pcrlock: !!opts.pcrlock }, values, opts.pcrlock);
    }
    const srk = useSrk ? await getOrCreateSrk(t, opts.primaryAlg ?? "ecc") : undefined;
    const s = await sealSecret(t, secret, { pcrs, bank, primaryAlg: opts.primaryAlg ?? "ecc", ...(authValue ? { authValue } : {}), ...(pcrValues ? { pcrValues } : {}), ...(authPolicy ? { authPolicy } : {}), ...(srk ? { parent: srk.key } : {}) });
    const token: SystemdTpm2Token = {
      type: "systemd-tpm2", keyslots: [opts.keyslot], blob: s.blob, blobs: [s.blob], policyHashes: [s.policyHash], pcrs: s.pcrs, pcrBank: bank, primaryAlg: s.primaryAlg, policyHash: s.policyHash, pin: !!authValue,
      ...(opts.pubkey ? { pubkey: Buffer.from(opts.pubkey), pubkeyPcrs: [...(opts.pubkeyPcrs ?? [11])] } : {}),
      ...(srk ? { srk: srk.serialized, srkKey: decodeSerializedKeyHandle(srk.serialized) } : {}),
      ...(salt ? { salt } : {}),
      ...(opts.pcrlock ? { pcrlock: true, pcrlockNv: Buffer.from(opts.pcrlock.nvHandle), pcrlockNvKey: opts.pcrlock.nv } : {}),
    };
    return { tokenJson: encodeSystemdTpm2Token(token), token, passphrase: base64Ascii(secret) };
  } finally {
    wipe(secret, authValue);
  }
}
