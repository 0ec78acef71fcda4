// Boot tier, scenario 6 of issue 12: the LmP flow with a PKCS#11 token and a kernel trusted key.
// The device: a factory LUKS2 root made by `trustvol image encrypt` (factory passphrase only) and an empty data
// partition. SoftHSM2 in the guest stands in for OP-TEE's PKCS#11 TA; its token directory lives on the plain boot
// partition (persistent, as OP-TEE's secure storage), which a test-only initramfs script mounts before trustvol runs
// (on LmP, tee-supplicant serves the TA's storage in the initramfs). The module path comes from provision.json and
// boot.conf, never from the header.
//   Boot 1, initramfs stage: token `lmp` initialised, RSA-2048 key `luks` generated, systemd-pkcs11 token enrolled and
//   the factory passphrase wiped in one commit, root opened through the token. System stage (trustvol-provision
//   .service): header backup; the data partition becomes a plain dm-crypt volume keyed by a kernel trusted key
//   (trusted.source=tpm, sealed under the TPM's SRK 0x81000001, created by trustvol), opened; a test unit puts a file
//   system and a file on it.
//   Boot 2: the root unlocks unattended via PKCS#11; trustvol-volume@data.service opens the data volume from its
//   sealed descriptor; the file written at boot 1 reads back.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { closeSync, openSync, readSync, readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { needBootImage, bootGuest, unexpectedMismatches, initrdWith, initrdOrderFirst, makeDiskWithParts, factoryLuksRoot, rootPartition, bootTree, type BootResult } from "../helpers/boot.js";

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

