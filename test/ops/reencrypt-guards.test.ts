// Guards of the re-encryption engine found by review (session 22), each a way to destroy data or keys without a power
// cut: a detached --header that is the device itself; another volume's detached header on a device that holds its own
// LUKS header; `repair` of a hotzone another run holds under the re-encryption lock; a reencrypt area too small for the
// torn-write parity, which was written past the area into the data; `repair` rewriting a header copy under a running
// re-encryption (session 23: the whole repair is under the lock).
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync, readFileSync, symlinkSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { FileBlockDevice } from "../../src/blockdev/file.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { formatLuks2 } from "../../src/luks2/format.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { writeHeader } from "../../src/luks2/header.js";
import { reencryptStatus } from "../../src/luks2/reencrypt-metadata.js";
import { reencrypt, repairReencryption } from "../../src/ops/reencrypt.js";
import { lockReencryption } from "../../src/dm/lock.js";
import { TrustvolError } from "../../src/util/errors.js";
import { PowerCutDevice, PowerCut } from "../helpers/power-cut.js";
import { needTools } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { FAST_PBKDF, fastTmpDir } from "../helpers/reencrypt.js";
import { PASS, PBKDF, HOTZONE, makeVolume, plaintextOf, sha } from "./reencrypt-fixture.js";

const MiB = 1 << 20;
/** A scratch dir for this test's re-encryption locks (not /run/cryptsetup), restored after it. */
function privateLockDir(t: TestContext): void {
  const { dir, cleanup } = fastTmpDir("trustvol-guards-");
  t.after(cleanup);
  const saved = process.env.TRUSTVOL_LUKS2_LOCK_DIR;
  process.env.TRUSTVOL_LUKS2_LOCK_DIR = join(dir, "locks");
  t.after(() => (saved === undefined ? delete process.env.TRUSTVOL_LUKS2_LOCK_DIR : (process.env.TRUSTVOL_LUKS2_LOCK_DIR = saved)));
}

const oneLine = (code: string, says: RegExp) => (e: unknown) => e instanceof TrustvolError && e.code === code && says.test(e.message) && !e.message.includes("\n");

test("--header naming the device itself (the same path, another path, a symlink) is refused in every mode, nothing written", async (t) => {
  const { dir, cleanup } = fastTmpDir("trustvol-guards-");
  t.after(cleanup);
  const plainImg = join(dir, "plain.img"), luksImg = join(dir, "luks.img");
  writeFileSync(plainImg, randomBytes(4 * MiB));
  writeFileSync(luksImg, (await makeVolume(MiB)).image);
  symlinkSync(plainImg, join(dir, "link.img"));
  for (const [img, hdrPath, mode] of [
    [plainImg, plainImg, "encrypt"],
    [plainImg, join(dir, "link.img"), "encrypt"],
    [plainImg, `${dir}/./plain.img`, "encrypt"],
    [luksImg, luksImg, "reencrypt"],
    [luksImg, luksImg, "decrypt"],
  ] as const) {
    const before = sha(readFileSync(img));
    const dev = await FileBlockDevice.open(img);
    const hdr = await FileBlockDevice.open(hdrPath);
    try {
      await assert.rejects(reencrypt(dev, { mode, header: hdr, passphrase: PASS, pbkdf: PBKDF }), oneLine("EUSAGE", /is .* itself: a detached header is kept in another file/), `${mode} --header ${hdrPath}`);
      await assert.rejects(reencrypt(dev, { mode, header: hdr, passphrase: PASS, pbkdf: PBKDF, initOnly: true }), oneLine("EUSAGE", /itself/));
    } finally {
      await Promise.all([dev.close(), hdr.close()]);
    }
    assert.equal(sha(readFileSync(img)), before, `${mode}: ${img} unchanged`);
  }
});

