// Boot tier, scenario 6 of issue 12: the LmP flow with a PKCS#11 token and a kernel trusted key.
// The device: a factory LUKS2 root made by `trustvol image encrypt` (factory passphrase only) and an empty data
// partition. SoftHSM2 in the guest stands in for OP-TEE's PKCS#11 TA; its token directory lives on the plain boot
// partition (persistent, as OP-TEE's secure storage; on LmP, tee-supplicant serves the TA's storage in the initramfs):
// trustvol's initramfs hook copies softhsm2.conf and lists that partition (found in /etc/fstab) in
// /etc/trustvol/mounts, which trustvol's boot script mounts at /boot before it runs and unmounts once the root is
// unlocked. The module path comes from provision.json and boot.conf, never from the header.
//   Boot 1, initramfs stage: token `lmp` initialised, RSA-2048 key `luks` generated, systemd-pkcs11 token enrolled and
//   the factory passphrase wiped in one commit, root opened through the token. System stage (trustvol-provision
//   .service): header backup; the data partition becomes a plain dm-crypt volume keyed by a kernel trusted key
//   (trusted.source=tpm, sealed under the TPM's SRK 0x81000001, created by trustvol), opened; a test unit puts a file
//   system and a file on it. The system stage also writes /etc/trustvol/volumes/data.conf.
//   Boot 2 (nothing enabled by hand): the root unlocks unattended via PKCS#11; trustvol-generator turns data.conf into
//   trustvol-volume@data.service (cryptsetup.target), which opens the data volume from its sealed descriptor; the file
//   written at boot 1 reads back.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { closeSync, openSync, readSync, readFileSync, existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { needBootImage, bootGuest, unexpectedMismatches, initrdWith, makeDiskWithParts, factoryLuksRoot, rootPartition, bootTree, BOOT_OVERLAY, type BootResult } from "../helpers/boot.js";
import { initramfsNeeds } from "../../src/boot/softhsm.js";

let tmp: { dir: string; cleanup: () => void };
before(() => (tmp = tmpDir("trustvol-boot-p11-")));
after(() => tmp?.cleanup());

const MODULE = "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so";
const FACTORY_KEY = "factory passphrase of the pkcs11 boot test";

const BOOT_CONF = [
  "TRUSTVOL_NAME=root",
  "TRUSTVOL_DEVICE=PARTLABEL=trustvol-root",
  "TRUSTVOL_MODE=provision",
  "TRUSTVOL_ON_FAIL=fail",
  "TRUSTVOL_HEADER_BACKUP=PARTLABEL=tvboot:/trustvol/root-header.img",
  `TRUSTVOL_PKCS11_MODULE=${MODULE}`,
  "TRUSTVOL_TIMEOUT=20",
  "",
].join("\n");

const PROVISION = JSON.stringify({
  version: 1,
  volumes: [
    {
      name: "root",
      device: "PARTLABEL=trustvol-root",
      trust: { type: "pkcs11", module: MODULE, token_label: "lmp", key_label: "luks", create: true, pin: { file: "/etc/trustvol/pkcs11.pin" }, so_pin: { file: "/etc/trustvol/pkcs11-so.pin" } },
      factory: { key_file: "/etc/trustvol/factory.key" },
      recovery: "none",
      header_backup: "/boot/trustvol/root-header.img",
      posture: { secure_boot: "ignore", setup_mode: "ignore", huk: "ignore" },
      on_failure: "stop",
    },
    {
      name: "data",
      device: "PARTLABEL=tvdata",
      trust: { type: "trusted-key", source: "tpm", descriptor: "/etc/trustvol/data.tvkey" },
      posture: { secure_boot: "ignore", setup_mode: "ignore", huk: "ignore" },
    },
  ],
}, null, 2) + "\n";

// SoftHSM's token store on the boot partition (mounted on /boot in the initramfs and by fstab in the system).
const SOFTHSM_CONF = "directories.tokendir = /boot/softhsm/tokens/\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n";

