// LUKS2/LUKS1 interop with the real cryptsetup 2.6: each direction, each claim.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync, truncateSync, copyFileSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { needTools, tmpDir, run } from "../helpers/tools.js";
import { LuksHandle } from "../../src/ops/volume.js";
import { FileBlockDevice } from "../../src/blockdev/file.js";
import { formatLuks2 } from "../../src/luks2/format.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { backupHeader, restoreHeader } from "../../src/luks2/backup.js";
import { TrustvolError } from "../../src/util/errors.js";

const FAST_ARGON = ["--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "1"];
const FAST_PBKDF2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

function refVolumeKey(img: string, keyFile: string, extra: string[] = []): Buffer {
  const out = run("cryptsetup", ["luksDump", "--dump-volume-key", "-q", "--key-file", keyFile, ...extra, img]).stdout.toString();
  const m = out.match(/MK dump:\s*((?:[0-9a-f]{2}\s+)+)/);
  assert.ok(m, "cryptsetup printed a volume key");
  return Buffer.from(m[1]!.replace(/\s+/g, ""), "hex");
}

function mkImage(dir: string, name: string, size = "20M"): string {
  const p = join(dir, name);
  run("truncate", ["-s", size, p]);
  return p;
}

const matrix: { name: string; args: string[]; luks1?: boolean }[] = [
  { name: "pbkdf2 xts-512 4096", args: [...FAST_PBKDF2] },
  { name: "argon2id xts-512 4096", args: ["--pbkdf", "argon2id", ...FAST_ARGON] },
  { name: "argon2i xts-256 512", args: ["--pbkdf", "argon2i", ...FAST_ARGON, "--key-size", "256", "--sector-size", "512"] },
  { name: "pbkdf2-sha512 xts-256 4096", args: ["--pbkdf", "pbkdf2", "--hash", "sha512", "--pbkdf-force-iterations", "1000", "--key-size", "256"] },
  { name: "cbc-essiv:sha256 512", args: [...FAST_PBKDF2, "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256", "--sector-size", "512"] },
  { name: "cbc-plain64 4096", args: [...FAST_PBKDF2, "--cipher", "aes-cbc-plain64", "--key-size", "256"] },
  { name: "LUKS1 xts", args: ["--type", "luks1", "--pbkdf-force-iterations", "1000"], luks1: true },
  { name: "LUKS1 cbc-essiv", args: ["--type", "luks1", "--pbkdf-force-iterations", "1000", "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256"], luks1: true },
];

test("cryptsetup-made volumes unlock with trustvol to the same volume key", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const pw = join(dir, "pw");
  writeFileSync(pw, "correct horse", { mode: 0o600 });
  for (const m of matrix) {
    await t.test(m.name, async () => {
      const img = mkImage(dir, `${m.name.replace(/\W+/g, "_")}.img`);
      const type = m.luks1 ? [] : ["--type", "luks2"];
      run("cryptsetup", ["luksFormat", "-q", ...type, ...m.args, "--key-file", pw, img]);
      const want = refVolumeKey(img, pw);
      const h = await LuksHandle.open(img, { readOnly: true });
      try {
        assert.equal(h.version, m.luks1 ? 1 : 2);
        const { volumeKey } = await h.unlock(Buffer.from("correct horse"));
        assert.equal(volumeKey.toString("hex"), want.toString("hex"));
        await assert.rejects(h.unlock(Buffer.from("wrong horse")), (e: unknown) => e instanceof TrustvolError && e.code === "EBADPASS" && /no key available with this passphrase/.test(e.message));
      } finally {
        await h.close();
      }
    });
  }
});

