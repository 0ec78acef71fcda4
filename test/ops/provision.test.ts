// `trustvol provision` on the host tier (image files, swtpm, SoftHSM; no device-mapper, so --no-open): the whole
// first-boot flow of seed 004 through the CLI, state read from the device, and the refusals that must leave the
// device byte-for-byte unchanged with a one-line error.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync, statSync, copyFileSync, existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { generateKeyPairSync } from "node:crypto";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { startSwtpm } from "../helpers/swtpm.js";
import { makeSoftHsm, needSoftHsm } from "../helpers/softhsm.js";
import { FileBlockDevice } from "../../src/blockdev/file.js";
import { parseProvisionConfig } from "../../src/provision/config.js";
import { readVolumeState } from "../../src/provision/state.js";
import { LuksHandle } from "../../src/ops/volume.js";
import { unlockWithTokens } from "../../src/ops/tokens.js";
import { makeExt4, decryptedFs, fsChecksums, MiB } from "./provision-fixture.js";
import { TrustvolError } from "../../src/util/errors.js";

const NO_POSTURE = { secure_boot: "ignore", setup_mode: "ignore", huk: "ignore" };

function writeConfig(dir: string, vols: Record<string, unknown>[], name = "provision.json"): string {
  const p = join(dir, name);
  writeFileSync(p, JSON.stringify({ version: 1, volumes: vols }));
  return p;
}

async function stateOf(path: string, vol: Record<string, unknown>) {
  const cfg = parseProvisionConfig({ volumes: [{ name: "x", device: "/x", ...vol }] });
  const d = await FileBlockDevice.open(path, { readOnly: true });
  try {
    return await readVolumeState(d, cfg.volumes[0]!);
  } finally {
    await d.close();
  }
}

async function volumeKey(path: string, ctx: { tpm2Device?: string; pin?: Uint8Array; pkcs11Module?: string } = {}, passphrase?: Uint8Array): Promise<string> {
  const d = await FileBlockDevice.open(path, { readOnly: true });
  try {
    const h = await LuksHandle.fromDevices(d);
    const r = passphrase ? await h.unlock(passphrase) : await unlockWithTokens(h, ctx);
    return r.volumeKey.toString("hex");
  } finally {
    await d.close();
  }
}