// Test only: mount the token store before trustvol's local-top script, unmount it before the root is switched to.
const MOUNT_TOKENS = `#!/bin/sh
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
i=0
while :; do
  dev=$(blkid -l -o device -t PARTLABEL=tvboot 2>/dev/null)
  [ -n "$dev" ] && break
  [ $i -ge 20 ] && { echo "tvtest: no tvboot partition for the token store" >/dev/console; exit 0; }
  sleep 1; i=$((i + 1))
done
mkdir -p /boot
mount -t ext4 "$dev" /boot && echo "tvtest: PKCS#11 token store $dev mounted on /boot" >/dev/console
exit 0
`;
const UMOUNT_TOKENS = `#!/bin/sh
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
umount /boot 2>/dev/null
exit 0
`;

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
    "etc/trustvol/volumes/data.conf": "DEVICE=/dev/disk/by-partlabel/tvdata\nOPTIONS=--blob /etc/trustvol/data.tvkey\n",
    "etc/systemd/system/tvtest-data.service": DATA_UNIT,
    "usr/local/sbin/tvtest-data": DATA_SCRIPT,
  };
  const luks = await factoryLuksRoot(img, tmp.dir, rootFiles, FACTORY_KEY, ["etc/trustvol/pkcs11.pin", "etc/trustvol/pkcs11-so.pin"]);
  // The image's initramfs was made with the shared test boot.conf (no PKCS#11 module): what mkinitramfs would have
  // added for this boot.conf (the module; its libraries libcrypto/libstdc++ are there already for pkcs11js), the
  // configs and secrets the initramfs stage reads, and the test-only token-store mount.
  const initrd = initrdWith(img, join(tmp.dir, "initrd.img"), {
    [MODULE]: { data: readFileSync(join(tree, MODULE)), mode: 0o644 },
    "etc/trustvol/boot.conf": { data: BOOT_CONF },
    "etc/trustvol/provision.json": { data: PROVISION },
    "etc/trustvol/pkcs11.pin": { data: pin, mode: 0o600 },
    "etc/trustvol/pkcs11-so.pin": { data: soPin, mode: 0o600 },
    "etc/trustvol/factory.key": { data: FACTORY_KEY, mode: 0o600 },
    "etc/softhsm/softhsm2.conf": { data: SOFTHSM_CONF },
    "scripts/local-top/tvtest-tokens": { data: MOUNT_TOKENS, mode: 0o755 },
    "scripts/local-top/ORDER": { data: initrdOrderFirst(img, "local-top", "tvtest-tokens") },
    "scripts/local-bottom/tvtest-tokens": { data: UMOUNT_TOKENS, mode: 0o755 },
    "scripts/local-bottom/ORDER": { data: initrdOrderFirst(img, "local-bottom", "tvtest-tokens") },
  });
  const disk = join(tmp.dir, "disk.img");
  makeDiskWithParts(disk, { root: luks, boot: { "trustvol/.keep": "", "softhsm/tokens/.keep": "" }, parts: [{ name: "tvdata", mib: 16 }] });
  const before = rootHeaderJson(disk);
  assert.deepEqual(Object.keys(before.tokens), [], "the factory image has no token");
  const tpmState = join(tmp.dir, "tpm");

  const b1 = await bootGuest({ disk, img, initrd, tpmStateDir: tpmState, timeoutMs: 1_200_000, append: "systemd.wants=tvtest-data.service" });
  assert.ok(b1.completed, "boot 1 reached the report service");
  assert.match(b1.console, /tvtest: PKCS#11 token store \S+ mounted on \/boot/);
  assert.match(b1.console, /lmp: PKCS#11 key "luks" ready/);
  assert.ok(b1.report.includes("TVTEST-ROOT /dev/mapper/root"), b1.report.join("\n"));
  assert.ok(b1.report.some((l) => /^TVTEST-CRYPT root: aes-xts-plain64$/.test(l)), b1.report.join("\n"));
  assert.ok(b1.report.some((l) => /^TVTEST-PROVISION success disabled$/.test(l)), b1.report.join("\n"));
  assert.ok(b1.report.some((l) => /^TVTEST-HEADER-BACKUP \d+ 600$/.test(l)), b1.report.join("\n"));
  assert.match(lines(b1, /^TVTEST-DATA/), /^TVTEST-DATA-TABLE aes-xts-plain64 :64:trusted:/m);
  assert.match(lines(b1, /^TVTEST-DATA/), /^TVTEST-DATA made$/m);
  assert.deepEqual(unexpectedMismatches(b1.report, CHANGED), []);
  const hdr = rootHeaderJson(disk);
  const toks = Object.values(hdr.tokens);
  assert.deepEqual(toks.map((x) => x.type), ["systemd-pkcs11"], JSON.stringify(hdr.tokens));
  assert.match(toks[0]!["pkcs11-uri"]!, /token=lmp/);
  assert.match(toks[0]!["pkcs11-uri"]!, /object=luks/);
  assert.deepEqual(Object.keys(hdr.keyslots), toks[0]!.keyslots, "the factory keyslot is gone: only the token's keyslot is left");
  t.diagnostic(`boot 1 (token + key created, enrolled, factory wiped; data volume created): ${b1.ms} ms host; root unlocked at ${b1.unlockedAt}s uptime (trustvol script ${b1.unlockSeconds}s)`);

  const b2 = await bootGuest({ disk, img, initrd, tpmStateDir: tpmState, append: "systemd.wants=tvtest-data.service systemd.wants=trustvol-volume@data.service" });
  assert.ok(b2.completed, "boot 2 reached the report service");
  assert.doesNotMatch(b2.console, /recovery key/);
  assert.match(b2.console, /trustvol: \/dev\/mapper\/root unlocked/);
  assert.ok(b2.report.includes("TVTEST-WRITTEN boots=1 bad=0"), b2.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b2.report, CHANGED), []);
  assert.match(lines(b2, /^TVTEST-DATA/), /^TVTEST-DATA-VOLUME-UNIT active$/m);
  assert.match(lines(b2, /^TVTEST-DATA/), /^TVTEST-DATA read-back ok$/m);
  t.diagnostic(`boot 2 (unattended PKCS#11 + trusted key): ${b2.ms} ms host; root unlocked at ${b2.unlockedAt}s uptime (trustvol script ${b2.unlockSeconds}s)`);
});
