// The LmP first-boot flow with a PKCS#11 token, through the CLI only: init the token, generate the key,
// enroll it (wiping the factory passphrase), then unlock with trustvol and with systemd's own cryptsetup plugin.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { run } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { makeSoftHsm, needSoftHsm } from "../helpers/softhsm.js";

test("first boot with a PKCS#11 token: init, keygen, enroll --wipe-slot password, unattended unlock (trustvol and systemd plugin)", async (t) => {
  if (!needSoftHsm(t, "cryptsetup", "softhsm2-util")) return;
  const h = makeSoftHsm();
  t.after(() => h.cleanup());
  const env = h.env;
  const so = h.pinFile("87654321"), pin = h.pinFile("1234");
  let r = trustvol(["pkcs11", "init-token", "--module", h.modulePath, "--label", "lmp", "--so-pin-file", so, "--pin-file", pin, "--json"], { env });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).uri, "pkcs11:token=lmp");
  r = trustvol(["pkcs11", "keygen", "--uri", "pkcs11:token=lmp", "--pin-file", pin, "--module", h.modulePath], { env });
  assert.equal(r.status, 0, r.stderr);

  const img = join(h.dir, "disk.img");
  const factory = join(h.dir, "factory");
  writeFileSync(factory, "factory-passphrase", { mode: 0o600 });
  run("truncate", ["-s", "20M", img]);
  r = trustvol(["format", "--key-file", factory, "--key-slot", "31", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img], { env });
  assert.equal(r.status, 0, r.stderr);
  run("truncate", ["-s", "20M", img]);
  r = trustvol(["enroll", "pkcs11", img, "--uri", "pkcs11:token=lmp;object=luks", "--pin-file", pin, "--module", h.modulePath, "--key-file", factory, "--wipe-slot", "password", "--json"], { env });
  assert.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout);
  assert.equal(res.keyslot, 0);
  assert.deepEqual(res.wiped_keyslots, [31]);

  const dump = run("cryptsetup", ["luksDump", img]).stdout.toString();
  assert.match(dump, /systemd-pkcs11/);
  assert.match(dump, /pkcs11-uri:\s+pkcs11:token=lmp;object=luks/);
  assert.notEqual(run("cryptsetup", ["open", "--test-passphrase", "--key-file", factory, img], { check: false }).status, 0, "factory passphrase is gone");

  // trustvol unlocks through the token; wrong PIN and missing token fail with clear one-liners
  r = trustvol(["unlock", "--test", "--token-only", "--pin-file", pin, "--pkcs11-module", h.modulePath, "--json", img], { env });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { version: 1, unlocked: true, keyslot: 0, token: 0, uuid: JSON.parse(trustvol(["dump", "--json", img]).stdout).uuid });
  const before = readFileSync(img);
  r = trustvol(["unlock", "--test", "--token-only", "--pin-file", "-", "--pkcs11-module", h.modulePath, img], { env, input: "9999" });
  assert.equal(r.status, 3, r.stderr);
  assert.match(r.stderr, /^trustvol: .*PIN/);
  assert.equal(r.stderr.trim().split("\n").length, 1);
  assert.ok(readFileSync(img).equals(before));

  // systemd's plugin opens what we enrolled (PIN on stdin)
  const sd = run("cryptsetup", ["open", "--test-passphrase", "--token-only", "-v", img], { env, input: "1234\n", check: false, timeoutMs: 60_000 });
  assert.equal(sd.status, 0, sd.stderr + sd.stdout.toString());
  assert.match(sd.stdout.toString(), /Key slot 0 unlocked/);
});