test("config: one-line errors naming the field", () => {
  const bad: [unknown, RegExp][] = [
    [{ volumes: [{ name: "r", device: "/dev/x", trust: { type: "tpm2", pcrs: [24] } }] }, /^provision\.json: volumes\[0\]\.trust\.pcrs: expected a list of PCR indexes 0–23$/],
    [{ volumes: [] }, /^provision\.json: volumes: expected a non-empty list/],
    [{ volumes: [{ name: "r", device: "sda", trust: { type: "tpm2" } }] }, /volumes\[0\]\.device: expected an absolute path or PARTUUID=/],
    [{ volumes: [{ name: "r", device: "/d", trust: { type: "tpm3" } }] }, /volumes\[0\]\.trust\.type: expected one of "tpm2", "pkcs11"/],
    [{ volumes: [{ name: "r", device: "/d", trust: { type: "tpm2" }, colour: 1 }] }, /volumes\[0\]\.colour: unknown field/],
    [{ volumes: [{ name: "r", device: "/d", trust: { type: "pkcs11", create: true, pin: { file: "/p" } } }] }, /volumes\[0\]\.trust\.so_pin: needed when "create" is true/],
    [{ volumes: [{ name: "r", device: "/d", trust: { type: "tpm2", pin: "1234" } }] }, /volumes\[0\]\.trust\.pin: expected "none", "prompt" or \{"file"/],
    [{ volumes: [{ name: "r", device: "/d", trust: { type: "tpm2" }, recovery: { escrow: { public_key: "rel.pem", output: "/o" } } }] }, /volumes\[0\]\.recovery\.escrow\.public_key: expected an absolute path/],
    [{ volumes: [{ name: "r", device: "/d", trust: { type: "tpm2" }, on_failure: "panic" }] }, /volumes\[0\]\.on_failure: expected one of "stop", "continue-unencrypted", "recovery-prompt"/],
    [{ volumes: [{ name: "r", device: "/d", trust: { type: "tpm2" }, reduce_device_size: "1M" }] }, /volumes\[0\]\.reduce_device_size: must be at least 2M/],
    [{ volumes: [{ name: "r", device: "/d", trust: { type: "tpm2" }, posture: { secure_boot: "maybe" } }] }, /volumes\[0\]\.posture\.secure_boot: expected one of "require", "warn", "ignore"/],
    [{ volumes: [{ name: "r", device: "/d", trust: { type: "tpm2" } }, { name: "r", device: "/e", trust: { type: "tpm2" } }] }, /volumes\[1\]\.name: "r" is also volumes\[0\]\.name/],
    [{ volumes: [{ name: "d", device: "/d", trust: { type: "trusted-key", source: "tpm" }, rotate_key: true }] }, /volumes\[0\]\.trust\.type: "trusted-key" makes a new plain dm-crypt data volume/],
  ];
  for (const [json, re] of bad) {
    assert.throws(() => parseProvisionConfig(json), (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE" && re.test(e.message) && !e.oneLine().includes("\n"), JSON.stringify(json));
  }
  const ok = parseProvisionConfig({ volumes: [{ name: "rootfs", device: "PARTLABEL=otaroot", trust: { type: "pkcs11", create: true, pin: { file: "/p" }, so_pin: { file: "/s" } }, reduce_device_size: "32M" }] });
  assert.deepEqual(ok.volumes[0]!.trust, { type: "pkcs11", token_label: "lmp", key_label: "luks", create: true, pin: { file: "/p" }, so_pin: { file: "/s" } });
  assert.equal(ok.volumes[0]!.reduce_device_size, 32 * MiB);
  assert.equal(ok.volumes[0]!.on_failure, "stop");
});

test("plain ext4 → provision (TPM2 PCR 7, escrowed recovery key) → provisioned; files intact; escrow decrypts; re-run is a no-op", async (t) => {
  if (!needTools(t, "swtpm", "mkfs.ext4", "resize2fs", "e2fsck", "debugfs", "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const { path: img, files } = makeExt4(dir, "root.img", 16);
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  writeFileSync(join(dir, "fleet.pem"), publicKey.export({ type: "spki", format: "pem" }));
  writeFileSync(join(dir, "fleet-private.pem"), privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
  const vol = { name: "root", device: img, trust: { type: "tpm2", pcrs: [7], device: tpm.device }, encrypt_plain: true, reduce_device_size: "4M", recovery: { escrow: { public_key: join(dir, "fleet.pem"), output: join(dir, "recovery-{uuid}.json") } }, header_backup: join(dir, "root.hdr"), posture: NO_POSTURE };
  const cfg = writeConfig(dir, [vol]);

  let r = trustvol(["provision", "--config", cfg, "--no-open", "--dry-run", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).volumes[0].state_before, "plain");

  r = trustvol(["provision", "--config", cfg, "--no-open", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const rep = JSON.parse(r.stdout).volumes[0];
  assert.equal(rep.state_before, "plain");
  assert.equal(rep.state, "provisioned");
  assert.deepEqual(rep.steps, ["shrink-fs", "encrypt", "enroll", "enroll-recovery"]);

  const st = await stateOf(img, vol);
  assert.equal(st.state, "provisioned");
  assert.deepEqual(st.passwordSlots, []);
  const dump = run("cryptsetup", ["luksDump", img]).stdout.toString();
  assert.match(dump, /systemd-tpm2/);
  assert.match(dump, /systemd-recovery/);
  assert.match(dump, /Label:\s+otaroot/);
  assert.match(dump, /offset: 2097152 \[bytes\]/);
  // the transitional passphrase is gone
  assert.notEqual(run("cryptsetup", ["open", "--test-passphrase", "--key-file", "-", img], { input: "trustvol-provision-transitional", check: false }).status, 0);

  // system stage: the header backup (0600), idempotent
  r = trustvol(["provision", "--config", cfg, "--stage", "system", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout).volumes[0].steps, ["header-backup"]);
  assert.equal(statSync(join(dir, "root.hdr")).mode & 0o777, 0o600);
  r = trustvol(["provision", "--config", cfg, "--stage", "system", "--json"]);
  assert.deepEqual(JSON.parse(r.stdout).volumes[0].steps, []);
  const before = readFileSync(img);
  r = trustvol(["provision", "--config", cfg, "--no-open", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout).volumes[0].steps, []);
  assert.ok(readFileSync(img).equals(before), "a provisioned device is not written again");

  // the content: every file as flashed (the fs still has its shrunk size: growing it needs the mapped device)
  const d = await FileBlockDevice.open(img, { readOnly: true });
  const fs = await decryptedFs(d, { tpm2Device: tpm.device });
  await d.close();
  assert.deepEqual(await fsChecksums(dir, fs, Object.keys(files)), files);

  // escrow: fleet side decrypts the recovery key, and it unlocks the volume
  const esc = readFileSync(join(dir, `recovery-${st.uuid}.json`), "utf8");
  assert.equal(statSync(join(dir, `recovery-${st.uuid}.json`)).mode & 0o777, 0o600);
  assert.equal(JSON.parse(esc).alg, "RSA-OAEP-SHA256");
  r = trustvol(["recovery", "decrypt", join(dir, `recovery-${st.uuid}.json`), "--private-key", join(dir, "fleet-private.pem")]);
  assert.equal(r.status, 0, r.stderr);
  const rk = r.stdout.trim();
  assert.match(rk, /^[cbdefghijklnrtuv]{8}(-[cbdefghijklnrtuv]{8}){7}$/);
  assert.equal(run("cryptsetup", ["open", "--test-passphrase", "--key-file", "-", img], { input: rk, check: false }).status, 0);
  assert.ok(!esc.includes(rk));
  r = trustvol(["recovery", "decrypt", join(dir, `recovery-${st.uuid}.json`), "--private-key", join(dir, "fleet-private.pem"), "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { version: 1, volume: "root", volume_uuid: st.uuid, recovery_key: rk });
});

test("factory image (trustvol image encrypt, factory key) with rotate_key: two devices from one image end with different volume keys", async (t) => {
  if (!needTools(t, "swtpm", "mkfs.ext4", "debugfs", "e2fsck")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const { path: fsImg, files } = makeExt4(dir, "rootfs.ext4", 8);
  const factory = join(dir, "factory.key");
  writeFileSync(factory, "factory-passphrase", { mode: 0o600 });
  let r = trustvol(["image", "encrypt", fsImg, join(dir, "rootfs.luks"), "--key-file", factory, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--offset", "2097152"]);
  if (r.status !== 0) r = trustvol(["image", "encrypt", fsImg, join(dir, "rootfs.luks"), "--key-file", factory, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]);
  assert.equal(r.status, 0, r.stderr);
  const imageKey = await volumeKey(join(dir, "rootfs.luks"), {}, Buffer.from("factory-passphrase"));
  const keys: string[] = [];
  for (const n of ["dev1", "dev2"]) {
    const img = join(dir, `${n}.img`);
    copyFileSync(join(dir, "rootfs.luks"), img);
    const vol = { name: n, device: img, trust: { type: "tpm2", pcrs: [7], device: tpm.device }, factory: { key_file: factory }, rotate_key: true, header_backup: join(dir, `${n}.hdr`), posture: NO_POSTURE };
    const cfg = writeConfig(dir, [vol], `${n}.json`);
    r = trustvol(["provision", "--config", cfg, "--no-open", "--json"]);
    assert.equal(r.status, 0, r.stderr);
    const rep = JSON.parse(r.stdout).volumes[0];
    assert.equal(rep.state_before, "factory");
    assert.deepEqual(rep.steps, ["mark-rotation", "enroll", "rotate-init", "unmark-rotation", "rotate"]);
    assert.equal(rep.state, "provisioned");
    r = trustvol(["provision", "--config", cfg, "--stage", "system", "--json"]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(existsSync(join(dir, `${n}.hdr`)));
    const k = await volumeKey(img, { tpm2Device: tpm.device });
    keys.push(k);
    const d = await FileBlockDevice.open(img, { readOnly: true });
    const fs = await decryptedFs(d, { tpm2Device: tpm.device });
    await d.close();
    assert.deepEqual(await fsChecksums(dir, fs, Object.keys(files)), files);
    // the factory passphrase opens nothing any more
    await assert.rejects(volumeKey(img, {}, Buffer.from("factory-passphrase")));
  }
  assert.notEqual(keys[0], imageKey);
  assert.notEqual(keys[1], imageKey);
  assert.notEqual(keys[0], keys[1]);
});

test("refusals before any write: bad config, missing TPM, missing PIN file, partition too small for the shift, posture; continue-unencrypted exits 9", async (t) => {
  if (!needTools(t, "swtpm", "mkfs.ext4", "resize2fs", "e2fsck")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const { path: img } = makeExt4(dir, "root.img", 16);
  const base = { name: "root", device: img, trust: { type: "tpm2", pcrs: [7], device: tpm.device }, encrypt_plain: true, reduce_device_size: "4M", posture: NO_POSTURE };
  const before = readFileSync(img);
  const cases: [string, Record<string, unknown>, number, RegExp][] = [
    ["bad config", { ...base, trust: { type: "tpm2", pcrs: ["7"] } }, 2, /^trustvol: provision\.json: volumes\[0\]\.trust\.pcrs: expected a list of PCR indexes 0–23; /],
    ["missing TPM", { ...base, trust: { type: "tpm2", device: join(dir, "no-tpm") } }, 5, /^trustvol: volumes\[0\]\.trust: no TPM \(/],
    ["missing PIN file", { ...base, trust: { type: "tpm2", device: tpm.device, pin: { file: join(dir, "no-pin") } } }, 5, /^trustvol: volumes\[0\]\.trust\.pin: .*no-pin cannot be read; /],
    ["too small for the shift", { ...base, reduce_device_size: "14M" }, 1, /^trustvol: volumes\[0\]: the partition is too small for the shift: /],
    ["plain, encrypt_plain false", { ...base, encrypt_plain: false }, 4, /^trustvol: volumes\[0\]: .* is not encrypted and encrypt_plain is false; /],
    ["secure boot required", { ...base, posture: { ...NO_POSTURE, secure_boot: "require" } }, 3, /^trustvol: volumes\[0\]\.posture\.secure_boot: Secure Boot is /],
    ["missing fleet key", { ...base, recovery: { escrow: { public_key: join(dir, "none.pem"), output: join(dir, "r.json") } } }, 5, /^trustvol: volumes\[0\]\.recovery\.escrow\.public_key: /],
  ];
  for (const [what, vol, code, re] of cases) {
    const cfg = writeConfig(dir, [vol]);
    const r = trustvol(["provision", "--config", cfg, "--no-open"]);
    assert.equal(r.status, code, `${what}: ${r.stderr}`);
    assert.match(r.stderr, re, what);
    assert.equal(r.stderr.trim().split("\n").length, 1, `${what}: one line: ${r.stderr}`);
    assert.ok(readFileSync(img).equals(before), `${what}: device unchanged`);
  }
  // on_failure: continue-unencrypted: the same missing TPM leaves the plain device as it is and exits 9
  const cfg = writeConfig(dir, [{ ...base, trust: { type: "tpm2", device: join(dir, "no-tpm") }, on_failure: "continue-unencrypted" }]);
  const r = trustvol(["provision", "--config", cfg, "--no-open", "--json"]);
  assert.equal(r.status, 9, r.stderr);
  // the report is the one JSON document (an outcome, not an error document); the reason is one line on stderr
  const rep9 = JSON.parse(r.stdout);
  assert.equal(rep9.version, 1);
  assert.equal(rep9.error, undefined);
  assert.equal(rep9.exit_code, 9);
  assert.equal(rep9.dry_run, false);
  assert.match(rep9.volumes[0].unencrypted, /no TPM/);
  assert.match(r.stderr, /^trustvol: left unencrypted as configured \(on_failure: continue-unencrypted\): root$/m);
  assert.ok(readFileSync(img).equals(before), "continue-unencrypted: device unchanged");
  // the system stage refuses a volume the initramfs stage has not provisioned
  const r2 = trustvol(["provision", "--config", writeConfig(dir, [base]), "--stage", "system"]);
  assert.equal(r2.status, 7, r2.stderr);
  assert.match(r2.stderr, /is not provisioned yet \(plain\)/);
});

test("PKCS#11 (SoftHSM): token `lmp` and RSA-2048 key `luks` created when absent, factory LUKS volume enrolled, factory slot wiped", async (t) => {
  if (!needSoftHsm(t, "softhsm2-util", "cryptsetup")) return;
  const hsm = makeSoftHsm();
  t.after(() => hsm.cleanup());
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  // SoftHSM always offers one uninitialised slot: that is where `lmp` goes.
  const img = join(dir, "disk.img");
  const factory = join(dir, "factory.key");
  writeFileSync(factory, "factory-passphrase", { mode: 0o600 });
  run("truncate", ["-s", "8M", img]);
  let r = trustvol(["format", "--key-file", factory, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--offset", "2097152", img]);
  if (r.status !== 0) r = trustvol(["format", "--key-file", factory, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img]);
  assert.equal(r.status, 0, r.stderr);
  const vol = { name: "data", device: img, trust: { type: "pkcs11", module: hsm.modulePath, create: true, pin: { file: hsm.pinFile("1234") }, so_pin: { file: hsm.pinFile("5678") } }, factory: { key_file: factory }, posture: NO_POSTURE };
  const cfg = writeConfig(dir, [vol]);
  r = trustvol(["provision", "--config", cfg, "--no-open", "--json"], { env: hsm.env });
  assert.equal(r.status, 0, r.stderr);
  const rep = JSON.parse(r.stdout).volumes[0];
  assert.equal(rep.state_before, "factory");
  assert.equal(rep.state, "provisioned");
  const dump = run("cryptsetup", ["luksDump", img]).stdout.toString();
  assert.match(dump, /systemd-pkcs11/);
  assert.match(dump, /pkcs11-uri:\s+pkcs11:token=lmp;object=luks/);
  const toks = run("softhsm2-util", ["--show-slots"], { env: hsm.env }).stdout.toString();
  assert.match(toks, /Label:\s+lmp/);
  await assert.rejects(volumeKey(img, {}, Buffer.from("factory-passphrase")));
  assert.match(await volumeKey(img, { pin: Buffer.from("1234"), pkcs11Module: hsm.modulePath }), /^[0-9a-f]+$/);
  // second run: nothing to do; a second boot does not re-create the token
  r = trustvol(["provision", "--config", cfg, "--no-open", "--json"], { env: hsm.env });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout).volumes[0].steps, []);
});

test("a token enrolled by hand beside the factory slot (state `enrolled`): provision removes the factory slot; recovery show-once prints the key once", async (t) => {
  if (!needTools(t, "swtpm", "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const img = join(dir, "disk.img");
  const factory = join(dir, "factory.key");
  writeFileSync(factory, "factory-passphrase", { mode: 0o600 });
  run("truncate", ["-s", "8M", img]);
  let r = trustvol(["format", "--key-file", factory, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--offset", "2097152", img]);
  assert.equal(r.status, 0, r.stderr);
  r = trustvol(["enroll", "tpm2", img, "--tpm2-device", tpm.device, "--pcrs", "7", "--key-file", factory]);
  assert.equal(r.status, 0, r.stderr);
  const vol = { name: "data", device: img, trust: { type: "tpm2", device: tpm.device }, factory: { key_file: factory }, recovery: "show-once", posture: NO_POSTURE };
  assert.equal((await stateOf(img, vol)).state, "enrolled");
  const cfg = writeConfig(dir, [vol]);
  r = trustvol(["provision", "--config", cfg, "--no-open", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout).volumes[0].steps, ["wipe-factory", "enroll-recovery"]);
  const key = /recovery key \(shown once, write it down now\):\n\s+(\S+)\n/.exec(r.stderr)?.[1];
  assert.ok(key, r.stderr);
  assert.ok(!r.stdout.includes(key!), "the key is not in the JSON report");
  assert.equal(run("cryptsetup", ["open", "--test-passphrase", "--key-file", "-", img], { input: key, check: false }).status, 0);
  assert.notEqual(run("cryptsetup", ["open", "--test-passphrase", "--key-file", factory, img], { check: false }).status, 0);
  r = trustvol(["provision", "--config", cfg, "--no-open", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /recovery key/, "shown once");
});

test("show-once is never shown by the system stage (its output goes to the journal): deferred to the next initramfs stage, the backup still written; a backup under a late (nofail) fstab mount waits for it", async (t) => {
  if (!needTools(t, "swtpm")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const img = join(dir, "disk.img");
  const factory = join(dir, "factory.key");
  writeFileSync(factory, "factory-passphrase", { mode: 0o600 });
  run("truncate", ["-s", "8M", img]);
  assert.equal(trustvol(["format", "--key-file", factory, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--offset", "2097152", img]).status, 0);
  const { provision } = await import("../../src/ops/provision.js");
  const vol = { name: "data", device: img, trust: { type: "tpm2", device: tpm.device }, factory: { key_file: factory }, header_backup: join(dir, "hdr"), posture: NO_POSTURE };
  let r = await provision({ config: parseProvisionConfig({ volumes: [vol] as unknown[] }), stage: "initramfs", open: false, doctor: false });
  assert.equal(r.volumes[0]!.state, "provisioned");
  const shown: string[] = [];
  const cfg = parseProvisionConfig({ volumes: [{ ...vol, recovery: "show-once" }] as unknown[] });
  r = await provision({ config: cfg, stage: "system", doctor: false, showRecoveryKey: (_n, k) => void shown.push(k.toString()) });
  assert.equal(r.volumes[0]!.state, "needs-recovery");
  assert.deepEqual(r.volumes[0]!.steps, ["header-backup"]);
  assert.equal(shown.length, 0);
  r = await provision({ config: cfg, stage: "initramfs", open: false, doctor: false, showRecoveryKey: (_n, k) => void shown.push(k.toString()) });
  assert.deepEqual(r.volumes[0]!.steps, ["enroll-recovery"]);
  assert.equal(shown.length, 1);
  assert.match(await volumeKey(img, {}, Buffer.from(shown[0]!)), /^[0-9a-f]+$/);
  r = await provision({ config: cfg, stage: "system", doctor: false });
  assert.deepEqual(r.volumes[0]!.steps, ["header-backup"], "the backup follows the new header");
  // A backup that cannot be written (here: no such directory; a full disk the same way) names the file, changes nothing.
  const before = readFileSync(img);
  const nowhere = join(dir, "missing-dir", "root.hdr");
  await assert.rejects(provision({ config: parseProvisionConfig({ volumes: [{ ...vol, header_backup: nowhere }] as unknown[] }), stage: "system", doctor: false }), (e: unknown) => e instanceof TrustvolError && e.oneLine().startsWith(`cannot write the header backup ${nowhere}: `) && !e.oneLine().includes("\n"));
  assert.deepEqual(readFileSync(img), before);
  // A backup under a late fstab mount (nofail /boot, not ordered before local-fs.target) waits for it; still not
  // mounted at the deadline: one line, nothing written underneath the mount point, the next boot tries again.
  const boot = join(dir, "boot");
  mkdirSync(boot);
  const fstab = join(dir, "fstab"), mountinfo = join(dir, "mountinfo");
  writeFileSync(fstab, `# test\nUUID=0000 / ext4 defaults 0 1\nLABEL=boot ${boot} vfat defaults,nofail 0 2\n`);
  writeFileSync(mountinfo, "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n");
  const underBoot = join(boot, "root.hdr");
  const mounts = { fstabPath: fstab, mountinfoPath: mountinfo, timeoutMs: 300, pollMs: 50 };
  const late = parseProvisionConfig({ volumes: [{ ...vol, header_backup: underBoot }] as unknown[] });
  await assert.rejects(provision({ config: late, stage: "system", doctor: false, mounts }), (e: unknown) => e instanceof TrustvolError && e.oneLine().startsWith(`cannot write the header backup ${underBoot}: ${boot} (from /etc/fstab) is not mounted`) && !e.oneLine().includes("\n"));
  assert.equal(existsSync(underBoot), false, "nothing written under the mount point");
  assert.deepEqual(readFileSync(img), before);
  // mounted while it waits: written
  setTimeout(() => writeFileSync(mountinfo, `22 1 254:1 / / rw - ext4 /dev/vda1 rw\n40 22 254:2 / ${boot} rw - vfat /dev/vda2 rw\n`), 100);
  r = await provision({ config: late, stage: "system", doctor: false, mounts: { ...mounts, timeoutMs: 5000 } });
  assert.deepEqual(r.volumes[0]!.steps, ["header-backup"]);
  assert.equal(statSync(underBoot).mode & 0o777, 0o600);
});

test("config: a PKCS#11 URI names the token and key", () => {
  const c = parseProvisionConfig({ volumes: [{ name: "r", device: "/d", trust: { type: "pkcs11", uri: "pkcs11:token=lmp;object=luks", pin: "prompt" } }] });
  assert.deepEqual(c.volumes[0]!.trust, { type: "pkcs11", token_label: "lmp", key_label: "luks", create: false, pin: "prompt" });
  assert.throws(() => parseProvisionConfig({ volumes: [{ name: "r", device: "/d", trust: { type: "pkcs11", uri: "pkcs11:token=lmp", pin: "prompt" } }] }), /volumes\[0\]\.trust\.uri: must name the token and the key/);
  assert.throws(() => parseProvisionConfig({ volumes: [{ name: "r", device: "/d", trust: { type: "pkcs11", uri: "http://x", pin: "prompt" } }] }), /volumes\[0\]\.trust\.uri: /);
});

test("escrow file: RSA-OAEP-SHA256 to the fleet key, 0600; another key or a damaged file is refused in one line", async () => {
  const { writeEscrow, decryptEscrow, loadEscrowPublicKey } = await import("../../src/provision/escrow.js");
  const { dir, cleanup } = tmpDir();
  try {
    const fleet = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const other = generateKeyPairSync("rsa", { modulusLength: 2048 });
    writeFileSync(join(dir, "fleet.pem"), fleet.publicKey.export({ type: "spki", format: "pem" }));
    const key = loadEscrowPublicKey(join(dir, "fleet.pem"));
    writeEscrow(join(dir, "e.json"), key, Buffer.from("cbdefghi-jklnrtuv"), { volumeUuid: "u", volume: "root" });
    assert.equal(statSync(join(dir, "e.json")).mode & 0o777, 0o600);
    const text = readFileSync(join(dir, "e.json"), "utf8");
    assert.ok(!text.includes("cbdefghi"));
    const pem = (k: typeof fleet) => Buffer.from(k.privateKey.export({ type: "pkcs8", format: "pem" }) as string);
    assert.equal(decryptEscrow(text, pem(fleet)).recoveryKey.toString(), "cbdefghi-jklnrtuv");
    assert.throws(() => decryptEscrow(text, pem(other)), (e: unknown) => e instanceof TrustvolError && e.code === "ENOKEY" && /encrypted to another key/.test(e.message));
    const j = JSON.parse(text);
    j.ciphertext = Buffer.alloc(256, 1).toString("base64");
    assert.throws(() => decryptEscrow(JSON.stringify(j), pem(fleet)), (e: unknown) => e instanceof TrustvolError && e.code === "ECORRUPT");
    writeFileSync(join(dir, "ec.pem"), generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "pem" }));
    assert.throws(() => loadEscrowPublicKey(join(dir, "ec.pem")), /is not an RSA public key of at least 2048 bits/);
  } finally {
    cleanup();
  }
});
