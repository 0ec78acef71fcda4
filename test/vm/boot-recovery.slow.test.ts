// Boot tier, scenario 4 of issue 12: the TPM policy no longer matches the boot's PCR 7 (sealed to another Secure Boot
// state), so there is no unattended unlock. With TRUSTVOL_ON_FAIL=fail the boot stops. Otherwise trustvol's initramfs
// script says so and asks for the recovery key on the console; typed there, it unlocks and the system comes up; there
// the operator re-enrols the TPM to the current PCR 7 with the recovery key (`trustvol enroll tpm2 --wipe-slot tpm2`,
// replacing the stale token), and the next boot is unattended again.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { needBootImage, bootGuest, hostProvisionedDisk, initrdWith, HOST_FACTORY_PASSPHRASE } from "../helpers/boot.js";

let tmp: { dir: string; cleanup: () => void };
before(() => (tmp = tmpDir("trustvol-boot-rec-")));
after(() => tmp?.cleanup());

/** Test only: run before the report (same console) when the kernel command line says trustvol.test.reenroll. */
const REENROLL = `#!/bin/sh
case " $(cat /proc/cmdline) " in *" trustvol.test.reenroll "*) ;; *) exit 0 ;; esac
chmod 600 /etc/trustvol-test/recovery.key
dev=$(readlink -f /dev/disk/by-partlabel/trustvol-root)
out=$(trustvol enroll tpm2 "$dev" --pcrs 7 --wipe-slot tpm2 --key-file /etc/trustvol-test/recovery.key 2>&1); rc=$?
echo "$out" | sed 's/^/TVTEST-REENROLL-OUT /'
echo "TVTEST-REENROLL rc=$rc tokens=$(trustvol dump --json "$dev" | node -e 'let s="";process.stdin.on("data",(d)=>(s+=d)).on("end",()=>console.log(Object.values(JSON.parse(s).metadata.tokens).filter((t)=>t.type==="systemd-tpm2").length))')"
`;

test("PCR 7 changed: fail-closed stops the boot; the recovery key typed on the console unlocks; re-enrolment restores unattended boots", { timeout: 2_400_000 }, async (t) => {
  const img = needBootImage(t);
  if (!img) return;
  const { disk, tpmState, key } = await hostProvisionedDisk(img, tmp.dir, {
    sealToOtherPcr7: true,
    rootFiles: {
      "usr/local/sbin/trustvol-test-reenroll": REENROLL,
      "etc/systemd/system/trustvol-test-report.service.d/reenroll.conf": "[Service]\nExecStartPre=/bin/sh /usr/local/sbin/trustvol-test-reenroll\n",
      // Stands in for the operator who typed the recovery key at the console (a test cannot type into a shell there).
      "etc/trustvol-test/recovery.key": HOST_FACTORY_PASSPHRASE,
    },
  });

  const conf = "TRUSTVOL_NAME=root\nTRUSTVOL_DEVICE=PARTLABEL=trustvol-root\nTRUSTVOL_ON_FAIL=fail\nTRUSTVOL_TIMEOUT=20\n";
  const failInitrd = initrdWith(img, join(tmp.dir, "initrd-fail.img"), { "etc/trustvol/boot.conf": { data: conf } });
  const f = await bootGuest({ disk, img, initrd: failInitrd, tpmStateDir: tpmState });
  assert.ok(!f.completed && !f.timedOut, "the boot stopped");
  assert.match(f.console, /no token unlocked \/dev\/vda2/);
  assert.match(f.console, /stays locked \(exit 3\): boot stopped \(fail closed\)/);
  assert.doesNotMatch(f.console, /enter the recovery key/);

  const b = await bootGuest({ disk, img, tpmStateDir: tpmState, append: "trustvol.test.reenroll", type: { when: /Enter passphrase for \/dev\/vda2/, text: readFileSync(key, "utf8").replace(/\n$/, "") + "\r" } });
  assert.match(b.console, /no token unlocked \/dev\/vda2/);
  assert.ok(b.completed, "the system came up with the recovery key");
  assert.ok(b.report.includes("TVTEST-ROOT /dev/mapper/root"), b.report.join("\n"));
  assert.ok(b.report.includes("TVTEST-REENROLL rc=0 tokens=1"), `re-enrolled, the stale token replaced: ${b.report.filter((l) => l.startsWith("TVTEST-REENROLL")).join("\n")}`);
  t.diagnostic(`recovery boot + re-enrolment: ${b.ms} ms host`);

  const u = await bootGuest({ disk, img, tpmStateDir: tpmState });
  assert.ok(u.completed, "the next boot came up");
  assert.doesNotMatch(u.console, /no token unlocked|enter the recovery key/);
  assert.match(u.console, /trustvol: \/dev\/mapper\/root unlocked/);
  assert.ok(u.report.includes("TVTEST-ROOT /dev/mapper/root"), u.report.join("\n"));
  t.diagnostic(`unattended boot after re-enrolment: ${u.ms} ms host, root unlocked at ${u.unlockedAt}s uptime`);
});
