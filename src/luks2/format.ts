// luksFormat: a new LUKS2 header with one passphrase keyslot, laid out as cryptsetup 2.6 lays it out.
import { randomBytes, randomUUID } from "node:crypto";
import type { BlockDevice } from "../blockdev/types.js";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { parseCipherSpec } from "../dmcrypt/cipher-spec.js";
import { encodeHeaderCopies, type Luks2Header } from "./header.js";
import { buildKeyslot, keyslotAreaSize } from "./keyslot.js";
import { createDigest } from "./digest.js";
import type { PbkdfOptions } from "./kdf.js";
import type { Luks2Metadata } from "./metadata.js";
import { LUKS2_DEFAULT_HDR_SIZE, LUKS2_HDR_SIZES, LUKS2_SALT_L, ALIGN_4K, LUKS2_MAX_KEYSLOTS_SIZE } from "./constants.js";
import { Luks2Volume } from "./volume.js";

export interface FormatOptions {
  cipher?: string; // "aes-xts-plain64" (default), "aes-cbc-essiv:sha256", "aes-cbc-plain64"
  keySizeBits?: number; // 512 for xts (default), 256 for cbc
  sectorSize?: number; // 512..4096, default 4096
  label?: string;
  subsystem?: string;
  uuid?: string;
  /** Data offset in bytes. Default 16 MiB, or 0 with a detached header. */
  dataOffset?: number;
  /** Metadata (binary + JSON) size of one copy: 16 KiB default. */
  metadataSize?: number;
  keyslotsSize?: number;
  pbkdf?: PbkdfOptions;
  /** Use this volume key instead of a fresh random one (e.g. `image encrypt` of known data, tests). */
  volumeKey?: Uint8Array;
  keyslot?: number;
  /** PBKDF2 iterations of the volume-key digest (benchmarked to 125 ms when absent). */
  digestIterations?: number;
}

export const DEFAULT_DATA_OFFSET = 16 * 1024 * 1024;

export function validateUuid(u: string): string {
  if (!/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(u)) throw new TrustvolError("EUSAGE", `"${u}" is not a UUID`);
  return u.toLowerCase();
}

/** A volume key of the right size; XTS halves must differ (OpenSSL 3 rejects equal halves). */
export function newVolumeKey(bytes: number, xts: boolean): Buffer {
  for (;;) {
    const k = randomBytes(bytes);
    if (!xts || !k.subarray(0, bytes / 2).equals(k.subarray(bytes / 2))) return k;
  }
}

export interface FormatPlan {
  header: Luks2Header;
  volumeKey: Buffer;
  keyslotArea: { offset: number; data: Buffer };
  copies: [Buffer, Buffer];
  metadataAreaEnd: number; // 2*hdr_size + keyslots_size: everything before this on the header device is ours
}

