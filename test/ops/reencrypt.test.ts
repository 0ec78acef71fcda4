// The offline re-encryption engine: power cuts at every write of a run (flushed writes survive, unsynced ones
// dropped/kept/random, the in-flight write torn) → resume → plaintext byte-identical; stop/resume; hostile metadata.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { exportedHeaderImage, EXPORT_RECORD_SIZE } from "../../src/ops/reencrypt-export.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { writeHeader, probeLuksVersion } from "../../src/luks2/header.js";
import { reencrypt, repairReencryption } from "../../src/ops/reencrypt.js";
import { formatLuks2 } from "../../src/luks2/format.js";
import { LuksHandle } from "../../src/ops/volume.js";
import { reencryptStatus } from "../../src/luks2/reencrypt-metadata.js";
import { TrustvolError } from "../../src/util/errors.js";
import { PowerCutDevice, PowerCut, type UnsyncedPolicy } from "../helpers/power-cut.js";
import { PASS, PBKDF, HOTZONE, SHIFT_REDUCE, makeVolume, plaintextOf, sha, sweep } from "./reencrypt-fixture.js";

test("key rotation: new volume key, same passphrase, data intact; old key gone", async () => {
  const { image, plain } = await makeVolume(512 * 1024);
  const dev = new MemoryBlockDevice(image);
  const before = (await Luks2Volume.open(dev)).metadata.digests["0"]!.digest;
  const r = await reencrypt(dev, { passphrase: PASS, pbkdf: PBKDF, hotzoneSize: HOTZONE });
  assert.equal(r.state, "finished");
  assert.equal(r.bytes, 512 * 1024);
  const v = await Luks2Volume.open(dev);
  assert.equal(reencryptStatus(v.metadata), "none");
  assert.deepEqual(Object.keys(v.metadata.segments), ["0"]);
  assert.deepEqual(Object.keys(v.metadata.keyslots), ["1"]);
  assert.notEqual(Object.values(v.metadata.digests)[0]!.digest, before);
  assert.equal(v.metadata.config.requirements, undefined);
  assert.ok((await plaintextOf(dev)).equals(plain));
});

test("cipher, key size and sector size change; init-only then resume-only; abort stops at a safe point (EINTR)", async () => {
  const { image, plain } = await makeVolume(256 * 1024, 512);
  const dev = new MemoryBlockDevice(image);
  const init = await reencrypt(dev, { passphrase: PASS, pbkdf: PBKDF, initOnly: true, cipher: "aes-cbc-essiv:sha256", keySize: 256, sectorSize: 4096, resilience: "journal" });
  assert.equal(init.state, "initialized");
  assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "clean");
  await assert.rejects(reencrypt(dev, { passphrase: PASS, initOnly: true }), (e: TrustvolError) => e.code === "EBUSY");
  const ac = new AbortController();
  let steps = 0;
  await assert.rejects(
    reencrypt(dev, { passphrase: PASS, resumeOnly: true, hotzoneSize: 32 * 1024, signal: ac.signal, onProgress: () => ++steps === 3 && ac.abort() }),
    (e: TrustvolError) => e.code === "EINTR" && e.exitCode === 7,
  );
  assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "clean");
  await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
  const v = await Luks2Volume.open(dev);
  assert.equal(v.metadata.segments["0"]!.encryption, "aes-cbc-essiv:sha256");
  assert.equal(v.metadata.segments["0"]!.sector_size, 4096);
  assert.ok((await plaintextOf(dev)).equals(plain));
});

