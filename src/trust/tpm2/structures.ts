// TPM 2.0 Part 2 structures trustvol needs, each with marshal/unmarshal, plus object names and the key templates.
import { createHash } from "node:crypto";
import { TpmReader, TpmWriter } from "./marshal.js";
import { HASH_ALG, TPMA_OBJECT, TPM_ALG, TPM_ECC, hashNameOf, type HashName } from "./constants.js";
import { TrustvolError } from "../../util/errors.js";

// ---------- algorithm parameter pieces ----------

/** TPMT_SYM_DEF_OBJECT / TPMT_SYM_DEF: algorithm, then keyBits+mode unless NULL (XOR: keyBits is a hash, no mode). */
export interface SymDef {
  algorithm: number;
  keyBits?: number;
  mode?: number;
}
export function marshalSymDef(w: TpmWriter, s: SymDef): void {
  w.u16(s.algorithm);
  if (s.algorithm === TPM_ALG.NULL) return;
  w.u16(s.keyBits ?? 0);
  if (s.algorithm !== TPM_ALG.XOR) w.u16(s.mode ?? TPM_ALG.NULL);
}
export function unmarshalSymDef(r: TpmReader): SymDef {
  const algorithm = r.u16();
  if (algorithm === TPM_ALG.NULL) return { algorithm };
  const keyBits = r.u16();
  if (algorithm === TPM_ALG.XOR) return { algorithm, keyBits };
  return { algorithm, keyBits, mode: r.u16() };
}

/** Asymmetric / keyed-hash / KDF schemes: a scheme id followed (unless NULL or RSAES) by a hash (XOR adds a KDF). */
export interface Scheme {
  scheme: number;
  hashAlg?: number;
  kdf?: number;
  count?: number; // ECDAA
}
export function marshalScheme(w: TpmWriter, s: Scheme): void {
  w.u16(s.scheme);
  if (s.scheme === TPM_ALG.NULL || s.scheme === TPM_ALG.RSAES) return;
  w.u16(s.hashAlg ?? TPM_ALG.SHA256);
  if (s.scheme === TPM_ALG.XOR) w.u16(s.kdf ?? TPM_ALG.NULL);
  if (s.scheme === 0x001a /* ECDAA */) w.u16(s.count ?? 0);
}
export function unmarshalScheme(r: TpmReader): Scheme {
  const scheme = r.u16();
  if (scheme === TPM_ALG.NULL || scheme === TPM_ALG.RSAES) return { scheme };
  const hashAlg = r.u16();
  if (scheme === TPM_ALG.XOR) return { scheme, hashAlg, kdf: r.u16() };
  if (scheme === 0x001a) return { scheme, hashAlg, count: r.u16() };
  return { scheme, hashAlg };
}

// ---------- TPMT_PUBLIC ----------

export interface RsaParms {
  symmetric: SymDef;
  scheme: Scheme;
  keyBits: number;
  exponent: number;
}
export interface EccParms {
  symmetric: SymDef;
  scheme: Scheme;
  curveId: number;
  kdf: Scheme;
}
export interface EccPoint {
  x: Buffer;
  y: Buffer;
}

export interface TpmtPublic {
  type: number;
  nameAlg: number;
  objectAttributes: number;
  authPolicy: Buffer;
  /** KEYEDHASH: the scheme; SYMCIPHER: the cipher; RSA / ECC: their parameters. */
  keyedHash?: Scheme;
  symCipher?: SymDef;
  rsa?: RsaParms;
  ecc?: EccParms;
  /** KEYEDHASH / SYMCIPHER: TPM2B_DIGEST; RSA: modulus; ECC: use eccPoint. */
  unique: Buffer;
  eccPoint?: EccPoint;
}

