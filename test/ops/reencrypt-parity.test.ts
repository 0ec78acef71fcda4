// Checksum mode's torn-write protection (src/ops/reencrypt-io.ts parityLayout): the parity (XOR of a hotzone's old
// chunks) from the addon and from TypeScript agree; a power cut that tears a data chunk inside a block is undone from
// the parity (cryptsetup's checksum rule alone loses that block — shown by destroying the parity); a parity that is
// garbage (hostile or stale) is refused by its checksums, and one whose tag names other checksums or another hotzone
// is not used: recovery falls back to cryptsetup's rule.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, createHash } from "node:crypto";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { reencrypt, parityLayout } from "../../src/ops/reencrypt.js";
import { parityAsync, parityTag, parityTagMatches, PARITY_TAG_SIZE, xorInto } from "../../src/ops/reencrypt-io.js";
import { loadNative } from "../../src/dmcrypt/native.js";
import { dataSegments } from "../../src/luks2/segment.js";
import { reencryptStatus } from "../../src/luks2/reencrypt-metadata.js";
import { PowerCutDevice, PowerCut, RecordingCutDevice } from "../helpers/power-cut.js";
import { PASS, PBKDF, makeVolume, plaintextOf } from "./reencrypt-fixture.js";

const HOT = 256 * 1024; // 8 chunks of 32 KiB

test("parity: the addon's xorFoldAsync (whole and split ranges) and TypeScript's xorInto give the same XOR of chunks", async () => {
  const a = loadNative();
  for (const [len, chunk] of [[10_000, 4096], [HOT, 32 * 1024], [3 * 4096 + 100, 4096 * 2], [777, 777], [5 << 20, 1 << 20]] as const) {
    const data = randomBytes(len);
    const want = Buffer.alloc(chunk);
    xorInto(want, data, chunk);
    const byHand = Buffer.alloc(chunk);
    for (let i = 0; i < len; i++) byHand[i % chunk]! ^= data[i]!;
    assert.ok(want.equals(byHand), `xorInto ${len}/${chunk}`);
    for (const parts of [1, 3, 8]) assert.ok((await parityAsync(data, chunk, parts, Buffer.alloc(chunk, 0xa5))).equals(want), `parityAsync ${len}/${chunk}/${parts}`);
    if (a?.xorFoldAsync) {
      const out = Buffer.alloc(chunk, 0x5a);
      await a.xorFoldAsync(data, chunk, out, 0, chunk);
      assert.ok(out.equals(want), `xorFoldAsync ${len}/${chunk}`);
    }
  }
  if (a?.xorFoldAsync) {
    assert.throws(() => a.xorFoldAsync!(Buffer.alloc(8), 4, Buffer.alloc(4), 0, 5), RangeError);
    assert.throws(() => a.xorFoldAsync!(Buffer.alloc(8), 0, Buffer.alloc(4), 0, 0), RangeError);
    assert.throws(() => a.xorFoldAsync!(Buffer.alloc(8), 4, Buffer.alloc(4), 3, 2), RangeError);
  }
});

