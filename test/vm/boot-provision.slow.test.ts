// Boot tier, scenario 1 of issue 12: a factory image with a plain ext4 root. Boot 1 runs `trustvol provision
// --stage initramfs` from trustvol's initramfs-tools script (real mkinitramfs, systemd as init): the root is encrypted
// in place and sealed to the TPM (PCR 7); the system comes up on /dev/mapper/root; trustvol-provision.service (system
// stage) writes the header backup to the plain boot partition and disables itself. Boot 2 unlocks unattended.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { openSync, readSync, closeSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { needBootImage, makeDisk, bootGuest, unexpectedMismatches, provisioningRoot, rootPartition, provisionJson } from "../helpers/boot.js";

let tmp: { dir: string; cleanup: () => void };
before(() => (tmp = tmpDir("trustvol-boot-prov-")));
after(() => tmp?.cleanup());

function isLuks(disk: string): boolean {
  const fd = openSync(disk, "r");
  try {
    const b = Buffer.alloc(6);
    readSync(fd, b, 0, 6, rootPartition(disk).offset);
    return b.equals(Buffer.from("LUKS\xba\xbe", "latin1"));
  } finally {
    closeSync(fd);
  }
}

test("plain ext4 root: boot 1 encrypts it in place and seals to PCR 7 (provision); boot 2 unattended", { timeout: 1_800_000 }, async (t) => {
  const img = needBootImage(t);
  if (!img) return;
  const { root, initrd } = provisioningRoot(img, tmp.dir, provisionJson());
  const disk = join(tmp.dir, "disk.img");
  makeDisk(disk, { root, boot: { "trustvol/.keep": "" } });
  assert.ok(!isLuks(disk));
  const tpmState = join(tmp.dir, "tpm");

  const b1 = await bootGuest({ disk, img, initrd, tpmStateDir: tpmState, timeoutMs: 900_000 });
  assert.ok(b1.completed, "boot 1 reached the report service");
  assert.match(b1.console, /provisioning \/dev\/vda2/);
  assert.ok(isLuks(disk), "the root partition is LUKS2 now");
  assert.ok(b1.report.includes("TVTEST-ROOT /dev/mapper/root"), b1.report.join("\n"));
  assert.ok(b1.report.some((l) => /^TVTEST-CRYPT root: aes-xts-plain64$/.test(l)), b1.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b1.report, ["etc/trustvol/boot.conf"]), []);
  assert.ok(b1.report.some((l) => /^TVTEST-PROVISION success disabled$/.test(l)), b1.report.join("\n"));
  assert.ok(b1.report.some((l) => /^TVTEST-HEADER-BACKUP \d+ 600$/.test(l)), b1.report.join("\n"));
  t.diagnostic(`boot 1 (encrypt in place + enrol): ${b1.ms} ms host; root unlocked at ${b1.unlockedAt}s uptime`);

  const b2 = await bootGuest({ disk, img, initrd, tpmStateDir: tpmState, fullCheck: true });
  assert.ok(b2.completed, "boot 2 reached the report service");
  assert.doesNotMatch(b2.console, /recovery key/);
  assert.ok(b2.report.includes("TVTEST-WRITTEN boots=1 bad=0"), b2.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b2.report, ["etc/trustvol/boot.conf"]), []);
  t.diagnostic(`boot 2 (unattended): ${b2.ms} ms host; root unlocked at ${b2.unlockedAt}s uptime`);
});