export function marshalPublic(w: TpmWriter, p: TpmtPublic): void {
  w.u16(p.type).u16(p.nameAlg).u32(p.objectAttributes).tpm2b(p.authPolicy);
  switch (p.type) {
    case TPM_ALG.KEYEDHASH:
      marshalScheme(w, p.keyedHash ?? { scheme: TPM_ALG.NULL });
      w.tpm2b(p.unique);
      break;
    case TPM_ALG.SYMCIPHER:
      marshalSymDef(w, p.symCipher ?? { algorithm: TPM_ALG.NULL });
      w.tpm2b(p.unique);
      break;
    case TPM_ALG.RSA: {
      const rsa = need(p.rsa, "rsa parameters");
      marshalSymDef(w, rsa.symmetric);
      marshalScheme(w, rsa.scheme);
      w.u16(rsa.keyBits).u32(rsa.exponent);
      w.tpm2b(p.unique);
      break;
    }
    case TPM_ALG.ECC: {
      const ecc = need(p.ecc, "ecc parameters");
      marshalSymDef(w, ecc.symmetric);
      marshalScheme(w, ecc.scheme);
      w.u16(ecc.curveId);
      marshalScheme(w, ecc.kdf);
      const pt = p.eccPoint ?? { x: Buffer.alloc(0), y: Buffer.alloc(0) };
      w.tpm2b(pt.x).tpm2b(pt.y);
      break;
    }
    default:
      throw new TrustvolError("EUNSUPPORTED", `unsupported TPM object type 0x${p.type.toString(16)}`);
  }
}

export function unmarshalPublic(r: TpmReader): TpmtPublic {
  const type = r.u16();
  const nameAlg = r.u16();
  const objectAttributes = r.u32();
  const authPolicy = r.tpm2b(64);
  switch (type) {
    case TPM_ALG.KEYEDHASH:
      return { type, nameAlg, objectAttributes, authPolicy, keyedHash: unmarshalScheme(r), unique: r.tpm2b(64) };
    case TPM_ALG.SYMCIPHER:
      return { type, nameAlg, objectAttributes, authPolicy, symCipher: unmarshalSymDef(r), unique: r.tpm2b(64) };
    case TPM_ALG.RSA: {
      const symmetric = unmarshalSymDef(r);
      const scheme = unmarshalScheme(r);
      const keyBits = r.u16();
      const exponent = r.u32();
      return { type, nameAlg, objectAttributes, authPolicy, rsa: { symmetric, scheme, keyBits, exponent }, unique: r.tpm2b(512) };
    }
    case TPM_ALG.ECC: {
      const symmetric = unmarshalSymDef(r);
      const scheme = unmarshalScheme(r);
      const curveId = r.u16();
      const kdf = unmarshalScheme(r);
      const x = r.tpm2b(128);
      const y = r.tpm2b(128);
      return { type, nameAlg, objectAttributes, authPolicy, ecc: { symmetric, scheme, curveId, kdf }, unique: Buffer.alloc(0), eccPoint: { x, y } };
    }
    default:
      throw new TrustvolError("EUNSUPPORTED", `unsupported TPM object type 0x${type.toString(16)}`, "the sealed blob was not made by a TPM 2.0 tool trustvol knows");
  }
}

/** TPM2B_PUBLIC bytes (with the size prefix). */
export function encodePublic2B(p: TpmtPublic): Buffer {
  const w = new TpmWriter();
  w.sized((x) => marshalPublic(x, p));
  return w.finish();
}
export function decodePublic2B(b: Buffer): TpmtPublic {
  const r = new TpmReader(b, "TPM2B_PUBLIC");
  const p = r.sized(unmarshalPublic);
  r.end();
  return p;
}
export function encodePublicArea(p: TpmtPublic): Buffer {
  const w = new TpmWriter();
  marshalPublic(w, p);
  return w.finish();
}

/** Object name: nameAlg ‖ H_nameAlg(TPMT_PUBLIC) (Part 1 §16). */
export function objectName(p: TpmtPublic): Buffer {
  const h = createHash(hashNameOf(p.nameAlg)).update(encodePublicArea(p)).digest();
  const out = Buffer.alloc(2 + h.length);
  out.writeUInt16BE(p.nameAlg, 0);
  h.copy(out, 2);
  return out;
}

/** Name of a handle that is not an object (permanent, PCR, session, NV is not covered): the handle itself. */
export function handleName(handle: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(handle >>> 0, 0);
  return b;
}

function need<T>(v: T | undefined, what: string): T {
  if (v === undefined) throw new TrustvolError("EINTERNAL", `TPMT_PUBLIC lacks ${what}`);
  return v;
}

// ---------- PCR selections ----------

export interface PcrSelection {
  hash: HashName;
  pcrs: number[];
}

