// TPM 2.0 Part 2 structures trustvol needs, each described once as a codec (schema.ts), plus object names and the
// key templates.
import { createHash } from "node:crypto";
import { HASH_ALG, HASH_SIZE, TPMA_OBJECT, TPM_ALG, TPM_ECC, hashNameOf, type HashName } from "./constants.js";
import { decode, encode, hashAlg, opt, sized, struct, tpm2b, u16, u32, u8, union, type Codec, type TypeOf } from "./schema.js";
import { TrustvolError } from "../../util/errors.js";

// ---------- algorithm parameter pieces ----------

/** TPMT_SYM_DEF_OBJECT / TPMT_SYM_DEF: algorithm, then keyBits+mode unless NULL (XOR: keyBits is a hash, no mode). */
export interface SymDef {
  algorithm: number;
  keyBits?: number;
  mode?: number;
}
export const SYM_DEF = union<SymDef>({
  what: "TPMT_SYM_DEF",
  tag: ["algorithm", u16],
  cases: { [TPM_ALG.NULL]: {}, [TPM_ALG.XOR]: { keyBits: opt(u16, () => 0) } },
  other: { keyBits: opt(u16, () => 0), mode: opt(u16, () => TPM_ALG.NULL) },
});

/** Asymmetric / keyed-hash / KDF schemes: a scheme id followed (unless NULL or RSAES) by a hash (XOR adds a KDF). */
export interface Scheme {
  scheme: number;
  hashAlg?: number;
  kdf?: number;
  count?: number; // ECDAA
}
const schemeHash = opt(u16, () => TPM_ALG.SHA256);
export const SCHEME = union<Scheme>({
  what: "TPMT_*_SCHEME",
  tag: ["scheme", u16],
  cases: {
    [TPM_ALG.NULL]: {},
    [TPM_ALG.RSAES]: {},
    [TPM_ALG.XOR]: { hashAlg: schemeHash, kdf: opt(u16, () => TPM_ALG.NULL) },
    [TPM_ALG.ECDAA]: { hashAlg: schemeHash, count: opt(u16, () => 0) },
  },
  other: { hashAlg: schemeHash },
});

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

const required = <T>(c: Codec<T>, what: string): Codec<T> => ({
  read: c.read,
  write: (w, v) => {
    if (v === undefined) throw new TrustvolError("EINTERNAL", `TPMT_PUBLIC lacks ${what}`);
    c.write(w, v);
  },
});
export const RSA_PARMS = struct({ symmetric: SYM_DEF, scheme: SCHEME, keyBits: u16, exponent: u32 });
export const ECC_PARMS = struct({ symmetric: SYM_DEF, scheme: SCHEME, curveId: u16, kdf: SCHEME });
export const ECC_POINT = struct({ x: tpm2b(128), y: tpm2b(128) });
const emptyPoint = (): EccPoint => ({ x: Buffer.alloc(0), y: Buffer.alloc(0) });

/** TPMT_PUBLIC (Part 2 §12.2.4): type selects TPMU_PUBLIC_PARMS and TPMU_PUBLIC_ID. */
export const TPMT_PUBLIC = union<TpmtPublic>({
  what: "TPMT_PUBLIC (object type)",
  tag: ["type", u16],
  common: { nameAlg: u16, objectAttributes: u32, authPolicy: tpm2b(64) },
  cases: {
    [TPM_ALG.KEYEDHASH]: { keyedHash: opt(SCHEME, () => ({ scheme: TPM_ALG.NULL })), unique: tpm2b(64) },
    [TPM_ALG.SYMCIPHER]: { symCipher: opt(SYM_DEF, () => ({ algorithm: TPM_ALG.NULL })), unique: tpm2b(64) },
    [TPM_ALG.RSA]: { rsa: required(RSA_PARMS, "rsa parameters"), unique: tpm2b(512) },
    [TPM_ALG.ECC]: { ecc: required(ECC_PARMS, "ecc parameters"), eccPoint: opt(ECC_POINT, emptyPoint) },
  },
  defaults: { [TPM_ALG.ECC]: () => ({ unique: Buffer.alloc(0) }) },
});
/** TPM2B_PUBLIC. */
export const PUBLIC_2B = sized(TPMT_PUBLIC);

/** TPM2B_PUBLIC bytes (with the size prefix). */
export const encodePublic2B = (p: TpmtPublic): Buffer => encode(PUBLIC_2B, p);
export const decodePublic2B = (b: Buffer): TpmtPublic => decode(PUBLIC_2B, b, "TPM2B_PUBLIC");
export const encodePublicArea = (p: TpmtPublic): Buffer => encode(TPMT_PUBLIC, p);

/** Object name: nameAlg ‖ H_nameAlg(TPMT_PUBLIC) (Part 1 §16). */
export function objectName(p: TpmtPublic): Buffer {
  const h = createHash(hashNameOf(p.nameAlg)).update(encodePublicArea(p)).digest();
  const out = Buffer.alloc(2 + h.length);
  out.writeUInt16BE(p.nameAlg, 0);
  h.copy(out, 2);
  return out;
}

/** Name of a handle that is not an object or NV index (permanent, PCR, session): the handle itself. */
export function handleName(handle: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(handle >>> 0, 0);
  return b;
}

// ---------- PCR selections ----------

export interface PcrSelection {
  hash: HashName;
  pcrs: number[];
}

/** TPMS_PCR_SELECTION list (TPML_PCR_SELECTION): hash, sizeofSelect (>= 3), bitmap with bit i of byte i/8. */
export const PCR_SELECTIONS: Codec<PcrSelection[]> = {
  write: (w, sels) => {
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
  },
  read: (r) => {
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
  },
};
export const encodePcrSelections = (sels: PcrSelection[]): Buffer => encode(PCR_SELECTIONS, sels, 32);

// ---------- other structures shared by commands ----------

/** TPM2B_SENSITIVE_CREATE { userAuth, data } (holds secrets: the writer wipes its buffers). */
export const SENSITIVE_CREATE = sized(struct({ userAuth: tpm2b(64), data: tpm2b(256) }));
/** TPMT_TK_* tickets: tag, hierarchy, digest. */
export const TICKET = struct({ tag: u16, hierarchy: u32, digest: tpm2b(64) });
export type Ticket = TypeOf<typeof TICKET>;
/** TPMT_HA: hash algorithm then a digest of that hash's size. */
export const TPMT_HA: Codec<{ hash: HashName; digest: Buffer }> = {
  write: (w, v) => {
    if (v.digest.length !== HASH_SIZE[v.hash]) throw new TrustvolError("EUSAGE", `a ${v.hash} digest has ${HASH_SIZE[v.hash]} bytes, not ${v.digest.length}`);
    w.u16(HASH_ALG[v.hash]).bytes(v.digest);
  },
  read: (r) => {
    const hash = hashAlg.read(r);
    return { hash, digest: Buffer.from(r.bytes(HASH_SIZE[hash])) };
  },
};
/** TPM2B_DIGEST / TPM2B_NONCE / TPM2B_NAME bounds. */
export const DIGEST = tpm2b(64);
export const NAME = tpm2b(68);
/** TPMS_AUTH_COMMAND / TPMS_AUTH_RESPONSE (Part 2 §10.13): one per session in the authorization areas. */
export const AUTH_COMMAND = struct({ sessionHandle: u32, nonce: DIGEST, sessionAttributes: u8, hmac: DIGEST });
export const AUTH_RESPONSE = struct({ nonce: DIGEST, sessionAttributes: u8, hmac: DIGEST });


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
