// Boot tier, scenario 3 of issue 12: a LUKS2 root made on the host (`trustvol image encrypt`, then `trustvol enroll
// tpm2 --pcrs 7` against a host swtpm on the same state directory the guest's swtpm uses) boots unattended through
// trustvol's initramfs-tools hook (real mkinitramfs, systemd as init); every factory file's checksum matches, and
// what the first boot wrote is intact at the second. Also scenario 5: both header copies zeroed -> restored from the
// backup on the plain boot partition, the boot comes up and says so.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync, openSync, writeSync, closeSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { tmpDir, run } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { startSwtpm } from "../helpers/swtpm.js";
import { needBootImage, makeDisk, bootGuest, unexpectedMismatches, rootPartition, SEABIOS_PCR7_SEPARATOR, type BootImage } from "../helpers/boot.js";

let tmp: { dir: string; cleanup: () => void };
before(() => (tmp = tmpDir("trustvol-boot-pre-")));
after(() => tmp?.cleanup());

function ok(r: { status: number; stdout: string; stderr: string }, what: string): string {
  assert.equal(r.status, 0, `${what}: ${r.stderr}`);
  return r.stdout;
}

/** The factory LUKS2 root + TPM enrolment on the host, as a CI/factory station would do it. */
async function provisionOnHost(img: BootImage, dir: string, tpmState: string): Promise<{ luks: string; header: Buffer }> {
  const key = join(dir, "factory.key");
  writeFileSync(key, "factory passphrase for the boot test\n", { mode: 0o600 });
  const luks = join(dir, "root.luks");
  ok(trustvol(["image", "encrypt", img.rootfs, luks, "--key-file", key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--no-progress", "--label", "trustvol-root"]), "image encrypt");
  mkdirSync(tpmState, { recursive: true });
  const sw = await startSwtpm({ stateDir: tpmState });
  try {
    // The guest's firmware (SeaBIOS) extends PCR 7 once: replay it so the policy matches the guest's PCR 7.
    run("tpm2_pcrextend", [`7:sha256=${SEABIOS_PCR7_SEPARATOR}`], { env: { ...process.env, TPM2TOOLS_TCTI: sw.device } });
    ok(trustvol(["enroll", "tpm2", luks, "--pcrs", "7", "--key-file", key, "--tpm2-device", sw.device]), "enroll tpm2");
  } finally {
    await sw.stop();
  }
  const hdrFile = join(dir, "root-header.img");
  ok(trustvol(["header", "backup", luks, "--file", hdrFile]), "header backup");
  return { luks, header: readFileSync(hdrFile) };
}

test("pre-provisioned LUKS2 root (TPM2, PCR 7) boots unattended via the initramfs-tools hook; files intact; header restored from backup", { timeout: 1_800_000 }, async (t) => {
  const img = needBootImage(t);
  if (!img) return;
  const tpmState = join(tmp.dir, "tpm");
  const { luks, header } = await provisionOnHost(img, tmp.dir, tpmState);
  const disk = join(tmp.dir, "disk.img");
  makeDisk(disk, { root: luks, boot: { "trustvol/root-header.img": header } });

  const b1 = await bootGuest({ disk, img, tpmStateDir: tpmState, fullCheck: true });
  assert.ok(b1.completed, "boot 1 reached the report service");
  assert.match(b1.console, /trustvol: \/dev\/mapper\/root unlocked/);
  assert.ok(b1.report.includes("TVTEST-ROOT /dev/mapper/root"), b1.report.join("\n"));
  assert.ok(b1.report.some((l) => /^TVTEST-CRYPT root: aes-xts-plain64$/.test(l)), b1.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b1.report), [], "factory files changed");
  assert.ok(b1.report.some((l) => /^TVTEST-MANIFEST [1-9]\d{3,}$/.test(l)), "the whole manifest was checked");
  assert.doesNotMatch(b1.console, /recovery key/);
  t.diagnostic(`boot 1: ${b1.ms} ms host, root unlocked at ${b1.unlockedAt}s uptime, report at ${b1.reportAt}s`);

  const b2 = await bootGuest({ disk, img, tpmStateDir: tpmState });
  assert.ok(b2.completed, "boot 2 reached the report service");
  assert.ok(b2.report.includes("TVTEST-WRITTEN boots=1 bad=0"), b2.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b2.report), []);
  t.diagnostic(`boot 2: ${b2.ms} ms host, root unlocked at ${b2.unlockedAt}s uptime`);

  // Scenario 5: both LUKS2 header copies (primary at 0, secondary at 16 KiB) zeroed.
  const { offset } = rootPartition(disk);
  const fd = openSync(disk, "r+");
  try {
    writeSync(fd, Buffer.alloc(32768), 0, 32768, offset);
  } finally {
    closeSync(fd);
  }
  const b3 = await bootGuest({ disk, img, tpmStateDir: tpmState });
  assert.match(b3.console, /restoring it from the backup/);
  assert.match(b3.console, /header restored from the backup/);
  assert.ok(b3.completed, "boot 3 came up after the restore");
  assert.ok(b3.report.includes("TVTEST-WRITTEN boots=2 bad=0"), b3.report.join("\n"));
  t.diagnostic(`boot 3 (header restored): ${b3.ms} ms host, root unlocked at ${b3.unlockedAt}s uptime`);
});
