// Boot tier, scenario 2 of issue 12 (and 3's checks): a factory image made by `trustvol image encrypt` with a factory
// passphrase. Boot 1 (trustvol's initramfs script -> `trustvol provision --stage initramfs`) enrols the TPM, wipes the
// passphrase, writes the rotation's re-encryption metadata and maps the root mid-re-encryption; the system comes up
// while trustvol-provision.service rotates the key ONLINE in the background (the guest reports the rotation in
// progress and writes a file meanwhile); QEMU is killed mid-way. Boot 2's initramfs maps it mid-re-encryption again
// (recovering the hotzone the kill interrupted) and the service finishes online, writes the header backup and
// disables itself. Boot 3 unlocks unattended with every factory file and what the system wrote intact. Two "devices"
// flashed from the same image end with different volume keys (their ciphertexts of the same data differ).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, writeFileSync, openSync, readSync, closeSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { needBootImage, makeDisk, bootGuest, unexpectedMismatches, provisioningRoot, ext4Write, rootPartition, provisionJson } from "../helpers/boot.js";

let tmp: { dir: string; cleanup: () => void };
before(() => (tmp = tmpDir("trustvol-boot-factory-")));
after(() => tmp?.cleanup());

const FACTORY_KEY = "lmp factory passphrase\n";
/**
 * Test only: the system stage with the hotzone size of the kernel command line (trustvol.test.hotzone=SIZE), its exit
 * status printed on the console. systemd's SIGTERM (KillMode=mixed: the main process) is passed on to trustvol.
 */
const TEST_PROVISION = `#!/bin/sh
hz=
for f in $(cat /proc/cmdline); do case $f in trustvol.test.hotzone=*) hz="--hotzone-size \${f#*=}" ;; esac; done
trustvol provision --stage system --config /etc/trustvol/provision.json $hz &
pid=$!
trap 'kill -TERM $pid' TERM
wait $pid; rc=$?
[ $rc -gt 128 ] && { wait $pid; rc=$?; }
echo "TVTEST-PROVISION-EXIT rc=$rc" >/dev/ttyS0
exit $rc
`;
/** Test only (trustvol.test.term): shut the system down once the background rotation has run a few seconds. */
const TEST_TERM = `#!/bin/sh
case " $(cat /proc/cmdline) " in *" trustvol.test.term "*) ;; *) exit 0 ;; esac
i=0
until journalctl -b -u trustvol-provision.service -o cat --no-pager 2>/dev/null | grep -q "rotating the volume key online" || [ $i -ge 600 ]; do sleep 2; i=$((i + 2)); done
sleep 15
echo "TVTEST-SHUTDOWN while the rotation runs" >/dev/ttyS0
systemctl --no-block poweroff
`;

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

/** The root partition's LUKS2 metadata as `trustvol dump --json` reads it from the disk image (header area only). */
function rootMetadata(disk: string, dir: string): { reencrypting: boolean; crashed: boolean; segments: number } {
  const hdr = join(dir, "hdr-dump.img");
  writeFileSync(hdr, readAt(disk, 0, 16 << 20), { mode: 0o600 });
  const r = trustvol(["dump", "--json", hdr]);
  assert.equal(r.status, 0, r.stderr);
  const m = JSON.parse(r.stdout).metadata;
  const reencrypting = Object.values(m.keyslots as Record<string, { type: string }>).some((k) => k.type === "reencrypt");
  const crashed = Object.values(m.segments as Record<string, { flags?: string[] }>).some((x) => x.flags?.includes("in-reencryption"));
  return { reencrypting, crashed, segments: Object.keys(m.segments).length };
}

const lines = (c: string) => c.split("\n").filter((l) => /trustvol|TVTEST|root:/.test(l)).join(" | ");

