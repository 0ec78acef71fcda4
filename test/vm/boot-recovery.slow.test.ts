// Boot tier, scenario 4 of issue 12 (first half): the TPM policy no longer matches the boot's PCR 7 (sealed to another
// Secure Boot state), so there is no unattended unlock; trustvol's initramfs script says so and asks for the recovery
// key on the console; typed there, it unlocks and the system comes up. With TRUSTVOL_ON_FAIL=fail the boot stops.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { needBootImage, bootGuest, hostProvisionedDisk, initrdWith } from "../helpers/boot.js";

let tmp: { dir: string; cleanup: () => void };
before(() => (tmp = tmpDir("trustvol-boot-rec-")));
after(() => tmp?.cleanup());

test("PCR 7 changed: no unattended unlock; the recovery key typed on the console unlocks; fail-closed stops the boot", { timeout: 1_800_000 }, async (t) => {
  const img = needBootImage(t);
  if (!img) return;
  const { disk, tpmState, key } = await hostProvisionedDisk(img, tmp.dir, { sealToOtherPcr7: true });

  const b = await bootGuest({ disk, img, tpmStateDir: tpmState, type: { when: /Enter passphrase for \/dev\/vda2/, text: readFileSync(key, "utf8").replace(/\n$/, "") + "\r" } });
  assert.match(b.console, /no token unlocked \/dev\/vda2/);
  assert.ok(b.completed, "the system came up with the recovery key");
  assert.ok(b.report.includes("TVTEST-ROOT /dev/mapper/root"), b.report.join("\n"));
  t.diagnostic(`recovery boot: ${b.ms} ms host`);

  const conf = "TRUSTVOL_NAME=root\nTRUSTVOL_DEVICE=PARTLABEL=trustvol-root\nTRUSTVOL_ON_FAIL=fail\nTRUSTVOL_TIMEOUT=20\n";
  const initrd = initrdWith(img, join(tmp.dir, "initrd-fail.img"), { "etc/trustvol/boot.conf": { data: conf } });
  const f = await bootGuest({ disk, img, initrd, tpmStateDir: tpmState });
  assert.ok(!f.completed && !f.timedOut, "the boot stopped");
  assert.match(f.console, /no token unlocked \/dev\/vda2/);
  assert.match(f.console, /stays locked \(exit 3\): boot stopped \(fail closed\)/);
  assert.doesNotMatch(f.console, /enter the recovery key/);
});
