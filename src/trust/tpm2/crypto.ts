// Session cryptography of TPM 2.0 Part 1: KDFa (§11.4.10.2), KDFe (§11.4.10.3), salt encryption to an ECC or RSA
// key (§24 / Annex B, C), parameter encryption with CFB (§21.4).
import { createCipheriv, createDecipheriv, createECDH, createHash, createHmac, createPublicKey, publicEncrypt, constants, randomFillSync } from "node:crypto";
import { TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { HASH_SIZE, TPM_ALG, TPM_ECC, type HashName } from "./constants.js";
import { ECC_POINT, type TpmtPublic } from "./structures.js";
import { encode } from "./schema.js";

const u32be = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};
const labelBytes = (label: string) => Buffer.concat([Buffer.from(label, "ascii"), Buffer.from([0])]);

/** KDFa(hashAlg, key, label, contextU, contextV, bits): HMAC counter mode (SP800-108). */
export function kdfa(hash: HashName, key: Uint8Array, label: string, contextU: Uint8Array, contextV: Uint8Array, bits: number): Buffer {
  const bytes = (bits + 7) >> 3;
  const out = Buffer.allocUnsafeSlow(bytes);
  let off = 0;
  for (let counter = 1; off < bytes; counter++) {
    const h = createHmac(hash, key).update(u32be(counter)).update(labelBytes(label)).update(contextU).update(contextV).update(u32be(bits)).digest();
    h.copy(out, off, 0, Math.min(h.length, bytes - off));
    off += h.length;
    h.fill(0);
  }
  if (bits & 7) out[0]! &= (1 << (bits & 7)) - 1;
  return out;
}

/** KDFe(hashAlg, Z, label, partyU, partyV, bits): the single-step KDF of SP800-56A (hash counter mode). */
export function kdfe(hash: HashName, z: Uint8Array, label: string, partyU: Uint8Array, partyV: Uint8Array, bits: number): Buffer {
  const bytes = (bits + 7) >> 3;
  const out = Buffer.allocUnsafeSlow(bytes);
  let off = 0;
  for (let counter = 1; off < bytes; counter++) {
    const h = createHash(hash).update(u32be(counter)).update(z).update(labelBytes(label)).update(partyU).update(partyV).digest();
    h.copy(out, off, 0, Math.min(h.length, bytes - off));
    off += h.length;
    h.fill(0);
  }
  if (bits & 7) out[0]! &= (1 << (bits & 7)) - 1;
  return out;
}

export const hashOf = (hash: HashName, ...parts: Uint8Array[]): Buffer => {
  const h = createHash(hash);
  for (const p of parts) h.update(p);
  return h.digest();
};
export const hmacOf = (hash: HashName, key: Uint8Array, ...parts: Uint8Array[]): Buffer => {
  const h = createHmac(hash, key);
  for (const p of parts) h.update(p);
  return h.digest();
};

function pad(b: Buffer, n: number): Buffer {
  if (b.length === n) return b;
  if (b.length > n) throw new TrustvolError("ECORRUPT", "ECC coordinate too long");
  return Buffer.concat([Buffer.alloc(n - b.length), b]);
}

/**
 * Make a session salt for the TPM key `pub` (Part 1 §24, "secret sharing"): returns the salt and the
 * TPM2B_ENCRYPTED_SECRET body the TPM decrypts. ECC: ephemeral ECDH + KDFe("SECRET"); RSA: OAEP with label "SECRET".
 */
export function makeSalt(pub: TpmtPublic, nameAlg: HashName): { salt: Buffer; encrypted: Buffer } {
  const digestBits = HASH_SIZE[nameAlg] * 8;
  if (pub.type === TPM_ALG.ECC) {
    if (pub.ecc?.curveId !== TPM_ECC.NIST_P256 || !pub.eccPoint) throw new TrustvolError("EUNSUPPORTED", "only NIST P-256 salt keys are supported");
    const qx = pad(pub.eccPoint.x, 32);
    const qy = pad(pub.eccPoint.y, 32);
    const ecdh = createECDH("prime256v1");
    const ephPub = ecdh.generateKeys(); // uncompressed 04 ‖ x ‖ y
    let z: Buffer;
    try {
      z = ecdh.computeSecret(Buffer.concat([Buffer.from([4]), qx, qy]));
    } catch (e) {
      throw new TrustvolError("EDEVICE", "the TPM's salt key is not a valid P-256 point", "the TPM returned a bad public key", { cause: e });
    }
    const ex = ephPub.subarray(1, 33);
    const ey = ephPub.subarray(33, 65);
    const salt = kdfe(nameAlg, z, "SECRET", ex, qx, digestBits);
    wipe(z);
    return { salt, encrypted: encode(ECC_POINT, { x: Buffer.from(ex), y: Buffer.from(ey) }, 68) };
  }
  if (pub.type === TPM_ALG.RSA) {
    const e = pub.rsa?.exponent || 65537;
    const eb = Buffer.alloc(4);
    eb.writeUInt32BE(e, 0);
    const key = createPublicKey({ key: { kty: "RSA", n: pub.unique.toString("base64url"), e: eb.subarray(eb.findIndex((x) => x !== 0)).toString("base64url") }, format: "jwk" });
    const salt = Buffer.allocUnsafeSlow(HASH_SIZE[nameAlg]);
    randomFillSync(salt);
    const encrypted = publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: nameAlg, oaepLabel: labelBytes("SECRET") }, salt);
    return { salt, encrypted };
  }
  throw new TrustvolError("EUNSUPPORTED", "salt key must be ECC or RSA");
}


/** AES-CFB parameter encryption (Part 1 §21.4). Key and IV come from KDFa(sessionKey‖authValue, "CFB", ...). */
export function cfbKeyIv(hash: HashName, hmacKey: Uint8Array, nonceNewer: Uint8Array, nonceOlder: Uint8Array, keyBits: number): { key: Buffer; iv: Buffer } {
  const m = kdfa(hash, hmacKey, "CFB", nonceNewer, nonceOlder, keyBits + 128);
  const key = Buffer.from(m.subarray(0, keyBits / 8));
  const iv = Buffer.from(m.subarray(keyBits / 8));
  wipe(m);
  return { key, iv };
}
export function aesCfb(decrypt: boolean, key: Buffer, iv: Buffer, data: Uint8Array): Buffer {
  const alg = `aes-${key.length * 8}-cfb`;
  const c = decrypt ? createDecipheriv(alg, key, iv) : createCipheriv(alg, key, iv);
  const out = Buffer.concat([c.update(data), c.final()]);
  return out;
}