test("parity: xorFoldAsync with a hasher folds and writes every block's checksum in the same pass (any split of ranges)", async (t) => {
  const a = loadNative();
  if (!a?.xorFoldAsync || !a.hasherCreate) return t.skip("no native addon");
  for (const [alg, flags] of [["sha256", 0], ["sha256", 2], ["sha256", 6], ["sha512", 0]] as const) {
    const h = a.hasherCreate(alg, new Uint8Array(0), 1, flags);
    const ds = createHash(alg).digest().length;
    for (const [len, chunk, bs] of [[HOT, 32 * 1024, 4096], [HOT - 3 * 4096, 32 * 1024, 4096], [40 * 512, 6 * 512, 512], [24 << 20, 3 << 20, 4096]] as const) {
      const data = randomBytes(len);
      const want = Buffer.alloc(chunk);
      xorInto(want, data, chunk);
      const wantSums = Buffer.concat(Array.from({ length: len / bs }, (_, b) => createHash(alg).update(data.subarray(b * bs, (b + 1) * bs)).digest()));
      for (const per of [chunk, bs, 3 * bs]) {
        const out = Buffer.alloc(chunk, 0x5a), sums = Buffer.alloc(wantSums.length, 0xa5);
        const jobs = [];
        for (let f = 0; f < chunk; f += per) jobs.push(a.xorFoldAsync(data, chunk, out, f, Math.min(chunk, f + per), h, bs, sums));
        await Promise.all(jobs);
        assert.ok(out.equals(want), `parity ${alg}/${flags} ${len}/${chunk}/${bs} per ${per}`);
        assert.ok(sums.equals(wantSums), `checksums ${alg}/${flags} ${len}/${chunk}/${bs} per ${per}`);
      }
    }
    // not whole blocks, or too few checksums: refused before any work is queued
    assert.throws(() => a.xorFoldAsync!(Buffer.alloc(8192), 4096, Buffer.alloc(4096), 0, 4096, h, 4096, Buffer.alloc(ds)), RangeError);
    assert.throws(() => a.xorFoldAsync!(Buffer.alloc(8192 + 1), 4096, Buffer.alloc(4096), 0, 4096, h, 4096, Buffer.alloc(3 * ds)), RangeError);
    assert.throws(() => a.xorFoldAsync!(Buffer.alloc(8192), 4096, Buffer.alloc(4096), 512, 4096, h, 4096, Buffer.alloc(2 * ds)), RangeError);
    assert.throws(() => a.xorFoldAsync!(Buffer.alloc(8192), 4096, Buffer.alloc(4096), 0, 4096, h, 0, Buffer.alloc(2 * ds)), RangeError);
  }
});

/** A crashed rotation whose cut tore a data chunk inside a 4 KiB block, and where that chunk lies. */
async function tornInsideABlock(): Promise<{ crashed: Buffer; plain: Buffer; chunkAt: number; chunkLen: number; parityAt: number }> {
  const { image, plain } = await makeVolume(1 << 20);
  const dataOffset = dataSegments((await Luks2Volume.open(new MemoryBlockDevice(image))).metadata)[0]!.offset;
  const probe = new RecordingCutDevice(image);
  await reencrypt(probe, { passphrase: PASS, pbkdf: PBKDF, hotzoneSize: HOT });
  // Data writes of the second hotzone (the first has none before it): its 3rd..6th chunks.
  const data = probe.log.flatMap((w, i) => (w.offset >= dataOffset + HOT && w.offset < dataOffset + 2 * HOT ? [i + 1] : []));
  assert.equal(data.length, 8, "the hotzone's data goes in 8 chunk writes");
  for (const at of data.slice(2, 6)) {
    for (let seed = 1; seed < 60; seed++) {
      const pc = new PowerCutDevice(image, { cutAtWrite: at, unsynced: "drop", seed });
      await assert.rejects(reencrypt(pc, { passphrase: PASS, pbkdf: PBKDF, hotzoneSize: HOT }), (e) => e instanceof PowerCut);
      const t = pc.torn!;
      if (t.landed % 4096 === 0) continue;
      const crashed = pc.image();
      const m = (await Luks2Volume.open(new MemoryBlockDevice(crashed))).metadata;
      const hot = dataSegments(m).find((s) => s.flags.includes("in-reencryption"))!;
      assert.equal(hot.size, HOT);
      const area = Object.values(m.keyslots).find((k) => k.type === "reencrypt")!.area;
      const lay = parityLayout(HOT, Number(area.sector_size), 32);
      return { crashed, plain, chunkAt: t.offset - dataOffset, chunkLen: t.length, parityAt: Number(area.offset) + lay.parity };
    }
  }
  throw new Error("no seed tore a chunk inside a block");
}

