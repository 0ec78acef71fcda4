// LUKS2 token `systemd-pkcs11`, as systemd-cryptenroll 252 writes it (src/cryptenroll/cryptenroll-pkcs11.c):
//   {"type":"systemd-pkcs11","keyslots":["1"],"pkcs11-uri":"pkcs11:token=…","pkcs11-key":"<base64>"}
// pkcs11-key = a random secret of (RSA bits / 16) bytes (128 for RSA-2048) encrypted with RSA PKCS#1 v1.5 to the
// public key of the token's X.509 certificate; the keyslot passphrase is base64(secret) (ASCII), the keyslot KDF is
// pbkdf2/sha512/1000 (cryptsetup_set_minimal_pbkdf). Unlock: log into the token, find the one private key matching
// the URI (+ CKA_DECRYPT, CKK_RSA), C_Decrypt with CKM_RSA_PKCS.
import { TrustvolError, corrupt, usage } from "../util/errors.js";
import { wipe, randomBytesBuf, base64Bytes } from "../util/secret.js";
import type * as Pkcs11js from "pkcs11js";
import { pkcs11js } from "../trust/pkcs11/pkcs11js.js";
import { openToken } from "../trust/pkcs11/token.js";
import { parsePkcs11Uri, formatPkcs11Uri, isSystemdValidUri, redactUri, headerUri } from "../trust/pkcs11/uri.js";
import { encryptToPublicKey } from "../trust/pkcs11/source.js";
import type { PinSource } from "../trust/pkcs11/pin.js";

export const SYSTEMD_PKCS11_TYPE = "systemd-pkcs11";
/** The keyslot KDF systemd uses for token-backed keyslots (high-entropy passphrase, so a minimal PBKDF). */
export const SYSTEMD_PKCS11_KEYSLOT_PBKDF = { type: "pbkdf2", hash: "sha512", iterations: 1000 } as const;

