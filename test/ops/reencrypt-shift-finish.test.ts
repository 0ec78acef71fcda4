// The end of a data-shift encryption (`reencrypt --encrypt --reduce-device-size`) finished on the metadata alone: a run
// stopped after its last hotzone, before the final commit — moved copy intact, or partly zeroed by a finish cut
// mid-wipe — is finished with the plaintext intact and the moved copy zeroed. A header edited to claim "all done" over a
// device that was never encrypted is taken at its word (LUKS2 authenticates neither the data segments nor the data, and
// the same shape is cryptsetup's own finished run, which 2.6.1 cannot resume), but the moved copy — the head's only
// copy there — is kept, byte for byte: trustvol wipes it only when it is the head now encrypted in place.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { randomFillSync } from "node:crypto";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { reencryptStatus, loadReencryptState, postMetadata } from "../../src/luks2/reencrypt-metadata.js";
import { reencrypt, repairReencryption } from "../../src/ops/reencrypt.js";
import { PowerCutDevice, PowerCut } from "../helpers/power-cut.js";
import { needTools } from "../helpers/tools.js";
import { makeVolume, PASS as FIX_PASS, PBKDF as FIX_PBKDF } from "./reencrypt-fixture.js";
import { exportedHeaderImage } from "../../src/ops/reencrypt-export.js";
import { MiB, FAST_PBKDF, PASSPHRASE, writePlain, shaFile, cs, luksJson, tv, needCliEngine, fastTmpDir, assertPlain, opensWithBoth, tamperJson } from "../helpers/reencrypt.js";

const IMG = 24 * MiB, REDUCE = 8 * MiB, FS = IMG - REDUCE;
// what `trustvol reencrypt --encrypt --reduce-device-size 8M` with FAST_PBKDF runs
const OPTS = { mode: "encrypt" as const, passphrase: Buffer.from(PASSPHRASE), pbkdf: { type: "pbkdf2" as const, forceIterations: 1000 }, reduceDeviceSize: REDUCE };


interface Tail {
  image: Buffer;
  plain: Buffer;
  moved: { offset: number; size: number };
}

let tail: Promise<Tail> | undefined;
/**
 * The run cut by a power loss after its last hotzone's "done" commit and before the wipe of the moved copy (the
 * technique of reencrypt-interop.test.ts's "datashift tail" test: cuts from the last write down, unsynced writes
 * dropped), the moved copy still the plaintext of the device's first chunk.
 */
function tailState(dir: string): Promise<Tail> {
  return (tail ??= (async () => {
    const p = join(dir, "start.img");
    writePlain(p, IMG, 21);
    const start = readFileSync(p);
    const plain = start.subarray(0, FS);
    const probe = new PowerCutDevice(start);
    await reencrypt(probe, OPTS);
    let seen = false;
    for (let cut = probe.writes; cut > 0; cut--) {
      const pc = new PowerCutDevice(start, { cutAtWrite: cut, unsynced: "drop" });
      await reencrypt(pc, OPTS).then(() => assert.fail("the run was not cut"), (e) => assert.ok(e instanceof PowerCut, String(e)));
      const image = pc.image();
      const m = await Luks2Volume.open(new MemoryBlockDevice(image)).then((v) => v.metadata, () => undefined);
      const done = !!m && reencryptStatus(m) === "clean" && Object.values(m.segments).filter((s) => !(s.flags ?? []).length).every((s) => s.type === "crypt");
      if (!done) {
        if (seen) break; // below the last hotzone's "done" commit
        continue;
      }
      seen = true;
      const ms = Object.values(m.segments).find((s) => (s.flags ?? []).includes("backup-moved-segment"))!;
      const moved = { offset: Number(ms.offset), size: Number(ms.size) };
      if (image.subarray(moved.offset, moved.offset + moved.size).equals(plain.subarray(0, moved.size))) return { image, plain, moved };
    }
    throw new Error("no cut after the last hotzone's commit left the moved copy intact");
  })());
}

