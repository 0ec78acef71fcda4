// LUKS1 (LUKS1 on-disk format spec v1.2.3 §2): read, dump and unlock legacy volumes still in the field.
import { pbkdf2 } from "node:crypto";
import { promisify } from "node:util";
import type { BlockDevice } from "../blockdev/types.js";
import { TrustvolError } from "../util/errors.js";
import { wipe, constantTimeEqual } from "../util/secret.js";
import { createSectorCipher } from "../dmcrypt/sector-cipher.js";
import { afMerge, afSectorsBytes } from "../luks2/af.js";
import { opensslHash } from "../luks2/kdf.js";
import { LUKS2_MAGIC_PRIMARY } from "../luks2/constants.js";

const pbkdf2Async = promisify(pbkdf2);
export const LUKS1_HEADER_SIZE = 592;
const KEY_ENABLED = 0x00ac71f3;
const KEY_DISABLED = 0x0000dead;

export interface Luks1Keyslot {
  active: boolean;
  iterations: number;
  salt: Buffer;
  keyMaterialOffset: number; // sectors
  stripes: number;
}
export interface Luks1Header {
  version: 1;
  cipherName: string;
  cipherMode: string;
  hashSpec: string;
  payloadOffset: number; // sectors
  keyBytes: number;
  mkDigest: Buffer;
  mkDigestSalt: Buffer;
  mkDigestIterations: number;
  uuid: string;
  keyslots: Luks1Keyslot[];
}

function cstr(b: Buffer, off: number, len: number, what: string, lenient = false): string {
  const raw = b.subarray(off, off + len);
  const nul = raw.indexOf(0);
  const s = (nul < 0 ? raw : raw.subarray(0, nul)).toString("latin1");
  if (/^[\x20-\x7e]*$/.test(s)) return s;
  // cryptsetup does not check these bytes (the cipher fails later, at use); we only keep them away from a terminal.
  if (lenient) return s.replace(/[^\x20-\x7e]/g, "?");
  throw new TrustvolError("ECORRUPT", `LUKS1 header: ${what} is not printable`);
}

const STRIPES = 4000;
// What cryptsetup's crypto backend (libgcrypt here) can hash: it refuses other names when it reads the header.
// Digests shorter than LUKS1's 20-byte mkDigest (md5, md4, blake2s-128, crc32) are refused at load by cryptsetup
// 2.6.1 ("Requested LUKS hash ... is not supported": PBKDF2_HMAC_ready), found by the differential test.
const LUKS1_HASHES = new Set(["sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160", "whirlpool", "sha3-224", "sha3-256", "sha3-384", "sha3-512", "blake2b-160", "blake2b-256", "blake2b-384", "blake2b-512", "blake2s-160", "blake2s-224", "blake2s-256", "stribog256", "stribog512", "sm3", "tiger", "tiger1", "tiger2"]);

/** Parse and validate like cryptsetup's LUKS_read_phdr + LUKS_check_keyslots (a table of checks). Pure. */
export function parseLuks1Header(b: Buffer): Luks1Header {
  if (b.length < LUKS1_HEADER_SIZE) throw new TrustvolError("ETRUNCATED", "LUKS1 header is truncated");
  if (!b.subarray(0, 6).equals(LUKS2_MAGIC_PRIMARY) || b.readUInt16BE(6) !== 1) throw new TrustvolError("ENOTLUKS", "not a LUKS1 header");
  const h: Luks1Header = {
    version: 1,
    cipherName: cstr(b, 8, 32, "cipher name", true),
    cipherMode: cstr(b, 40, 32, "cipher mode", true),
    hashSpec: cstr(b, 72, 32, "hash spec"),
    payloadOffset: b.readUInt32BE(104),
    keyBytes: b.readUInt32BE(108),
    mkDigest: Buffer.from(b.subarray(112, 132)),
    mkDigestSalt: Buffer.from(b.subarray(132, 164)),
    mkDigestIterations: b.readUInt32BE(164),
    uuid: cstr(b, 168, 40, "uuid", true),
    keyslots: [],
  };
  for (let i = 0; i < 8; i++) {
    const o = 208 + i * 48;
    // Any state but "enabled" is a disabled slot to cryptsetup (it never rejects the state word).
    h.keyslots.push({ active: b.readUInt32BE(o) === KEY_ENABLED, iterations: b.readUInt32BE(o + 4), salt: Buffer.from(b.subarray(o + 8, o + 40)), keyMaterialOffset: b.readUInt32BE(o + 40), stripes: b.readUInt32BE(o + 44) });
  }
  const bad = (msg: string) => new TrustvolError("ECORRUPT", `LUKS1 header: ${msg}`, "the header is damaged; restore a header backup");
  const secs = Math.ceil((h.keyBytes * STRIPES) / 512); // AF_split_sectors: key material sectors per keyslot
  const checks: [boolean, () => string][] = [
    [LUKS1_HASHES.has(h.hashSpec.toLowerCase()), () => `hash "${h.hashSpec.slice(0, 32)}" is not supported`],
    [h.keyBytes > 0 && h.keyBytes <= 1024, () => `invalid key size ${h.keyBytes}`],
  ];
  for (const [ok, msg] of checks) if (!ok) throw bad(msg());
  // Every slot (enabled or not): 4000 stripes, material after the header, before the payload; no two areas overlap.
  h.keyslots.forEach((ks, i) => {
    const slotChecks: [boolean, () => string][] = [
      [ks.stripes === STRIPES, () => `keyslot ${i} has ${ks.stripes} stripes (must be ${STRIPES})`],
      [ks.keyMaterialOffset * 512 >= LUKS1_HEADER_SIZE, () => `keyslot ${i} key material overlaps the header`],
      [h.payloadOffset === 0 || ks.keyMaterialOffset < h.payloadOffset, () => `keyslot ${i} key material starts beyond the payload offset`],
      [h.payloadOffset === 0 || ks.keyMaterialOffset + secs <= h.payloadOffset, () => `keyslot ${i} key material overlaps the payload`],
    ];
    for (const [ok, msg] of slotChecks) if (!ok) throw bad(msg());
  });
  const sorted = [...h.keyslots.keys()].sort((x, y) => h.keyslots[x]!.keyMaterialOffset - h.keyslots[y]!.keyMaterialOffset);
  for (let k = 1; k < sorted.length; k++) {
    const prev = h.keyslots[sorted[k - 1]!]!, next = h.keyslots[sorted[k]!]!;
    if (next.keyMaterialOffset < prev.keyMaterialOffset + secs) throw bad(`keyslot ${sorted[k - 1]} key material overlaps keyslot ${sorted[k]}`);
  }
  return h;
}

