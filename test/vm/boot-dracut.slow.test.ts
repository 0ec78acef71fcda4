// Boot tier, scenario 7 of issue 12: trustvol's dracut module (90trustvol, `trustvol boot install --dracut`). The boot
// image's root also holds dracut (dracut-core); scripts/boot-root.sh makes a second initramfs of the same root with
// the real `dracut` (generic, systemd inside: dracut-initqueue runs the module's initqueue/settled hook). A LUKS2 root
// provisioned on the host (TPM2, PCR 7) boots from it unattended. rd.luks=0: dracut's own crypt module would
// otherwise start systemd-cryptsetup on the same device and ask for a passphrase.
// Second test: a root whose key rotation is in progress, through dracut's initramfs only (the module's tool list for
// opening a volume mid-re-encryption: flock for the re-encryption lock, keyctl, dmsetup, the offline engine's hotzone
// recovery): boot 1 provisions a factory image (enrol, wipe, start the rotation) and maps the root mid-re-encryption;
// boot 2 lets the system stage rotate online and is killed once part of the data is rotated; boot 3 maps the partly
// rotated root (old + new key segments, a hotzone the kill interrupted recovered first) and comes up with every
// file intact. The system stage is masked on boots 1 and 3 (systemd.mask): the rotation stays in progress.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { needBootImage, makeDisk, bootGuest, unexpectedMismatches, provisionOnHost, provisioningRoot, provisionJson } from "../helpers/boot.js";
import { trustvol } from "../helpers/cli.js";

let tmp: { dir: string; cleanup: () => void };
before(() => (tmp = tmpDir("trustvol-boot-dracut-")));
after(() => tmp?.cleanup());

test("dracut-built initramfs (module 90trustvol) unlocks a TPM2-sealed LUKS2 root unattended", { timeout: 1_800_000 }, async (t) => {
  const img = needBootImage(t);
  if (!img) return;
  const initrd = join(img.dir, "initrd-dracut.img");
  assert.ok(existsSync(initrd), `dracut made no initramfs in ${img.dir} (see scripts/boot-root.sh's output)`);
  const tpmState = join(tmp.dir, "tpm");
  const { luks, header } = await provisionOnHost(img, tmp.dir, tpmState);
  const disk = join(tmp.dir, "disk.img");
  makeDisk(disk, { root: luks, boot: { "trustvol/root-header.img": header } });

  const b = await bootGuest({ disk, img, initrd, tpmStateDir: tpmState, append: "rd.luks=0" });
  assert.ok(b.completed, "the boot reached the report service");
  assert.match(b.console, /dracut/i, "the initramfs is dracut's");
  assert.match(b.console, /trustvol: \/dev\/mapper\/root unlocked/);
  assert.doesNotMatch(b.console, /recovery key|Please enter passphrase/);
  assert.ok(b.report.includes("TVTEST-ROOT /dev/mapper/root"), b.report.join("\n"));
  assert.ok(b.report.some((l) => /^TVTEST-CRYPT root: aes-xts-plain64$/.test(l)), b.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b.report), []);
  t.diagnostic(`dracut initramfs ${img.sizes.initrd_dracut_bytes} bytes (initramfs-tools: ${img.sizes.initrd_bytes}); boot ${b.ms} ms host, root unlocked at ${b.unlockedAt}s uptime (trustvol hook ${b.unlockSeconds}s)`);
});

test("dracut-built initramfs opens a root whose key rotation is in progress (started there, then part-rotated and cut)", { timeout: 2_700_000 }, async (t) => {
  const img = needBootImage(t);
  if (!img) return;
  const dracut = join(img.dir, "initrd-dracut.img");
  assert.ok(existsSync(dracut), `dracut made no initramfs in ${img.dir}`);
  const dir = join(tmp.dir, "rotating");
  const { mkdirSync } = await import("node:fs");
  mkdirSync(dir);
  const FACTORY_KEY = "dracut factory passphrase\n";
  const cfg = provisionJson({ encrypt_plain: false, rotate_key: true, factory: { key_file: "/etc/trustvol/factory.key" } });
  const { root, initrd } = provisioningRoot(img, dir, cfg, { "etc/trustvol/factory.key": { data: FACTORY_KEY, mode: 0o600 } }, dracut);
  const key = join(dir, "factory.key");
  writeFileSync(key, FACTORY_KEY, { mode: 0o600 });
  const luks = join(dir, "root.luks");
  const enc = trustvol(["image", "encrypt", root, luks, "--key-file", key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--no-progress", "--label", "trustvol-root"]);
  assert.equal(enc.status, 0, enc.stderr);
  const disk = join(dir, "disk.img");
  makeDisk(disk, { root: luks, boot: { "trustvol/.keep": "" } });
  const tpmStateDir = join(dir, "tpm");
  const changed = ["etc/trustvol/boot.conf"];
  const masked = "rd.luks=0 systemd.mask=trustvol-provision.service";

  const b1 = await bootGuest({ disk, img, initrd, tpmStateDir, append: masked, timeoutMs: 1_200_000 });
  assert.ok(b1.completed, "boot 1 reached the report service");
  assert.match(b1.console, /dracut/i);
  assert.match(b1.console, /key enrolled, factory secret wiped/);
  assert.match(b1.console, /volume key rotation started/);
  assert.match(b1.console, /root: opened mid-re-encryption/);
  assert.ok(b1.report.includes("TVTEST-ROOT /dev/mapper/root"), b1.report.join("\n"));
  assert.match(b1.report.find((l) => l.startsWith("TVTEST-REENCRYPT ")) ?? "", /^TVTEST-REENCRYPT in-progress /, b1.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b1.report, changed), []);

  // Boot 2: the system stage rotates online; killed once part of the data is rotated.
  const b2 = await bootGuest({ disk, img, initrd, tpmStateDir, append: "rd.luks=0", killOn: /TVTEST-PROVISION-RUNNING \d+ in-progress segments=\d+ done=[1-9]/, killDelayMs: 2000, timeoutMs: 1_500_000 });
  assert.ok(b2.powerCut, `killed mid-rotation (console: ${b2.console.split("\n").filter((l) => /trustvol|TVTEST/.test(l)).slice(-12).join(" | ")})`);
  assert.match(b2.console, /root: opened mid-re-encryption/);

  // Boot 3: dracut's initramfs maps the part-rotated root (recovering the hotzone the kill interrupted, if any).
  const b3 = await bootGuest({ disk, img, initrd, tpmStateDir, append: masked, timeoutMs: 1_200_000 });
  assert.ok(b3.completed, "boot 3 reached the report service");
  assert.match(b3.console, /root: opened mid-re-encryption/);
  assert.doesNotMatch(b3.console, /recovery key|Please enter passphrase/);
  assert.ok(b3.report.includes("TVTEST-ROOT /dev/mapper/root"), b3.report.join("\n"));
  const st = b3.report.find((l) => l.startsWith("TVTEST-REENCRYPT ")) ?? "";
  assert.match(st, /^TVTEST-REENCRYPT in-progress segments=\d+ done=[1-9]\d*$/, "part of the data was rotated: old- and new-key segments");
  assert.ok(b3.report.some((l) => /^TVTEST-WRITTEN boots=2 bad=0$/.test(l)), b3.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b3.report, changed), []);
  const recovered = /interrupted hotzone recovered/.test(b3.console);
  t.diagnostic(`dracut, rotation in progress: boot 1 ${b1.ms} ms, boot 2 killed at ${b2.ms} ms, boot 3 ${b3.ms} ms (${st}${recovered ? "; interrupted hotzone recovered" : ""}); root unlocked at ${b3.unlockedAt}s uptime`);
});
