// clevis's tpm2 pin (clevis 19): a JWE (alg "dir", enc "A256GCM") whose content-encryption key is a JWK sealed in
// the TPM with tpm2-tools (primary per `key`/`hash`, object fixedtpm|fixedparent|noda|adminwithpolicy when
// PCR-bound, else ...|userwithauth). Decode the compact JWE or the LUKS2 `clevis` token, unseal the JWK, AES-GCM
// decrypt with AAD = the ASCII protected header → the LUKS passphrase; and create tokens `clevis luks pass` accepts.
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { TrustvolError } from "../util/errors.js";
import { randomBytesBuf, wipe } from "../util/secret.js";
import { TPMA_OBJECT, isHashName, type HashName } from "../trust/tpm2/constants.js";
import { sealSecret, splitBlob, unsealSecret } from "../trust/tpm2/seal.js";
import type { PrimaryAlg } from "../trust/tpm2/structures.js";
import { Tpm } from "../trust/tpm2/tpm.js";
import { TpmReader } from "../trust/tpm2/marshal.js";

export interface ClevisTpm2Config {
  hash: HashName;
  key: PrimaryAlg;
  /** Absent when the JWK is not PCR-bound. */
  pcrBank?: HashName;
  pcrIds: number[];
  /** TPM2B_PUBLIC of the sealed JWK. */
  jwkPub: Buffer;
  /** TPM2B_PRIVATE of the sealed JWK. */
  jwkPriv: Buffer;
}

export interface ClevisJwe {
  /** base64url protected header exactly as stored (it is the AAD). */
  protected: string;
  header: Record<string, unknown>;
  tpm2: ClevisTpm2Config;
  iv: Buffer;
  ciphertext: Buffer;
  tag: Buffer;
}

export interface ClevisToken {
  type: "clevis";
  keyslots: number[];
  jwe: ClevisJwe;
}

const bad = (what: string) => new TrustvolError("ECORRUPT", `clevis JWE: ${what}`, "the clevis binding is damaged; use another keyslot");
const B64URL = /^[A-Za-z0-9_-]*$/;
const MAX = 256 * 1024;

function b64u(v: unknown, what: string, max = MAX): Buffer {
  if (typeof v !== "string" || !B64URL.test(v) || v.length % 4 === 1) throw bad(`'${what}' is not base64url`);
  const b = Buffer.from(v, "base64url");
  if (b.length > max) throw bad(`'${what}' too large`);
  return b;
}