/** Resume the tail state (after `prep`) with the CLI: finished, plaintext intact, moved copy zeros, no re-encryption left. */
async function resumeTail(t: TestContext, name: string, prep: (img: Buffer, moved: Tail["moved"]) => void, movedAfter?: (m: Tail["moved"], img: Buffer) => Buffer): Promise<void> {
  const { dir, cleanup } = fastTmpDir();
  t.after(cleanup);
  const pw = join(dir, "pw"), plainPath = join(dir, "plain"), img = join(dir, `${name}.img`);
  writeFileSync(pw, PASSPHRASE, { mode: 0o600 });
  const { image, plain, moved } = await tailState(dir);
  writeFileSync(plainPath, plain);
  const copy = Buffer.from(image);
  prep(copy, moved);
  writeFileSync(img, copy);
  const r = tv(["reencrypt", "-q", "--resume-only", "--key-file", pw, img]);
  assert.equal(r.status, 0, `trustvol --resume-only: ${r.stderr}`);
  assertPlain(img, pw, plainPath, FS, undefined, name);
  const after = readFileSync(img);
  const want = movedAfter ? movedAfter(moved, copy) : Buffer.alloc(moved.size);
  assert.ok(after.subarray(moved.offset, moved.offset + moved.size).equals(want), movedAfter ? "the moved region is left as it was" : "the moved copy is zeros");
  opensWithBoth(img, pw);
}

test("data shift stopped after the last hotzone, before the final commit: --resume-only finishes, plaintext intact, moved copy zeroed", async (t) => {
  if (!needTools(t, "cryptsetup") || !needCliEngine(t)) return;
  await resumeTail(t, "tail", () => {});
});

test("data shift whose finish was cut mid-wipe (moved copy partly zeros): --resume-only finishes, plaintext intact", async (t) => {
  if (!needTools(t, "cryptsetup") || !needCliEngine(t)) return;
  // the first half, as a cut between two wipe writes leaves it; then a write torn inside a sector
  await resumeTail(t, "half-wiped", (img, m) => img.fill(0, m.offset, m.offset + m.size / 2));
  await resumeTail(t, "torn-wipe", (img, m) => img.fill(0, m.offset, m.offset + m.size / 2 + 4096 + 777));
});

test("cryptsetup's own finished data shift (other bytes where the moved copy was; 2.6.1 cannot resume it): finished, plaintext intact, only the head's sectors zeroed", async (t) => {
  if (!needTools(t, "cryptsetup") || !needCliEngine(t)) return;
  // measured with cryptsetup 2.6.1 killed after its last hotzone: the moved copy's region no longer holds the head
  await resumeTail(t, "cryptsetup-tail", (img, m) => img.fill(0x5a, m.offset, m.offset + m.size), (m, img) => Buffer.from(img.subarray(m.offset, m.offset + m.size)));
  // its random wipe cut half-way (reencrypt_wipe_unused_device_area): the head's half is zeroed, the other kept
  const half = (m: Tail["moved"]) => m.offset + m.size / 2;
  await resumeTail(t, "cryptsetup-torn-wipe", (img, m) => randomFillSync(img, m.offset, m.size / 2), (m, img) => Buffer.concat([img.subarray(m.offset, half(m)), Buffer.alloc(m.size / 2)]));
});

test("header forged to say the data shift is finished over a device never encrypted: the moved copy (the head's only copy) is kept", async (t) => {
  if (!needTools(t, "cryptsetup") || !needCliEngine(t)) return;
  const { dir, cleanup } = fastTmpDir();
  t.after(cleanup);
  const pw = join(dir, "pw"), img = join(dir, "forged.img");
  writeFileSync(pw, PASSPHRASE, { mode: 0o600 });
  writePlain(img, IMG, 22);
  cs(["reencrypt", "--encrypt", "--init-only", "-q", "--force-offline-reencrypt", "--reduce-device-size", "8M", ...FAST_PBKDF, "--key-file", pw, img]);
  // the data segments replaced by the final one: backup-final without its flags as "0", the backups renumbered 1..3
  tamperJson(img, (j) => {
    const backups = Object.entries(j.segments).filter(([, s]) => s.flags?.some((f: string) => f.startsWith("backup-"))).sort(([a], [b]) => Number(a) - Number(b));
    const finalId = backups.find(([, s]) => s.flags.includes("backup-final"))![0];
    const final = { ...j.segments[finalId] };
    delete final.flags;
    const ids = new Map(backups.map(([id], i) => [id, String(i + 1)]));
    j.segments = { "0": final, ...Object.fromEntries(backups.map(([id, s]) => [ids.get(id)!, s])) };
    for (const d of Object.values(j.digests)) d.segments = d.segments.includes(finalId) ? ["0", ids.get(finalId)!] : d.segments.filter((s: string) => ids.has(s)).map((s: string) => ids.get(s)!);
  });
  const segs = Object.values(luksJson(img).segments);
  assert.equal(segs.filter((s) => !s.flags?.length).length, 1, "one data segment, as cryptsetup reads the forged header");
  // The premise: cryptsetup 2.6.1 refuses this state too.
  const keep = join(dir, "cs-copy.img");
  copyFileSync(img, keep);
  const c = cs(["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", pw, keep], { check: false });
  t.diagnostic(`cryptsetup: exit ${c.status}: ${c.stderr.trim().split("\n").at(-1)}`);
  assert.notEqual(c.status, 0, "cryptsetup refuses the forged header");
  const moved = Object.values(luksJson(img).segments).find((s) => s.flags?.includes("backup-moved-segment"))!;
  const [at, len] = [Number(moved.offset), Number(moved.size)];
  const head = shaFile(img, at, len);
  const plain = join(dir, "plain.img");
  writePlain(plain, IMG, 22);
  assert.equal(head, shaFile(plain, 0, len), "the premise: the moved copy is the device's plain head");
  const r = tv(["reencrypt", "-q", "--resume-only", "--key-file", pw, ...FAST_PBKDF, img]);
  t.diagnostic(`trustvol: exit ${r.status}: ${r.stderr.trim()}`);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(shaFile(img, at, len), head, "the moved copy, the head's only copy, is kept byte for byte");
});

