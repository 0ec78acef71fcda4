// Shared by the re-encryption tests: small LUKS2 volumes in memory, plaintext checks, one power cut + resume.
import assert from "node:assert/strict";
import { randomBytes, createHash } from "node:crypto";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import type { BlockDevice } from "../../src/blockdev/types.js";
import { formatLuks2 } from "../../src/luks2/format.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { LuksHandle } from "../../src/ops/volume.js";
import { reencrypt, repairReencryption } from "../../src/ops/reencrypt.js";
import { reencryptStatus } from "../../src/luks2/reencrypt-metadata.js";
import { PowerCutDevice, PowerCut, type UnsyncedPolicy } from "../helpers/power-cut.js";

export const PASS = Buffer.from("correct horse");
export const PBKDF = { type: "pbkdf2" as const, forceIterations: 1000 };
export const HOTZONE = 64 * 1024;

/** A small LUKS2 volume (1 MiB metadata+keyslots, dataSize of random plaintext) as an image buffer. */
export async function makeVolume(dataSize: number, sectorSize = 4096, keySizeBits = 512): Promise<{ image: Buffer; plain: Buffer }> {
  const dev = new MemoryBlockDevice(0);
  const { volume, volumeKey } = await formatLuks2(dev, PASS, { pbkdf: PBKDF, dataOffset: 1 << 20, sectorSize, keySizeBits, digestIterations: 1000 });
  await dev.write(Buffer.alloc(dataSize), 1 << 20);
  const h = await LuksHandle.fromDevices(dev);
  const plain = randomBytes(dataSize);
  await h.decrypted(volumeKey).write(plain, 0);
  void volume;
  return { image: Buffer.from(dev.data), plain };
}

export async function plaintextOf(dev: BlockDevice, header?: BlockDevice): Promise<Buffer> {
  const h = await LuksHandle.fromDevices(dev, header ?? dev);
  const { volumeKey } = await h.unlock(PASS);
  const d = h.decrypted(volumeKey);
  const out = Buffer.alloc(d.size);
  await d.read(out, 0);
  return out;
}

export const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Cut power at write `cut` of a full run, then resume from what the disk holds; the plaintext must be intact. */
export type SweepMode = "checksum" | "journal" | "datashift";
let hotzone = HOTZONE;
const runOpts = (resilience: SweepMode) =>
  resilience === "datashift" ? { mode: "encrypt" as const, passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: SHIFT_REDUCE } : { passphrase: PASS, pbkdf: PBKDF, hotzoneSize: hotzone, resilience };
/** --reduce-device-size of the data-shift sweep: shift 1 MiB over a 3.5 MiB file system = 4 chunks, one partial. */
export const SHIFT_REDUCE = 2 << 20;

export async function cutAndResume(image: Buffer, plain: Buffer, resilience: SweepMode, cut: number, unsynced: UnsyncedPolicy): Promise<boolean> {
  const pc = new PowerCutDevice(image, { cutAtWrite: cut, unsynced, seed: cut * 7 + 1 });
  let finished = false;
  try {
    await reencrypt(pc, runOpts(resilience));
    finished = true;
  } catch (e) {
    if (!(e instanceof PowerCut)) throw e;
  }
  const dev = new MemoryBlockDevice(pc.image());
  if (resilience === "datashift" && (await (await import("../../src/luks2/header.js")).probeLuksVersion(dev)) === null) {
    // No valid header yet (cut before the first header copy landed): running the same command again must finish.
    await reencrypt(dev, runOpts(resilience));
  }
  const st = reencryptStatus((await Luks2Volume.open(dev)).metadata);
  if (st === "crash" && cut % 2) await repairReencryption(dev, { passphrase: PASS });
  if (st !== "none") await reencrypt(dev, { passphrase: PASS, resumeOnly: true, hotzoneSize: cut % 3 ? HOTZONE * 2 : HOTZONE / 4 }) // also recover a hotzone larger than the buffer, in pieces;
  assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "none");
  const got = (await plaintextOf(dev)).subarray(0, plain.length);
  if (!got.equals(plain)) {
    let i = 0;
    while (got[i] === plain[i]) i++;
    assert.fail(`${resilience}: cut at write ${cut} (${unsynced}): plaintext differs from byte ${i}`);
  }
  return finished;
}


/** Every write of a full run at which to cut power (step > 1 samples them, spread over the whole run). */
export async function sweep(resilience: SweepMode, step: number, policies: UnsyncedPolicy[], opts: { hotzone?: number; fsSize?: number } = {}): Promise<{ survived: number; writes: number }> {
  hotzone = opts.hotzone ?? HOTZONE;
  let image: Buffer, plain: Buffer;
  if (resilience === "datashift") {
    plain = randomBytes(opts.fsSize ?? 3.5 * (1 << 20));
    image = Buffer.concat([plain, Buffer.alloc(SHIFT_REDUCE)]);
  } else ({ image, plain } = await makeVolume(384 * 1024));
  const probe = new PowerCutDevice(image);
  await reencrypt(probe, runOpts(resilience));
  const writes = probe.writes;
  let survived = 0;
  for (let cut = 1 + (resilience === "journal" ? 1 : 0); cut <= writes; cut += step)
    for (const [i, pol] of policies.entries()) {
      void i;
      await cutAndResume(image, plain, resilience, cut, pol);
      survived++;
    }
  return { survived, writes };
}
