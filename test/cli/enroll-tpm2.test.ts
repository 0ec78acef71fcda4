// The TPM flow through the CLI: factory passphrase → enroll tpm2 (PCR 7) with --wipe-slot → "reboot" → unattended
// unlock; a changed boot chain, a PIN, clevis both ways, and the systemd/clevis reference tools as oracles.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { startSwtpm } from "../helpers/swtpm.js";

function fresh(dir: string, name: string): { img: string; factory: string } {
  const img = join(dir, name);
  const factory = join(dir, `${name}.factory`);
  writeFileSync(factory, "factory-passphrase", { mode: 0o600 });
  run("truncate", ["-s", "20M", img]);
  const r = trustvol(["format", "--key-file", factory, "--key-slot", "31", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img]);
  assert.equal(r.status, 0, r.stderr);
  run("truncate", ["-s", "20M", img]);
  return { img, factory };
}

test("enroll tpm2 (PCR 7), wipe the factory passphrase, reboot, unlock unattended; PCR change refused", async (t) => {
  if (!needTools(t, "swtpm", "cryptsetup", "tpm2_pcrextend")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const { img, factory } = fresh(dir, "disk.img");
  let r = trustvol(["enroll", "tpm2", img, "--tpm2-device", tpm.device, "--pcrs", "7", "--key-file", factory, "--wipe-slot", "password", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { version: 1, keyslot: 0, token: 0, wiped_keyslots: [31] });
  const dump = run("cryptsetup", ["luksDump", img]).stdout.toString();
  assert.match(dump, /systemd-tpm2/);
  assert.match(dump, /PBKDF:\s+pbkdf2\s+Hash:\s+sha512\s+Iterations: 1000/);
  assert.notEqual(run("cryptsetup", ["open", "--test-passphrase", "--key-file", factory, img], { check: false }).status, 0);

  await tpm.restart(); // reboot: PCRs reset to the same boot state
  r = trustvol(["unlock", "--test", "--token-only", "--tpm2-device", tpm.device, "--json", img]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).keyslot, 0);

  const before = readFileSync(img);
  run("tpm2_pcrextend", ["7:sha256=" + "ab".repeat(32)], { env: tpm.env });
  r = trustvol(["unlock", "--test", "--token-only", "--tpm2-device", tpm.device, img]);
  assert.equal(r.status, 3, r.stderr);
  assert.match(r.stderr, /^trustvol: PCR 7 changed since enrollment: the boot chain differs; use the recovery key and re-enroll\n$/);
  assert.ok(readFileSync(img).equals(before), "volume untouched");

  await tpm.restart();
  assert.equal(trustvol(["unlock", "--test", "--token-only", "--tpm2-device", tpm.device, img]).status, 0);
  // No TPM at all: clear error
  r = trustvol(["unlock", "--test", "--token-only", "--tpm2-device", join(dir, "no-such-tpm"), img]);
  assert.notEqual(r.status, 0);
  assert.equal(r.stderr.trim().split("\n").length, 1);
  assert.match(r.stderr, /^trustvol: /);
});

test("enroll tpm2 --with-pin: right PIN unlocks, wrong PIN refused without locking the TPM out", async (t) => {
  if (!needTools(t, "swtpm")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const { img, factory } = fresh(dir, "pin.img");
  writeFileSync(join(dir, "pin"), "2468", { mode: 0o600 });
  let r = trustvol(["enroll", "tpm2", img, "--tpm2-device", tpm.device, "--with-pin", "--pin-file", join(dir, "pin"), "--key-file", factory]);
  assert.equal(r.status, 0, r.stderr);
  r = trustvol(["unlock", "--test", "--token-only", "--tpm2-device", tpm.device, "--pin-file", join(dir, "pin"), img]);
  assert.equal(r.status, 0, r.stderr);
  r = trustvol(["unlock", "--test", "--token-only", "--tpm2-device", tpm.device, "--pin-file", "-", img], { input: "1111" });
  assert.equal(r.status, 3, r.stderr);
  assert.match(r.stderr, /PIN/);
  r = trustvol(["unlock", "--test", "--token-only", "--tpm2-device", tpm.device, "--pin-file", join(dir, "pin"), img]);
  assert.equal(r.status, 0, `still unlocks after one wrong PIN: ${r.stderr}`);
});

test("systemd-cryptenroll's TPM2 token unlocks with trustvol; trustvol's clevis token reads back with clevis luks pass", async (t) => {
  if (!needTools(t, "swtpm", "systemd-cryptenroll", "cryptsetup", "clevis")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const { img, factory } = fresh(dir, "sd.img");
  run("systemd-cryptenroll", [`--unlock-key-file=${factory}`, `--tpm2-device=${tpm.device}`, "--tpm2-pcrs=7", img], { env: tpm.env });
  let r = trustvol(["unlock", "--test", "--token-only", "--tpm2-device", tpm.device, "--json", img]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).token, 0);

  r = trustvol(["enroll", "clevis", img, "--tpm2-device", tpm.device, "--pcrs", "7", "--key-file", factory, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const { keyslot, token } = JSON.parse(r.stdout);
  const pass = run("clevis", ["luks", "pass", "-d", img, "-s", String(keyslot)], { env: tpm.env }).stdout;
  assert.ok(pass.length > 20);
  run("cryptsetup", ["open", "--test-passphrase", "--key-slot", String(keyslot), "--key-file", "-", img], { input: pass });
  r = trustvol(["unlock", "--test", "--token-id", String(token), "--tpm2-device", tpm.device, "--json", img]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).keyslot, keyslot);
});

test("without --token-only, unlock tries tokens first, then falls back to a passphrase (cryptsetup's order)", async (t) => {
  if (!needTools(t, "swtpm", "tpm2_pcrextend")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const { img, factory } = fresh(dir, "both.img");
  assert.equal(trustvol(["enroll", "tpm2", img, "--tpm2-device", tpm.device, "--key-file", factory]).status, 0);
  const env = { TRUSTVOL_TPM2_DEVICE: tpm.device };
  let r = trustvol(["unlock", "--test", "--json", img], { env });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).token, 0, "the TPM token opened it with nobody typing");
  run("tpm2_pcrextend", ["7:sha256=" + "ef".repeat(32)], { env: tpm.env });
  r = trustvol(["unlock", "--test", "--json", img], { env });
  assert.equal(r.status, 3, "no passphrase to fall back to: the token's reason is reported");
  assert.match(r.stderr, /PCR 7 changed/);
  r = trustvol(["unlock", "--test", "--json", "--key-file", "-", img], { env, input: "factory-passphrase" });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).keyslot, 31, "the factory passphrase still works when the TPM refuses");
});

test("--wipe-slot is validated before anything is enrolled, and applied in the same header commit", async (t) => {
  if (!needTools(t, "swtpm")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const { img, factory } = fresh(dir, "w.img");
  const before = readFileSync(img);
  for (const bad of ["bogus", "31,9"]) {
    const r = trustvol(["enroll", "tpm2", img, "--tpm2-device", tpm.device, "--key-file", factory, "--wipe-slot", bad]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /^trustvol: --wipe-slot: .*nothing was changed\n$/);
    assert.ok(readFileSync(img).equals(before), `--wipe-slot ${bad}: image unchanged`);
  }
  const r = trustvol(["enroll", "tpm2", img, "--tpm2-device", tpm.device, "--key-file", factory, "--wipe-slot", "31", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout).wiped_keyslots, [31]);
});
