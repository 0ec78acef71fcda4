// The header file that an in-place decryption exports (`reencrypt --decrypt --header NEW_FILE`): cryptsetup's header
// backup bytes [0, 2·hdr_size + keyslots_size), then one 4 KiB record of trustvol's. Until the init's metadata commit
// lands in the file, the file is an ordinary LUKS2 header whose data starts at the shift — as a stale header backup or
// a real detached header with --offset would be, where going on would move data over bytes LUKS never owned (cryptsetup
// refuses any such file). The record is the evidence that this file is an export of this device: written with it in
// one atomic rename, it names the volume, the device's size and a digest of its first ciphertext sector (the data
// offset's, untouched until the commit). Once the metadata is in re-encryption the record is inert.
import { createHash } from "node:crypto";
import type { BlockDevice } from "../blockdev/types.js";
import { atomicWriteFileSync } from "../util/atomic.js";
import { readHeaderBackupImage } from "../luks2/backup.js";

const MAGIC = Buffer.from("trustvol-decexp1", "latin1");
export const EXPORT_RECORD_SIZE = 4096;

/** The record: magic(16) ‖ UUID (40, NUL-padded) ‖ device size, shift: u64 BE ‖ SHA-256 of the ciphertext sector at the shift ‖ SHA-256 of the 112 bytes before. */
function encodeRecord(uuid: string, devSize: number, shift: number, sector: Buffer): Buffer {
  const b = Buffer.alloc(EXPORT_RECORD_SIZE);
  MAGIC.copy(b, 0);
  b.write(uuid.slice(0, 40), 16, "latin1");
  b.writeBigUInt64BE(BigInt(devSize), 56);
  b.writeBigUInt64BE(BigInt(shift), 64);
  createHash("sha256").update(sector).digest().copy(b, 72);
  createHash("sha256").update(b.subarray(0, 104)).digest().copy(b, 104);
  return b;
}

const firstSector = async (dev: BlockDevice, shift: number): Promise<Buffer> => {
  const s = Buffer.alloc(Math.min(4096, Math.max(0, dev.size - shift)));
  await dev.read(s, shift);
  return s;
};

/** Export dev's header to path (0600, atomic) with the record after it; returns the header's byte length. */
export async function exportDecryptHeader(dev: BlockDevice, path: string, uuid: string, shift: number): Promise<number> {
  const img = await readHeaderBackupImage(dev);
  atomicWriteFileSync(path, Buffer.concat([img, encodeRecord(uuid, dev.size, shift, await firstSector(dev, shift))]), 0o600);
  return img.length;
}

/** The file image an export of dev writes (for tests that build the state a cut leaves). */
export async function exportedHeaderImage(dev: BlockDevice, uuid: string, shift: number): Promise<Buffer> {
  const img = await readHeaderBackupImage(dev);
  return Buffer.concat([img, encodeRecord(uuid, dev.size, shift, await firstSector(dev, shift))]);
}

/** Does hdr carry the record of an export of this volume from this device (its size and first ciphertext sector)? */
export async function isExportOf(hdr: BlockDevice, headerBytes: number, uuid: string, dev: BlockDevice, shift: number): Promise<boolean> {
  if (hdr.size < headerBytes + EXPORT_RECORD_SIZE) return false;
  const rec = Buffer.alloc(EXPORT_RECORD_SIZE);
  await hdr.read(rec, headerBytes);
  return rec.subarray(0, 136).equals(encodeRecord(uuid, dev.size, shift, await firstSector(dev, shift)).subarray(0, 136));
}