test("parity: a data chunk torn inside a block by a power cut is rebuilt from the parity; without it, that chunk loses data", async () => {
  const { crashed, plain, chunkAt, chunkLen, parityAt } = await tornInsideABlock();
  assert.equal(chunkLen, 32 * 1024);

  const dev = new MemoryBlockDevice(Buffer.from(crashed));
  await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
  assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "none");
  assert.ok((await plaintextOf(dev)).equals(plain), "0 bytes lost with the parity");

  // The same crash with the parity destroyed (hostile, or a hotzone cryptsetup wrote): recovery still finishes, by
  // cryptsetup's rule — and loses the torn block, only inside the torn chunk.
  const hostile = Buffer.from(crashed);
  randomBytes(32 * 1024).copy(hostile, parityAt);
  const dev2 = new MemoryBlockDevice(hostile);
  await reencrypt(dev2, { passphrase: PASS, resumeOnly: true });
  assert.equal(reencryptStatus((await Luks2Volume.open(dev2)).metadata), "none");
  const got = await plaintextOf(dev2);
  const bad: number[] = [];
  for (let o = 0; o < plain.length; o += 512) if (!got.subarray(o, o + 512).equals(plain.subarray(o, o + 512))) bad.push(o);
  assert.ok(bad.length > 0, "without the parity the torn block is lost (the parity is what saved it)");
  assert.ok(bad.every((o) => o >= chunkAt && o < chunkAt + chunkLen), `losses only inside the torn chunk [${chunkAt}, +${chunkLen}): ${bad.join(",")}`);
});

// Offline checksum mode writes hotzone B's checksums and parity while the header still names A (A's data new and
// flushed; "A done + B hot" is one commit). A cut before that commit lands must not rebuild A from B's parity checked
// against B's checksums: the area's tag names the hotzone its checksums are of (found by review, session 15).
test("parity: a cut in the combined commit, the area already the next hotzone's, one-block hotzones: A keeps its new data", async () => {
  const HZ = 4096; // one chunk: the parity is B's old block itself, which matches B's checksum
  const { image, plain } = await makeVolume(64 * 1024);
  const dataOffset = dataSegments((await Luks2Volume.open(new MemoryBlockDevice(image))).metadata)[0]!.offset;
  const probe = new RecordingCutDevice(image);
  await reencrypt(probe, { passphrase: PASS, pbkdf: PBKDF, hotzoneSize: HZ });
  const aData = probe.log.findIndex((w) => w.offset === dataOffset + HZ);
  let i = aData + 1;
  while (probe.log[i]!.offset !== 0) i++; // the combined commit's first header-copy write (B's area written before it)
  let tried = 0;
  for (let seed = 1; seed < 8; seed++) {
    const pc = new PowerCutDevice(image, { cutAtWrite: i + 1, unsynced: "drop", seed });
    await assert.rejects(reencrypt(pc, { passphrase: PASS, pbkdf: PBKDF, hotzoneSize: HZ }), (e) => e instanceof PowerCut);
    const dev = new MemoryBlockDevice(pc.image());
    const hot = dataSegments((await Luks2Volume.open(dev)).metadata).find((s) => s.flags.includes("in-reencryption"));
    if (hot?.offset !== dataOffset + HZ) continue;
    tried++;
    await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
    assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "none");
    assert.ok((await plaintextOf(dev)).equals(plain), `seed ${seed}: 0 bytes lost`);
  }
  assert.ok(tried > 0, "some cut left A in re-encryption with B's area");
});

