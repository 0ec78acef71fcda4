// A resilience change when a re-encryption resumes (`--resume-only --resilience journal`, as cryptsetup 2.6.1 does it):
// the reencrypt keyslot's area and the re-encryption digest are rewritten in one commit, after any crash recovery (the
// crashed hotzone is protected by the old area), before the next hotzone. The rules are cryptsetup's (no change to or
// from datashift, none refused for a decryption with a data shift, a moved segment that no longer fits refused); the
// header trustvol writes is the one cryptsetup writes (area fields, digest id) and cryptsetup resumes from it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { FileBlockDevice } from "../../src/blockdev/file.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { reencrypt } from "../../src/ops/reencrypt.js";
import { parseReencryptKeyslot, reencryptStatus, type ReencryptKeyslot } from "../../src/luks2/reencrypt-metadata.js";
import { reencryptKeyslotId } from "../../src/luks2/reencrypt-digest.js";
import { resilienceSwitch } from "../../src/luks2/reencrypt-resilience.js";
import type { Luks2Metadata } from "../../src/luks2/metadata.js";
import { TrustvolError } from "../../src/util/errors.js";
import { PowerCutDevice, PowerCut, type UnsyncedPolicy } from "../helpers/power-cut.js";
import { needTools } from "../helpers/tools.js";
import { MiB, FAST_PBKDF, PASSPHRASE, writePlain, shaFile, cs, luksJson, fastTmpDir, needCliEngine, assertPlain, opensWithBoth, oracleFill, assertDumpAsCryptsetup } from "../helpers/reencrypt.js";
import { PASS, PBKDF, HOTZONE, SHIFT_REDUCE, makeVolume, plaintextOf } from "./reencrypt-fixture.js";
import { randomBytes } from "node:crypto";

const ks = (type: string, extra: Partial<ReencryptKeyslot["area"]> = {}): ReencryptKeyslot => ({ id: 2, mode: "reencrypt", direction: "forward", area: { type, offset: 548864, size: 16228352, ...extra } });
const sums = { hash: "sha256", sectorSize: 4096 };
const o = { block: 4096, hashLen: (a: string) => (a === "sha512" ? 64 : a === "sha1" ? 20 : 32) };
const refused = (f: () => unknown, says: RegExp) => assert.throws(f, (e: TrustvolError) => e.code === "EUSAGE" && says.test(e.message));