// Test only: the data volume. Boot 1: the system stage creates and opens it: a file system and a file. Later boots
// (trustvol-volume@data.service opened it): the file reads back.
const DATA_SCRIPT = `#!/bin/sh
i=0
# Boot 1: the system stage (trustvol-provision.service) creates and opens it; later boots: trustvol-volume@data.
while [ ! -b /dev/mapper/data ] && [ $i -lt 900 ]; do
  [ $i -ge 5 ] && ! systemctl is-active -q trustvol-provision.service && break
  sleep 1; i=$((i + 1))
done
if [ ! -b /dev/mapper/data ]; then
  echo "TVTEST-DATA missing"
  journalctl -b -u trustvol-provision.service -u trustvol-volume@data.service -o cat --no-pager 2>/dev/null | tail -n 12 | sed 's/^/TVTEST-LOG /'
  exit 0
fi
echo "TVTEST-DATA-TABLE $(dmsetup table data | awk '{ print $4, substr($5, 1, 12) }')"
echo "TVTEST-DATA-VOLUME-UNIT $(systemctl is-active trustvol-volume@data.service)"
echo "TVTEST-DATA-CONF $(sed -n 's/^DEVICE=//p' /etc/trustvol/volumes/data.conf 2>/dev/null)"
echo "TVTEST-DATA-GENERATED $(ls /run/systemd/generator/cryptsetup.target.wants/ 2>/dev/null | tr '\\n' ' ')"
mkdir -p /mnt/data
if ! blkid -p /dev/mapper/data >/dev/null 2>&1; then
  mkfs.ext4 -q -L tvdata-fs /dev/mapper/data && mount /dev/mapper/data /mnt/data &&
    head -c 65536 /dev/urandom > /mnt/data/file && (cd /mnt/data && sha256sum file > sums) && sync && umount /mnt/data &&
    echo "TVTEST-DATA made"
else
  mount /dev/mapper/data /mnt/data && (cd /mnt/data && sha256sum -c --quiet sums >/dev/null 2>&1 && echo "TVTEST-DATA read-back ok" || echo "TVTEST-DATA read-back bad")
  umount /mnt/data
fi
`;
const DATA_UNIT = `[Unit]
Description=trustvol test: the trusted-key data volume
ConditionKernelCommandLine=trustvol.test
After=multi-user.target trustvol-volume@data.service
Before=trustvol-test-report.service

[Service]
Type=oneshot
ExecStart=/bin/sh /usr/local/sbin/tvtest-data
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
`;

function rootHeaderJson(disk: string): { tokens: Record<string, { type: string; keyslots: string[]; "pkcs11-uri"?: string }>; keyslots: Record<string, unknown> } {
  const fd = openSync(disk, "r");
  try {
    const b = Buffer.alloc(16384);
    readSync(fd, b, 0, b.length, rootPartition(disk).offset);
    assert.equal(b.toString("latin1", 0, 6), "LUKS\xba\xbe");
    return JSON.parse(b.toString("utf8", 4096, b.indexOf(0, 4096)));
  } finally {
    closeSync(fd);
  }
}

/** Factory files this test replaces before the image is encrypted. */
const CHANGED = ["etc/trustvol/boot.conf", "etc/softhsm/softhsm2.conf"];

const lines = (r: BootResult, re: RegExp) => r.report.filter((l) => re.test(l)).join("\n");

