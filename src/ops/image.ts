// Build-time image conversion without root or device-mapper: plain file-system image ⇄ LUKS2 image.
// Streaming with three rotating chunk buffers (read ahead / encrypt / write behind), so memory stays bounded
// whatever the image size. Output goes to "<out>.partial" and is renamed only when complete and fsynced:
// a killed run never leaves a file under the final name, and the input is only ever read.
import { renameSync, unlinkSync, existsSync } from "node:fs";
import { FileBlockDevice } from "../blockdev/file.js";
import type { BlockDevice } from "../blockdev/types.js";
import { createSectorCipher, type SectorCipher } from "../dmcrypt/sector-cipher.js";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { fsyncDir } from "../util/atomic.js";
import { dirname, resolve } from "node:path";
import { planFormat, type FormatOptions, type FormatPlan } from "../luks2/format.js";
import { probeFilesystem, chooseEncryptionSectorSize, FS_PROBE_BYTES, type FsProbe } from "../fs/probe.js";
import { LuksHandle } from "./volume.js";

export type Progress = (done: number, total: number) => void;

const CHUNK = 4 * 1024 * 1024;

/** Copy `length` bytes from src@srcOff to dst@dstOff, transforming each chunk in place (sector index relative to the segment). */
export async function pipeSectors(
  src: BlockDevice,
  srcOff: number,
  dst: BlockDevice,
  dstOff: number,
  length: number,
  transform: (buf: Buffer, byteOffset: number) => void | Promise<void>,
  opts: { onProgress?: Progress; signal?: AbortSignal; padTo?: number; srcLength?: number } = {},
): Promise<void> {
  const srcLen = opts.srcLength ?? length; // bytes actually present in src; the rest (padding) is zeros
  const bufs = [Buffer.alloc(CHUNK), Buffer.alloc(CHUNK), Buffer.alloc(CHUNK)];
  const read = async (pos: number, b: Buffer): Promise<Buffer> => {
    const n = Math.min(CHUNK, length - pos);
    const view = b.subarray(0, n);
    const avail = Math.max(0, Math.min(n, srcLen - pos));
    if (avail < n) view.fill(0, avail);
    if (avail > 0) await src.read(view.subarray(0, avail), srcOff + pos);
    return view;
  };
  let i = 0;
  let pending: Promise<Buffer> | null = length > 0 ? read(0, bufs[0]!) : null;
  let writing: Promise<void> = Promise.resolve();
  try {
    for (let pos = 0; pos < length; pos += CHUNK) {
      if (opts.signal?.aborted) throw new TrustvolError("EBUSY", "interrupted");
      const cur = await pending!;
      const next = pos + CHUNK;
      pending = next < length ? read(next, bufs[(i + 1) % 3]!) : null;
      await transform(cur, pos);
      await writing;
      writing = dst.write(cur, dstOff + pos);
      i++;
      opts.onProgress?.(Math.min(next, length), length);
    }
    await writing;
  } finally {
    await pending?.catch(() => {});
    await writing.catch(() => {});
    for (const b of bufs) wipe(b);
  }
}

/** The native engine splits each chunk over libuv's thread pool (both cores); the TS engine runs it in line. */
function sectorTransform(c: SectorCipher, mode: "encrypt" | "decrypt") {
  const parallel = mode === "encrypt" ? c.encryptAsync : c.decryptAsync;
  if (parallel) return (buf: Buffer, byteOffset: number) => parallel.call(c, buf, byteOffset / c.sectorSize);
  return (buf: Buffer, byteOffset: number) => c[mode](buf, byteOffset / c.sectorSize);
}

function partialPath(out: string): string {
  return `${out}.partial`;
}

async function finish(dev: FileBlockDevice, tmp: string, out: string, sync = true): Promise<void> {
  if (sync) await dev.flush();
  await dev.close();
  renameSync(tmp, out);
  fsyncDir(dirname(out));
}

function refuseExisting(out: string, force?: boolean): void {
  if (existsSync(out) && !force) throw new TrustvolError("EUSAGE", `${out} already exists`, "choose another output path or pass --force");
}

export interface EncryptImageOptions extends FormatOptions {
  /** Write the LUKS2 header to this file and the output holds only encrypted data (offset 0). */
  header?: string;
  force?: boolean;
  onProgress?: Progress;
  signal?: AbortSignal;
  /** fdatasync before the final rename (default). Off only where durability is someone else's job (benchmarks). */
  sync?: boolean;
}

/**
 * Encrypt a plain image into a new LUKS2 image (or data file + detached header). Returns the new volume's UUID.
 * The sector size defaults to the largest the image's file system can be mounted on; `sectorSize` is a request.
 */
