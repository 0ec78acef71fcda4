// Boot tier, scenario 3 of issue 12: a LUKS2 root made on the host (`trustvol image encrypt`, then `trustvol enroll
// tpm2 --pcrs 7` against a host swtpm on the same state directory the guest's swtpm uses) boots unattended through
// trustvol's initramfs-tools hook (real mkinitramfs, systemd as init); every factory file's checksum matches, and
// what the first boot wrote is intact at the second.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { tmpDir } from "../helpers/tools.js";
import { needBootImage, bootGuest, unexpectedMismatches, hostProvisionedDisk } from "../helpers/boot.js";

let tmp: { dir: string; cleanup: () => void };
before(() => (tmp = tmpDir("trustvol-boot-pre-")));
after(() => tmp?.cleanup());

test("pre-provisioned LUKS2 root (TPM2, PCR 7) boots unattended via the initramfs-tools hook; every file intact", { timeout: 1_800_000 }, async (t) => {
  const img = needBootImage(t);
  if (!img) return;
  const { disk, tpmState } = await hostProvisionedDisk(img, tmp.dir);

  const b1 = await bootGuest({ disk, img, tpmStateDir: tpmState, fullCheck: true });
  assert.ok(b1.completed, "boot 1 reached the report service");
  assert.match(b1.console, /trustvol: \/dev\/mapper\/root unlocked/);
  assert.ok(b1.report.includes("TVTEST-ROOT /dev/mapper/root"), b1.report.join("\n"));
  assert.ok(b1.report.some((l) => /^TVTEST-CRYPT root: aes-xts-plain64$/.test(l)), b1.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b1.report), [], "factory files changed");
  assert.ok(b1.report.some((l) => /^TVTEST-MANIFEST [1-9]\d{3,}$/.test(l)), "the whole manifest was checked");
  assert.doesNotMatch(b1.console, /recovery key/);
  // Both token paths unlock the volume trustvol enrolled: trustvol's and libcryptsetup's systemd-tpm2 plugin (257).
  const bench = b1.report.filter((l) => l.startsWith("TVTEST-BENCH "));
  assert.ok(bench.some((l) => /^TVTEST-BENCH trustvol-unlock rc=0 /.test(l)), bench.join("\n"));
  assert.ok(bench.some((l) => /^TVTEST-BENCH cryptsetup-systemd-tpm2-token rc=0 /.test(l)), bench.join("\n"));
  t.diagnostic(bench.join("; "));
  t.diagnostic(`boot 1: ${b1.ms} ms host, root unlocked at ${b1.unlockedAt}s uptime (trustvol script ${b1.unlockSeconds}s), report at ${b1.reportAt}s`);

  const b2 = await bootGuest({ disk, img, tpmStateDir: tpmState });
  assert.ok(b2.completed, "boot 2 reached the report service");
  assert.ok(b2.report.includes("TVTEST-WRITTEN boots=1 bad=0"), b2.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b2.report), []);
  t.diagnostic(`boot 2: ${b2.ms} ms host, root unlocked at ${b2.unlockedAt}s uptime (trustvol script ${b2.unlockSeconds}s)`);
});
