// The 4096-byte binary LUKS2 header (LUKS2 spec §2.2, Table 1): big-endian, followed by the JSON area.
import { createHash, getHashes } from "node:crypto";
import {
  LUKS2_MAGIC_PRIMARY,
  LUKS2_MAGIC_SECONDARY,
  LUKS2_BINARY_HEADER_SIZE,
  LUKS2_HDR_SIZES,
  LUKS2_LABEL_L,
  LUKS2_SUBSYSTEM_L,
  LUKS2_UUID_L,
  LUKS2_SALT_L,
  LUKS2_CHECKSUM_ALG_L,
  LUKS2_CHECKSUM_L,
} from "./constants.js";
import { TrustvolError } from "../util/errors.js";

export interface Luks2BinaryHeader {
  primary: boolean; // magic "LUKS\xba\xbe" vs "SKUL\xba\xbe"
  version: number;
  hdrSize: number; // binary header + JSON area, bytes
  seqid: bigint;
  label: string;
  checksumAlg: string;
  salt: Buffer; // 64 bytes, per copy
  uuid: string;
  subsystem: string;
  hdrOffset: number; // offset of this copy on the device
  checksum: Buffer; // 64 bytes, first digest-length bytes used
}

const OFF = { magic: 0, version: 6, hdrSize: 8, seqid: 16, label: 24, csumAlg: 72, salt: 104, uuid: 168, subsystem: 208, hdrOffset: 256, csum: 448 } as const;

function cstr(buf: Buffer, off: number, len: number, field: string): string {
  const raw = buf.subarray(off, off + len);
  const nul = raw.indexOf(0);
  if (nul < 0) throw new TrustvolError("ECORRUPT", `LUKS2 header: ${field} is not NUL-terminated`, "the header is damaged; try `trustvol repair` or restore a header backup");
  // Any bytes, as cryptsetup 2.6.1 loads them (a UTF-8 label such as "persist-ä" is ordinary; the differential test
  // found control bytes accepted too). Text output escapes control characters (dump.ts). A label that is not valid
  // UTF-8 is rewritten as UTF-8 (U+FFFD) by the next header write.
  return raw.subarray(0, nul).toString("utf8");
}

function putStr(buf: Buffer, off: number, len: number, s: string, field: string): void {
  const b = Buffer.from(s, "utf8");
  if (b.length >= len) throw new TrustvolError("EUSAGE", `${field} is too long (max ${len - 1} bytes)`);
  buf.fill(0, off, off + len);
  b.copy(buf, off);
}

/** Digest length for a checksum algorithm name as cryptsetup writes it ("sha256"). */
export function checksumLength(alg: string): number {
  // OpenSSL looks digest names up case-insensitively, so cryptsetup 2.6.1 accepts "SHA256" (differential test).
  const a = alg.toLowerCase();
  if (!/^[a-z0-9-]+$/.test(a) || !getHashes().includes(a)) return -1;
  return createHash(a).digest().length;
}