test("resilienceSwitch: what a resume's --resilience / --resilience-hash does to each stored area (cryptsetup's rules)", () => {
  // nothing asked, or what is stored: no commit
  assert.equal(resilienceSwitch(ks("checksum", sums), {}, o), null);
  assert.equal(resilienceSwitch(ks("checksum", sums), { resilience: "checksum" }, o), null);
  assert.equal(resilienceSwitch(ks("journal"), { resilience: "journal" }, o), null);
  assert.equal(resilienceSwitch(ks("datashift", { shiftSize: 32 * MiB }), { resilience: "datashift" }, o), null);
  // (a data shift's init ignores --resilience-hash, as cryptsetup's does: the same command resumes)
  assert.equal(resilienceSwitch(ks("datashift", { shiftSize: 32 * MiB }), { hash: "sha512" }, o), null);
  assert.equal(resilienceSwitch(ks("datashift-checksum", { ...sums, shiftSize: 16 * MiB }), { resilience: "checksum" }, o), null);
  // a change: the area as cryptsetup writes it (field order offset, size, type, hash, sector_size, shift_size)
  assert.deepEqual(resilienceSwitch(ks("checksum", sums), { resilience: "journal" }, o), { offset: "548864", size: "16228352", type: "journal" });
  assert.deepEqual(resilienceSwitch(ks("checksum", sums), { resilience: "none" }, o), { offset: "548864", size: "16228352", type: "none" });
  assert.deepEqual(resilienceSwitch(ks("journal"), { resilience: "checksum" }, { ...o, block: 2048 }), { offset: "548864", size: "16228352", type: "checksum", hash: "sha256", sector_size: 2048 });
  assert.deepEqual(resilienceSwitch(ks("checksum", sums), { resilience: "checksum", hash: "sha512" }, o), { offset: "548864", size: "16228352", type: "checksum", hash: "sha512", sector_size: 4096 });
  // --resilience checksum alone keeps a checksum run's hash (cryptsetup copies it), and --resilience-hash alone changes it
  assert.equal(resilienceSwitch(ks("checksum", { hash: "sha512", sectorSize: 4096 }), { resilience: "checksum" }, o), null);
  assert.deepEqual(resilienceSwitch(ks("checksum", sums), { hash: "sha1" }, o)?.hash, "sha1");
  // the hash as given, as cryptsetup writes it (a different spelling is a change, as its strcmp says)
  assert.deepEqual(resilienceSwitch(ks("journal"), { resilience: "checksum", hash: "SHA512" }, o)?.hash, "SHA512");
  // a decryption's switch to checksum without a hash gets sha256 (cryptsetup reads the stored hash only for "checksum")
  assert.deepEqual(resilienceSwitch(ks("datashift-journal", { size: 17 * MiB, shiftSize: 16 * MiB }), { resilience: "checksum" }, { ...o, movedSize: 16 * MiB })?.hash, "sha256");
  const shifted = ks("datashift-checksum", { ...sums, size: 16486400, shiftSize: 16 * MiB });
  assert.deepEqual(resilienceSwitch(shifted, { resilience: "checksum", hash: "sha512" }, { ...o, movedSize: 16 * MiB }), { offset: "548864", size: "16486400", type: "datashift-checksum", hash: "sha512", sector_size: 4096, shift_size: String(16 * MiB) });
  assert.deepEqual(resilienceSwitch(ks("datashift-journal", { size: 17 * MiB, shiftSize: 16 * MiB }), { resilience: "datashift-checksum" }, { ...o, movedSize: 16 * MiB })?.type, "datashift-checksum");
  // refused, as cryptsetup 2.6.1 refuses them
  refused(() => resilienceSwitch(ks("datashift", { shiftSize: 32 * MiB }), { resilience: "checksum" }, o), /its resilience is datashift and cannot become checksum/);
  refused(() => resilienceSwitch(shifted, { resilience: "none" }, { ...o, movedSize: 16 * MiB }), /protected by checksum or journal, not none/);
  refused(() => resilienceSwitch(shifted, { resilience: "journal" }, { ...o, movedSize: 16 * MiB }), /area holds 16486400 bytes of hotzone, the moved segment is 16777216/);
  refused(() => resilienceSwitch(ks("checksum", sums), { resilience: "datashift-journal" }, o), /not for this re-encryption/);
  refused(() => resilienceSwitch(ks("checksum", sums), { resilience: "datashift" }, o), /not for this re-encryption/);
  refused(() => resilienceSwitch(ks("journal"), { hash: "sha512" }, o), /--resilience-hash applies to checksum resilience; this re-encryption uses journal/);
  // cryptsetup 2.6.1 switches this one; the engine checksums whole blocks and would refuse the header it left
  refused(() => resilienceSwitch(ks("datashift-journal", { size: 17 * MiB, shiftSize: 16 * MiB }), { resilience: "checksum" }, { ...o, movedSize: MiB + 512 }), /moved segment \(1049088 bytes\) is not a multiple of the 4096-byte checksum block/);
});

const area = (m: Luks2Metadata) => parseReencryptKeyslot(m)!.area;
const reencryptDigestId = (m: Luks2Metadata) => Object.keys(m.digests).find((d) => m.digests[d]!.keyslots.includes(reencryptKeyslotId(m)!));

/** A rotation stopped at a safe point after two hotzones: a clean mid-run state. */
async function midway(resilience: "checksum" | "journal" = "checksum"): Promise<{ img: Buffer; plain: Buffer }> {
  const { image, plain } = await makeVolume(384 * 1024);
  const dev = new MemoryBlockDevice(image);
  const ac = new AbortController();
  await assert.rejects(
    reencrypt(dev, { passphrase: PASS, pbkdf: PBKDF, hotzoneSize: HOTZONE, resilience, signal: ac.signal, onProgress: (p) => p.done >= 2 * HOTZONE && ac.abort() }),
    (e: TrustvolError) => e.code === "EINTR",
  );
  assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "clean");
  return { img: Buffer.from(dev.data), plain };
}

/** Resume with `want`, stop after its first hotzone (done under the new protection): the header as the switch left it. */
async function switchAndStop(img: Buffer, want: { resilience?: "checksum" | "journal" | "none"; hash?: string }): Promise<MemoryBlockDevice> {
  const dev = new MemoryBlockDevice(img);
  const ac = new AbortController();
  let from = -1;
  await assert.rejects(
    reencrypt(dev, { passphrase: PASS, resumeOnly: true, hotzoneSize: HOTZONE, ...want, signal: ac.signal, onProgress: (p) => (from < 0 ? (from = p.done) : p.done > from && ac.abort()) }),
    (e: TrustvolError) => e.code === "EINTR",
  );
  assert.ok(from >= 0, "the resume reported its progress");
  return dev;
}