test("encrypt and decrypt with a detached header", async () => {
  const plain = randomBytes(256 * 1024);
  const data = new MemoryBlockDevice(plain);
  const hdr = new MemoryBlockDevice(0);
  await reencrypt(data, { mode: "encrypt", header: hdr, passphrase: PASS, pbkdf: PBKDF, hotzoneSize: HOTZONE });
  assert.ok(!data.data.equals(plain));
  assert.ok((await plaintextOf(data, hdr)).equals(plain));
  await reencrypt(data, { mode: "decrypt", header: hdr, passphrase: PASS, hotzoneSize: HOTZONE });
  assert.ok(data.data.equals(plain));
  await assert.rejects(reencrypt(new MemoryBlockDevice(plain), { mode: "encrypt", passphrase: PASS }), (e: TrustvolError) => e.code === "EUSAGE");
});

test("decrypt in place (header on the device): exported to a new 0600 file, data shifted to offset 0, tail zeroed; unlocked by a token's passphrase alone", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-decshift-");
  t.after(cleanup);
  const SHIFT = 1 << 20;
  const { image, plain } = await makeVolume(3 * SHIFT + 256 * 1024); // 3¼ shifts of data: shifted hotzones, a short one, the moved segment
  const dev = new MemoryBlockDevice(image);
  const path = join(dir, "exported.hdr");
  // the passphrase as a token would give it for keyslot 0 (keyslotPassphrases), no typed passphrase
  const r = await reencrypt(dev, { mode: "decrypt", exportHeader: path, keyslotPassphrases: new Map([[0, PASS]]), pbkdf: PBKDF, hotzoneSize: 256 * 1024 });
  assert.equal(r.state, "finished");
  assert.equal(statSync(path).mode & 0o777, 0o600, "the exported header is 0600");
  assert.ok(dev.data.subarray(0, plain.length).equals(plain), "the plain data at offset 0");
  assert.ok(dev.data.subarray(dev.size - SHIFT).equals(Buffer.alloc(SHIFT)), "the last shift of the device (stale ciphertext) zeroed");
  const v = await Luks2Volume.open(new MemoryBlockDevice(readFileSync(path)));
  assert.deepEqual(Object.keys(v.metadata.keyslots), [], "the header file keeps no keyslot");
  assert.deepEqual(v.metadata.segments, { "0": { type: "linear", offset: "0", size: "dynamic" } });
  assert.equal(v.metadata.config.requirements, undefined);
  await assert.rejects(v.unlock(PASS), /data segment 0 is not encrypted: the volume was decrypted/, "unlocking the finished header says why it cannot");
});

test("decrypt in place, continued from the exported file: only with the export's record of this device and its header unchanged", async () => {
  const SHIFT = 1 << 20;
  const { image, plain } = await makeVolume(2 * SHIFT);
  const uuid = (await Luks2Volume.open(new MemoryBlockDevice(image))).uuid;
  const exported = await exportedHeaderImage(new MemoryBlockDevice(image), uuid, SHIFT);
  const refused = async (devImage: Buffer, hdrImage: Buffer, why: RegExp, what: string) => {
    const dev = new MemoryBlockDevice(Buffer.from(devImage)), hdr = new MemoryBlockDevice(Buffer.from(hdrImage));
    await assert.rejects(reencrypt(dev, { mode: "decrypt", header: hdr, passphrase: PASS, pbkdf: PBKDF }), (e: unknown) => e instanceof TrustvolError && why.test(`${e.message}; ${e.hint}`), what);
    assert.ok(dev.data.equals(devImage) && hdr.data.equals(hdrImage), `${what}: nothing written`);
  };
  // a header backup without the record (cryptsetup's luksHeaderBackup bytes) while the device still holds that header:
  // a backup, or an export cut before it changed the device (moved aside at most, never deleted)
  const ownVolume = /is a header of the volume \S+ still holds.*move \S+ aside/;
  await refused(image, exported.subarray(0, exported.length - EXPORT_RECORD_SIZE), ownVolume, "no record");
  // the record of another device size, or of other ciphertext at the shift (the device still holds the volume's header)
  await refused(Buffer.concat([image, Buffer.alloc(SHIFT)]), exported, ownVolume, "device resized since");
  const other = Buffer.from(image);
  other[SHIFT] ^= 1;
  await refused(other, exported, ownVolume, "other ciphertext at the shift");
  // the device's own header changed since the export (a keyslot added): refused too
  const changed = new MemoryBlockDevice(Buffer.from(image));
  const v = await Luks2Volume.open(changed);
  const { volumeKey } = await v.unlock(PASS);
  await v.addKeyslot(volumeKey, Buffer.from("another"), { pbkdf: PBKDF });
  await refused(changed.data, exported, /holds another LUKS2 header than/, "device header changed");
  // the genuine leftover: goes on, 0 bytes lost
  const dev = new MemoryBlockDevice(Buffer.from(image));
  await reencrypt(dev, { mode: "decrypt", header: new MemoryBlockDevice(Buffer.from(exported)), passphrase: PASS, pbkdf: PBKDF });
  assert.ok(dev.data.subarray(0, plain.length).equals(plain));
});