test("trustvol-made LUKS2 headers: cryptsetup parses, accepts the passphrase, and agrees on the volume key", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const pw = join(dir, "pw");
  writeFileSync(pw, "s3cret", { mode: 0o600 });
  const cases = [
    { name: "xts-512 argon2id 4096", opts: { pbkdf: { type: "argon2id" as const, memoryKiB: 32768, forceIterations: 4, parallel: 1 } } },
    { name: "xts-256 pbkdf2 512 label", opts: { keySizeBits: 256, sectorSize: 512, label: "rootfs", subsystem: "lmp", pbkdf: { type: "pbkdf2" as const, forceIterations: 1000 } } },
    { name: "cbc-essiv", opts: { cipher: "aes-cbc-essiv:sha256", sectorSize: 512, pbkdf: { type: "argon2i" as const, memoryKiB: 32768, forceIterations: 4, parallel: 2 } } },
    { name: "cbc-plain64 64k metadata", opts: { cipher: "aes-cbc-plain64", metadataSize: 65536, pbkdf: { type: "pbkdf2" as const, forceIterations: 1000, hash: "sha512" } } },
  ];
  for (const c of cases) {
    await t.test(c.name, async () => {
      const img = mkImage(dir, `${c.name.replace(/\W+/g, "_")}.img`, "24M");
      const dev = await FileBlockDevice.open(img);
      const { volume, volumeKey } = await formatLuks2(dev, Buffer.from("s3cret"), c.opts);
      await dev.close();
      const dump = run("cryptsetup", ["luksDump", img]).stdout.toString();
      assert.match(dump, new RegExp(`UUID:\\s+${volume.uuid}`));
      run("cryptsetup", ["open", "--test-passphrase", "--key-file", pw, img]);
      assert.equal(refVolumeKey(img, pw).toString("hex"), volumeKey.toString("hex"));
      const bad = run("cryptsetup", ["open", "--test-passphrase", "--key-file", "-", img], { input: "nope", check: false });
      assert.notEqual(bad.status, 0);
    });
  }
});

test("keys added by cryptsetup open in trustvol and the other way round; remove and change", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const pw = join(dir, "pw"), pw2 = join(dir, "pw2"), pw3 = join(dir, "pw3");
  writeFileSync(pw, "first", { mode: 0o600 });
  writeFileSync(pw2, "second", { mode: 0o600 });
  writeFileSync(pw3, "third", { mode: 0o600 });
  const img = mkImage(dir, "keys.img");
  run("cryptsetup", ["luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF2, "--key-file", pw, img]);
  run("cryptsetup", ["luksAddKey", "-q", ...FAST_PBKDF2, "--key-file", pw, "--key-slot", "3", img, pw2]);
  const dev = await FileBlockDevice.open(img);
  const v = await Luks2Volume.open(dev);
  const { volumeKey, keyslot } = await v.unlock(Buffer.from("second"));
  assert.equal(keyslot, 3);
  const slot = await v.addKeyslot(volumeKey, Buffer.from("third"), { pbkdf: { type: "argon2id", memoryKiB: 32768, forceIterations: 4, parallel: 1 } });
  assert.equal(slot, 1);
  await dev.close();
  run("cryptsetup", ["open", "--test-passphrase", "--key-slot", "1", "--key-file", pw3, img]);
  // change our slot and remove cryptsetup's, cryptsetup follows
  const dev2 = await FileBlockDevice.open(img);
  const v2 = await Luks2Volume.open(dev2);
  await v2.changeKeyslot(1, Buffer.from("third"), Buffer.from("fourth"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 } });
  await v2.removeKeyslot(3);
  await dev2.close();
  assert.notEqual(run("cryptsetup", ["open", "--test-passphrase", "--key-file", pw2, img], { check: false }).status, 0);
  assert.notEqual(run("cryptsetup", ["open", "--test-passphrase", "--key-file", pw3, img], { check: false }).status, 0);
  run("cryptsetup", ["open", "--test-passphrase", "--key-file", "-", img], { input: "fourth" });
  run("cryptsetup", ["luksKillSlot", "-q", img, "0"]);
  const dev3 = await FileBlockDevice.open(img, { readOnly: true });
  const v3 = await Luks2Volume.open(dev3);
  assert.deepEqual(v3.keyslotIds(), [1]);
  await assert.rejects(v3.unlock(Buffer.from("first")), /no key available/);
  await dev3.close();
});

