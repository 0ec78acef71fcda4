// `trustvol doctor` against fake /sys, /proc, /dev trees: what it finds and when it calls something critical.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync, symlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { gzipSync } from "node:zlib";
import { tmpDir } from "../helpers/tools.js";
import { runDoctor, formatDoctor } from "../../src/ops/doctor.js";
import { main } from "../../src/cli/main.js";
import { io } from "../../src/cli/io.js";
import type { TrustvolError } from "../../src/util/errors.js";

const EFI = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

function tree(root: string, files: Record<string, string | Buffer>): void {
  for (const [p, c] of Object.entries(files)) {
    mkdirSync(dirname(join(root, p)), { recursive: true });
    writeFileSync(join(root, p), c);
  }
}

function luks2Header(tokens: string[]): Buffer {
  const hdr = Buffer.alloc(16384);
  Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]).copy(hdr);
  hdr.writeUInt16BE(2, 6);
  hdr.writeBigUInt64BE(16384n, 8);
  hdr.write("11111111-2222-3333-4444-555555555555", 168, "latin1");
  const meta = { keyslots: { "0": {}, "1": {} }, tokens: Object.fromEntries(tokens.map((t, i) => [String(i), { type: t, keyslots: ["1"] }])), segments: {}, digests: {}, config: {} };
  hdr.write(JSON.stringify(meta), 4096, "utf8");
  return hdr;
}

const CONFIG = ["CONFIG_DM_CRYPT=y", "CONFIG_DM_VERITY=m", "CONFIG_TRUSTED_KEYS=y", "CONFIG_TRUSTED_KEYS_TEE=y", "CONFIG_ENCRYPTED_KEYS=y", "CONFIG_CRYPTO_DEV_FSL_CAAM_TK_API=y", "# CONFIG_DM_INTEGRITY is not set"].join("\n") + "\n";

test("i.MX-like board: OP-TEE + CAAM, no secure boot info, plaintext swap ⇒ critical", (t) => {
  const { dir, cleanup } = tmpDir("trustvol-doctor-");
  t.after(cleanup);
  tree(dir, {
    "proc/config.gz": gzipSync(CONFIG),
    "proc/sys/kernel/osrelease": "6.1.55-imx\n",
    "proc/cmdline": "console=ttymxc1 root=/dev/mmcblk2p2 trusted.source=tee\n",
    "proc/crypto": "name         : tk(cbc(aes))\ndriver       : tk-cbc-aes-caam\n\nname         : aes\n",
    "proc/swaps": "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/mmcblk2p4                          partition\t524284\t\t0\t\t-2\n",
    "proc/self/mounts": "/dev/mmcblk2p2 / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n",
    "dev/tee0": "",
    "dev/caam-keygen": "",
    "sys/bus/platform/drivers/caam_jr/30901000.jr": "",
    "sys/bus/platform/drivers/caam_jr/bind": "",
    "sys/class/block/mmcblk2p3/size": "65536\n",
    "sys/class/block/mmcblk2p4/size": "1048576\n",
    "dev/mmcblk2p3": luks2Header(["systemd-pkcs11"]),
    "dev/mmcblk2p4": Buffer.alloc(4096),
  });
  mkdirSync(join(dir, "sys/class/block/mmcblk2p4/slaves"), { recursive: true });
  const r = runDoctor({ root: dir, p11KitDirs: [] });
  assert.equal(r.kernel.dmCrypt, "yes");
  assert.equal(r.kernel.dmVerity, "module");
  assert.equal(r.kernel.dmIntegrity, "no");
  assert.equal(r.kernel.trustedSources.tee, "yes");
  assert.equal(r.kernel.caamTaggedKeys, "yes");
  assert.deepEqual(r.trustSources.caam, { jobRings: 1, keygen: true, taggedKeyCiphers: ["tk(cbc(aes))"] });
  assert.equal(r.trustSources.tee?.device, "/dev/tee0");
  assert.equal(r.trustSources.trustedKeySource, "tee");
  assert.equal(r.secureBoot.state, "unknown");
  assert.deepEqual(r.swap, [{ device: "/dev/mmcblk2p4", type: "partition", encrypted: false }]);
  assert.equal(r.tmp?.encrypted, true);
  assert.deepEqual(r.volumes, [{ device: "/dev/mmcblk2p3", version: 2, uuid: "11111111-2222-3333-4444-555555555555", tokens: ["systemd-pkcs11"], keyslots: 2 }]);
  const ids = r.findings.map((f) => `${f.severity}:${f.id}`);
  assert.ok(ids.includes("critical:swap.plaintext"), ids.join(" "));
  assert.ok(ids.includes("warning:tee.huk"), "the default-HUK warning is always given with OP-TEE");
  assert.ok(ids.includes("warning:tee.no-secure-boot"));
  assert.ok(ids.includes("warning:secureboot.unknown"));
  assert.equal(r.critical, true);
  assert.match(formatDoctor(r), /\[CRITICAL\] swap on plaintext storage/);
});