test("another volume's detached header on a device that holds its own LUKS2 header: rotation, --decrypt, --init-only and --resume-only refuse, nothing written", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = fastTmpDir("trustvol-guards-");
  t.after(cleanup);
  const pw = join(dir, "pw");
  writeFileSync(pw, PASS, { mode: 0o600 });
  const { spawnSync } = await import("node:child_process");
  const cs = (...a: string[]) => assert.equal(spawnSync("cryptsetup", a, { encoding: "utf8" }).status, 0, `cryptsetup ${a.join(" ")}`);
  const own = join(dir, "own.img"), other = join(dir, "other.img"), otherHdr = join(dir, "other.hdr");
  writeFileSync(own, Buffer.alloc(20 * MiB));
  writeFileSync(other, Buffer.alloc(4 * MiB));
  cs("luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF, "--key-file", pw, own);
  cs("luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF, "--key-file", pw, "--header", otherHdr, other);
  // and the same header mid-rotation (started on its own device), then brought to the wrong one
  const otherHdrMid = join(dir, "other-mid.hdr");
  copyFileSync(otherHdr, otherHdrMid);
  cs("reencrypt", "--init-only", "-q", ...FAST_PBKDF, "--header", otherHdrMid, "--key-file", pw, other);
  const says = /holds a LUKS2 header at its start, where the volume of .* has encrypted data: it is another volume's device/;
  for (const [hdrPath, run] of [
    [otherHdr, (dev: FileBlockDevice, hdr: FileBlockDevice) => reencrypt(dev, { header: hdr, passphrase: PASS, pbkdf: PBKDF })],
    [otherHdr, (dev: FileBlockDevice, hdr: FileBlockDevice) => reencrypt(dev, { mode: "decrypt", header: hdr, passphrase: PASS, pbkdf: PBKDF })],
    [otherHdr, (dev: FileBlockDevice, hdr: FileBlockDevice) => reencrypt(dev, { header: hdr, passphrase: PASS, pbkdf: PBKDF, initOnly: true })],
    [otherHdrMid, (dev: FileBlockDevice, hdr: FileBlockDevice) => reencrypt(dev, { header: hdr, passphrase: PASS, resumeOnly: true })],
  ] as const) {
    const before = sha(readFileSync(own)) + sha(readFileSync(hdrPath));
    const dev = await FileBlockDevice.open(own);
    const hdr = await FileBlockDevice.open(hdrPath);
    try {
      await assert.rejects(run(dev, hdr), oneLine("EUSAGE", says));
    } finally {
      await Promise.all([dev.close(), hdr.close()]);
    }
    assert.equal(sha(readFileSync(own)) + sha(readFileSync(hdrPath)), before, "the device and the header file unchanged");
  }
  // the header's own device still works
  const dev = await FileBlockDevice.open(other);
  const hdr = await FileBlockDevice.open(otherHdrMid);
  try {
    assert.equal((await reencrypt(dev, { header: hdr, passphrase: PASS, resumeOnly: true })).state, "finished");
  } finally {
    await Promise.all([dev.close(), hdr.close()]);
  }
});

test("repair of a hotzone in re-encryption takes the re-encryption lock: refused (EBUSY, unchanged) while another run holds it", async (t) => {
  privateLockDir(t);
  const { image, plain } = await makeVolume(MiB);
  // a journal run cut inside a hotzone: the state a running re-encryption shows during every hotzone
  let crashed: Buffer | undefined;
  for (let cut = 8; !crashed; cut++) {
    const pc = new PowerCutDevice(image, { cutAtWrite: cut, unsynced: "keep", seed: cut });
    await reencrypt(pc, { passphrase: PASS, pbkdf: PBKDF, resilience: "journal", hotzoneSize: HOTZONE }).catch((e) => assert.ok(e instanceof PowerCut));
    const img = pc.image();
    if (reencryptStatus((await Luks2Volume.open(new MemoryBlockDevice(img))).metadata) === "crash") crashed = img;
  }
  const dev = new MemoryBlockDevice(Buffer.from(crashed));
  const uuid = (await Luks2Volume.open(dev)).uuid;
  const held = await lockReencryption(uuid);
  try {
    await assert.rejects(repairReencryption(dev, { passphrase: PASS }), oneLine("EBUSY", /being re-encrypted/));
    assert.ok(dev.data.equals(crashed), "nothing written");
  } finally {
    await held.release();
  }
  assert.deepEqual(await repairReencryption(dev, { passphrase: PASS }), { recovered: true });
  await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
  assert.ok((await plaintextOf(dev)).subarray(0, plain.length).equals(plain), "0 bytes lost");
});

test("a reencrypt area too small for the parity (one checksum block's worth, flush against the data): checksums only, nothing written past the area", async () => {
  // keyslots area = two keyslots (the old and the rotation's new one, 258048 bytes each) + 4096: the reencrypt area is
  // what is left, 4096 bytes, ending where the data starts
  const fmt = new MemoryBlockDevice(0);
  const dataOffset = 2 * 16384 + 2 * 258048 + 4096;
  const { volumeKey } = await formatLuks2(fmt, PASS, { pbkdf: PBKDF, dataOffset, keyslotsSize: dataOffset - 2 * 16384, sectorSize: 4096, keySizeBits: 512, digestIterations: 1000 });
  const plain = randomBytes(MiB);
  await fmt.write(Buffer.alloc(plain.length), dataOffset);
  const { LuksHandle } = await import("../../src/ops/volume.js");
  await (await LuksHandle.fromDevices(fmt)).decrypted(volumeKey).write(plain, 0);
  const dev = new MemoryBlockDevice(Buffer.from(fmt.data));
  const writes: [number, number][] = [];
  const w = dev.write.bind(dev);
  dev.write = async (b, o) => (writes.push([o, b.length]), w(b, o));
  await reencrypt(dev, { passphrase: PASS, pbkdf: PBKDF, resilience: "checksum", initOnly: true });
  const area = Object.values((await Luks2Volume.open(dev)).metadata.keyslots).find((k) => k.type === "reencrypt")!.area;
  assert.equal(Number(area.size), 4096, "the test's premise: a 4096-byte reencrypt area");
  const areaEnd = Number(area.offset) + 4096;
  writes.length = 0;
  await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
  const hdrWrites = writes.filter(([o]) => o < dataOffset);
  assert.deepEqual(hdrWrites.filter(([o, n]) => o < areaEnd && o + n > areaEnd), [], "no metadata write crosses the area's end");
  // hotzones of the checksums' room (4096 / 32 × 4096 = 512 KiB), not of one block each: a few commits, not hundreds
  const commits = writes.filter(([o]) => o === 0).length;
  assert.ok(commits < 16, `${commits} header commits for 1 MiB of data`);
  assert.ok((await plaintextOf(dev)).subarray(0, plain.length).equals(plain), "0 bytes lost");
});

test("a header on its device whose data segment starts at 0 (a detached header's layout) is refused before anything is written: rotation would write over its keyslots", async () => {
  const { image } = await makeVolume(MiB);
  const dev = new MemoryBlockDevice(Buffer.from(image));
  const v = await Luks2Volume.open(dev);
  const m = structuredClone(v.metadata);
  m.segments["0"]!.offset = "0";
  await writeHeader(dev, { ...v.header, metadata: m });
  const before = sha(dev.data);
  for (const o of [{}, { initOnly: true }, { mode: "decrypt" as const }])
    await assert.rejects(reencrypt(dev, { passphrase: PASS, pbkdf: PBKDF, ...o }), oneLine("ECORRUPT", /segment 0 of .* starts at 0, inside the header's own metadata and keyslots/));
  assert.equal(sha(dev.data), before, "nothing written");
});

test("header restore of a backup from before a re-encryption onto the device mid-way is refused without --force (the re-encrypted data would be lost)", async (t) => {
  const { dir, cleanup } = fastTmpDir("trustvol-guards-");
  t.after(cleanup);
  const { backupHeader, restoreHeader } = await import("../../src/luks2/backup.js");
  const { image, plain } = await makeVolume(MiB);
  const dev = new MemoryBlockDevice(Buffer.from(image));
  const bak = join(dir, "before.bak");
  await backupHeader(dev, bak);
  await reencrypt(dev, { passphrase: PASS, pbkdf: PBKDF, hotzoneSize: HOTZONE, signal: AbortSignal.abort() }).catch((e) => assert.equal((e as TrustvolError).code, "EINTR"));
  assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "clean", "the premise: a rotation in progress");
  const before = sha(dev.data);
  await assert.rejects(restoreHeader(dev, bak), oneLine("EUSAGE", /is in the middle of a re-encryption: a header from before it would not open the data re-encrypted since/));
  assert.equal(sha(dev.data), before, "nothing written");
  await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
  assert.ok((await plaintextOf(dev)).subarray(0, plain.length).equals(plain));
});

test("another volume's device under a detached header cut inside its first hotzone (rotation): resume and repair refuse it, nothing written", async () => {
  // volume A: detached header, data from offset 0; its rotation cut on the header device right after a "hot" commit
  const aData = new MemoryBlockDevice(Buffer.alloc(2 * MiB));
  const aHdr = new MemoryBlockDevice(0);
  await formatLuks2(aHdr, PASS, { pbkdf: PBKDF, digestIterations: 1000 }, aData);
  let crashed: Buffer | undefined;
  for (let cut = 2; !crashed && cut < 60; cut++) {
    const pc = new PowerCutDevice(aHdr.data, { cutAtWrite: cut, unsynced: "keep", seed: cut });
    await reencrypt(new MemoryBlockDevice(Buffer.from(aData.data)), { header: pc, passphrase: PASS, pbkdf: PBKDF, resilience: "journal", hotzoneSize: HOTZONE }).catch((e) => assert.ok(e instanceof PowerCut, String(e)));
    const m = (await Luks2Volume.open(new MemoryBlockDevice(pc.image()))).metadata;
    if (reencryptStatus(m) === "crash" && Object.values(m.segments).some((sg) => sg.offset === "0" && sg.flags?.includes("in-reencryption"))) crashed = pc.image();
  }
  assert.ok(crashed, "the premise: a cut left the hotzone at offset 0 in re-encryption");
  // volume B: an ordinary LUKS2 volume, header on its device
  const { image } = await makeVolume(MiB);
  const b = new MemoryBlockDevice(Buffer.from(image));
  const says = /holds a LUKS2 header at its start, where the volume of .* has encrypted data: it is another volume's device/;
  await assert.rejects(reencrypt(b, { header: new MemoryBlockDevice(Buffer.from(crashed)), passphrase: PASS, resumeOnly: true }), oneLine("EUSAGE", says));
  await assert.rejects(repairReencryption(b, { header: new MemoryBlockDevice(Buffer.from(crashed)), passphrase: PASS }), oneLine("EUSAGE", says));
  assert.ok(b.data.equals(image), "B unchanged");
});

test("--header naming the file a loop device reads (and the reverse) is the device itself: refused, nothing written", async (t) => {
  const { spawnSync } = await import("node:child_process");
  if (process.getuid?.() !== 0 || spawnSync("losetup", ["--version"]).status !== 0) return void t.skip("needs root and losetup");
  const { dir, cleanup } = fastTmpDir("trustvol-guards-");
  t.after(cleanup);
  const img = join(dir, "img.raw");
  writeFileSync(img, randomBytes(8 * MiB));
  const at = spawnSync("losetup", ["-f", "--show", img], { encoding: "utf8" });
  if (at.status !== 0) return void t.skip(`no loop device here: ${at.stderr.trim()}`);
  const loop = at.stdout.trim();
  t.after(() => void spawnSync("losetup", ["-d", loop]));
  const before = sha(readFileSync(img));
  for (const [data, header] of [[loop, img], [img, loop]]) {
    const dev = await FileBlockDevice.open(data!);
    const hdr = await FileBlockDevice.open(header!);
    try {
      await assert.rejects(reencrypt(dev, { mode: "encrypt", header: hdr, passphrase: PASS, pbkdf: PBKDF }), oneLine("EUSAGE", /itself: a detached header is kept in another file/), `data ${data}, --header ${header}`);
    } finally {
      await Promise.all([dev.close(), hdr.close()]);
    }
  }
  assert.equal(sha(readFileSync(img)), before, "the image unchanged");
});

test("--encrypt --uuid in upper case takes the lock every other reader of the header takes (its lower-case name)", async (t) => {
  privateLockDir(t);
  const uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
  const held = await lockReencryption(uuid);
  const data = new MemoryBlockDevice(randomBytes(2 * MiB));
  const before = sha(data.data);
  try {
    await assert.rejects(reencrypt(data, { mode: "encrypt", header: new MemoryBlockDevice(0), uuid: uuid.toUpperCase(), passphrase: PASS, pbkdf: PBKDF }), oneLine("EBUSY", /being re-encrypted/));
  } finally {
    await held.release();
  }
  assert.equal(sha(data.data), before);
});

test("`trustvol repair` rewrites a damaged header copy only under the re-encryption lock: refused (exit 7, unchanged) while a run holds it", async (t) => {
  privateLockDir(t);
  const { dir, cleanup } = fastTmpDir("trustvol-guards-");
  t.after(cleanup);
  const { image } = await makeVolume(MiB);
  // the primary torn, as a cut inside a running re-encryption's commit leaves it until the run writes it again
  const torn = Buffer.from(image);
  torn.fill(0, 4096, 8192);
  const img = join(dir, "v.img");
  writeFileSync(img, torn);
  const uuid = (await Luks2Volume.open(new MemoryBlockDevice(Buffer.from(torn)))).uuid;
  const held = await lockReencryption(uuid);
  try {
    const r = trustvol(["repair", img]);
    assert.equal(r.status, 7, r.stderr);
    assert.match(r.stderr, /being re-encrypted/);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.ok(readFileSync(img).equals(torn), "nothing written");
  } finally {
    await held.release();
  }
  const r = trustvol(["repair", img]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /Repaired: primary was damaged/);
});

test("repair with a --header that is the device itself (a symlink to it) is refused, library and CLI, nothing written", async (t) => {
  const { dir, cleanup } = fastTmpDir("trustvol-guards-");
  t.after(cleanup);
  const img = join(dir, "luks.img");
  writeFileSync(img, (await makeVolume(MiB)).image);
  symlinkSync(img, join(dir, "link.img"));
  const before = sha(readFileSync(img));
  const dev = await FileBlockDevice.open(img);
  const hdr = await FileBlockDevice.open(join(dir, "link.img"));
  try {
    await assert.rejects(repairReencryption(dev, { passphrase: PASS, header: hdr }), oneLine("EUSAGE", /is .* itself: a detached header is kept in another file/));
  } finally {
    await Promise.all([dev.close(), hdr.close()]);
  }
  const r = trustvol(["repair", "--header", join(dir, "link.img"), img]);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /itself: a detached header is kept in another file/);
  assert.equal(sha(readFileSync(img)), before, "unchanged");
});