for (const want of [{ resilience: "journal" }, { resilience: "none" }, { resilience: "checksum", hash: "sha512" }, { hash: "sha1" }] as const) {
  test(`resume --resilience ${want.resilience ?? "(stored)"}${"hash" in want ? ` --resilience-hash ${want.hash}` : ""}: one commit switches area and digest, the run goes on and finishes, plaintext intact`, async () => {
    const { img, plain } = await midway();
    const before = (await Luks2Volume.open(new MemoryBlockDevice(img))).metadata;
    const oldDigest = reencryptDigestId(before)!;
    const dev = await switchAndStop(img, want);
    const m = (await Luks2Volume.open(dev)).metadata;
    const a = area(m);
    assert.equal(a.type, want.resilience ?? "checksum");
    assert.equal(a.hash, "hash" in want ? want.hash : undefined);
    assert.deepEqual([a.offset, a.size], [area(before).offset, area(before).size], "the same area");
    // cryptsetup creates the new digest before it erases the old one: the next free id
    assert.equal(reencryptDigestId(m), String(Number(oldDigest) + 1));
    assert.equal(oldDigest in m.digests, false, "the old re-encryption digest is gone");
    await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
    assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "none");
    assert.ok((await plaintextOf(dev)).subarray(0, plain.length).equals(plain));
  });
}

test("a crashed hotzone is recovered with the old protection, then the resilience switched: plaintext intact", async () => {
  const { img, plain } = await midway();
  // cut inside the next hotzone's data writes: its checksums and "hot" commit are on disk
  let crashed: Buffer | undefined;
  for (let cut = 1; cut < 40 && !crashed; cut++) {
    const pc = new PowerCutDevice(img, { cutAtWrite: cut, unsynced: "keep", seed: cut });
    await assert.rejects(reencrypt(pc, { passphrase: PASS, resumeOnly: true, hotzoneSize: HOTZONE }), (e) => e instanceof PowerCut);
    const m = (await Luks2Volume.open(new MemoryBlockDevice(pc.image()))).metadata;
    if (reencryptStatus(m) === "crash") crashed = pc.image();
  }
  assert.ok(crashed, "a cut left a hotzone in re-encryption");
  const dev = new MemoryBlockDevice(crashed);
  const r = await reencrypt(dev, { passphrase: PASS, resumeOnly: true, resilience: "journal" });
  assert.equal(r.recovered, true);
  assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "none");
  assert.ok((await plaintextOf(dev)).subarray(0, plain.length).equals(plain));
});

for (const [from, to] of [["checksum", "journal"], ["journal", "checksum"]] as const)
test(`power cut at every write of a resume that switches ${from} → ${to}: the next resume always finishes, 0 bytes lost`, async (t) => {
  const { img, plain } = await midway(from);
  const opts = { passphrase: PASS, resumeOnly: true, hotzoneSize: HOTZONE, resilience: to };
  const probe = new PowerCutDevice(img);
  await reencrypt(probe, opts);
  let cuts = 0;
  for (let cut = 1; cut <= probe.writes; cut++)
    for (const pol of ["drop", "keep", "random"] as UnsyncedPolicy[]) {
      const pc = new PowerCutDevice(img, { cutAtWrite: cut, unsynced: pol, seed: cut * 11 + 3 });
      await assert.rejects(reencrypt(pc, opts), (e) => e instanceof PowerCut);
      const dev = new MemoryBlockDevice(pc.image());
      // half resume with the switch asked again, half without: either way the run finishes
      if (reencryptStatus((await Luks2Volume.open(dev)).metadata) !== "none") await reencrypt(dev, cut % 2 ? { passphrase: PASS, resumeOnly: true } : opts);
      assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "none", `cut ${cut} (${pol})`);
      assert.ok((await plaintextOf(dev)).subarray(0, plain.length).equals(plain), `cut ${cut} (${pol}): plaintext`);
      cuts++;
    }
  t.diagnostic(`survived ${cuts} cuts (${probe.writes} writes × 3 policies) of a resume that switches the resilience; 0 bytes lost`);
  assert.ok(probe.writes >= 10, `the switch commit and a run of hotzones (${probe.writes} writes)`);
});

