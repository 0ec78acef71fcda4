// The README's main job must work on a fresh machine: `trustvol demo` end to end (private swtpm when no TPM).
import { test } from "node:test";
import assert from "node:assert/strict";
import { needTools } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";

test("trustvol demo: build, encrypt, seal to the TPM, reboot, unattended unlock, PCR change refused", (t) => {
  if (!needTools(t, "mkfs.ext4", "debugfs", "cryptsetup", "swtpm")) return;
  const r = trustvol(["demo"]);
  assert.equal(r.status, 0, r.stderr + r.stdout);
  for (const re of [
    /plaintext visible in the encrypted image\? no/,
    /cryptsetup open --test-passphrase: accepted/,
    /systemd-tpm2 token/,
    /cryptsetup with the old factory passphrase: refused/,
    /unlocked unattended through token \d+ \(systemd-tpm2\)/,
    /\/etc\/device\.conf read back: "device-secret-[0-9a-f]+" \(matches\)/,
    /decrypted image identical to the original: yes/,
    /refused: PCR 7 changed since enrollment/,
  ])
    assert.match(r.stdout, re);
  assert.doesNotMatch(r.stdout, /bug!|MISMATCH|\bNO\b/);
});