function parseJson(s: string, what: string): unknown {
  if (s.length > MAX) throw bad(`${what} too large`);
  try {
    return JSON.parse(s);
  } catch {
    throw bad(`${what} is not JSON`);
  }
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

function parsePcrIds(v: unknown): number[] {
  let list: unknown[];
  if (v === undefined) return [];
  if (typeof v === "string") list = v === "" ? [] : v.split(",").map((x) => x.trim());
  else if (typeof v === "number") list = [v];
  else if (Array.isArray(v)) list = v;
  else throw bad("'pcr_ids' must be a string like \"0,7\"");
  const out = list.map((x) => {
    const n = typeof x === "number" ? x : typeof x === "string" && /^\d{1,2}$/.test(x) ? Number(x) : NaN;
    if (!Number.isInteger(n) || n < 0 || n > 23) throw bad(`invalid PCR id ${JSON.stringify(x)}`);
    return n;
  });
  if (new Set(out).size !== out.length) throw bad("duplicate PCR ids");
  return out;
}

function parseTpm2Config(header: Record<string, unknown>): ClevisTpm2Config {
  const clevis = header.clevis;
  if (!isObj(clevis)) throw bad("protected header has no 'clevis' object");
  if (clevis.pin !== "tpm2") throw new TrustvolError("EUNSUPPORTED", `clevis pin ${JSON.stringify(clevis.pin)} is not the tpm2 pin`, "use clevis itself for tang / sss bindings");
  const t = clevis.tpm2;
  if (!isObj(t)) throw bad("no 'tpm2' configuration in the protected header");
  const hash = t.hash ?? "sha256";
  if (!isHashName(hash)) throw bad(`unknown hash ${JSON.stringify(hash)}`);
  const key = t.key ?? "ecc";
  if (key !== "ecc" && key !== "rsa") throw new TrustvolError("EUNSUPPORTED", `clevis tpm2 key type ${JSON.stringify(key)} is not supported`, "trustvol knows the ecc and rsa primaries");
  const pcrIds = parsePcrIds(t.pcr_ids);
  let pcrBank: HashName | undefined;
  if (pcrIds.length) {
    const bank = t.pcr_bank ?? "sha1"; // clevis 19's default when the header lacks it
    if (!isHashName(bank)) throw bad(`unknown pcr_bank ${JSON.stringify(bank)}`);
    pcrBank = bank;
  }
  const jwkPub = b64u(t.jwk_pub, "jwk_pub", 2048);
  const jwkPriv = b64u(t.jwk_priv, "jwk_priv", 2048);
  // structure check of the sealed object
  const pr = new TpmReader(jwkPriv, "jwk_priv");
  pr.tpm2b();
  pr.end();
  splitBlob(Buffer.concat([jwkPriv, jwkPub]));
  return { hash, key, ...(pcrBank ? { pcrBank } : {}), pcrIds, jwkPub, jwkPriv };
}

/** Decode a clevis JWE: compact ("a.b.c.d.e"), JSON (flattened), or a LUKS2 clevis token object / JSON. */
export function decodeClevisToken(input: string | Uint8Array | Record<string, unknown>): ClevisToken {
  let v: unknown = input;
  if (input instanceof Uint8Array) v = Buffer.from(input).toString("utf8");
  if (typeof v === "string") {
    const s = v.trim();
    if (s.startsWith("{")) v = parseJson(s, "token");
    else {
      const parts = s.split(".");
      if (parts.length !== 5) throw bad("compact JWE must have 5 parts");
      v = { protected: parts[0], encrypted_key: parts[1], iv: parts[2], ciphertext: parts[3], tag: parts[4] };
    }
  }
  if (!isObj(v)) throw bad("not a JSON object");
  let keyslots: number[] = [];
  let jweObj: Record<string, unknown> = v;
  if (v.type !== undefined || v.jwe !== undefined) {
    if (v.type !== "clevis") throw bad(`token type is ${JSON.stringify(v.type)}, expected "clevis"`);
    if (!Array.isArray(v.keyslots) || v.keyslots.length > 32) throw bad("'keyslots' must be an array");
    keyslots = v.keyslots.map((k) => {
      if (typeof k !== "string" || !/^(?:0|[1-9][0-9]?)$/.test(k) || Number(k) > 31) throw bad(`invalid keyslot id ${JSON.stringify(k)}`);
      return Number(k);
    });
    if (!isObj(v.jwe)) throw bad("token has no 'jwe' object");
    jweObj = v.jwe;
  }
  const prot = jweObj.protected;
  if (typeof prot !== "string" || !prot.length || !B64URL.test(prot)) throw bad("missing protected header");
  const header = parseJson(b64u(prot, "protected").toString("utf8"), "protected header");
  if (!isObj(header)) throw bad("protected header is not an object");
  if (header.alg !== "dir") throw new TrustvolError("EUNSUPPORTED", `clevis JWE alg ${JSON.stringify(header.alg)} is not "dir"`);
  if (header.enc !== "A256GCM") throw new TrustvolError("EUNSUPPORTED", `clevis JWE enc ${JSON.stringify(header.enc)} is not A256GCM`);
  if (header.zip !== undefined) throw new TrustvolError("EUNSUPPORTED", "compressed clevis JWEs are not supported");
  const ek = jweObj.encrypted_key ?? "";
  if (ek !== "") throw bad("'encrypted_key' must be empty for alg dir");
  const iv = b64u(jweObj.iv, "iv", 64);
  if (iv.length !== 12) throw bad(`iv is ${iv.length} bytes, A256GCM needs 12`);
  const tag = b64u(jweObj.tag, "tag", 64);
  if (tag.length !== 16) throw bad(`tag is ${tag.length} bytes, expected 16`);
  const ciphertext = b64u(jweObj.ciphertext, "ciphertext");
  return { type: "clevis", keyslots, jwe: { protected: prot, header, tpm2: parseTpm2Config(header), iv, ciphertext, tag } };
}

export function encodeClevisToken(t: ClevisToken): string {
  const j = t.jwe;
  return JSON.stringify({
    type: "clevis",
    keyslots: t.keyslots.map(String),
    jwe: { ciphertext: j.ciphertext.toString("base64url"), encrypted_key: "", iv: j.iv.toString("base64url"), protected: j.protected, tag: j.tag.toString("base64url") },
  });
}

export function clevisCompact(j: ClevisJwe): string {
  return [j.protected, "", j.iv.toString("base64url"), j.ciphertext.toString("base64url"), j.tag.toString("base64url")].join(".");
}

type TpmLike = Tpm | { tpm: Tpm };
const tpmOf = (t: TpmLike): Tpm => (t instanceof Tpm ? t : t.tpm);

/** Unseal the JWK with the TPM and decrypt the JWE: returns the passphrase bytes (caller wipes). */
export async function unlockClevisToken(input: string | Uint8Array | Record<string, unknown>, tpm: TpmLike): Promise<Buffer> {
  const { jwe } = decodeClevisToken(input);
  const c = jwe.tpm2;
  const jwkBytes = await unsealSecret(tpmOf(tpm), { blob: Buffer.concat([c.jwkPriv, c.jwkPub]), pcrs: c.pcrIds, bank: c.pcrBank ?? "sha1", primaryAlg: c.key, pin: false, nameAlg: c.hash });
  let k: Buffer | undefined;
  try {
    k = jwkKeyBytes(jwkBytes);
    const d = createDecipheriv("aes-256-gcm", k, jwe.iv);
    d.setAAD(Buffer.from(jwe.protected, "ascii"));
    d.setAuthTag(jwe.tag);
    const out = d.update(jwe.ciphertext);
    try {
      d.final();
    } catch {
      wipe(out);
      throw new TrustvolError("ECORRUPT", "clevis JWE does not authenticate with the unsealed key", "the token was modified; use another keyslot");
    }
    return out;
  } finally {
    wipe(jwkBytes, k);
  }
}

/**
 * Bind like `clevis luks bind ... tpm2 '{"pcr_ids":..,"pcr_bank":..}'`: seal a fresh A256GCM JWK, encrypt the
 * passphrase (generated when not given), return the LUKS2 token JSON for `keyslot`.
 */
export async function createClevisToken(
  tpm: TpmLike,
  opts: { keyslot: number; pcrIds?: readonly number[]; pcrBank?: HashName; hash?: HashName; key?: PrimaryAlg; passphrase?: Uint8Array },
): Promise<{ tokenJson: string; compact: string; passphrase: Buffer }> {
  if (!Number.isInteger(opts.keyslot) || opts.keyslot < 0 || opts.keyslot > 31) throw new TrustvolError("EUSAGE", `invalid keyslot ${opts.keyslot}`);
  const t = tpmOf(tpm);
  const hash = opts.hash ?? "sha256";
  const key = opts.key ?? "ecc";
  const pcrIds = [...new Set(opts.pcrIds ?? [])].sort((a, b) => a - b);
  const pcrBank = opts.pcrBank ?? "sha1";
  const passphrase = opts.passphrase ? Buffer.from(opts.passphrase) : randomPassphrase();
  const cek = randomBytesBuf(32);
  const kB64 = base64urlAscii(cek);
  const jwk = Buffer.concat([Buffer.from('{"alg":"A256GCM","k":"'), kB64, Buffer.from('","key_ops":["encrypt","decrypt"],"kty":"oct"}')]);
  try {
    const attrs = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.noDA | TPMA_OBJECT.adminWithPolicy | (pcrIds.length ? 0 : TPMA_OBJECT.userWithAuth);
    const s = await sealSecret(t, jwk, { pcrs: pcrIds, bank: pcrBank, primaryAlg: key, nameAlg: hash, attributes: attrs });
    const { privBytes, pubBytes } = splitBlob(s.blob);
    const tpm2: Record<string, string> = { hash, jwk_priv: privBytes.toString("base64url"), jwk_pub: pubBytes.toString("base64url"), key };
    if (pcrIds.length) Object.assign(tpm2, { pcr_bank: pcrBank, pcr_ids: pcrIds.join(",") });
    const sorted = Object.fromEntries(Object.entries(tpm2).sort(([a], [b]) => (a < b ? -1 : 1)));
    const header = { alg: "dir", clevis: { pin: "tpm2", tpm2: sorted }, enc: "A256GCM" };
    const prot = Buffer.from(JSON.stringify(header), "utf8").toString("base64url");
    const iv = randomBytes(12);
    const c = createCipheriv("aes-256-gcm", cek, iv);
    c.setAAD(Buffer.from(prot, "ascii"));
    const ciphertext = Buffer.concat([c.update(passphrase), c.final()]);
    const jwe: ClevisJwe = { protected: prot, header, tpm2: parseTpm2Config(header), iv, ciphertext, tag: c.getAuthTag() };
    return { tokenJson: encodeClevisToken({ type: "clevis", keyslots: [opts.keyslot], jwe }), compact: clevisCompact(jwe), passphrase };
  } catch (e) {
    wipe(passphrase);
    throw e;
  } finally {
    wipe(cek, kB64, jwk);
  }
}

const B64URL_CHARS = Buffer.from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", "ascii");

/** base64url (no padding) of secret bytes, as ASCII bytes, without a JS string copy of the secret. */
export function base64urlAscii(b: Uint8Array): Buffer {
  const out = Buffer.allocUnsafeSlow(Math.ceil((b.length * 4) / 3));
  let o = 0;
  for (let i = 0; i < b.length; i += 3) {
    const n = (b[i]! << 16) | ((b[i + 1] ?? 0) << 8) | (b[i + 2] ?? 0);
    out[o++] = B64URL_CHARS[(n >> 18) & 63]!;
    out[o++] = B64URL_CHARS[(n >> 12) & 63]!;
    if (i + 1 < b.length) out[o++] = B64URL_CHARS[(n >> 6) & 63]!;
    if (i + 2 < b.length) out[o++] = B64URL_CHARS[n & 63]!;
  }
  return out.subarray(0, o);
}

/** Decode base64url ASCII bytes into a fresh Buffer (undefined on a bad character). */
function fromBase64urlAscii(a: Uint8Array): Buffer | undefined {
  const out = Buffer.allocUnsafeSlow(Math.floor((a.length * 3) / 4));
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (const c of a) {
    const v = B64URL_CHARS.indexOf(c);
    if (v < 0) {
      out.fill(0);
      return undefined;
    }
    acc = ((acc << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
    }
  }
  acc = 0;
  return out.subarray(0, o);
}

/**
 * The `k` of the unsealed JWK as bytes. The key material is decoded straight from the buffer; JSON.parse only ever
 * sees a copy with `k` blanked, so no JS string holds the key.
 */
function jwkKeyBytes(jwk: Buffer): Buffer {
  const marker = Buffer.from('"k":"');
  const at = jwk.indexOf(marker);
  if (at < 0 || jwk.indexOf(marker, at + 1) >= 0) throw bad("the unsealed key is not a symmetric JWK");
  const start = at + marker.length;
  const end = jwk.indexOf(0x22, start);
  if (end < 0) throw bad("the unsealed key is not a symmetric JWK");
  const blank = Buffer.from(jwk);
  blank.fill(0x41, start, end); // 'A'
  let meta: unknown;
  try {
    meta = JSON.parse(blank.toString("utf8"));
  } catch {
    meta = undefined;
  } finally {
    blank.fill(0);
  }
  if (!isObj(meta) || meta.kty !== "oct" || typeof meta.k !== "string") throw bad("the unsealed key is not a symmetric JWK");
  if (meta.alg !== undefined && meta.alg !== "A256GCM") throw bad(`JWK alg ${JSON.stringify(meta.alg)} is not A256GCM`);
  const k = fromBase64urlAscii(jwk.subarray(start, end));
  if (!k || k.length !== 32) {
    if (k) k.fill(0);
    throw bad("JWK does not hold a 32-byte AES-256 key");
  }
  return k;
}

/** 32 random bytes as base64url ASCII (43 characters), like a generated clevis key. */
function randomPassphrase(): Buffer {
  const r = randomBytesBuf(32);
  const out = base64urlAscii(r);
  wipe(r);
  return out;
}
