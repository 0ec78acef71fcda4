// dm-verity parameters, the 512-byte on-disk superblock, and the hash-tree geometry.
// Layout and rules as cryptsetup 2.6.1 writes them (lib/verity/verity.c, verity_hash.c; wiki "DMVerity"):
//   signature "verity\0\0" @0, version u32 @8 (=1), hash_type u32 @12, uuid[16] @16, algorithm[32] @32,
//   data_block_size u32 @64, hash_block_size u32 @68, data_blocks u64 @72, salt_size u16 @80, pad[6], salt[256] @88,
//   pad[168] — little-endian, 512 bytes. The tree starts at the first hash block after the superblock.
import { randomBytes, randomUUID, getHashes } from "node:crypto";
import { TrustvolError, corrupt, unsupported, usage } from "../util/errors.js";

export type VerityHashAlgorithm = "sha256" | "sha1" | "sha512" | "sha384" | "sha224";
export const VERITY_HASH_ALGORITHMS: readonly VerityHashAlgorithm[] = ["sha256", "sha1", "sha512", "sha384", "sha224"];

export interface VerityParams {
  hashAlgorithm: VerityHashAlgorithm;
  dataBlockSize: number;
  hashBlockSize: number;
  /** Number of data blocks hashed (veritysetup --data-blocks; default: data device size / dataBlockSize). */
  dataBlocks: bigint;
  salt: Buffer;
  /** 1 = normal (salt first, digests padded to a power of two); 0 = original Chrome OS (salt last, packed). */
  hashType: 0 | 1;
  /** Lower-case canonical UUID; absent with noSuperblock. */
  uuid?: string;
  /** Byte offset of the superblock (or, with noSuperblock, of the hash area) in the hash device; multiple of 512. */
  hashOffset: number;
  noSuperblock: boolean;
}

export const VERITY_SB_SIZE = 512;
export const VERITY_MAGIC = Buffer.from("verity\0\0", "latin1");
const MAX_SALT = 256;
const MAX_LEVELS = 63;

export const DIGEST_SIZE: Record<VerityHashAlgorithm, number> = { sha1: 20, sha224: 28, sha256: 32, sha384: 48, sha512: 64 };

export function isValidBlockSize(n: number): boolean {
  // cryptsetup VERITY_BLOCK_SIZE_OK: a power of two from 512 bytes to 512 KiB.
  return Number.isInteger(n) && n >= 512 && n <= 512 * 1024 && (n & (n - 1)) === 0;
}

function uuidToBytes(uuid: string): Buffer {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(uuid))
    throw usage(`verity: "${uuid}" is not a UUID`, "give it as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx");
  return Buffer.from(uuid.replace(/-/g, ""), "hex");
}