/** Build a complete header in memory (pure apart from randomness and the KDF). */
export async function planFormat(passphrase: Uint8Array, opts: FormatOptions = {}, detached = false): Promise<FormatPlan> {
  const cipher = opts.cipher ?? "aes-xts-plain64";
  const spec = parseCipherSpec(cipher);
  const xts = spec.chainMode === "xts";
  const keyBits = opts.keySizeBits ?? (xts ? 512 : 256);
  const validBits = xts ? [256, 512] : [128, 192, 256];
  if (!validBits.includes(keyBits)) throw new TrustvolError("EUSAGE", `key size ${keyBits} bits is not valid for ${cipher} (use ${validBits.join(" or ")})`);
  const keyBytes = keyBits / 8;
  const sectorSize = opts.sectorSize ?? 4096;
  if (![512, 1024, 2048, 4096].includes(sectorSize)) throw new TrustvolError("EUSAGE", `sector size ${sectorSize} is not one of 512, 1024, 2048, 4096`);
  const hdrSize = opts.metadataSize ?? LUKS2_DEFAULT_HDR_SIZE;
  if (!LUKS2_HDR_SIZES.includes(hdrSize)) throw new TrustvolError("EUSAGE", `metadata size ${hdrSize} is not one of ${LUKS2_HDR_SIZES.join(", ")}`);
  const dataOffset = opts.dataOffset ?? (detached ? 0 : DEFAULT_DATA_OFFSET);
  if (dataOffset % sectorSize !== 0) throw new TrustvolError("EUSAGE", `data offset ${dataOffset} is not a multiple of the sector size ${sectorSize}`);
  // (a given size over cryptsetup's 128 MiB limit is refused, as cryptsetup does; only the default is capped)
  if (opts.keyslotsSize !== undefined && opts.keyslotsSize > LUKS2_MAX_KEYSLOTS_SIZE) throw new TrustvolError("EUSAGE", `keyslots area size ${opts.keyslotsSize} is over the LUKS2 limit of ${LUKS2_MAX_KEYSLOTS_SIZE} bytes (128 MiB)`);
  const keyslotsSize = Math.min(opts.keyslotsSize ?? (dataOffset && !detached ? dataOffset - 2 * hdrSize : DEFAULT_DATA_OFFSET - 2 * hdrSize), LUKS2_MAX_KEYSLOTS_SIZE);
  if (keyslotsSize <= 0 || keyslotsSize % ALIGN_4K) throw new TrustvolError("EUSAGE", `keyslots area size ${keyslotsSize} must be a positive multiple of 4096`);
  if (keyslotsSize < keyslotAreaSize(keyBytes)) throw new TrustvolError("EUSAGE", `keyslots area size ${keyslotsSize} is too small for one keyslot of a ${keyBits}-bit key (${keyslotAreaSize(keyBytes)} bytes)`, "give a larger --luks2-keyslots-size, or leave it out");
  if (dataOffset !== 0 && dataOffset < 2 * hdrSize + keyslotsSize) throw new TrustvolError("EUSAGE", `data offset ${dataOffset} is inside the metadata and keyslots area (${2 * hdrSize + keyslotsSize} bytes)`);
  if (opts.volumeKey && opts.volumeKey.length !== keyBytes) throw new TrustvolError("EUSAGE", `volume key is ${opts.volumeKey.length} bytes, expected ${keyBytes}`);
  const volumeKey = opts.volumeKey ? Buffer.from(opts.volumeKey) : newVolumeKey(keyBytes, xts);
  const slot = String(opts.keyslot ?? 0);

  const metadata: Luks2Metadata = {
    keyslots: {},
    tokens: {},
    segments: {
      "0": { type: "crypt", offset: String(dataOffset), size: "dynamic", iv_tweak: "0", encryption: cipher, sector_size: sectorSize },
    },
    digests: {},
    config: { json_size: String(hdrSize - 4096), keyslots_size: String(keyslotsSize) },
  };
  const header: Luks2Header = {
    hdrSize,
    seqid: 1n,
    label: opts.label ?? "",
    subsystem: opts.subsystem ?? "",
    uuid: opts.uuid ? validateUuid(opts.uuid) : randomUUID(),
    checksumAlg: "sha256",
    salts: [randomBytes(LUKS2_SALT_L), randomBytes(LUKS2_SALT_L)],
    metadata,
  };
  try {
    const { keyslot, areaOffset, areaData } = await buildKeyslot(metadata, hdrSize, volumeKey, passphrase, { pbkdf: opts.pbkdf, areaEncryption: cipher, areaKeySize: keyBytes });
    metadata.keyslots[slot] = keyslot;
    metadata.digests["0"] = createDigest(volumeKey, { keyslots: [slot], segments: ["0"], iterations: opts.digestIterations });
    const copies = encodeHeaderCopies(header);
    return { header, volumeKey, keyslotArea: { offset: areaOffset, data: areaData }, copies, metadataAreaEnd: 2 * hdrSize + keyslotsSize };
  } catch (e) {
    wipe(volumeKey);
    throw e;
  }
}

/**
 * Format `headerDev` (the data device itself, or a detached header file). Returns the opened volume and its key
 * (the caller wipes it). The whole metadata+keyslots area is zeroed first, as cryptsetup does.
 */
export async function formatLuks2(headerDev: BlockDevice, passphrase: Uint8Array, opts: FormatOptions = {}, dataDev?: BlockDevice): Promise<{ volume: Luks2Volume; volumeKey: Buffer }> {
  const detached = dataDev !== undefined && dataDev !== headerDev;
  const plan = await planFormat(passphrase, opts, detached);
  try {
    const dataOffset = Number(plan.header.metadata.segments["0"]!.offset);
    if (!detached && (headerDev as { isBlockDevice?: boolean }).isBlockDevice && headerDev.size <= dataOffset)
      throw new TrustvolError("ENOSPC", `${headerDev.name} (${headerDev.size} bytes) has no room for data after the ${dataOffset}-byte header`, "use a larger device or a detached header");
    const zero = Buffer.alloc(1 << 20);
    for (let pos = 0; pos < plan.metadataAreaEnd; pos += zero.length) await headerDev.write(zero.subarray(0, Math.min(zero.length, plan.metadataAreaEnd - pos)), pos);
    await headerDev.write(plan.keyslotArea.data, plan.keyslotArea.offset);
    await headerDev.write(plan.copies[0], 0);
    await headerDev.write(plan.copies[1], plan.header.hdrSize);
    await headerDev.flush();
  } catch (e) {
    wipe(plan.volumeKey);
    throw e;
  } finally {
    wipe(plan.keyslotArea.data);
  }
  return { volume: Luks2Volume.fromHeader(headerDev, plan.header), volumeKey: plan.volumeKey };
}