// Decryption with a data shift: its finish zeroes the device's last shift only where that is stale ciphertext (found
// by the differential fuzz: a forged "done" had trustvol zero the only copy of data never moved).
// (128 KiB: data shorter than the shift, the tail holds the old header's area too; found by review in session 20)
for (const dataSize of [3 * MiB, 128 * 1024])
test(`decrypt with a data shift (${dataSize / 1024} KiB of data): a header forged to say 'done' over data never moved keeps the tail; a genuine finish zeroes it`, async () => {
  const SHIFT = MiB;
  const { image, plain } = await makeVolume(dataSize);
  const uuid = (await Luks2Volume.open(new MemoryBlockDevice(image))).uuid;
  const exported = await exportedHeaderImage(new MemoryBlockDevice(image), uuid, SHIFT);
  const dev = new MemoryBlockDevice(Buffer.from(image)), hdr = new MemoryBlockDevice(Buffer.from(exported));
  await reencrypt(dev, { mode: "decrypt", header: hdr, passphrase: FIX_PASS, pbkdf: FIX_PBKDF, initOnly: true });
  // forged: the data segments replaced by the final one (LUKS2's digests cover only the backup segments)
  const v = await Luks2Volume.open(hdr);
  const m = structuredClone(v.metadata);
  const backups = Object.keys(m.segments).map(Number).sort((a, b) => a - b).filter((id) => m.segments[String(id)]!.flags?.length);
  const segs: typeof m.segments = { "0": { type: "linear", offset: "0", size: "dynamic" } };
  backups.forEach((id, i) => (segs[String(i + 1)] = m.segments[String(id)]!));
  for (const d of Object.values(m.digests)) d.segments = d.segments.filter((s) => backups.includes(Number(s))).map((s) => String(backups.indexOf(Number(s)) + 1));
  m.segments = segs;
  await v.commit(m);
  const before = Buffer.from(dev.data);
  await reencrypt(dev, { mode: "decrypt", header: hdr, passphrase: FIX_PASS, pbkdf: FIX_PBKDF });
  assert.ok(dev.data.subarray(dev.size - SHIFT).equals(before.subarray(dev.size - SHIFT)), "the tail, the only copy of data never moved, is kept");
  // the genuine run zeroes it
  const dev2 = new MemoryBlockDevice(Buffer.from(image));
  await reencrypt(dev2, { mode: "decrypt", header: new MemoryBlockDevice(Buffer.from(exported)), passphrase: FIX_PASS, pbkdf: FIX_PBKDF });
  assert.ok(dev2.data.subarray(0, plain.length).equals(plain));
  assert.ok(dev2.data.subarray(dev2.size - SHIFT).equals(Buffer.alloc(SHIFT)), "stale ciphertext zeroed");
});

// What a finished decryption with a data shift leaves in the device's last shift [T, T + shift): no stale ciphertext
// (old key) and, when the plain data is shorter than the shift, no old keyslot material in [T, shift) — the header file
// holds the reference for that part. A cut at any write of the finish (torn sectors included) and the next run still
// leave none of either.
async function decryptShiftBeforeFinish(dataSize: number): Promise<{ dev: Buffer; hdr: Buffer; plain: Buffer; original: Buffer; shift: number }> {
  const SHIFT = MiB; // makeVolume's data offset
  const { image, plain } = await makeVolume(dataSize);
  const uuid = (await Luks2Volume.open(new MemoryBlockDevice(image))).uuid;
  const dev = new MemoryBlockDevice(Buffer.from(image)), hdr = new MemoryBlockDevice(Buffer.from(await exportedHeaderImage(new MemoryBlockDevice(image), uuid, SHIFT)));
  await reencrypt(dev, { mode: "decrypt", header: hdr, passphrase: FIX_PASS, pbkdf: FIX_PBKDF, initOnly: true });
  return { dev: Buffer.from(dev.data), hdr: Buffer.from(hdr.data), plain, original: image, shift: SHIFT };
}