test("decrypt in place: an older export's file is refused once another export's run has written over the move's source; repair of a cut moved segment recovers it and leaves the run to finish", async () => {
  const SHIFT = 1 << 20;
  const { image, plain } = await makeVolume(3 * SHIFT);
  const uuid = (await Luks2Volume.open(new MemoryBlockDevice(image))).uuid;
  const f2 = await exportedHeaderImage(new MemoryBlockDevice(image), uuid, SHIFT); // an export cut right after its rename
  // a second export of the same device goes on and is stopped after its first shifted hotzone (over the move's source)
  const dev = new MemoryBlockDevice(Buffer.from(image)), f1 = new MemoryBlockDevice(await exportedHeaderImage(new MemoryBlockDevice(image), uuid, SHIFT));
  const ac = new AbortController();
  await assert.rejects(reencrypt(dev, { mode: "decrypt", header: f1, passphrase: PASS, pbkdf: PBKDF, hotzoneSize: 256 * 1024, signal: ac.signal, onProgress: (p) => { if (p.done > 0) ac.abort(); } }), (e: unknown) => e instanceof TrustvolError && e.code === "EINTR");
  const mid = Buffer.from(dev.data), stale = new MemoryBlockDevice(Buffer.from(f2));
  await assert.rejects(reencrypt(dev, { mode: "decrypt", header: stale, passphrase: PASS, pbkdf: PBKDF }), /decrypted only from offset 0/, "the older file no longer matches the move's source");
  assert.ok(dev.data.equals(mid) && stale.data.equals(f2), "nothing written");
  // the run goes on with its own file, cut at its first in-place write of the moved segment (offset 0)
  const write = dev.write.bind(dev);
  let armed = true;
  dev.write = async (b: Uint8Array, off: number) => { if (armed && off === 0) throw new PowerCut(0); return write(b, off); };
  await assert.rejects(reencrypt(dev, { mode: "decrypt", header: f1, passphrase: PASS, pbkdf: PBKDF }), (e: unknown) => e instanceof PowerCut);
  armed = false;
  assert.equal(reencryptStatus((await Luks2Volume.open(f1)).metadata), "crash");
  // repair (and open, which repairs first) recovers the moved segment in place and leaves the decryption in progress
  assert.deepEqual(await repairReencryption(dev, { header: f1, passphrase: PASS }), { recovered: true });
  const after = await Luks2Volume.open(f1);
  assert.notDeepEqual(Object.keys(after.metadata.keyslots), [], "repair does not finish (and drop the keys of) the decryption");
  await reencrypt(dev, { mode: "decrypt", header: f1, passphrase: PASS, pbkdf: PBKDF, resumeOnly: true });
  assert.ok(dev.data.subarray(0, plain.length).equals(plain), "0 bytes lost");
});

