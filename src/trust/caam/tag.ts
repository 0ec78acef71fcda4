// NXP CAAM "tagged objects" (linux-imx drivers/crypto/caam/tag_object.h): black keys and blobs that
// /dev/caam-keygen hands to user space carry a 20-byte header so the kernel's tk() ciphers know what they hold:
//   u32 magic 0x5461674f ("TagO"), u32 version (0), u32 type, u32 red_key_len, u32 obj_len   (CPU byte order)
// type bits: 0 = black (encrypted) object, 2 = trusted descriptor KEK, 3 = encrypted key type CCM (else ECB).
// Sizes (keyctl_caam): keys 16..64 bytes; an ECB black key is the key rounded up to 16 bytes, a CCM black key the
// key rounded up to 8 plus 12 bytes; a blob adds 48 bytes (blob key + MAC) to the CCM-sized black key.
import { TrustvolError, usage } from "../../util/errors.js";

export const TAG_MAGIC = 0x5461674f;
export const TAG_OVERHEAD = 20;
export const CAAM_MIN_KEY = 16;
export const CAAM_MAX_KEY = 64;
export const CCM_OVERHEAD = 12;
export const BLOB_OVERHEAD = 48;
/** Buffers keyctl_caam gives the ioctl (the kernel refuses when they are too small). */
export const MAX_BLACK_KEY_SIZE = CAAM_MAX_KEY + CCM_OVERHEAD + TAG_OVERHEAD;
export const MAX_BLOB_SIZE = CAAM_MAX_KEY + CCM_OVERHEAD + BLOB_OVERHEAD + TAG_OVERHEAD;

export const TYPE_BLACK = 1 << 0;
export const TYPE_TRUSTED = 1 << 2;
export const TYPE_CCM = 1 << 3;

export type CaamKeyEncryption = "ecb" | "ccm";

export interface TagHeader {
  magic: number;
  version: number;
  type: number;
  redKeyLen: number;
  objLen: number;
}

const le = (() => new Uint8Array(new Uint16Array([1]).buffer)[0] === 1)();

export function checkKeySize(n: number): void {
  if (!Number.isInteger(n) || n < CAAM_MIN_KEY || n > CAAM_MAX_KEY) throw usage(`CAAM key size must be ${CAAM_MIN_KEY}..${CAAM_MAX_KEY} bytes, got ${n}`);
}

export function blackKeyLength(enc: CaamKeyEncryption, keyLen: number): number {
  return enc === "ecb" ? Math.ceil(keyLen / 16) * 16 : Math.ceil(keyLen / 8) * 8 + CCM_OVERHEAD;
}

export function blobLength(keyLen: number): number {
  return Math.ceil(keyLen / 8) * 8 + CCM_OVERHEAD + BLOB_OVERHEAD;
}

export function encodeTag(h: { type: number; redKeyLen: number; version?: number }, obj: Uint8Array): Buffer {
  const out = Buffer.alloc(TAG_OVERHEAD + obj.length);
  const w = (v: number, o: number) => (le ? out.writeUInt32LE(v >>> 0, o) : out.writeUInt32BE(v >>> 0, o));
  w(TAG_MAGIC, 0);
  w(h.version ?? 0, 4);
  w(h.type, 8);
  w(h.redKeyLen, 12);
  w(obj.length, 16);
  out.set(obj, TAG_OVERHEAD);
  return out;
}

export function decodeTag(buf: Uint8Array, what = "tagged object"): { header: TagHeader; object: Buffer } {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length <= TAG_OVERHEAD) throw new TrustvolError("ECORRUPT", `${what} is too short (${b.length} bytes)`);
  const r = (o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  const header: TagHeader = { magic: r(0), version: r(4), type: r(8), redKeyLen: r(12), objLen: r(16) };
  if (header.magic !== TAG_MAGIC) throw new TrustvolError("ECORRUPT", `${what} has no CAAM tag header (magic 0x${header.magic.toString(16)})`, "is this a file written by caam-keygen / trustvol caam?");
  if (header.objLen !== b.length - TAG_OVERHEAD) throw new TrustvolError("ECORRUPT", `${what} length ${b.length - TAG_OVERHEAD} does not match its tag (${header.objLen})`, "the file is truncated or damaged");
  if (header.redKeyLen < CAAM_MIN_KEY || header.redKeyLen > CAAM_MAX_KEY) throw new TrustvolError("ECORRUPT", `${what} claims a ${header.redKeyLen}-byte key (CAAM keys are 16..64)`);
  return { header, object: b.subarray(TAG_OVERHEAD) };
}

export function encryptionOf(type: number): CaamKeyEncryption {
  return type & TYPE_CCM ? "ccm" : "ecb";
}