/** Parse the binary part; `kind` tells which magic is expected. Does not check the checksum (needs the JSON area). */
export function parseBinaryHeader(buf: Buffer): Luks2BinaryHeader {
  if (buf.length < LUKS2_BINARY_HEADER_SIZE) throw new TrustvolError("ETRUNCATED", "LUKS2 header is truncated", "the device is smaller than a LUKS2 header");
  const magic = buf.subarray(0, 6);
  const primary = magic.equals(LUKS2_MAGIC_PRIMARY);
  if (!primary && !magic.equals(LUKS2_MAGIC_SECONDARY)) throw new TrustvolError("ENOTLUKS", "no LUKS2 header magic", "this is not a LUKS2 device (or its header is destroyed)");
  const version = buf.readUInt16BE(OFF.version);
  const hdrSize = buf.readBigUInt64BE(OFF.hdrSize);
  if (!LUKS2_HDR_SIZES.includes(Number(hdrSize)))
    throw new TrustvolError("ECORRUPT", `LUKS2 header: invalid header size ${hdrSize}`, "the header is damaged; try `trustvol repair` or restore a header backup");
  const hdrOffset = buf.readBigUInt64BE(OFF.hdrOffset);
  if (hdrOffset > BigInt(Number.MAX_SAFE_INTEGER)) throw new TrustvolError("ECORRUPT", "LUKS2 header: invalid header offset");
  return {
    primary,
    version,
    hdrSize: Number(hdrSize),
    seqid: buf.readBigUInt64BE(OFF.seqid),
    label: cstr(buf, OFF.label, LUKS2_LABEL_L, "label"),
    checksumAlg: cstr(buf, OFF.csumAlg, LUKS2_CHECKSUM_ALG_L, "checksum algorithm"),
    salt: Buffer.from(buf.subarray(OFF.salt, OFF.salt + LUKS2_SALT_L)),
    uuid: cstr(buf, OFF.uuid, LUKS2_UUID_L, "uuid"),
    subsystem: cstr(buf, OFF.subsystem, LUKS2_SUBSYSTEM_L, "subsystem"),
    hdrOffset: Number(hdrOffset),
    checksum: Buffer.from(buf.subarray(OFF.csum, OFF.csum + LUKS2_CHECKSUM_L)),
  };
}

/** Serialize the 4096-byte binary header with a zero checksum field. */
export function encodeBinaryHeader(h: Omit<Luks2BinaryHeader, "checksum">): Buffer {
  const b = Buffer.alloc(LUKS2_BINARY_HEADER_SIZE);
  (h.primary ? LUKS2_MAGIC_PRIMARY : LUKS2_MAGIC_SECONDARY).copy(b, OFF.magic);
  b.writeUInt16BE(h.version, OFF.version);
  b.writeBigUInt64BE(BigInt(h.hdrSize), OFF.hdrSize);
  b.writeBigUInt64BE(h.seqid, OFF.seqid);
  putStr(b, OFF.label, LUKS2_LABEL_L, h.label, "label");
  putStr(b, OFF.csumAlg, LUKS2_CHECKSUM_ALG_L, h.checksumAlg, "checksum algorithm");
  if (h.salt.length !== LUKS2_SALT_L) throw new TrustvolError("EINTERNAL", "header salt must be 64 bytes");
  h.salt.copy(b, OFF.salt);
  putStr(b, OFF.uuid, LUKS2_UUID_L, h.uuid, "uuid");
  putStr(b, OFF.subsystem, LUKS2_SUBSYSTEM_L, h.subsystem, "subsystem");
  b.writeBigUInt64BE(BigInt(h.hdrOffset), OFF.hdrOffset);
  return b;
}

/** Checksum = hash(binary header with csum zeroed ‖ JSON area) (LUKS2 spec §2.2). */
export function computeChecksum(alg: string, headerArea: Buffer): Buffer {
  const copy = Buffer.from(headerArea);
  copy.fill(0, OFF.csum, OFF.csum + LUKS2_CHECKSUM_L);
  return createHash(alg.toLowerCase()).update(copy).digest();
}

/** Write the checksum into a full header area (binary header + JSON area) in place. */
export function sealChecksum(headerArea: Buffer, alg: string): void {
  headerArea.fill(0, OFF.csum, OFF.csum + LUKS2_CHECKSUM_L); // the field hashes as zeros: no copy of the area needed
  createHash(alg.toLowerCase()).update(headerArea).digest().copy(headerArea, OFF.csum);
}

export function verifyChecksum(headerArea: Buffer, h: Luks2BinaryHeader): boolean {
  const len = checksumLength(h.checksumAlg);
  if (len <= 0 || len > LUKS2_CHECKSUM_L) return false;
  const d = computeChecksum(h.checksumAlg, headerArea);
  return d.equals(h.checksum.subarray(0, len));
}

export const BINARY_HEADER_OFFSETS = OFF;