test("a hash spelt as cryptsetup writes it (--resilience-hash SHA256): the switched run resumes and finishes", async () => {
  const { img, plain } = await midway("journal");
  const dev = await switchAndStop(img, { resilience: "checksum", hash: "SHA256" });
  assert.equal(area((await Luks2Volume.open(dev)).metadata).hash, "SHA256");
  await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
  assert.ok((await plaintextOf(dev)).subarray(0, plain.length).equals(plain));
});

test("an encryption with a data shift resumes with --resilience datashift or its own command (--resilience-hash ignored, as at init) and refuses journal, nothing written", async () => {
  const plain = randomBytes(3.5 * MiB);
  const dev = new MemoryBlockDevice(Buffer.concat([plain, Buffer.alloc(SHIFT_REDUCE)]));
  const ac = new AbortController();
  await assert.rejects(reencrypt(dev, { mode: "encrypt", passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: SHIFT_REDUCE, signal: ac.signal, onProgress: (p) => p.done > 0 && ac.abort() }), (e: TrustvolError) => e.code === "EINTR");
  const stopped = Buffer.from(dev.data);
  for (const mode of ["encrypt", undefined] as const)
    await assert.rejects(reencrypt(dev, { mode, passphrase: PASS, resumeOnly: true, resilience: "journal" }), (e: TrustvolError) => e.code === "EUSAGE" && /its resilience is datashift and cannot become journal/.test(e.message));
  assert.ok(dev.data.equals(stopped), "nothing written");
  const again = new MemoryBlockDevice(Buffer.from(stopped));
  await reencrypt(dev, { passphrase: PASS, resumeOnly: true, resilience: "datashift" });
  assert.ok((await plaintextOf(dev)).subarray(0, plain.length).equals(plain));
  // the same command again, --resilience-hash included (its init took and ignored it)
  await reencrypt(again, { mode: "encrypt", passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: SHIFT_REDUCE, hash: "sha512" });
  assert.ok((await plaintextOf(again)).subarray(0, plain.length).equals(plain));
});

test("a refused switch changes nothing: --resilience-hash on a journal run, datashift-journal on a rotation", async () => {
  const { img } = await midway();
  const dev = await switchAndStop(img, { resilience: "journal" });
  const journal = Buffer.from(dev.data);
  await assert.rejects(reencrypt(dev, { passphrase: PASS, resumeOnly: true, hash: "sha512" }), (e: TrustvolError) => e.code === "EUSAGE" && /applies to checksum resilience/.test(e.message));
  await assert.rejects(reencrypt(dev, { passphrase: PASS, resumeOnly: true, mode: "decrypt", resilience: "datashift-journal" }), (e: TrustvolError) => e.code === "EUSAGE");
  assert.ok(dev.data.equals(journal), "device unchanged");
});