test("factory LUKS2 image: boot 1 enrols + wipes + rotates online in the background, killed mid-way, boot 2 finishes online; two devices end with different keys", { timeout: 3_600_000 }, async (t) => {
  const img = needBootImage(t);
  if (!img) return;
  const cfg = provisionJson({ encrypt_plain: false, rotate_key: true, factory: { key_file: "/etc/trustvol/factory.key" } });
  // The factory secret reaches the initramfs as the config names it (a per-image secret LmP discards at first boot).
  const { root, initrd } = provisioningRoot(img, tmp.dir, cfg, { "etc/trustvol/factory.key": { data: FACTORY_KEY, mode: 0o600 } });
  // Small hotzones on boot 1 only (kernel command line): the kill lands mid-way under TCG however fast the host is.
  ext4Write(root, {
    "usr/local/sbin/trustvol-test-provision": TEST_PROVISION,
    "etc/systemd/system/trustvol-provision.service.d/test-hotzone.conf": "[Service]\nExecStart=\nExecStart=/bin/sh /usr/local/sbin/trustvol-test-provision\n",
    "usr/local/sbin/trustvol-test-term": TEST_TERM,
    "etc/systemd/system/trustvol-test-report.service.d/test-term.conf": "[Service]\nExecStartPre=/bin/sh /usr/local/sbin/trustvol-test-term\n",
  });
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
  const changed = ["etc/trustvol/boot.conf"];

  // Boot 1: the system comes up on the root mapped mid-re-encryption; the rotation runs in the background.
  // Killed once the header shows part of the data rotated (the guest reports it every 10 s while the service runs).
  const a1 = await bootGuest({ disk: diskA, img, initrd, tpmStateDir: join(tmp.dir, "tpmA"), append: "trustvol.test.hotzone=1M", killOn: /TVTEST-PROVISION-RUNNING \d+ in-progress segments=\d+ done=[1-9]/, killDelayMs: 2000, timeoutMs: 1_200_000 });
  assert.ok(a1.powerCut, `power cut while the background rotation runs (console: ${lines(a1.console)})`);
  assert.match(a1.console, /key enrolled, factory secret wiped/);
  assert.match(a1.console, /volume key rotation started/);
  assert.match(a1.console, /root: opened mid-re-encryption; the key rotation continues in the background/);
  assert.doesNotMatch(a1.console, /rotating the volume key \(blocking\)/);
  assert.ok(a1.report.includes("TVTEST-ROOT /dev/mapper/root"), a1.report.join("\n"));
  const running = a1.report.find((l) => l.startsWith("TVTEST-REENCRYPT "));
  assert.match(running ?? "", /^TVTEST-REENCRYPT in-progress segments=\d+ done=\d+$/, a1.report.join("\n"));
  assert.ok(a1.report.includes("TVTEST-WROTE boot-0"), "the system wrote a file while the rotation ran");
  const progress = a1.report.filter((l) => l.startsWith("TVTEST-PROVISION-RUNNING")).pop();
  const m1 = rootMetadata(diskA, tmp.dir);
  assert.ok(m1.reencrypting, "the kill landed mid-way: the header still records the rotation");
  t.diagnostic(`device A boot 1: system up at ${a1.reportAt}s uptime with the rotation in progress (${running}; then ${progress}); power cut ${a1.ms} ms after start${m1.crashed ? ", inside a hotzone" : ""}`);

  // Boot 2: opened mid-re-encryption again, the service finishes the rotation online, backs up the header, disables itself.
  const a2 = await bootGuest({ disk: diskA, img, initrd, tpmStateDir: join(tmp.dir, "tpmA"), timeoutMs: 1_500_000 });
  assert.ok(a2.completed, `device A boot 2 came up (console: ${lines(a2.console)})`);
  assert.match(a2.console, /root: opened mid-re-encryption/);
  assert.ok(a2.report.includes("TVTEST-ROOT /dev/mapper/root"), a2.report.join("\n"));
  assert.ok(a2.report.includes("TVTEST-WRITTEN boots=1 bad=0"), `what boot 1 wrote during the rotation survived the kill: ${a2.report.join("\n")}`);
  assert.deepEqual(unexpectedMismatches(a2.report, changed), []);
  assert.ok(a2.report.some((l) => /^TVTEST-PROVISION success disabled$/.test(l)), a2.report.join("\n"));
  assert.ok(a2.report.includes("TVTEST-REENCRYPT-AFTER none"), a2.report.join("\n"));
  assert.ok(a2.report.some((l) => /^TVTEST-HEADER-BACKUP \d+ 600$/.test(l)), a2.report.join("\n"));
  assert.doesNotMatch(a2.console, /recovery key/);
  assert.ok(!rootMetadata(diskA, tmp.dir).reencrypting);
  t.diagnostic(`device A boot 2 (finished the rotation online): ${a2.ms} ms host; root unlocked at ${a2.unlockedAt}s uptime, report at ${a2.reportAt}s`);

  // Boot 3 (scenario 3): unattended, no provisioning left; every file of the image and what boots 1-2 wrote intact.
  const a3 = await bootGuest({ disk: diskA, img, initrd, tpmStateDir: join(tmp.dir, "tpmA"), fullCheck: true, timeoutMs: 1_200_000 });
  assert.ok(a3.completed, "device A boot 3 came up");
  assert.doesNotMatch(a3.console, /opened mid-re-encryption|recovery key/);
  assert.ok(a3.report.includes("TVTEST-REENCRYPT none"), a3.report.join("\n"));
  assert.ok(a3.report.includes("TVTEST-WRITTEN boots=2 bad=0"), a3.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(a3.report, changed), []);
  assert.ok(a3.report.some((l) => /^TVTEST-MANIFEST [1-9]\d{3,}$/.test(l)), "the whole manifest was checked");
  t.diagnostic(`device A boot 3 (unattended): ${a3.ms} ms host; root unlocked at ${a3.unlockedAt}s uptime`);

  // Device B from the same image: boot 1 is shut down cleanly while the background rotation runs (systemd's SIGTERM:
  // trustvol stops after its current hotzone, exit 7, the unit stays enabled); boot 2 finishes it (default hotzones).
  const b1 = await bootGuest({ disk: diskB, img, initrd, tpmStateDir: join(tmp.dir, "tpmB"), append: "trustvol.test.hotzone=1M trustvol.test.term", timeoutMs: 1_200_000 });
  assert.match(b1.console, /TVTEST-SHUTDOWN while the rotation runs/, lines(b1.console));
  assert.match(b1.console, /TVTEST-PROVISION-EXIT rc=7/, `stopped at a safe point, resumable: ${lines(b1.console)}`);
  const mb = rootMetadata(diskB, tmp.dir);
  assert.ok(mb.reencrypting && !mb.crashed, "a clean stop: rotation recorded, no hotzone left in flight");
  const b2 = await bootGuest({ disk: diskB, img, initrd, tpmStateDir: join(tmp.dir, "tpmB"), timeoutMs: 1_500_000 });
  assert.ok(b2.completed, `device B boot 2 came up (console: ${lines(b2.console)})`);
  assert.match(b2.console, /root: opened mid-re-encryption/);
  assert.doesNotMatch(b2.console, /interrupted hotzone recovered/);
  assert.ok(b2.report.some((l) => /^TVTEST-PROVISION success disabled$/.test(l)), b2.report.join("\n"));
  assert.ok(b2.report.includes("TVTEST-REENCRYPT-AFTER none"), b2.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b2.report, changed), []);

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