export interface SystemdPkcs11Token {
  keyslots: string[];
  uri: string;
  encryptedKey: Buffer;
}

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strictly validate a (possibly hostile) token JSON object. */
export function decodeSystemdPkcs11Token(json: unknown): SystemdPkcs11Token {
  if (typeof json === "string") {
    try {
      json = JSON.parse(json);
    } catch {
      throw corrupt("systemd-pkcs11 token is not valid JSON");
    }
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw corrupt("systemd-pkcs11 token is not a JSON object");
  const o = json as Record<string, unknown>;
  if (o.type !== SYSTEMD_PKCS11_TYPE) throw corrupt(`token type is ${JSON.stringify(o.type)}, not "${SYSTEMD_PKCS11_TYPE}"`);
  const ks = o.keyslots;
  if (!Array.isArray(ks) || ks.length === 0 || ks.length > 32) throw corrupt("systemd-pkcs11 token: keyslots must be a non-empty array");
  const keyslots: string[] = [];
  for (const k of ks) {
    if (typeof k !== "string" || !/^(0|[1-9][0-9]?)$/.test(k) || Number(k) > 31) throw corrupt(`systemd-pkcs11 token: bad keyslot ${JSON.stringify(k)}`);
    if (keyslots.includes(k)) throw corrupt(`systemd-pkcs11 token: keyslot ${k} listed twice`);
    keyslots.push(k);
  }
  const uri = o["pkcs11-uri"];
  if (typeof uri !== "string" || uri.length > 2048) throw corrupt("systemd-pkcs11 token: pkcs11-uri missing or not a string");
  if (!isSystemdValidUri(uri)) throw corrupt(`systemd-pkcs11 token: pkcs11-uri ${JSON.stringify(redactUri(uri).slice(0, 80))} is not a valid PKCS#11 URI`);
  try {
    parsePkcs11Uri(uri);
  } catch (e) {
    throw corrupt(`systemd-pkcs11 token: ${(e as Error).message}`);
  }
  const key = o["pkcs11-key"];
  if (typeof key !== "string" || key.length === 0 || key.length > 4096 || !B64.test(key)) throw corrupt("systemd-pkcs11 token: pkcs11-key missing or not base64");
  const encryptedKey = Buffer.from(key, "base64");
  if (encryptedKey.length < 64 || encryptedKey.length > 1024) throw corrupt(`systemd-pkcs11 token: pkcs11-key of ${encryptedKey.length} bytes is not an RSA ciphertext`);
  return { keyslots, uri, encryptedKey };
}

/** The JSON systemd 252 writes, field for field and in its order. */
export function encodeSystemdPkcs11Token(t: { keyslots: (string | number)[]; uri: string; encryptedKey: Uint8Array }): Record<string, unknown> {
  if (!t.keyslots.length) throw usage("a systemd-pkcs11 token needs a keyslot");
  for (const k of t.keyslots) if (!/^\d+$/.test(String(k)) || Number(k) > 31) throw usage(`bad keyslot ${String(k)}`);
  if (!isSystemdValidUri(t.uri)) throw usage(`PKCS#11 URI ${JSON.stringify(redactUri(t.uri))} has characters systemd refuses`, "percent-encode everything outside A-Z a-z 0-9 - _");
  return {
    type: SYSTEMD_PKCS11_TYPE,
    keyslots: t.keyslots.map((k) => String(Number(k))),
    "pkcs11-uri": t.uri,
    "pkcs11-key": Buffer.from(t.encryptedKey).toString("base64"),
  };
}

/** base64(secret) as ASCII bytes (systemd's passphrase form); wipes nothing, the caller owns both buffers. */
export function systemdPassphrase(secret: Uint8Array): Buffer {
  return base64Bytes(secret);
}

export interface UnlockOptions {
  pin?: PinSource;
  /** Module to load instead of searching every p11-kit registration (e.g. /usr/lib/libckteec.so.0). */
  modulePath?: string;
}

/** Decrypt the token's key on the PKCS#11 token and return the keyslot passphrase (caller wipes it). */
export async function unlockSystemdPkcs11Token(tokenJson: unknown, opts: UnlockOptions): Promise<Buffer> {
  const t = decodeSystemdPkcs11Token(tokenJson);
  // The header is hostile input: it never picks the module to load nor a PIN file to open.
  const s = openToken({ uri: headerUri(parsePkcs11Uri(t.uri)), ...(opts.modulePath ? { modulePath: opts.modulePath } : {}) });
  let secret: Buffer | undefined;
  try {
    s.login(opts.pin);
    const key = s.findPrivateKey([
      { type: pkcs11js.CKA_DECRYPT, value: true },
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
    ]);
    secret = s.decrypt(key, t.encryptedKey, "pkcs1");
    return systemdPassphrase(secret);
  } finally {
    wipe(secret);
    s.close();
  }
}

export interface CreateOptions {
  /** Token/key URI, e.g. pkcs11:token=lmp;object=luks (stored in the LUKS2 header; pin-source is stripped). */
  uri: string;
  /** With a PIN the new token is test-decrypted on the token before it is returned. */
  pin?: PinSource;
  keyslot: number;
  modulePath?: string;
}

/**
 * Make a systemd-pkcs11 token the way systemd-cryptenroll 252 does: public key from the token's certificate (or its
 * public-key object), random secret of bits/16 bytes, PKCS#1 v1.5. The caller adds a keyslot at `keyslot` with
 * `passphrase` (pbkdf2/sha512/1000, SYSTEMD_PKCS11_KEYSLOT_PBKDF), writes tokenJson, and wipes passphrase.
 */
export async function createSystemdPkcs11Token(opts: CreateOptions): Promise<{ tokenJson: Record<string, unknown>; passphrase: Buffer }> {
  if (!Number.isInteger(opts.keyslot) || opts.keyslot < 0 || opts.keyslot > 31) throw usage(`bad keyslot ${opts.keyslot}`);
  const u = parsePkcs11Uri(opts.uri);
  let stored = opts.uri;
  if (u.pinSource !== undefined || u.type === "cert" || u.type === "public" || u.modulePath !== undefined || u.moduleName !== undefined) {
    // Host-local bits (PIN file, module path) don't belong in the header; systemd's plugin needs type=private if any.
    const v = { ...u };
    delete v.pinSource;
    delete v.modulePath;
    delete v.moduleName;
    if (v.type === "cert" || v.type === "public") v.type = "private";
    stored = formatPkcs11Uri(v);
  }
  if (u.type && u.type !== "private" && u.type !== "cert" && u.type !== "public") throw usage(`PKCS#11 URI selects type=${u.type}; a systemd-pkcs11 token needs an RSA key pair`);
  if (!isSystemdValidUri(stored)) stored = formatPkcs11Uri(parsePkcs11Uri(stored));
  const modulePath = opts.modulePath ?? u.modulePath;
  const s = openToken({ uri: { ...u, type: undefined } as typeof u, ...(modulePath ? { modulePath } : {}) });
  let secret: Buffer | undefined;
  try {
    const pub = s.publicKey();
    if (pub.key.asymmetricKeyType !== "rsa")
      throw new TrustvolError("EUNSUPPORTED", `the key on token '${s.token.label}' is not RSA; systemd-pkcs11 tokens need an RSA key`, "generate an RSA-2048 key (trustvol pkcs11 keygen)");
    const bits = pub.key.asymmetricKeyDetails?.modulusLength ?? 0;
    const size = Math.floor(bits / 8 / 2);
    if (size < 16) throw new TrustvolError("EUNSUPPORTED", `RSA key of ${bits} bits is too small`);
    secret = randomBytesBuf(size);
    const encryptedKey = encryptToPublicKey(pub.key, secret, "pkcs1");
    if (opts.pin || u.pinSource) {
      s.login(opts.pin);
      const key = s.findPrivateKey([
        { type: pkcs11js.CKA_DECRYPT, value: true },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
        ...(pub.id.length && !u.id ? [{ type: pkcs11js.CKA_ID, value: pub.id }] : []),
      ]);
      const back = s.decrypt(key, encryptedKey, "pkcs1");
      const ok = back.equals(secret);
      wipe(back);
      if (!ok) throw new TrustvolError("EDEVICE", `token '${s.token.label}' cannot decrypt what its certificate encrypts`, "the certificate does not belong to the private key the URI selects");
    }
    return { tokenJson: encodeSystemdPkcs11Token({ keyslots: [opts.keyslot], uri: stored, encryptedKey }), passphrase: systemdPassphrase(secret) };
  } finally {
    wipe(secret);
    s.close();
  }
}
