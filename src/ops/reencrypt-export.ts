// The header file that an in-place decryption exports (`reencrypt --decrypt --header NEW_FILE`): cryptsetup's header
// backup bytes [0, 2·hdr_size + keyslots_size), then one 4 KiB record of trustvol's. Until the init's metadata commit
// lands in the file, the file is an ordinary LUKS2 header whose data starts at the shift — as a stale header backup or
// a real detached header with --offset would be, where going on would move data over bytes LUKS never owned (cryptsetup
// refuses any such file). The record is the evidence that this file is an export of this device: written with it in
// one atomic rename, it names the volume, the device's size and a digest of the ciphertext the init's move reads
// ([shift, shift + min(shift, T)), T the plain data's size: untouched until a commit, so a run of another export that
// got further — its first hotzone writes there — no longer matches). Once the metadata is in re-encryption the
// record is inert.
import { createHash } from "node:crypto";
import type { BlockDevice } from "../blockdev/types.js";
import { atomicWriteFileSync } from "../util/atomic.js";
import { readHeaderBackupImage } from "../luks2/backup.js";

const MAGIC = Buffer.from("trustvol-decexp1", "latin1");
export const EXPORT_RECORD_SIZE = 4096;

/** The record: magic(16) ‖ UUID (40, NUL-padded) ‖ device size, shift: u64 BE ‖ SHA-256 of the move's source ‖ SHA-256 of the 104 bytes before. */
function encodeRecord(uuid: string, devSize: number, shift: number, sourceDigest: Buffer): Buffer {
  const b = Buffer.alloc(EXPORT_RECORD_SIZE);
  MAGIC.copy(b, 0);
  b.write(uuid.slice(0, 40), 16, "latin1");
  b.writeBigUInt64BE(BigInt(devSize), 56);
  b.writeBigUInt64BE(BigInt(shift), 64);
  sourceDigest.copy(b, 72);
  createHash("sha256").update(b.subarray(0, 104)).digest().copy(b, 104);
  return b;
}

/** SHA-256 of [shift, shift + min(shift, T)): every byte a move of any length may read. */
async function sourceDigest(dev: BlockDevice, shift: number): Promise<Buffer> {
  const len = Math.max(0, Math.min(shift, dev.size - shift));
  const h = createHash("sha256");
  const buf = Buffer.allocUnsafeSlow(Math.min(len, 4 << 20) || 1);
  for (let p = 0; p < len; p += buf.length) {
    const b = buf.subarray(0, Math.min(buf.length, len - p));
    await dev.read(b, shift + p);
    h.update(b);
  }
  buf.fill(0);
  return h.digest();
}

/** Export dev's header to path (0600, atomic) with the record after it; returns the header's byte length. */
export async function exportDecryptHeader(dev: BlockDevice, path: string, uuid: string, shift: number): Promise<number> {
  const img = await exportedHeaderImage(dev, uuid, shift);
  atomicWriteFileSync(path, img, 0o600);
  return img.length - EXPORT_RECORD_SIZE;
}

/** The file image an export of dev writes (for tests that build the state a cut leaves). */
export async function exportedHeaderImage(dev: BlockDevice, uuid: string, shift: number): Promise<Buffer> {
  const img = await readHeaderBackupImage(dev);
  return Buffer.concat([img, encodeRecord(uuid, dev.size, shift, await sourceDigest(dev, shift))]);
}

/** Does hdr carry the record of an export of this volume from this device (its size and first ciphertext sector)? */
export async function isExportOf(hdr: BlockDevice, headerBytes: number, uuid: string, dev: BlockDevice, shift: number): Promise<boolean> {
  if (hdr.size < headerBytes + EXPORT_RECORD_SIZE) return false;
  const rec = Buffer.alloc(EXPORT_RECORD_SIZE);
  await hdr.read(rec, headerBytes);
  return rec.subarray(0, 136).equals(encodeRecord(uuid, dev.size, shift, await sourceDigest(dev, shift)).subarray(0, 136));
}