export async function encryptImage(input: string, output: string, passphrase: Uint8Array, opts: EncryptImageOptions = {}): Promise<{ uuid: string; dataOffset: number; dataLength: number; sectorSize: number; filesystem?: FsProbe }> {
  const abs = (p: string) => resolve(p);
  if (abs(input) === abs(output)) throw new TrustvolError("EUSAGE", "input and output must differ", "encryption in place is not supported yet: write a new image");
  if (opts.header && (abs(opts.header) === abs(output) || abs(opts.header) === abs(input))) throw new TrustvolError("EUSAGE", "--header must name a file other than the input and the output");
  refuseExisting(output, opts.force);
  if (opts.header) refuseExisting(opts.header, opts.force);
  const src = await FileBlockDevice.open(input, { readOnly: true });
  let plan: FormatPlan;
  let fs: FsProbe | undefined;
  try {
    const head = Buffer.alloc(Math.min(FS_PROBE_BYTES, src.size));
    await src.read(head, 0);
    fs = probeFilesystem(head);
    const sectorSize = chooseEncryptionSectorSize({ fsBlockSize: fs?.blockSize, fsType: fs?.type, requested: opts.sectorSize });
    plan = await planFormat(passphrase, { ...opts, sectorSize }, !!opts.header);
  } catch (e) {
    await src.close();
    throw e;
  }
  const ss = plan.header.metadata.segments["0"]!.sector_size!;
  const dataOffset = Number(plan.header.metadata.segments["0"]!.offset);
  const dataLength = Math.ceil(src.size / ss) * ss;
  const tmp = partialPath(output);
  const tmpHdr = opts.header ? partialPath(opts.header) : undefined;
  let cipher: SectorCipher | undefined;
  let dst: FileBlockDevice | undefined, hdr: FileBlockDevice | undefined;
  try {
    cipher = createSectorCipher({ cipher: plan.header.metadata.segments["0"]!.encryption!, key: plan.volumeKey, sectorSize: ss });
    dst = await FileBlockDevice.open(tmp, { create: true });
    await dst.truncate(0);
    await pipeSectors(src, 0, dst, dataOffset, dataLength, sectorTransform(cipher, "encrypt"), { onProgress: opts.onProgress, signal: opts.signal, srcLength: src.size });
    // The header goes last: until it is written the output is not a LUKS volume at all.
    hdr = tmpHdr ? await FileBlockDevice.open(tmpHdr, { create: true }) : dst;
    if (hdr !== dst) await hdr.truncate(0);
    const zero = Buffer.alloc(1024 * 1024);
    for (let pos = 0; pos < plan.metadataAreaEnd; pos += zero.length) await hdr.write(zero.subarray(0, Math.min(zero.length, plan.metadataAreaEnd - pos)), pos);
    await hdr.write(plan.keyslotArea.data, plan.keyslotArea.offset);
    await hdr.write(plan.copies[0], 0);
    await hdr.write(plan.copies[1], plan.header.hdrSize);
    if (hdr !== dst) await finish(hdr, tmpHdr!, opts.header!, opts.sync ?? true);
    await finish(dst, tmp, output, opts.sync ?? true);
    return { uuid: plan.header.uuid, dataOffset, dataLength, sectorSize: ss, filesystem: fs };
  } catch (e) {
    await dst?.close().catch(() => {});
    if (hdr && hdr !== dst) await hdr.close().catch(() => {});
    for (const p of [tmp, tmpHdr]) if (p) try { unlinkSync(p); } catch { /* not created */ }
    throw e;
  } finally {
    cipher?.dispose();
    wipe(plan.volumeKey, plan.keyslotArea.data);
    await src.close();
  }
}

export interface DecryptImageOptions {
  header?: string;
  keyslot?: number;
  force?: boolean;
  onProgress?: Progress;
  signal?: AbortSignal;
}

/** Decrypt a LUKS1/LUKS2 image's data area into a plain image. */
export async function decryptImage(input: string, output: string, key: { passphrase?: Uint8Array; volumeKey?: Uint8Array }, opts: DecryptImageOptions = {}): Promise<{ length: number }> {
  if (resolve(input) === resolve(output) || (opts.header && resolve(opts.header) === resolve(output))) throw new TrustvolError("EUSAGE", "the output must differ from the input and its header");
  refuseExisting(output, opts.force);
  const h = await LuksHandle.open(input, { header: opts.header, readOnly: true });
  let vk: Buffer | undefined;
  const tmp = partialPath(output);
  let dst: FileBlockDevice | undefined;
  try {
    if (key.volumeKey) {
      vk = Buffer.from(key.volumeKey);
      if (h.luks2) h.luks2.verifyVolumeKey(vk);
    } else if (key.passphrase) vk = (await h.unlock(key.passphrase, { slot: opts.keyslot })).volumeKey;
    else throw new TrustvolError("EUSAGE", "a passphrase or volume key is needed");
    if (h.luks2) h.luks2.checkRequirements("activate");
    const a = h.dataArea();
    const cipher = createSectorCipher({ cipher: a.cipher, key: vk, sectorSize: a.sectorSize, ivOffset: a.ivTweak });
    try {
      dst = await FileBlockDevice.open(tmp, { create: true });
      await dst.truncate(0);
      await pipeSectors(h.dataDev, a.offset, dst, 0, a.length, sectorTransform(cipher, "decrypt"), { onProgress: opts.onProgress, signal: opts.signal });
      await finish(dst, tmp, output);
      dst = undefined;
    } finally {
      cipher.dispose();
    }
    return { length: a.length };
  } catch (e) {
    await dst?.close().catch(() => {});
    try { unlinkSync(tmp); } catch { /* not created */ }
    throw e;
  } finally {
    wipe(vk);
    await h.close();
  }
}
