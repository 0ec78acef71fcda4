// CAAM black-key data volumes (seed 001, NXP i.MX): plain dm-crypt with cipher capi:tk(cbc(aes))-plain keyed by a
// tagged black key loaded as a logon key. The black key is valid only in the boot that made it; what is stored is
// the blob (a descriptor file, 0600), which only this SoC's CAAM opens: every boot imports it again.
//   create: caam-keygen create → descriptor {blob}; open: caam-keygen import → logon key → dm table → key unlinked.
import { existsSync, readFileSync } from "node:fs";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { atomicWriteFileSync } from "../util/atomic.js";
import { CAAM_TK_CIPHER, TAG_OVERHEAD, blackKeyLength, blobLength, decodeTag, encryptionOf, type CaamKeyEncryption, type CaamKeygen } from "../trust/caam/index.js";
import { openPlain, type ActivateOptions, type OpenResult } from "./open.js";

export const CAAM_VOLUME_TYPE = "trustvol-caam-volume";

/** The descriptor: everything but the key, and the blob only this SoC can turn back into a black key. */
export interface CaamVolumeDescriptor {
  type: typeof CAAM_VOLUME_TYPE;
  version: 1;
  cipher: typeof CAAM_TK_CIPHER;
  /** AES key bytes (16, 24, 32): the red key inside the black key. */
  key_size: number;
  key_encryption: CaamKeyEncryption;
  sector_size: number;
  /** Base64 of the tagged blob (caam-keygen's NAME.bb). */
  blob: string;
}

/** Key sizes tk(cbc(aes)) takes (AES-128/192/256). */
const AES_KEY_SIZES = [16, 24, 32];

export interface CreateCaamVolumeOptions {
  /** Where the descriptor goes (the caller's default: /etc/trustvol/NAME.caam). */
  descriptor: string;
  keygen: CaamKeygen;
  /** Default 32 (AES-256). */
  keySize?: number;
  /** Default ecb (caam-keygen's example; ccm adds an authentication tag to the black key). */
  encryption?: CaamKeyEncryption;
  /** Default 4096. */
  sectorSize?: number;
}

function checkShape(keySize: number, sectorSize: number, enc: string, where: string): void {
  if (!AES_KEY_SIZES.includes(keySize)) throw new TrustvolError("ECORRUPT", `${where}: key_size ${keySize} is not an AES key size (16, 24 or 32 bytes)`);
  if (![512, 1024, 2048, 4096].includes(sectorSize)) throw new TrustvolError("ECORRUPT", `${where}: sector_size ${sectorSize} is not 512, 1024, 2048 or 4096`);
  if (enc !== "ecb" && enc !== "ccm") throw new TrustvolError("ECORRUPT", `${where}: key_encryption "${enc}" is not ecb or ccm`);
}

/** A new black key from the CAAM → its blob in a new descriptor (0600, atomic). Never replaces a descriptor. */
export async function createCaamVolume(o: CreateCaamVolumeOptions): Promise<CaamVolumeDescriptor> {
  const keySize = o.keySize ?? 32;
  const sectorSize = o.sectorSize ?? 4096;
  const enc = o.encryption ?? "ecb";
  checkShape(keySize, sectorSize, enc, "CAAM volume");
  if (existsSync(o.descriptor)) throw new TrustvolError("EBUSY", `${o.descriptor} already exists`, "it holds the key blob of an existing volume; move it away only if that volume's data may be lost");
  const r = await o.keygen.create(enc, { size: keySize });
  wipe(r.blackKey); // valid for this boot only: the volume is opened from the blob like at every later boot
  const d: CaamVolumeDescriptor = { type: CAAM_VOLUME_TYPE, version: 1, cipher: CAAM_TK_CIPHER, key_size: keySize, key_encryption: enc, sector_size: sectorSize, blob: r.blob.toString("base64") };
  atomicWriteFileSync(o.descriptor, Buffer.from(JSON.stringify(d, null, 2) + "\n"), 0o600);
  return d;
}

