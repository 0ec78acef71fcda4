// The spellings people bring from systemd-cryptenroll and cryptsetup work (hidden from help), one PKCS#11 option name
// works everywhere, and `help <command> <subcommand>` shows the subcommand's help.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { writeFileSync, truncateSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpDir } from "../helpers/tools.js";
import { trustvol, TRUSTVOL_BIN } from "../helpers/cli.js";

test("aliases: --unlock-key-file, --tpm2-pcrs (parsed like --pcrs), --pkcs11-token-uri satisfies the required --uri", (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const key = join(dir, "key");
  writeFileSync(key, "pass", { mode: 0o600 });
  const img = join(dir, "v.img");
  writeFileSync(img, "");
  truncateSync(img, 20 << 20); // format refuses a path that does not exist
  assert.equal(trustvol(["format", "--key-file", key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img]).status, 0);
  let r = trustvol(["enroll", "recovery", img, "--unlock-key-file", key, "--out", join(dir, "rk")]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(trustvol(["unlock", "--test", img, "--key-file", join(dir, "rk")]).status, 0);
  r = trustvol(["enroll", "tpm2", img, "--tpm2-pcrs", "99", "--unlock-key-file", key]);
  assert.equal(r.status, 2);
  assert.equal(r.stderr, 'trustvol: --pcrs: "99" is not a PCR index (0..23) or PCR:BANK=HEX; e.g. --pcrs 7:sha256=<64 hex digits>,11\n');
  r = trustvol(["enroll", "pkcs11", join(dir, "missing.img"), "--pkcs11-token-uri", "pkcs11:token=x", "--unlock-key-file", key]);
  assert.equal(r.status, 5, r.stderr); // past the required-option check: the device is what is missing
  r = trustvol(["identity", "show", "--pkcs11-uri", "pkcs11:token=x", "--pkcs11-module", join(dir, "nope.so")]);
  assert.doesNotMatch(r.stderr, /required option|unknown option/, r.stderr);
});

test("help enroll tpm2 shows the subcommand; aliases stay out of help; a closed pipe is not an error", () => {
  let r = trustvol(["help", "enroll", "tpm2"]);
  assert.equal(r.status, 0);
  assert.match(r.stdout, /^Usage: trustvol enroll tpm2 \[options\] <device>/);
  assert.match(r.stdout, /--pcrs <list>/);
  assert.doesNotMatch(r.stdout, /--tpm2-pcrs|--unlock-key-file/);
  r = trustvol(["format", "--help"]);
  assert.match(r.stdout, /-q, --batch-mode/);
  assert.doesNotMatch(r.stdout, /--batch\b(?!-)/);
  // `true` reads nothing and exits: the help's writes hit a closed pipe.
  const p = spawnSync("sh", ["-c", `'${process.execPath}' '${TRUSTVOL_BIN}' help verity | true`], { encoding: "utf8" });
  assert.doesNotMatch(p.stderr, /EPIPE/);
});