test("UEFI PC with a TPM, Secure Boot off ⇒ critical; encrypted swap and dm-crypt /tmp are fine", (t) => {
  const { dir, cleanup } = tmpDir("trustvol-doctor-");
  t.after(cleanup);
  tree(dir, {
    "proc/config.gz": gzipSync("CONFIG_DM_CRYPT=m\nCONFIG_TRUSTED_KEYS=y\nCONFIG_TRUSTED_KEYS_TPM=y\n"),
    "proc/swaps": "Filename Type Size Used Priority\n/dev/dm-1 partition 1 0 -2\n",
    "proc/self/mounts": "/dev/mapper/home /tmp ext4 rw 0 0\n",
    "sys/class/tpm/tpm0/tpm_version_major": "2\n",
    "sys/class/tpm/tpm0/pcr-sha256/7": "0".repeat(64) + "\n",
    "dev/tpmrm0": "",
    [`sys/firmware/efi/efivars/SecureBoot-${EFI}`]: Buffer.from([6, 0, 0, 0, 0]),
    [`sys/firmware/efi/efivars/SetupMode-${EFI}`]: Buffer.from([6, 0, 0, 0, 1]),
    "sys/class/block/dm-0/dm/name": "home\n",
    "sys/class/block/dm-0/dm/uuid": "CRYPT-LUKS2-1111-home\n",
    "sys/class/block/dm-1/dm/name": "swap\n",
    "sys/class/block/dm-1/dm/uuid": "CRYPT-PLAIN-swap\n",
  });
  const r = runDoctor({ root: dir, p11KitDirs: [] });
  assert.equal(r.trustSources.tpm?.version, 2);
  assert.equal(r.trustSources.tpm?.resourceManager, true);
  assert.equal(r.secureBoot.state, "disabled");
  assert.equal(r.secureBoot.setupMode, true);
  assert.equal(r.swap[0]!.encrypted, true);
  assert.equal(r.tmp?.encrypted, true);
  assert.deepEqual(r.mappings.map((m) => m.name).sort(), ["home", "swap"]);
  const ids = r.findings.map((f) => `${f.severity}:${f.id}`);
  assert.ok(ids.includes("critical:secureboot.off"), ids.join(" "));
  assert.ok(ids.includes("warning:tpm.pcr7-zero"));
  assert.ok(ids.includes("warning:secureboot.setup-mode"));
  assert.ok(!ids.some((i) => i.startsWith("critical:swap")));
});

test("CLI: doctor --json --root, exit 8 on a critical finding, 0 otherwise", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-doctor-");
  t.after(cleanup);
  tree(dir, { "proc/swaps": "Filename Type Size Used Priority\n/dev/sda2 partition 1 0 -2\n", "sys/class/block/sda2/size": "8\n" });
  mkdirSync(join(dir, "sys/class/block/sda2/slaves"), { recursive: true });
  const clean = join(dir, "clean");
  tree(clean, { "proc/self/mounts": "tmpfs /tmp tmpfs rw 0 0\n" });
  symlinkSync("/nonexistent", join(clean, "dangling"));
  let out = "";
  const saved = { ...io };
  io.out = (s) => void (out += s.toString());
  io.err = () => {};
  try {
    assert.equal(await main(["doctor", "--json", "--root", dir]), 8);
    const rep = JSON.parse(out);
    assert.equal(rep.critical, true);
    assert.equal(rep.findings.find((f: { id: string }) => f.id === "swap.plaintext").severity, "critical");
    out = "";
    assert.equal(await main(["doctor", "--root", clean]), 0);
    assert.match(out, /no hardware trust source/);
  } finally {
    Object.assign(io, saved);
  }
});

test("doctor refuses a --root that is not a directory, and reports the TPM TRUSTVOL_TPM2_DEVICE names", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-doctor-");
  t.after(cleanup);
  assert.throws(() => runDoctor({ root: join(dir, "nonexistent"), p11KitDirs: [] }), (e: TrustvolError) => e.code === "ENOENT" && /no such directory/.test(e.message));
  let err = "";
  const saved = { ...io };
  io.out = () => {};
  io.err = (s) => void (err += s.toString());
  try {
    assert.equal(await main(["doctor", "--root", join(dir, "nonexistent")]), 5);
    assert.match(err, /nonexistent: no such directory/);
  } finally {
    Object.assign(io, saved);
  }
  tree(dir, { "run/swtpm.sock": "" });
  const r = runDoctor({ root: dir, p11KitDirs: [], env: { TRUSTVOL_TPM2_DEVICE: `swtpm:path=${join(dir, "run/swtpm.sock")}` } });
  assert.equal(r.trustSources.tpm?.device, `swtpm:path=${join(dir, "run/swtpm.sock")}`);
  assert.ok(!r.findings.some((f) => f.id === "trust.none"));
  const missing = runDoctor({ root: dir, p11KitDirs: [], env: { TRUSTVOL_TPM2_DEVICE: "/dev/nonexistent-tpm" } });
  assert.ok(missing.findings.some((f) => f.id === "tpm.env-missing"), JSON.stringify(missing.findings));
});
