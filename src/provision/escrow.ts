// Recovery-key escrow: the recovery key is encrypted to the fleet's RSA public key (RSA-OAEP, SHA-256, MGF1-SHA-256)
// and only the ciphertext is written on the device; the fleet decrypts it with `trustvol recovery decrypt`.
// File format (JSON, 0600, written atomically), docs/provisioning.md "Recovery escrow file":
//   {"type":"trustvol-recovery-escrow","version":1,"alg":"RSA-OAEP-SHA256","volume_uuid":"…","volume":"NAME",
//    "recipient":"sha256:<hex of the public key's SPKI DER>","created":"ISO-8601","ciphertext":"<base64>"}
import { constants, createHash, createPrivateKey, createPublicKey, privateDecrypt, publicEncrypt, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { TrustvolError } from "../util/errors.js";
import { atomicWriteFileSync } from "../util/atomic.js";

export const ESCROW_TYPE = "trustvol-recovery-escrow";
export const ESCROW_ALG = "RSA-OAEP-SHA256";

export interface EscrowFile {
  type: typeof ESCROW_TYPE;
  version: 1;
  alg: typeof ESCROW_ALG;
  volume_uuid: string;
  volume: string;
  recipient: string;
  created: string;
  ciphertext: string;
}

/** Load and check a fleet public key (PEM, RSA ≥ 2048 bits). */
export function loadEscrowPublicKey(path: string, field = "recovery.escrow.public_key"): KeyObject {
  let pem: Buffer;
  try {
    pem = readFileSync(path);
  } catch {
    throw new TrustvolError("ENOENT", `${field}: ${path} cannot be read`, "install the fleet's public key (PEM) there; nothing was changed");
  }
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch {
    throw new TrustvolError("EUSAGE", `${field}: ${path} is not a PEM public key`, "give the fleet's RSA public key (openssl rsa -pubout)");
  }
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (key.asymmetricKeyType !== "rsa" || bits < 2048) throw new TrustvolError("EUSAGE", `${field}: ${path} is not an RSA public key of at least 2048 bits`, "escrow uses RSA-OAEP-SHA256 (docs/provisioning.md)");
  return key;
}

export function recipientId(key: KeyObject): string {
  return `sha256:${createHash("sha256").update(key.export({ type: "spki", format: "der" })).digest("hex")}`;
}

/** Encrypt the recovery key and write the escrow file (0600, atomic). The key itself is never written. */
export function writeEscrow(path: string, key: KeyObject, recoveryKey: Uint8Array, meta: { volumeUuid: string; volume: string }): void {
  const ct = publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, recoveryKey);
  const f: EscrowFile = { type: ESCROW_TYPE, version: 1, alg: ESCROW_ALG, volume_uuid: meta.volumeUuid, volume: meta.volume, recipient: recipientId(key), created: new Date().toISOString(), ciphertext: ct.toString("base64") };
  atomicWriteFileSync(path, Buffer.from(JSON.stringify(f, null, 2) + "\n"), 0o600);
}

/** Fleet side: decrypt an escrow file with the private key (PEM). Returns the recovery key bytes (caller wipes). */
export function decryptEscrow(escrowText: string, privateKeyPem: Uint8Array, file = "escrow file"): { recoveryKey: Buffer; file: EscrowFile } {
  let f: EscrowFile;
  try {
    f = JSON.parse(escrowText) as EscrowFile;
  } catch {
    throw new TrustvolError("ECORRUPT", `${file} is not valid JSON`, "give the file provisioning wrote (recovery.escrow.output)");
  }
  if (f?.type !== ESCROW_TYPE || f.version !== 1 || f.alg !== ESCROW_ALG || typeof f.ciphertext !== "string") throw new TrustvolError("ECORRUPT", `${file} is not a trustvol recovery escrow file`);
  let key: KeyObject;
  try {
    key = createPrivateKey(Buffer.from(privateKeyPem));
  } catch {
    throw new TrustvolError("EUSAGE", "the private key is not a PEM private key");
  }
  if (recipientId(createPublicKey(key)) !== f.recipient) throw new TrustvolError("ENOKEY", `${file} was encrypted to another key (${f.recipient.slice(0, 23)}…)`, "use the fleet private key whose public key the device had");
  try {
    return { recoveryKey: privateDecrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, Buffer.from(f.ciphertext, "base64")), file: f };
  } catch {
    throw new TrustvolError("ECORRUPT", `${file}: the ciphertext does not decrypt`, "the file is damaged");
  }
}