test("encrypt in place with a data shift (--reduce-device-size): first chunk moved to the end, backward, moved copy wiped", async () => {
  for (const fsSize of [3 << 20, 512 * 1024]) {
    const reduce = 2 << 20;
    const plain = randomBytes(fsSize);
    const dev = new MemoryBlockDevice(Buffer.concat([plain, Buffer.alloc(reduce)]));
    await assert.rejects(reencrypt(new MemoryBlockDevice(randomBytes(reduce)), { mode: "encrypt", passphrase: PASS, reduceDeviceSize: reduce }), (e: TrustvolError) => e.code === "ENOSPC");
    const r = await reencrypt(dev, { mode: "encrypt", passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: reduce });
    assert.equal(r.state, "finished");
    const v = await Luks2Volume.open(dev);
    assert.equal(v.metadata.segments["0"]!.offset, String(reduce / 2));
    assert.deepEqual(Object.keys(v.metadata.segments), ["0"]);
    assert.ok((await plaintextOf(dev)).subarray(0, fsSize).equals(plain), `fs of ${fsSize} bytes`);
    assert.equal(plainSectorsOn(dev.data, plain), 0, "no sector of plaintext left on the device (moved copy, reencrypt area, old head)");
  }
});

test("wrong passphrase, unknown resilience, hostile reencrypt keyslot: one-line error, device unchanged", async () => {
  const { image } = await makeVolume(128 * 1024);
  const dev = new MemoryBlockDevice(image);
  await assert.rejects(reencrypt(dev, { passphrase: Buffer.from("wrong"), pbkdf: PBKDF }), (e: TrustvolError) => e.code === "EBADPASS");
  assert.ok(dev.data.equals(image));
  await assert.rejects(reencrypt(dev, { passphrase: PASS, resilience: "bogus" as "none" }), (e: TrustvolError) => e.code === "EUSAGE");
  await reencrypt(dev, { passphrase: PASS, pbkdf: PBKDF, initOnly: true });
  // Valid JSON, wrong binding: the area hash changed → the re-encryption digest no longer verifies.
  const v = await Luks2Volume.open(dev);
  const m = structuredClone(v.metadata);
  const rk = Object.keys(m.keyslots).find((k) => m.keyslots[k]!.type === "reencrypt")!;
  (m.keyslots[rk]!.area as Record<string, unknown>).hash = "sha1";
  await writeHeader(dev, { ...v.header, metadata: m });
  const snap = sha(dev.data);
  await assert.rejects(reencrypt(dev, { passphrase: PASS, resumeOnly: true }), (e: TrustvolError) => e.code === "ECORRUPT" && !e.message.includes("\n"));
  assert.equal(sha(dev.data), snap);
});

test("hostile mode value is refused by metadata validation", async () => {
  const { validateMetadata } = await import("../../src/luks2/metadata.js");
  const { image } = await makeVolume(64 * 1024);
  const dev = new MemoryBlockDevice(image);
  await reencrypt(dev, { passphrase: PASS, pbkdf: PBKDF, initOnly: true });
  const v = await Luks2Volume.open(dev);
  for (const patch of [
    (ks: Record<string, unknown>) => (ks.mode = "bogus"),
    (ks: Record<string, unknown>) => (ks.direction = "sideways"),
    (ks: Record<string, unknown>) => ((ks.area as Record<string, unknown>).type = "magic"),
    (ks: Record<string, unknown>) => ((ks.area as Record<string, unknown>).sector_size = 1000),
    (ks: Record<string, unknown>) => Object.assign(ks.area as object, { type: "datashift", shift_size: "100" }),
  ]) {
    const m = structuredClone(v.metadata);
    const rk = Object.keys(m.keyslots).find((k) => m.keyslots[k]!.type === "reencrypt")!;
    patch(m.keyslots[rk] as unknown as Record<string, unknown>);
    assert.throws(() => validateMetadata(JSON.parse(JSON.stringify(m)), v.header.hdrSize), (e: TrustvolError) => e.code === "ECORRUPT");
  }
});