test("parity: --encrypt of mostly-zero data, cut at every header-copy write: the next hotzone's parity is never used for this one", async () => {
  const HZ = 256 * 1024, C = 32 * 1024;
  const plain = Buffer.alloc(4 * HZ);
  for (let h = 0; h < 4; h++) randomBytes(C).copy(plain, h * HZ + 7 * C); // data only in each hotzone's last chunk
  const hdr0 = new MemoryBlockDevice(0);
  await reencrypt(new MemoryBlockDevice(Buffer.from(plain)), { mode: "encrypt", header: hdr0, passphrase: PASS, pbkdf: PBKDF, initOnly: true, hotzoneSize: HZ });
  const hdrImage = Buffer.from(hdr0.data);
  const probe = new RecordingCutDevice(hdrImage);
  await reencrypt(new MemoryBlockDevice(Buffer.from(plain)), { header: probe, passphrase: PASS, pbkdf: PBKDF, resumeOnly: true, hotzoneSize: HZ });
  const cuts = probe.offsets.flatMap((o, i) => (o === 0 ? [i + 1] : []));
  let crashes = 0;
  for (const cut of cuts)
    for (let seed = 1; seed < 16; seed++) {
      const data = new MemoryBlockDevice(Buffer.from(plain));
      const pc = new PowerCutDevice(hdrImage, { cutAtWrite: cut, unsynced: "drop", seed });
      await assert.rejects(reencrypt(data, { header: pc, passphrase: PASS, pbkdf: PBKDF, resumeOnly: true, hotzoneSize: HZ }), (e) => e instanceof PowerCut);
      const hdr = new MemoryBlockDevice(pc.image());
      if (reencryptStatus((await Luks2Volume.open(hdr)).metadata) !== "crash") continue;
      crashes++;
      await reencrypt(data, { header: hdr, passphrase: PASS, resumeOnly: true });
      assert.ok((await plaintextOf(data, hdr)).equals(plain), `cut ${cut} seed ${seed}: 0 bytes lost`);
    }
  assert.ok(crashes > 10, `crashed states recovered: ${crashes}`);
});

test("parity tag: binds the hotzone and its checksums; torn, moved or stale, the parity is not used", () => {
  const sums = randomBytes(64 * 32);
  const tag = parityTag(4096, 256 * 1024, sums);
  assert.equal(tag.length, PARITY_TAG_SIZE);
  assert.ok(parityTagMatches(tag, 4096, 256 * 1024, sums));
  assert.ok(!parityTagMatches(tag, 0, 256 * 1024, sums), "another hotzone");
  assert.ok(!parityTagMatches(tag, 4096, 128 * 1024, sums), "another length");
  const other = Buffer.from(sums);
  other[100]! ^= 1;
  assert.ok(!parityTagMatches(tag, 4096, 256 * 1024, other), "other checksums");
  for (const cut of [0, 1, 15, 40, 95]) {
    const torn = Buffer.alloc(PARITY_TAG_SIZE);
    tag.copy(torn, 0, 0, cut);
    // (a tear whose missing bytes happened to be zeros is the whole tag: 1 in 256 for the last byte)
    assert.equal(parityTagMatches(torn, 4096, 256 * 1024, sums), torn.subarray(0, 96).equals(tag.subarray(0, 96)), `torn after ${cut} bytes`);
    torn.fill(tag[cut]! ^ 0xff, cut, 96); // torn over other bytes
    assert.ok(!parityTagMatches(torn, 4096, 256 * 1024, sums), `torn after ${cut} bytes over other bytes`);
  }
  assert.ok(!parityTagMatches(Buffer.alloc(PARITY_TAG_SIZE), 4096, 256 * 1024, sums), "zeros");
});

test("checksum mode on a device grown since --init-only by less than a checksum block: one-line refusal, nothing written (was a RangeError)", async () => {
  const { image } = await makeVolume(4 * HOT, 512);
  const d0 = new MemoryBlockDevice(Buffer.from(image));
  await reencrypt(d0, { passphrase: PASS, pbkdf: PBKDF, initOnly: true, hotzoneSize: HOT });
  const grown = new MemoryBlockDevice(Buffer.concat([d0.data, randomBytes(512)]));
  const before = Buffer.from(grown.data);
  await assert.rejects(reencrypt(grown, { passphrase: PASS, resumeOnly: true }), (e: Error & { code?: string }) => e.code === "ECORRUPT" && !e.message.includes("\n") && /resized/.test(e.message));
  assert.ok(grown.data.equals(before), "nothing written");
});