export function marshalPcrSelections(w: TpmWriter, sels: PcrSelection[]): void {
  w.u32(sels.length);
  for (const s of sels) {
    w.u16(HASH_ALG[s.hash]);
    const max = Math.max(23, ...s.pcrs);
    const size = Math.max(3, Math.ceil((max + 1) / 8));
    const bits = Buffer.alloc(size);
    for (const p of s.pcrs) {
      if (!Number.isInteger(p) || p < 0 || p > 31) throw new TrustvolError("EUSAGE", `invalid PCR index ${p}`, "PCR indexes are 0..23");
      bits[p >> 3]! |= 1 << (p & 7);
    }
    w.u8(size).bytes(bits);
  }
}
export function unmarshalPcrSelections(r: TpmReader): PcrSelection[] {
  const n = r.u32();
  if (n > 16) throw new TrustvolError("ECORRUPT", `implausible PCR selection count ${n}`);
  const out: PcrSelection[] = [];
  for (let i = 0; i < n; i++) {
    const alg = r.u16();
    const size = r.u8();
    const bits = r.bytes(size);
    const pcrs: number[] = [];
    for (let j = 0; j < size * 8; j++) if (bits[j >> 3]! & (1 << (j & 7))) pcrs.push(j);
    let hash: HashName;
    try {
      hash = hashNameOf(alg);
    } catch {
      continue; // banks with hashes we don't know (sm3...) are skipped
    }
    out.push({ hash, pcrs });
  }
  return out;
}
export function encodePcrSelections(sels: PcrSelection[]): Buffer {
  const w = new TpmWriter(32);
  marshalPcrSelections(w, sels);
  return w.finish();
}

// ---------- sensitive-create ----------

/** TPM2B_SENSITIVE_CREATE { userAuth, data }. Caller wipes the inputs; the returned buffer holds secrets too. */
export function encodeSensitiveCreate(userAuth: Uint8Array, data: Uint8Array): Buffer {
  const w = new TpmWriter(64 + data.length);
  w.sized((x) => x.tpm2b(userAuth).tpm2b(data));
  return w.finish();
}

// ---------- templates ----------

const STORAGE_ATTRS =
  TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt;
const AES128CFB: SymDef = { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB };

export type PrimaryAlg = "ecc" | "rsa";

/**
 * Storage primary of the TCG provisioning guidance ("SRK" template): restricted decrypt key, AES-128-CFB, no scheme,
 * empty unique. ECC NIST P-256 or RSA-2048. This is what `tpm2_createprimary -C o -g <hash> -G ecc|rsa` and
 * systemd-cryptenroll 252 create, so all three derive the same key from the owner seed.
 */
export function storagePrimaryTemplate(alg: PrimaryAlg, nameAlg: HashName = "sha256"): TpmtPublic {
  const base = { nameAlg: HASH_ALG[nameAlg], objectAttributes: STORAGE_ATTRS, authPolicy: Buffer.alloc(0), unique: Buffer.alloc(0) };
  if (alg === "ecc")
    return {
      ...base,
      type: TPM_ALG.ECC,
      ecc: { symmetric: AES128CFB, scheme: { scheme: TPM_ALG.NULL }, curveId: TPM_ECC.NIST_P256, kdf: { scheme: TPM_ALG.NULL } },
      eccPoint: { x: Buffer.alloc(0), y: Buffer.alloc(0) },
    };
  return { ...base, type: TPM_ALG.RSA, rsa: { symmetric: AES128CFB, scheme: { scheme: TPM_ALG.NULL }, keyBits: 2048, exponent: 0 } };
}

/** A sealed data object (KEYEDHASH, scheme NULL) as systemd-cryptenroll / clevis create it. */
export function sealedObjectTemplate(opts: { nameAlg?: HashName; authPolicy: Buffer; attributes?: number }): TpmtPublic {
  return {
    type: TPM_ALG.KEYEDHASH,
    nameAlg: HASH_ALG[opts.nameAlg ?? "sha256"],
    objectAttributes: opts.attributes ?? TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent,
    authPolicy: opts.authPolicy,
    keyedHash: { scheme: TPM_ALG.NULL },
    unique: Buffer.alloc(0),
  };
}