/** 512-byte sectors of the device's tail still holding bytes of the original image's [0, shift) or of its ciphertext. */
function leftovers(after: Buffer, original: Buffer, T: number): { keyslot: number; ciphertext: number } {
  const sectors = new Set<string>();
  for (let o = 0; o < original.length; o += 512) {
    const s = original.subarray(o, o + 512);
    if (s.some((b) => b !== 0)) sectors.add(s.toString("hex"));
  }
  let keyslot = 0, ciphertext = 0;
  for (let d = T; d < after.length; d += 512) {
    const s = after.subarray(d, d + 512);
    if (!s.some((b) => b !== 0)) continue;
    // a torn sector: its non-zero tail still equal to the original's at that place
    const k = s.findIndex((b) => b !== 0);
    const orig = original.subarray(d, d + 512);
    if (sectors.has(s.toString("hex")) || (k > 0 && s.subarray(k).equals(orig.subarray(k)))) {
      if (d < MiB) keyslot++; // below the shift: the old header's area
      else ciphertext++;
    }
  }
  return { keyslot, ciphertext };
}

for (const dataSize of [3 * MiB, 128 * 1024]) {
  test(`decrypt with a data shift (${dataSize / 1024} KiB of data, shift 1 MiB): the finish leaves neither stale ciphertext nor old keyslot material in the tail, whatever write a cut lands on`, async (t) => {
    const s = await decryptShiftBeforeFinish(dataSize);
    const T = dataSize;
    const run = async (d: MemoryBlockDevice, h: MemoryBlockDevice) => reencrypt(d, { mode: "decrypt", header: h, passphrase: FIX_PASS, resumeOnly: true });
    const d0 = new MemoryBlockDevice(Buffer.from(s.dev)), h0 = new MemoryBlockDevice(Buffer.from(s.hdr));
    await run(d0, h0);
    assert.ok(d0.data.subarray(0, T).equals(s.plain));
    assert.deepEqual(leftovers(d0.data, s.original, T), { keyslot: 0, ciphertext: 0 }, "a whole run");
    const { PowerRail } = await import("../helpers/power-cut.js");
    const probe = new PowerRail({});
    const pd = new PowerCutDevice(s.dev, { rail: probe }), ph = new PowerCutDevice(s.hdr, { rail: probe });
    await run(pd as unknown as MemoryBlockDevice, ph as unknown as MemoryBlockDevice);
    let cuts = 0;
    for (let at = 1; at <= probe.writes; at++)
      for (const policy of ["drop", "keep", "random"] as const) {
        const rail = new PowerRail({ cutAtWrite: at, unsynced: policy, seed: at * 17 + 1 });
        const cd = new PowerCutDevice(s.dev, { rail }), ch = new PowerCutDevice(s.hdr, { rail });
        await assert.rejects(run(cd as unknown as MemoryBlockDevice, ch as unknown as MemoryBlockDevice), (e) => e instanceof PowerCut);
        const d = new MemoryBlockDevice(cd.image()), h = new MemoryBlockDevice(ch.image());
        if (reencryptStatus((await Luks2Volume.open(h)).metadata) !== "none") await run(d, h);
        assert.ok(d.data.subarray(0, T).equals(s.plain), `cut ${at} (${policy}): plaintext`);
        const left = leftovers(d.data, s.original, T);
        // a cut after the final commit cannot be resumed: the tail was wiped (and flushed) before it
        assert.deepEqual(left, { keyslot: 0, ciphertext: 0 }, `cut ${at} (${policy}): tail`);
        cuts++;
      }
    t.diagnostic(`${cuts} cuts (${probe.writes} writes × 3 policies), torn sectors included: tail clean after each`);
  });
}