/** Bytes the header needs on its device: up to the end of the last keyslot's key material (cryptsetup's size check). */
export function luks1HeaderBytes(h: Luks1Header): number {
  const secs = Math.ceil((h.keyBytes * STRIPES) / 512);
  return Math.max(...h.keyslots.map((k) => (k.keyMaterialOffset + secs) * 512));
}

export async function readLuks1Header(dev: BlockDevice): Promise<Luks1Header> {
  if (dev.size < LUKS1_HEADER_SIZE) throw new TrustvolError("ETRUNCATED", `${dev.name} is too small for a LUKS1 header`);
  const b = Buffer.alloc(LUKS1_HEADER_SIZE);
  await dev.read(b, 0);
  const h = parseLuks1Header(b);
  const need = luks1HeaderBytes(h);
  if (dev.size < need) throw new TrustvolError("ETRUNCATED", `${dev.name} is too small (${dev.size} bytes): its LUKS1 key material needs ${need} bytes`, "the image is truncated or this is the wrong device");
  return h;
}

export function luks1Cipher(h: Luks1Header): string {
  return `${h.cipherName}-${h.cipherMode}`;
}

export async function unlockLuks1(dev: BlockDevice, h: Luks1Header, passphrase: Uint8Array, slot?: number): Promise<{ volumeKey: Buffer; keyslot: number }> {
  const hash = opensslHash(h.hashSpec);
  const slots = slot !== undefined ? [slot] : [0, 1, 2, 3, 4, 5, 6, 7];
  for (const i of slots) {
    const ks = h.keyslots[i];
    if (!ks?.active) {
      if (slot !== undefined) throw new TrustvolError("ENOENT", `LUKS1 keyslot ${slot} is not in use`);
      continue;
    }
    if (ks.iterations < 1 || ks.iterations > 0x7fffffff || h.mkDigestIterations < 1 || h.mkDigestIterations > 0x7fffffff)
      throw new TrustvolError("EUNSUPPORTED", `LUKS1 keyslot ${i}: PBKDF2 iterations out of range (1..2147483647)`);
    const derived = await pbkdf2Async(passphrase, ks.salt, ks.iterations, h.keyBytes, hash);
    const material = Buffer.alloc(afSectorsBytes(h.keyBytes, ks.stripes));
    try {
      await dev.read(material, ks.keyMaterialOffset * 512);
      const c = createSectorCipher({ cipher: luks1Cipher(h), key: derived, sectorSize: 512 });
      try {
        c.decrypt(material, 0);
      } finally {
        c.dispose();
      }
      const mk = afMerge(material, h.keyBytes, ks.stripes, hash);
      const d = await pbkdf2Async(mk, h.mkDigestSalt, h.mkDigestIterations, 20, hash);
      if (constantTimeEqual(d, h.mkDigest)) return { volumeKey: mk, keyslot: i };
      wipe(mk);
    } finally {
      wipe(derived, material);
    }
  }
  throw new TrustvolError("EBADPASS", "no key available with this passphrase", "check the passphrase (or key file) and try again");
}

export function dumpLuks1Text(h: Luks1Header, deviceName: string): string {
  // cryptsetup's crypt_log_hex: every byte followed by a space; 32-byte salts in two lines of 16
  const hex = (b: Buffer) => [...b].map((x) => `${x.toString(16).padStart(2, "0")} `).join("");
  const salt = (b: Buffer, indent: string) => `${hex(b.subarray(0, 16))}\n${indent}${hex(b.subarray(16))}`;
  const l = [
    `LUKS header information for ${deviceName}`,
    "",
    "Version:       \t1",
    `Cipher name:   \t${h.cipherName}`,
    `Cipher mode:   \t${h.cipherMode}`,
    `Hash spec:     \t${h.hashSpec}`,
    `Payload offset:\t${h.payloadOffset}`,
    `MK bits:       \t${h.keyBytes * 8}`,
    `MK digest:     \t${hex(h.mkDigest)}`,
    `MK salt:       \t${salt(h.mkDigestSalt, "               \t")}`,
    `MK iterations: \t${h.mkDigestIterations}`,
    `UUID:          \t${h.uuid}`,
    "",
  ];
  h.keyslots.forEach((ks, i) => {
    if (!ks.active) return void l.push(`Key Slot ${i}: DISABLED`);
    l.push(`Key Slot ${i}: ENABLED`, `\tIterations:         \t${ks.iterations}`, `\tSalt:               \t${salt(ks.salt, "\t                      \t")}`, `\tKey material offset:\t${ks.keyMaterialOffset}`, `\tAF stripes:            \t${ks.stripes}`);
  });
  return l.join("\n") + "\n";
}