test("tokens round-trip with cryptsetup token import/export", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const pw = join(dir, "pw");
  writeFileSync(pw, "tok", { mode: 0o600 });
  const img = mkImage(dir, "tok.img");
  run("cryptsetup", ["luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF2, "--key-file", pw, img]);
  const theirs = { type: "luks2-keyring", keyslots: ["0"], key_description: "trustvol:test" };
  writeFileSync(join(dir, "t.json"), JSON.stringify(theirs));
  run("cryptsetup", ["token", "import", "--json-file", join(dir, "t.json"), "--token-id", "2", img]);
  const dev = await FileBlockDevice.open(img);
  const v = await Luks2Volume.open(dev);
  assert.deepEqual(v.exportToken(2), theirs);
  const ours = { type: "trustvol-test", keyslots: ["0"], blob: "AAEC", nested: { a: [1, 2] } };
  const id = await v.addToken(ours);
  assert.equal(id, 0);
  await assert.rejects(v.addToken({ type: "x", keyslots: ["7"] }), /token rejected: .*missing id 7/);
  await dev.close();
  const exported = JSON.parse(run("cryptsetup", ["token", "export", "--token-id", "0", img]).stdout.toString());
  assert.deepEqual(exported, ours);
  run("cryptsetup", ["token", "remove", "--token-id", "2", img]);
  const dev2 = await FileBlockDevice.open(img, { readOnly: true });
  assert.deepEqual((await Luks2Volume.open(dev2)).tokenIds(), [0]);
  await dev2.close();
});

test("header backups cross-restore between trustvol and cryptsetup", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const pw = join(dir, "pw");
  writeFileSync(pw, "bk", { mode: 0o600 });
  const img = mkImage(dir, "bk.img");
  run("cryptsetup", ["luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF2, "--key-file", pw, img]);
  const orig = readFileSync(img);
  // ours -> cryptsetup restore
  const dev = await FileBlockDevice.open(img, { readOnly: true });
  await backupHeader(dev, join(dir, "ours.bin"));
  await dev.close();
  assert.equal((readFileSync(join(dir, "ours.bin")).length), 16 * 1024 * 1024);
  run("cryptsetup", ["luksHeaderBackup", img, "--header-backup-file", join(dir, "theirs.bin")]);
  assert.ok(readFileSync(join(dir, "ours.bin")).equals(readFileSync(join(dir, "theirs.bin"))), "backup files are byte-identical");
  writeFileSync(img, Buffer.alloc(32768)); // destroy both header copies
  truncateSync(img, orig.length);
  run("cryptsetup", ["luksHeaderRestore", "-q", img, "--header-backup-file", join(dir, "ours.bin")]);
  run("cryptsetup", ["open", "--test-passphrase", "--key-file", pw, img]);
  // theirs -> our restore
  writeFileSync(img, Buffer.alloc(32768));
  truncateSync(img, orig.length);
  const dev2 = await FileBlockDevice.open(img);
  await assert.rejects(restoreHeader(dev2, join(dir, "theirs.bin")), (e: TrustvolError) => /has no LUKS header/.test(e.message) && /--force/.test(e.hint ?? ""));
  await restoreHeader(dev2, join(dir, "theirs.bin"), { force: true }); // like cryptsetup's confirmation prompt
  await dev2.close();
  run("cryptsetup", ["open", "--test-passphrase", "--key-file", pw, img]);
  assert.ok(readFileSync(img).equals(orig));
  // our backups are private
  chmodSync(join(dir, "theirs.bin"), 0o600);
  copyFileSync(join(dir, "theirs.bin"), join(dir, "copy.bin"));
});