test("PKCS#11 (SoftHSM in the guest) root: boot 1 enrolls + wipes the factory key; trusted-key data partition created; boot 2 unattended", { timeout: 2_400_000 }, async (t) => {
  const img = needBootImage(t);
  if (!img) return;
  const tree = bootTree();
  assert.ok(existsSync(join(tree, MODULE)), `${MODULE} in the boot tree (softhsm2)`);
  const pin = "87654321", soPin = "12345678";
  const rootFiles = {
    "etc/trustvol/provision.json": PROVISION,
    "etc/trustvol/boot.conf": BOOT_CONF,
    "etc/trustvol/pkcs11.pin": pin,
    "etc/trustvol/pkcs11-so.pin": soPin,
    "etc/softhsm/softhsm2.conf": SOFTHSM_CONF,
    "etc/systemd/system/tvtest-data.service": DATA_UNIT,
    "usr/local/sbin/tvtest-data": DATA_SCRIPT,
  };
  const luks = await factoryLuksRoot(img, tmp.dir, rootFiles, FACTORY_KEY, ["etc/trustvol/pkcs11.pin", "etc/trustvol/pkcs11-so.pin"]);
  // The image's initramfs was made with the shared test boot.conf (no PKCS#11 module): what trustvol's hook adds for
  // this boot.conf and provision.json (`trustvol boot files`, test/boot/initramfs-files.test.ts runs the hook itself):
  // the module (its libraries libcrypto/libstdc++ are there already for pkcs11js), SoftHSM's config and the token
  // store's mount list (from the guest's fstab), the configs and the secrets the initramfs stage reads.
  const hsmConf = join(tmp.dir, "softhsm2.conf");
  writeFileSync(hsmConf, SOFTHSM_CONF);
  const needs = initramfsNeeds(undefined, [MODULE], { softhsmConf: hsmConf, fstab: join(BOOT_OVERLAY, "etc/fstab") });
  assert.deepEqual(needs.mounts.map((m) => `${m.spec} ${m.mountpoint} ${m.fstype}`), ["PARTLABEL=tvboot /boot ext4"]);
  const initrd = initrdWith(img, join(tmp.dir, "initrd.img"), {
    [MODULE]: { data: readFileSync(join(tree, MODULE)), mode: 0o644 },
    "etc/trustvol/boot.conf": { data: BOOT_CONF },
    "etc/trustvol/provision.json": { data: PROVISION },
    "etc/trustvol/pkcs11.pin": { data: pin, mode: 0o600 },
    "etc/trustvol/pkcs11-so.pin": { data: soPin, mode: 0o600 },
    "etc/trustvol/factory.key": { data: FACTORY_KEY, mode: 0o600 },
    "etc/softhsm/softhsm2.conf": { data: SOFTHSM_CONF },
    "etc/trustvol/mounts": { data: needs.mounts.map((m) => `${m.spec} ${m.mountpoint} ${m.fstype}\n`).join("") },
  });
  const disk = join(tmp.dir, "disk.img");
  makeDiskWithParts(disk, { root: luks, boot: { "trustvol/.keep": "", "softhsm/tokens/.keep": "" }, parts: [{ name: "tvdata", mib: 16 }] });
  const before = rootHeaderJson(disk);
  assert.deepEqual(Object.keys(before.tokens), [], "the factory image has no token");
  const tpmState = join(tmp.dir, "tpm");

  const b1 = await bootGuest({ disk, img, initrd, tpmStateDir: tpmState, timeoutMs: 1_200_000, append: "systemd.wants=tvtest-data.service" });
  assert.ok(b1.completed, "boot 1 reached the report service");
  assert.match(b1.console, /trustvol: PKCS#11 token store \S+ mounted on \/boot/);
  assert.match(b1.console, /lmp: PKCS#11 key "luks" ready/);
  assert.ok(b1.report.includes("TVTEST-ROOT /dev/mapper/root"), b1.report.join("\n"));
  assert.ok(b1.report.some((l) => /^TVTEST-CRYPT root: aes-xts-plain64$/.test(l)), b1.report.join("\n"));
  assert.ok(b1.report.some((l) => /^TVTEST-PROVISION success disabled$/.test(l)), b1.report.join("\n"));
  assert.ok(b1.report.some((l) => /^TVTEST-HEADER-BACKUP \d+ 600$/.test(l)), b1.report.join("\n"));
  assert.match(lines(b1, /^TVTEST-DATA/), /^TVTEST-DATA-TABLE aes-xts-plain64 :64:trusted:/m);
  assert.match(lines(b1, /^TVTEST-DATA/), /^TVTEST-DATA made$/m);
  assert.match(lines(b1, /^TVTEST-DATA/), /^TVTEST-DATA-CONF \/dev\/disk\/by-partlabel\/tvdata$/m, "the system stage wrote volumes/data.conf");
  assert.deepEqual(unexpectedMismatches(b1.report, CHANGED), []);
  const hdr = rootHeaderJson(disk);
  const toks = Object.values(hdr.tokens);
  assert.deepEqual(toks.map((x) => x.type), ["systemd-pkcs11"], JSON.stringify(hdr.tokens));
  assert.match(toks[0]!["pkcs11-uri"]!, /token=lmp/);
  assert.match(toks[0]!["pkcs11-uri"]!, /object=luks/);
  assert.deepEqual(Object.keys(hdr.keyslots), toks[0]!.keyslots, "the factory keyslot is gone: only the token's keyslot is left");
  t.diagnostic(`boot 1 (token + key created, enrolled, factory wiped; data volume created): ${b1.ms} ms host; root unlocked at ${b1.unlockedAt}s uptime (trustvol script ${b1.unlockSeconds}s)`);

  // Nothing enables trustvol-volume@data.service by hand: the generator finds volumes/data.conf.
  const b2 = await bootGuest({ disk, img, initrd, tpmStateDir: tpmState, timeoutMs: 1_200_000, append: "systemd.wants=tvtest-data.service" });
  assert.match(b2.console, /trustvol: PKCS#11 token store \S+ mounted on \/boot/);
  assert.ok(b2.completed, "boot 2 reached the report service");
  assert.doesNotMatch(b2.console, /recovery key/);
  assert.match(b2.console, /trustvol: \/dev\/mapper\/root unlocked/);
  assert.ok(b2.report.includes("TVTEST-WRITTEN boots=1 bad=0"), b2.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b2.report, CHANGED), []);
  assert.match(lines(b2, /^TVTEST-DATA/), /^TVTEST-DATA-VOLUME-UNIT active$/m);
  assert.match(lines(b2, /^TVTEST-DATA/), /^TVTEST-DATA-GENERATED .*trustvol-volume@data\.service/m, "pulled in by trustvol-generator");
  assert.match(lines(b2, /^TVTEST-DATA/), /^TVTEST-DATA read-back ok$/m);
  t.diagnostic(`boot 2 (unattended PKCS#11 + trusted key): ${b2.ms} ms host; root unlocked at ${b2.unlockedAt}s uptime (trustvol script ${b2.unlockSeconds}s)`);
});