for (const resilience of ["checksum", "journal", "datashift"] as const) {
  test(`power cut at sampled writes of a ${resilience} run (header copies, data chunks, keyslot areas): 0 bytes lost`, async () => {
    const policies: UnsyncedPolicy[] = ["drop", "keep", "random"];
    const { survived, writes } = await sweep(resilience, resilience === "datashift" ? 2 : 5, [policies[resilience.length % 3]!]);
    assert.ok(writes > 20, `a run makes ${writes} writes`);
    console.log(`# ${resilience}: survived ${survived} cut points of ${writes} writes (full sweep: reencrypt-powercut.slow.test.ts)`);
  });
}

/** How many 512-byte sectors of `plain` appear in clear on the device (at any 512-byte boundary). */
function plainSectorsOn(disk: Buffer, plain: Buffer): number {
  const onDisk = new Set<string>();
  for (let o = 0; o + 512 <= disk.length; o += 512) onDisk.add(disk.subarray(o, o + 512).toString("latin1"));
  let n = 0;
  for (let o = 0; o + 512 <= plain.length; o += 512) if (onDisk.has(plain.subarray(o, o + 512).toString("latin1"))) n++;
  return n;
}

test("data shift over a file system smaller than the shift: power cut at every write (torn, each unsynced policy), 0 bytes lost", async () => {
  // One hotzone, the moved segment's: cryptsetup's hot segment is the shift long, so its destination reaches into the
  // moved copy itself (the head's only copy); only the copy's bytes are copied, and a cut cannot damage the source.
  // (Before the fix, 75 of 1530 such cuts (30 seeds) lost data: a torn commit after the hotzone's write had covered the copy.)
  const plain = randomBytes(512 * 1024);
  const image = Buffer.concat([plain, Buffer.alloc(SHIFT_REDUCE)]);
  const opts = { mode: "encrypt" as const, passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: SHIFT_REDUCE };
  const probe = new PowerCutDevice(image);
  await reencrypt(probe, opts);
  let survived = 0;
  for (let cut = 1; cut <= probe.writes; cut++)
    for (let seed = 0; seed < 10; seed++)
      for (const unsynced of ["drop", "keep", "random"] as const) {
        const pc = new PowerCutDevice(image, { cutAtWrite: cut, unsynced, seed });
        await reencrypt(pc, opts).catch((e) => assert.ok(e instanceof PowerCut, String(e)));
        const dev = new MemoryBlockDevice(pc.image());
        if ((await probeLuksVersion(dev)) === null) await reencrypt(dev, opts); // cut before the first header copy: the same command
        if (reencryptStatus((await Luks2Volume.open(dev)).metadata) !== "none") await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
        assert.ok((await plaintextOf(dev)).subarray(0, plain.length).equals(plain), `cut at write ${cut} (${unsynced}, seed ${seed}): plaintext differs`);
        const left = plainSectorsOn(dev.data, plain);
        assert.equal(left, 0, `cut at write ${cut} (${unsynced}, seed ${seed}): ${left} sectors of plaintext are left on the device`);
        survived++;
      }
  console.log(`# datashift, 512 KiB under a 1 MiB shift: survived ${survived} cuts at ${probe.writes} writes`);
});