// Against cryptsetup 2.6.1: trustvol switches a run cryptsetup started, cryptsetup verifies the new digest and finishes.
test("cryptsetup --init-only, trustvol resumes with --resilience journal and stops, cryptsetup finishes: the header is cryptsetup's", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = fastTmpDir();
  t.after(cleanup);
  const pw = join(dir, "pw"), img = join(dir, "v.img"), plain = join(dir, "plain");
  writeFileSync(pw, PASSPHRASE, { mode: 0o600 });
  writePlain(img, 48 * MiB, 31);
  cs(["luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF, "--key-file", pw, img]);
  const dataLen = 48 * MiB - 16 * MiB;
  writePlain(plain, dataLen, 33);
  oracleFill(img, pw, plain, dataLen);
  cs(["reencrypt", "--init-only", "-q", ...FAST_PBKDF, "--key-file", pw, img]);
  const init = luksJson(img);
  const dev = await FileBlockDevice.open(img);
  try {
    const ac = new AbortController();
    await assert.rejects(reencrypt(dev, { passphrase: Buffer.from(PASSPHRASE), resumeOnly: true, resilience: "journal", hotzoneSize: 4 * MiB, signal: ac.signal, onProgress: () => ac.abort() }), (e: TrustvolError) => e.code === "EINTR");
  } finally {
    await dev.close();
  }
  const j = luksJson(img);
  const rk = Object.keys(j.keyslots).find((k) => j.keyslots[k].type === "reencrypt")!;
  const oldArea = init.keyslots[rk].area;
  assert.deepEqual(j.keyslots[rk].area, { offset: oldArea.offset, size: oldArea.size, type: "journal" }, "the area as cryptsetup writes a switch to journal");
  // cryptsetup 2.6.1's own switch of the same --init-only header: "Creating new digest 3", "Erasing unused digest 2"
  assert.deepEqual(Object.keys(j.digests), ["0", "1", "3"]);
  assert.deepEqual(j.digests["3"].keyslots, [rk]);
  if (needCliEngine(t)) assert.match(assertDumpAsCryptsetup(img, "the switched run"), /Resilience:\s+journal/);
  const before = shaFile(img);
  const r = cs(["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", pw, img], { check: false });
  assert.equal(r.status, 0, `cryptsetup resumes trustvol's switched run: ${r.stderr}`);
  assert.notEqual(shaFile(img), before);
  opensWithBoth(img, pw);
  assertPlain(img, pw, plain, dataLen, undefined, "after cryptsetup finished trustvol's switched run");
});

test("decryption with a data shift: --resilience checksum --resilience-hash sha512 switches as cryptsetup does and cryptsetup finishes; journal (too small) is refused by both, nothing changed", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = fastTmpDir();
  t.after(cleanup);
  const pw = join(dir, "pw"), img = join(dir, "v.img"), hdr = join(dir, "v.hdr"), plain = join(dir, "plain");
  writeFileSync(pw, PASSPHRASE, { mode: 0o600 });
  writePlain(img, 64 * MiB, 32);
  cs(["luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF, "--key-file", pw, img]);
  const dataLen = 48 * MiB;
  writePlain(plain, dataLen, 34);
  oracleFill(img, pw, plain, dataLen);
  cs(["reencrypt", "--decrypt", "--header", hdr, "--init-only", "-q", "--force-offline-reencrypt", "--key-file", pw, img]);
  const imgBefore = shaFile(img), hdrBefore = shaFile(hdr);
  // journal: the moved segment (16 MiB) does not fit the area — cryptsetup: "Can not update resilience type"
  const c = cs(["reencrypt", "--resume-only", "--header", hdr, "--force-offline-reencrypt", "-q", "--key-file", pw, "--resilience", "journal", img], { check: false });
  assert.notEqual(c.status, 0);
  assert.match(c.stderr.toString(), /Can not update resilience type/);
  assert.deepEqual([shaFile(img), shaFile(hdr)], [imgBefore, hdrBefore], "cryptsetup changed nothing");
  const copy = join(dir, "copy.hdr");
  copyFileSync(hdr, copy);
  const d = await FileBlockDevice.open(img), h = await FileBlockDevice.open(copy);
  try {
    await assert.rejects(reencrypt(d, { header: h, passphrase: Buffer.from(PASSPHRASE), resumeOnly: true, resilience: "journal" }), (e: TrustvolError) => e.code === "EUSAGE" && /moved segment is 16777216/.test(e.message));
    assert.deepEqual([shaFile(img), shaFile(copy)], [imgBefore, hdrBefore], "trustvol changed nothing");
    const ac = new AbortController();
    await assert.rejects(reencrypt(d, { header: h, passphrase: Buffer.from(PASSPHRASE), resumeOnly: true, resilience: "checksum", hash: "sha512", signal: ac.signal, onProgress: () => ac.abort() }), (e: TrustvolError) => e.code === "EINTR");
  } finally {
    await d.close();
    await h.close();
  }
  const j = luksJson(img, copy);
  const rk = Object.keys(j.keyslots).find((k) => j.keyslots[k].type === "reencrypt")!;
  assert.equal(j.keyslots[rk].area.type, "datashift-checksum");
  assert.equal(j.keyslots[rk].area.hash, "sha512");
  assert.deepEqual(Object.keys(j.digests), ["0", "2"], "cryptsetup's ids: new digest 2, digest 1 erased");
  if (needCliEngine(t)) assert.match(assertDumpAsCryptsetup(copy, "the switched decryption's header"), /Resilience:\s+datashift-checksum/);
  const r = cs(["reencrypt", "--resume-only", "--header", copy, "--force-offline-reencrypt", "-q", "--key-file", pw, img], { check: false });
  assert.equal(r.status, 0, `cryptsetup resumes trustvol's switched decryption: ${r.stderr}`);
  assertSamePlain(img, plain, dataLen);
});

function assertSamePlain(img: string, plain: string, len: number): void {
  assert.equal(shaFile(img, 0, len), shaFile(plain, 0, len), "the device holds the plaintext from its start");
}
