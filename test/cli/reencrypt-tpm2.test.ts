// Key rotation of a TPM-enrolled volume, unattended: `reencrypt --token-only` gets the keyslot passphrase from the
// systemd-tpm2 token, re-creates the keyslot for the new volume key, and the device stays TPM-enrolled.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { startSwtpm } from "../helpers/swtpm.js";

test("TPM-enrolled volume: reencrypt --token-only rotates the volume key; the token still unlocks; the old key is gone", async (t) => {
  if (!needTools(t, "swtpm", "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const img = join(dir, "disk.img");
  const factory = join(dir, "factory");
  writeFileSync(factory, "factory-passphrase", { mode: 0o600 });
  writeFileSync(img, Buffer.alloc(20 << 20)); // format refuses a missing path
  let r = await trustvolInProcess(["format", "--key-file", factory, "--key-slot", "31", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img]);
  assert.equal(r.status, 0, r.stderr);
  run("truncate", ["-s", "20M", img]);
  r = await trustvolInProcess(["enroll", "tpm2", img, "--tpm2-device", tpm.device, "--pcrs", "7", "--key-file", factory, "--wipe-slot", "password"]);
  assert.equal(r.status, 0, r.stderr);
  const digestBefore = JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", img]).stdout.toString()).digests["0"].digest;
  r = await trustvolInProcess(["reencrypt", img, "--token-only", "--tpm2-device", tpm.device, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout) as { state: string; keyslots: number[] };
  assert.equal(res.state, "finished");
  const m = JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", img]).stdout.toString());
  assert.deepEqual(Object.keys(m.keyslots), res.keyslots.map(String));
  assert.deepEqual(Object.values(m.tokens).map((x) => (x as { keyslots: string[] }).keyslots), [res.keyslots.map(String)]);
  assert.notEqual(Object.values(m.digests).map((d) => (d as { digest: string }).digest)[0], digestBefore, "a new volume key");
  r = await trustvolInProcess(["unlock", "--test", "--token-only", "--tpm2-device", tpm.device, "--json", img]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).keyslot, res.keyslots[0]);
});

test("TPM-enrolled volume with a recovery passphrase: reencrypt --key-file keeps both keyslots, the token's through the TPM", async (t) => {
  if (!needTools(t, "swtpm", "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const img = join(dir, "disk.img");
  const recovery = join(dir, "recovery");
  writeFileSync(recovery, "recovery-passphrase", { mode: 0o600 });
  writeFileSync(img, Buffer.alloc(20 << 20));
  let r = await trustvolInProcess(["format", "--key-file", recovery, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img]);
  assert.equal(r.status, 0, r.stderr);
  r = await trustvolInProcess(["enroll", "tpm2", img, "--tpm2-device", tpm.device, "--pcrs", "7", "--key-file", recovery]);
  assert.equal(r.status, 0, r.stderr);
  // (before, a key file turned the tokens off: the TPM's keyslot did "not open with this passphrase" unless -S dropped it)
  r = await trustvolInProcess(["reencrypt", img, "--key-file", recovery, "--tpm2-device", tpm.device, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout) as { state: string; keyslots: number[] };
  assert.equal(res.keyslots.length, 2, "both keyslots carried over");
  const m = JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", img]).stdout.toString());
  assert.equal(Object.keys(m.keyslots).length, 2);
  assert.equal(Object.keys(m.tokens).length, 1);
  r = await trustvolInProcess(["unlock", "--test", "--token-only", "--tpm2-device", tpm.device, "--json", img]);
  assert.equal(r.status, 0, r.stderr);
  run("cryptsetup", ["open", "--test-passphrase", "--key-file", recovery, img]);
});