test("encrypt in place with a 64 KiB metadata copy and a 1 MiB keyslots area (--luks2-metadata-size/--luks2-keyslots-size): power cut at every write, 0 bytes lost, no plaintext left", async () => {
  // The header reaches further than the default one (its secondary copy at 64 KiB): the head move's guard covers it,
  // and a rerun after a cut before the first header copy (with the sizes, or without them) goes on from the copy.
  const MiB = 1 << 20, reduce = 4 * MiB;
  const plain = randomBytes(3 * MiB);
  const image = Buffer.concat([plain, Buffer.alloc(reduce)]);
  const opts = { mode: "encrypt" as const, passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: reduce, metadataSize: 65536, keyslotsSize: MiB };
  const probe = new PowerCutDevice(image);
  await reencrypt(probe, opts);
  const done = await Luks2Volume.open(new MemoryBlockDevice(probe.image()));
  assert.equal(done.header.hdrSize, 65536);
  assert.equal(done.metadata.config.keyslots_size, String(MiB));
  let survived = 0;
  for (let cut = 1; cut <= probe.writes; cut++)
    for (const [seed, unsynced] of [[0, "drop"], [1, "keep"], [2, "random"]] as const) {
      const pc = new PowerCutDevice(image, { cutAtWrite: cut, unsynced, seed });
      await reencrypt(pc, opts).catch((e) => assert.ok(e instanceof PowerCut, String(e)));
      const dev = new MemoryBlockDevice(pc.image());
      if ((await probeLuksVersion(dev)) === null) await reencrypt(dev, seed === 1 ? { ...opts, metadataSize: undefined, keyslotsSize: undefined } : opts);
      if (reencryptStatus((await Luks2Volume.open(dev)).metadata) !== "none") await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
      assert.ok((await plaintextOf(dev)).subarray(0, plain.length).equals(plain), `cut at write ${cut} (${unsynced}): plaintext differs`);
      assert.equal(plainSectorsOn(dev.data, plain), 0, `cut at write ${cut} (${unsynced}): plaintext left on the device`);
      survived++;
    }
  console.log(`# datashift with a 64 KiB metadata copy: survived ${survived} cuts at ${probe.writes} writes`);
});

test("power cut inside a default-size hotzone, written chunk by chunk after its parity, pieces split over the cores: 0 bytes lost", async () => {
  // 20 MiB of data: one hotzone, its parity (XOR of 8 chunks of 2.5 MiB) in the reencrypt area, then the chunks in
  // order, each in concurrent pieces (reencrypt-io.ts chunkWriter) and flushed. Cut inside those writes, torn, and
  // resume: the torn chunk is rebuilt from the parity.
  const fmt = new MemoryBlockDevice(0);
  const { volumeKey } = await formatLuks2(fmt, PASS, { pbkdf: PBKDF, sectorSize: 4096, digestIterations: 1000 });
  const size = 20 << 20;
  await fmt.write(Buffer.alloc(size), fmt.size);
  const plain = randomBytes(size);
  await (await LuksHandle.fromDevices(fmt)).decrypted(volumeKey).write(plain, 0);
  const image = Buffer.from(fmt.data);
  class Sizes extends PowerCutDevice {
    lens: number[] = [];
    override async write(buf: Uint8Array, offset: number): Promise<void> {
      this.lens.push(buf.length);
      return super.write(buf, offset);
    }
  }
  const probe = new Sizes(image);
  await reencrypt(probe, { passphrase: PASS, pbkdf: PBKDF });
  const big = probe.lens.flatMap((n, i) => (n >= 512 << 10 ? [i + 1] : []));
  assert.ok(big.length >= 17, `the parity and 8 chunks in 2 pieces each: ${probe.lens.join(",")}`);
  const cuts = [...new Set([big[0]!, big[1]!, big[2]!, big[3]!, big[8]!, big[9]!, big.at(-1)!, big.at(-2)!])];
  for (const [k, cut] of cuts.entries()) {
    const pc = new PowerCutDevice(image, { cutAtWrite: cut, unsynced: (["drop", "keep", "random"] as UnsyncedPolicy[])[k % 3]!, seed: cut * 5 + 3 });
    await assert.rejects(reencrypt(pc, { passphrase: PASS, pbkdf: PBKDF }), (e) => e instanceof PowerCut);
    const dev = new MemoryBlockDevice(pc.image());
    const st = reencryptStatus((await Luks2Volume.open(dev)).metadata);
    if (st === "crash" && k % 2) await repairReencryption(dev, { passphrase: PASS });
    if (st !== "none") await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
    assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "none");
    assert.ok((await plaintextOf(dev)).subarray(0, size).equals(plain), `cut at write ${cut} (of ${probe.lens.length}): plaintext differs`);
  }
});

