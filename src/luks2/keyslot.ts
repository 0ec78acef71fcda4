// LUKS2 keyslots of type "luks2" (LUKS2 spec §3.2): KDF(passphrase) keys the area cipher that holds the AF-split volume key.
import { randomBytes } from "node:crypto";
import type { BlockDevice } from "../blockdev/types.js";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { createSectorCipher } from "../dmcrypt/sector-cipher.js";
import { afMerge, afSplit, afSectorsBytes } from "./af.js";
import { deriveKey, chooseKdf, opensslHash, type PbkdfOptions } from "./kdf.js";
import { LUKS_STRIPES, ALIGN_4K, SECTOR_SIZE } from "./constants.js";
import { u64Num, type Luks2Keyslot, type Luks2Metadata } from "./metadata.js";

/** Decrypt keyslot `id` with a passphrase; returns the candidate volume key (unverified) — caller checks the digest and wipes. */
export async function openKeyslotCandidate(dev: BlockDevice, ks: Luks2Keyslot, passphrase: Uint8Array): Promise<Buffer> {
  if (ks.type !== "luks2" || !ks.af || !ks.kdf) throw new TrustvolError("EUNSUPPORTED", `keyslot type "${String(ks.type).slice(0, 32)}" cannot be opened with a passphrase`);
  const afHash = opensslHash(ks.af.hash); // refuse an unknown hash before any work, not as a crash inside afMerge
  const areaKeySize = ks.area.key_size as number;
  if (!Number.isInteger(areaKeySize) || areaKeySize < 1 || areaKeySize > 1024)
    throw new TrustvolError("ECORRUPT", `keyslot area key size ${String(areaKeySize).slice(0, 24)} is out of range (1..1024 bytes)`, "this keyslot is damaged; unlock with another keyslot or a token");
  const derived = await deriveKey(ks.kdf, passphrase, areaKeySize);
  const len = afSectorsBytes(ks.key_size, ks.af.stripes);
  if (u64Num(ks.area.size, "area.size") < len)
    throw new TrustvolError("ECORRUPT", `keyslot area (${ks.area.size} bytes) is smaller than the ${len} bytes of key material it should hold`, "this keyslot is damaged; unlock with another keyslot or a token");
  const material = Buffer.allocUnsafeSlow(len);
  try {
    await dev.read(material, u64Num(ks.area.offset, "area.offset"));
    const c = createSectorCipher({ cipher: ks.area.encryption as string, key: derived, sectorSize: SECTOR_SIZE });
    try {
      c.decrypt(material, 0);
    } finally {
      c.dispose();
    }
    return afMerge(material, ks.key_size, ks.af.stripes, afHash);
  } finally {
    wipe(derived, material);
  }
}

export interface NewKeyslotOptions {
  pbkdf?: PbkdfOptions;
  /** Area cipher, cryptsetup default = the segment cipher (aes-xts-plain64). */
  areaEncryption?: string;
  /** Area key size in bytes; default = volume key size. */
  areaKeySize?: number;
  afHash?: string;
  priority?: number;
}

/** Bytes a keyslot area needs for a key of keyLen bytes (cryptsetup aligns to 4 KiB). */
export function keyslotAreaSize(keyLen: number): number {
  return Math.ceil(afSectorsBytes(keyLen, LUKS_STRIPES) / ALIGN_4K) * ALIGN_4K;
}

/** First gap in the keyslots area that fits `size` bytes (cryptsetup LUKS2_find_area_gap), or throws ENOSPC. */
export function findAreaGap(m: Luks2Metadata, hdrSize: number, size: number, ignoreSlot?: string): number {
  const start = 2 * hdrSize;
  const end = start + u64Num(m.config.keyslots_size, "config.keyslots_size");
  const used = Object.entries(m.keyslots)
    .filter(([id]) => id !== ignoreSlot)
    .map(([, ks]) => [u64Num(ks.area.offset, "area.offset"), u64Num(ks.area.offset, "area.offset") + u64Num(ks.area.size, "area.size")] as const)
    .sort((a, b) => a[0] - b[0]);
  let pos = start;
  for (const [s, e] of used) {
    if (s - pos >= size) break;
    pos = Math.max(pos, e);
  }
  if (pos + size > end) throw new TrustvolError("ENOSPC", "no free space left in the LUKS2 keyslots area", "remove an unused keyslot first");
  return pos;
}

/** Build the keyslot JSON and its encrypted area. Nothing is written: the caller writes the area, then commits the header. */
export async function buildKeyslot(
  m: Luks2Metadata,
  hdrSize: number,
  volumeKey: Uint8Array,
  passphrase: Uint8Array,
  opts: NewKeyslotOptions,
  ignoreSlot?: string,
): Promise<{ keyslot: Luks2Keyslot; areaOffset: number; areaData: Buffer }> {
  const keyLen = volumeKey.length;
  const areaKeySize = opts.areaKeySize ?? keyLen;
  const enc = opts.areaEncryption ?? "aes-xts-plain64";
  const size = keyslotAreaSize(keyLen);
  const offset = findAreaGap(m, hdrSize, size, ignoreSlot);
  const kdf = await chooseKdf(opts.pbkdf ?? {}, randomBytes(32), areaKeySize);
  // cryptsetup takes the AF hash from the PBKDF2 hash, and uses sha256 with Argon2.
  const afHash = opts.afHash ?? (kdf.type === "pbkdf2" ? kdf.hash : "sha256");
  const derived = await deriveKey(kdf, passphrase, areaKeySize);
  const areaData = Buffer.alloc(afSectorsBytes(keyLen, LUKS_STRIPES));
  let split: Buffer | undefined;
  try {
    split = afSplit(volumeKey, LUKS_STRIPES, afHash);
    split.copy(areaData);
    const c = createSectorCipher({ cipher: enc, key: derived, sectorSize: SECTOR_SIZE });
    try {
      c.encrypt(areaData, 0);
    } finally {
      c.dispose();
    }
  } catch (e) {
    wipe(areaData); // it may hold the AF-split volume key in clear
    throw e;
  } finally {
    wipe(derived, split);
  }
  const keyslot: Luks2Keyslot = {
    type: "luks2",
    key_size: keyLen,
    af: { type: "luks1", stripes: LUKS_STRIPES, hash: afHash },
    area: { type: "raw", offset: String(offset), size: String(size), encryption: enc, key_size: areaKeySize },
    kdf,
  };
  if (opts.priority !== undefined && opts.priority !== 1) keyslot.priority = opts.priority;
  return { keyslot, areaOffset: offset, areaData };
}

/** Overwrite a keyslot area (after it has been dropped from the metadata): random data, as cryptsetup does. */
export async function wipeArea(dev: BlockDevice, offset: number, size: number): Promise<void> {
  const chunk = 1 << 20;
  for (let pos = 0; pos < size; pos += chunk) {
    const n = Math.min(chunk, size - pos);
    await dev.write(randomBytes(n), offset + pos);
  }
  await dev.flush();
}
