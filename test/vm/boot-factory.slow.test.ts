// Boot tier, scenario 2 of issue 12: a factory image made by `trustvol image encrypt` with a factory passphrase.
// Boot 1 (trustvol's initramfs script -> `trustvol provision --stage initramfs`) enrols the TPM, wipes the passphrase
// and starts the key rotation; QEMU is killed mid-way; boot 2 finishes it (blocking in the initramfs, as LmP does after
// an interrupted background rotation) and trustvol-provision.service writes the header backup. Two "devices" flashed
// from the same image end with different volume keys (their ciphertexts of the same data differ).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, writeFileSync, openSync, readSync, closeSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { needBootImage, makeDisk, bootGuest, unexpectedMismatches, provisioningRoot, rootPartition, provisionJson } from "../helpers/boot.js";

let tmp: { dir: string; cleanup: () => void };
before(() => (tmp = tmpDir("trustvol-boot-factory-")));
after(() => tmp?.cleanup());

const FACTORY_KEY = "lmp factory passphrase\n";

function readAt(disk: string, off: number, len: number): Buffer {
  const fd = openSync(disk, "r");
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, rootPartition(disk).offset + off);
    return b;
  } finally {
    closeSync(fd);
  }
}

test("factory LUKS2 image: boot 1 enrols + wipes + rotates, power cut mid-way, boot 2 finishes; two devices end with different keys", { timeout: 3_600_000 }, async (t) => {
  const img = needBootImage(t);
  if (!img) return;
  const cfg = provisionJson({ encrypt_plain: false, rotate_key: true, factory: { key_file: "/etc/trustvol/factory.key" } });
  // The factory secret reaches the initramfs as the config names it (a per-image secret LmP discards at first boot).
  const { root, initrd } = provisioningRoot(img, tmp.dir, cfg, { "etc/trustvol/factory.key": { data: FACTORY_KEY, mode: 0o600 } });
  const key = join(tmp.dir, "factory.key");
  writeFileSync(key, FACTORY_KEY, { mode: 0o600 });
  const luks = join(tmp.dir, "root.luks");
  const enc = trustvol(["image", "encrypt", root, luks, "--key-file", key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--no-progress", "--label", "trustvol-root"]);
  assert.equal(enc.status, 0, enc.stderr);
  const diskA = join(tmp.dir, "a.img");
  const diskB = join(tmp.dir, "b.img");
  makeDisk(diskA, { root: luks, boot: { "trustvol/.keep": "" } });
  copyFileSync(diskA, diskB);
  const probe = 64 << 20; // 64 MiB into the partition: inside the data segment
  const factoryCipher = readAt(diskA, probe, 4096);

  const a1 = await bootGuest({ disk: diskA, img, initrd, tpmStateDir: join(tmp.dir, "tpmA"), killOn: /rotating the volume key/, killDelayMs: 8000, timeoutMs: 900_000 });
  assert.ok(a1.powerCut, `power cut during the rotation (console: ${a1.console.split("\n").filter((l) => /trustvol|root:/.test(l)).join(" | ")})`);
  assert.match(a1.console, /key enrolled, factory secret wiped/);
  t.diagnostic(`device A boot 1: power cut ${a1.ms} ms after start`);

  const a2 = await bootGuest({ disk: diskA, img, initrd, tpmStateDir: join(tmp.dir, "tpmA"), timeoutMs: 1_200_000 });
  assert.ok(a2.completed, "device A boot 2 came up");
  assert.ok(a2.report.includes("TVTEST-ROOT /dev/mapper/root"), a2.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(a2.report, ["etc/trustvol/boot.conf"]), []);
  assert.ok(a2.report.some((l) => /^TVTEST-PROVISION success disabled$/.test(l)), a2.report.join("\n"));
  assert.ok(a2.report.some((l) => /^TVTEST-HEADER-BACKUP \d+ 600$/.test(l)), a2.report.join("\n"));
  assert.doesNotMatch(a2.console, /recovery key/);
  t.diagnostic(`device A boot 2 (finished the rotation): ${a2.ms} ms host; root unlocked at ${a2.unlockedAt}s uptime`);

  const b1 = await bootGuest({ disk: diskB, img, initrd, tpmStateDir: join(tmp.dir, "tpmB"), timeoutMs: 1_200_000 });
  assert.ok(b1.completed, "device B boot 1 came up");
  assert.ok(b1.report.some((l) => /^TVTEST-PROVISION success disabled$/.test(l)), b1.report.join("\n"));

  const ca = readAt(diskA, probe, 4096);
  const cb = readAt(diskB, probe, 4096);
  assert.ok(!ca.equals(factoryCipher) && !cb.equals(factoryCipher), "both devices re-encrypted the factory data");
  assert.ok(!ca.equals(cb), "the two devices hold different volume keys");
  // The factory passphrase no longer opens either device (its keyslots are gone): exit 3, no key.
  for (const d of [diskA, diskB]) {
    const hdr = join(tmp.dir, "hdr.img");
    writeFileSync(hdr, readAt(d, 0, 16 << 20), { mode: 0o600 });
    const r = trustvol(["unlock", "--test", hdr, "--key-file", key]);
    assert.equal(r.status, 3, `factory passphrase refused: ${r.stderr}`);
  }
});