test("rotation keeps tokens: a token's keyslot is re-created for the new key with the same passphrase; all-slots rule", async () => {
  const { image, plain } = await makeVolume(128 * 1024, 4096, 256);
  const dev = new MemoryBlockDevice(image);
  const v = await Luks2Volume.open(dev);
  const { volumeKey } = await v.unlock(PASS);
  const rec = Buffer.from("token secret");
  await v.addKeyslotWithToken(volumeKey, async () => ({ tokenJson: { type: "systemd-recovery", keyslots: ["1"] }, passphrase: Buffer.from(rec) }), { pbkdf: PBKDF, slot: 1 });
  const before = Buffer.from(dev.data);
  // cryptsetup needs every keyslot's passphrase unless --key-slot names one: same here, nothing changed.
  await assert.rejects(reencrypt(dev, { passphrase: PASS, pbkdf: PBKDF }), (e: TrustvolError) => e.code === "EBADPASS" && /keyslot 1/.test(e.message));
  assert.ok(dev.data.equals(before));
  await reencrypt(dev, { passphrase: PASS, keyslotPassphrases: new Map([[1, rec]]), pbkdf: PBKDF, hotzoneSize: HOTZONE });
  const after = await Luks2Volume.open(dev);
  const tok = Object.values(after.metadata.tokens)[0]!;
  assert.equal(tok.keyslots.length, 1);
  assert.equal((await after.unlock(rec, { slot: Number(tok.keyslots[0]) })).keyslot, Number(tok.keyslots[0]));
  assert.ok((await plaintextOf(dev)).equals(plain));
  // --key-slot: only that keyslot survives; the token's old keyslot (and the token) go with the old key.
  const { image: img2 } = await makeVolume(64 * 1024, 4096, 256);
  const d2 = new MemoryBlockDevice(img2);
  const v2 = await Luks2Volume.open(d2);
  const k2 = (await v2.unlock(PASS)).volumeKey;
  await v2.addKeyslotWithToken(k2, async () => ({ tokenJson: { type: "systemd-recovery", keyslots: ["1"] }, passphrase: Buffer.from(rec) }), { pbkdf: PBKDF, slot: 1 });
  await reencrypt(d2, { passphrase: PASS, keyslot: 0, pbkdf: PBKDF });
  const a2 = await Luks2Volume.open(d2);
  assert.deepEqual(Object.keys(a2.metadata.keyslots), ["2"]);
  assert.deepEqual(Object.keys(a2.metadata.tokens), []);
});

test("encrypt in place never picks a sector larger than the file system's blocks (ext4 with 1024-byte blocks → 1024)", async (t) => {
  const { needTools, run, tmpDir } = await import("../helpers/tools.js");
  if (!needTools(t, "mkfs.ext4")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const { join } = await import("node:path");
  const { readFileSync } = await import("node:fs");
  const img = join(dir, "fs.img");
  run("truncate", ["-s", "8M", img]);
  run("mkfs.ext4", ["-q", "-F", "-b", "1024", img]);
  const dev = new MemoryBlockDevice(readFileSync(img));
  const hdr = new MemoryBlockDevice(16 << 20);
  await reencrypt(dev, { mode: "encrypt", header: hdr, passphrase: PASS, pbkdf: PBKDF, hotzoneSize: HOTZONE });
  const v = await Luks2Volume.open(hdr);
  assert.equal(v.metadata.segments["0"]!.sector_size, 1024);
  await assert.rejects(
    reencrypt(new MemoryBlockDevice(readFileSync(img)), { mode: "encrypt", header: new MemoryBlockDevice(16 << 20), passphrase: PASS, pbkdf: PBKDF, sectorSize: 4096 }),
    (e: TrustvolError) => e.code === "EUSAGE" && /larger than the ext4 file system's block size \(1024\)/.test(e.message),
  );
});