test("decrypt with a data shift: the header file's finish resumed on a backup of the device (taken before the decryption) changes nothing on it", async () => {
  const s = await decryptShiftBeforeFinish(128 * 1024);
  const T = 128 * 1024;
  // the header file as a run leaves it with every hotzone done (the moved segment's "done"), data decrypted
  const run = (d: MemoryBlockDevice, h: MemoryBlockDevice) => reencrypt(d, { mode: "decrypt", header: h, passphrase: FIX_PASS, resumeOnly: true });
  const { PowerRail } = await import("../helpers/power-cut.js");
  const probe = new PowerRail({});
  await run(new PowerCutDevice(s.dev, { rail: probe }) as unknown as MemoryBlockDevice, new PowerCutDevice(s.hdr, { rail: probe }) as unknown as MemoryBlockDevice);
  let hdr: Buffer | undefined;
  for (let at = probe.writes; at >= 1 && !hdr; at--) {
    const rail = new PowerRail({ cutAtWrite: at, unsynced: "keep", seed: 1 });
    const cd = new PowerCutDevice(s.dev, { rail }), ch = new PowerCutDevice(s.hdr, { rail });
    await run(cd as unknown as MemoryBlockDevice, ch as unknown as MemoryBlockDevice).catch((e) => assert.ok(e instanceof PowerCut));
    const m = (await Luks2Volume.open(new MemoryBlockDevice(ch.image()))).metadata;
    if (reencryptStatus(m) === "crash" && cd.image().subarray(0, T).equals(s.plain)) hdr = ch.image();
  }
  assert.ok(hdr, "a cut in the last hotzone with the data already plain");
  const h = new MemoryBlockDevice(hdr);
  const v = await Luks2Volume.open(h);
  const st = loadReencryptState(v.metadata);
  await v.commit(postMetadata(v.metadata, st, 0, st.movedSeg!.size!, T));
  const backup = new MemoryBlockDevice(Buffer.from(s.original));
  await run(backup, h);
  assert.ok(backup.data.equals(s.original), "the backup is byte-identical: its keyslots and ciphertext are not stale data of this run");
});

test("decrypt with a data shift: a tail zeroing torn out of order (every other 512-byte piece landed) is finished by the next run", async () => {
  for (const dataSize of [3 * MiB, 128 * 1024]) {
    const s = await decryptShiftBeforeFinish(dataSize);
    const T = dataSize;
    /** The first write into the tail lands only its even 512-byte pieces, then the power goes. */
    class OutOfOrderTear extends MemoryBlockDevice {
      torn = false;
      override async write(buf: Uint8Array, offset: number): Promise<void> {
        if (this.torn) throw new PowerCut(0);
        if (offset < T || buf.length < 1024) return super.write(buf, offset);
        this.torn = true;
        for (let o = 0; o < buf.length; o += 1024) await super.write(buf.subarray(o, o + 512), offset + o);
        throw new PowerCut(0);
      }
    }
    const dev = new OutOfOrderTear(Buffer.from(s.dev)), hdr = new MemoryBlockDevice(Buffer.from(s.hdr));
    await assert.rejects(reencrypt(dev, { mode: "decrypt", header: hdr, passphrase: FIX_PASS, resumeOnly: true }), (e) => e instanceof PowerCut);
    assert.ok(dev.torn, "the cut landed in the tail");
    const again = new MemoryBlockDevice(Buffer.from(dev.data));
    await reencrypt(again, { mode: "decrypt", header: hdr, passphrase: FIX_PASS, resumeOnly: true });
    assert.ok(again.data.subarray(0, T).equals(s.plain));
    assert.deepEqual(leftovers(again.data, s.original, T), { keyslot: 0, ciphertext: 0 }, `${dataSize / 1024} KiB: tail clean`);
  }
});

test("decrypt with a data shift (128 KiB): plain data written between a repaired cut and the finish — the old keyslot material still goes", async () => {
  const s = await decryptShiftBeforeFinish(128 * 1024);
  const T = 128 * 1024;
  /** The power goes at the first write into the tail (the finish's wipe). */
  class CutAtTail extends MemoryBlockDevice {
    override async write(buf: Uint8Array, offset: number): Promise<void> {
      if (offset >= T) throw new PowerCut(0);
      return super.write(buf, offset);
    }
  }
  const cut = new CutAtTail(Buffer.from(s.dev)), hdr = new MemoryBlockDevice(Buffer.from(s.hdr));
  await assert.rejects(reencrypt(cut, { mode: "decrypt", header: hdr, passphrase: FIX_PASS, resumeOnly: true }), (e) => e instanceof PowerCut);
  const dev = new MemoryBlockDevice(Buffer.from(cut.data));
  await repairReencryption(dev, { header: hdr, passphrase: FIX_PASS });
  const plain = Buffer.from(s.plain);
  plain.fill(0x41, 0, 4096); // the file system, mounted after the repair, writes a block
  dev.data.set(plain.subarray(0, 4096), 0);
  await reencrypt(dev, { mode: "decrypt", header: hdr, passphrase: FIX_PASS, resumeOnly: true });
  assert.ok(dev.data.subarray(0, T).equals(plain));
  assert.equal(leftovers(dev.data, s.original, T).keyslot, 0, "no old keyslot material in [T, shift)");
});