/** Read and check a descriptor (it is on disk: nothing in it may choose a cipher, a path or a size out of range). */
export function readCaamVolumeDescriptor(path: string): { d: CaamVolumeDescriptor; blob: Buffer } {
  let d: CaamVolumeDescriptor;
  try {
    d = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    const missing = (e as NodeJS.ErrnoException).code === "ENOENT";
    throw new TrustvolError(missing ? "ENOENT" : "ECORRUPT", `the CAAM key descriptor ${path} ${missing ? "does not exist" : e instanceof SyntaxError ? "is not valid JSON" : "cannot be read"}`, "restore it from backup; without it the volume cannot be opened");
  }
  if (typeof d !== "object" || d === null || d.type !== CAAM_VOLUME_TYPE || d.version !== 1) throw new TrustvolError("ECORRUPT", `${path} is not a trustvol CAAM volume descriptor`);
  const known = new Set(["type", "version", "cipher", "key_size", "key_encryption", "sector_size", "blob"]);
  const extra = Object.keys(d).find((k) => !known.has(k));
  if (extra) throw new TrustvolError("ECORRUPT", `${path}: unknown field "${extra}"`);
  if (d.cipher !== CAAM_TK_CIPHER) throw new TrustvolError("ECORRUPT", `${path}: cipher must be ${CAAM_TK_CIPHER}`);
  checkShape(d.key_size, d.sector_size, d.key_encryption, path);
  if (typeof d.blob !== "string" || !/^[A-Za-z0-9+/]+={0,2}$/.test(d.blob)) throw new TrustvolError("ECORRUPT", `${path}: blob is not base64`);
  const blob = Buffer.from(d.blob, "base64");
  const { header, object } = decodeTag(blob, `${path}: blob`);
  if (header.redKeyLen !== d.key_size || object.length !== blobLength(d.key_size) || encryptionOf(header.type) !== d.key_encryption)
    throw new TrustvolError("ECORRUPT", `${path}: the blob (a ${header.redKeyLen}-byte ${encryptionOf(header.type)} key, ${object.length} bytes) does not match key_size ${d.key_size} / key_encryption ${d.key_encryption}`);
  return { d, blob };
}

/** Open a CAAM volume: import the blob (this boot's black key), map with it as a logon key, unlink it. */
export async function openCaamVolume(image: string, name: string, o: ActivateOptions & { descriptor: string; keygen: CaamKeygen }): Promise<OpenResult> {
  const { d, blob } = readCaamVolumeDescriptor(o.descriptor);
  const { keygen, descriptor: _, ...activate } = o;
  const blackKey = o.dryRun ? undefined : await keygen.import(blob);
  try {
    const r = await openPlain(image, name, {
      ...activate,
      cipher: d.cipher,
      key: blackKey ? { type: "logon", keyBytes: blackKey, description: `trustvol-caam:${name}` } : { type: "logon", description: `trustvol-caam:${name}`, size: blackKeySizeOf(d) },
      sectorSize: d.sector_size,
    });
    return { ...r, kind: "caam-volume" };
  } finally {
    wipe(blackKey);
  }
}

/** The tagged black key's length for a descriptor (what the dm table's :SIZE: names). */
export function blackKeySizeOf(d: Pick<CaamVolumeDescriptor, "key_size" | "key_encryption">): number {
  return TAG_OVERHEAD + blackKeyLength(d.key_encryption, d.key_size);
}

/** Whether a descriptor file is a CAAM one (for `trustvol open --blob` dispatch); false when unreadable. */
export function isCaamDescriptor(path: string): boolean {
  try {
    return (JSON.parse(readFileSync(path, "utf8")) as { type?: unknown })?.type === CAAM_VOLUME_TYPE;
  } catch {
    return false;
  }
}