function bytesToUuid(b: Buffer): string {
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Fill defaults the way `veritysetup format` does and validate; throws EUSAGE/EUNSUPPORTED on bad values. */
export function resolveVerityParams(p: Partial<Omit<VerityParams, "dataBlocks" | "salt">> & { dataBlocks?: bigint | number; salt?: Uint8Array }, dataDeviceSize?: number): VerityParams {
  const hashAlgorithm = (p.hashAlgorithm ?? "sha256").toLowerCase() as VerityHashAlgorithm;
  if (!VERITY_HASH_ALGORITHMS.includes(hashAlgorithm))
    throw unsupported(`verity: hash algorithm ${hashAlgorithm} is not supported`, `use one of ${VERITY_HASH_ALGORITHMS.join(", ")}`);
  const dataBlockSize = p.dataBlockSize ?? 4096;
  const hashBlockSize = p.hashBlockSize ?? 4096;
  if (!isValidBlockSize(dataBlockSize)) throw usage(`verity: data block size ${dataBlockSize} is invalid`, "use a power of two from 512 to 524288");
  if (!isValidBlockSize(hashBlockSize)) throw usage(`verity: hash block size ${hashBlockSize} is invalid`, "use a power of two from 512 to 524288");
  const hashType = p.hashType ?? 1;
  if (hashType !== 0 && hashType !== 1) throw usage(`verity: hash type ${String(hashType)} is invalid`, "use 1 (normal) or 0 (Chrome OS)");
  const salt = p.salt !== undefined ? Buffer.from(p.salt) : randomBytes(32);
  if (salt.length > MAX_SALT) throw usage(`verity: salt of ${salt.length} bytes is too long`, "at most 256 bytes");
  const hashOffset = p.hashOffset ?? 0;
  if (!Number.isSafeInteger(hashOffset) || hashOffset < 0 || hashOffset % 512 !== 0)
    throw usage(`verity: hash offset ${hashOffset} is invalid`, "use a multiple of 512 bytes");
  let dataBlocks: bigint;
  if (p.dataBlocks !== undefined && BigInt(p.dataBlocks) !== 0n) dataBlocks = BigInt(p.dataBlocks);
  else if (dataDeviceSize !== undefined) dataBlocks = BigInt(Math.floor(dataDeviceSize / dataBlockSize));
  else throw usage("verity: the number of data blocks is unknown");
  if (dataBlocks <= 0n) throw usage("verity: the data device holds no complete data block", `it must be at least ${dataBlockSize} bytes`);
  const noSuperblock = p.noSuperblock ?? false;
  let uuid: string | undefined;
  if (!noSuperblock) uuid = (p.uuid ?? randomUUID()).toLowerCase();
  if (uuid) uuidToBytes(uuid);
  return { hashAlgorithm, dataBlockSize, hashBlockSize, dataBlocks, salt, hashType, uuid, hashOffset, noSuperblock };
}

export function encodeVeritySuperblock(p: VerityParams): Buffer {
  const b = Buffer.alloc(VERITY_SB_SIZE);
  VERITY_MAGIC.copy(b, 0);
  b.writeUInt32LE(1, 8);
  b.writeUInt32LE(p.hashType, 12);
  uuidToBytes(p.uuid ?? "00000000-0000-0000-0000-000000000000").copy(b, 16);
  b.write(p.hashAlgorithm, 32, 31, "latin1");
  b.writeUInt32LE(p.dataBlockSize, 64);
  b.writeUInt32LE(p.hashBlockSize, 68);
  b.writeBigUInt64LE(p.dataBlocks, 72);
  b.writeUInt16LE(p.salt.length, 80);
  p.salt.copy(b, 88);
  return b;
}

/** Parse a superblock; errors mirror veritysetup's checks (magic, version, hash type, block sizes, algorithm, salt size). */
export function parseVeritySuperblock(buf: Uint8Array, hashOffset = 0, name = "hash device"): VerityParams {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < VERITY_SB_SIZE) throw new TrustvolError("ETRUNCATED", `${name}: verity superblock truncated (${b.length} of 512 bytes)`, "the hash device is truncated");
  if (!b.subarray(0, 8).equals(VERITY_MAGIC))
    throw corrupt(`${name}: no verity superblock at offset ${hashOffset} (bad magic)`, "check the hash device and --hash-offset, or use --no-superblock with explicit parameters");
  const version = b.readUInt32LE(8);
  if (version !== 1) throw unsupported(`${name}: unsupported verity superblock version ${version}`, "only version 1 exists");
  const hashType = b.readUInt32LE(12);
  if (hashType > 1) throw unsupported(`${name}: unsupported verity hash type ${hashType}`, "only types 0 and 1 exist");
  const dataBlockSize = b.readUInt32LE(64);
  const hashBlockSize = b.readUInt32LE(68);
  if (!isValidBlockSize(dataBlockSize) || !isValidBlockSize(hashBlockSize))
    throw corrupt(`${name}: verity superblock has an invalid block size (data ${dataBlockSize}, hash ${hashBlockSize})`, "the superblock is damaged");
  const algBytes = b.subarray(32, 64);
  const nul = algBytes.indexOf(0);
  const alg = algBytes.subarray(0, nul < 0 ? 32 : nul).toString("latin1");
  if (!VERITY_HASH_ALGORITHMS.includes(alg as VerityHashAlgorithm))
    throw unsupported(`${name}: verity hash algorithm "${alg.replace(/[^\x20-\x7e]/g, "?")}" is not supported`, `supported: ${VERITY_HASH_ALGORITHMS.join(", ")}`);
  const saltSize = b.readUInt16LE(80);
  if (saltSize > MAX_SALT) throw corrupt(`${name}: verity superblock salt size ${saltSize} exceeds 256`, "the superblock is damaged");
  const dataBlocks = b.readBigUInt64LE(72);
  if (dataBlocks === 0n) throw corrupt(`${name}: verity superblock says 0 data blocks`, "the superblock is damaged");
  return {
    hashAlgorithm: alg as VerityHashAlgorithm,
    dataBlockSize,
    hashBlockSize,
    dataBlocks,
    salt: Buffer.from(b.subarray(88, 88 + saltSize)),
    hashType: hashType as 0 | 1,
    uuid: bytesToUuid(b.subarray(16, 32)),
    hashOffset,
    noSuperblock: false,
  };
}

export interface VerityGeometry {
  digestSize: number;
  /** Bytes one digest takes in a hash block: a power of two for type 1, the digest itself for type 0. */
  entrySize: number;
  hashPerBlock: number;
  levels: number;
  /** First hash block (in hash blocks from the start of the hash device) of the tree. */
  treeStartBlock: bigint;
  /** levelStart[i]: hash device block where level i starts (level 0 hashes the data; the top level is stored first). */
  levelStart: bigint[];
  levelBlocks: bigint[];
  /** Tree blocks in all levels (veritysetup dump "Hash blocks"). */
  hashBlocks: bigint;
  /** Bytes the hash device must have: (treeStartBlock + hashBlocks) * hashBlockSize (veritysetup "Hash device size"). */
  hashDeviceSize: bigint;
}

function bitsDown(u: number): number {
  let i = 0;
  while (u >>> i > 1) i++;
  return i;
}
function bitsUp(u: number): number {
  let i = 0;
  while (1 << i < u) i++;
  return i;
}

export function verityGeometry(p: VerityParams): VerityGeometry {
  const digestSize = DIGEST_SIZE[p.hashAlgorithm];
  const entrySize = p.hashType === 1 ? 1 << bitsUp(digestSize) : digestSize;
  const bits = bitsDown(Math.floor(p.hashBlockSize / digestSize));
  if (bits === 0) throw usage(`verity: hash block size ${p.hashBlockSize} is too small for ${p.hashAlgorithm}`);
  const hashPerBlock = 1 << bits;
  const hbs = BigInt(p.hashBlockSize);
  const treeStartBlock = p.noSuperblock
    ? BigInt(p.hashOffset) / hbs
    : (BigInt(p.hashOffset) + BigInt(VERITY_SB_SIZE) + hbs - 1n) / hbs;
  const n = p.dataBlocks;
  let levels = 0;
  while (bits * levels < 64 && (n - 1n) >> BigInt(bits * levels) !== 0n) levels++;
  if (levels > MAX_LEVELS) throw usage("verity: too many tree levels");
  const levelStart: bigint[] = new Array(levels);
  const levelBlocks: bigint[] = new Array(levels);
  let pos = treeStartBlock;
  for (let i = levels - 1; i >= 0; i--) {
    const shift = BigInt((i + 1) * bits);
    const s = (n + (1n << shift) - 1n) >> shift;
    levelStart[i] = pos;
    levelBlocks[i] = s;
    pos += s;
  }
  return { digestSize, entrySize, hashPerBlock, levels, treeStartBlock, levelStart, levelBlocks, hashBlocks: pos - treeStartBlock, hashDeviceSize: pos * hbs };
}

/** Supported by this Node's OpenSSL (always true for the list above, kept as a guard for exotic builds). */
export function nodeSupports(alg: VerityHashAlgorithm): boolean {
  return getHashes().includes(alg);
}
