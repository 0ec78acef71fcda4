// Recovery keys as systemd-cryptenroll 252 makes them: the way back when the TPM or token is gone.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { formatRecoveryKey, isRecoveryKey } from "../../src/tokens/systemd-recovery.js";

test("recovery key format: 64 modhex characters in 8 groups", () => {
  const k = formatRecoveryKey(Buffer.from(Array.from({ length: 32 }, (_, i) => i * 8)));
  // bytes 0x00,0x08,0x10,0x18,... → nibbles through modhex "cbdefghijklnrtuv" (0→c, 1→b, 8→j), high nibble first
  assert.equal(k.toString(), "cccjbcbj-dcdjecej-fcfjgcgj-hchjicij-jcjjkckj-lcljncnj-rcrjtctj-ucujvcvj");
  assert.ok(isRecoveryKey(k));
  assert.ok(!isRecoveryKey(Buffer.from("not-a-key")));
});

test("enroll recovery: cryptsetup opens with the printed key; systemd-cryptenroll's key opens with trustvol", async (t) => {
  if (!needTools(t, "cryptsetup", "systemd-cryptenroll")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const img = join(dir, "v.img"), pw = join(dir, "pw");
  writeFileSync(pw, "factory", { mode: 0o600 });
  run("truncate", ["-s", "20M", img]);
  run("cryptsetup", ["luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", pw, img]);
  let r = trustvol(["enroll", "recovery", img, "--key-file", pw, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout);
  assert.ok(isRecoveryKey(Buffer.from(res.recovery_key)), res.recovery_key);
  assert.equal(run("cryptsetup", ["token", "export", "--token-id", String(res.token), img]).stdout.toString().trim(), `{"type":"systemd-recovery","keyslots":["${res.keyslot}"]}`);
  run("cryptsetup", ["open", "--test-passphrase", "--key-slot", String(res.keyslot), "--key-file", "-", img], { input: res.recovery_key });
  assert.match(run("cryptsetup", ["luksDump", img]).stdout.toString(), /PBKDF:\s+pbkdf2\s+Hash:\s+sha512\s+Iterations: 1000/);
  // --out: 0600 file, nothing printed
  r = trustvol(["enroll", "recovery", img, "--key-file", pw, "--out", join(dir, "rk.txt")]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "");
  assert.equal(statSync(join(dir, "rk.txt")).mode & 0o777, 0o600);
  // The file is a key file as written: no trailing newline, unlocks with trustvol and cryptsetup.
  assert.match(readFileSync(join(dir, "rk.txt"), "utf8"), /^[cbdefghijklnrtuv-]+$/);
  const viaFile = trustvol(["unlock", "--test", "--key-file", join(dir, "rk.txt"), img]);
  assert.equal(viaFile.status, 0, viaFile.stderr);
  run("cryptsetup", ["open", "--test-passphrase", "--key-file", join(dir, "rk.txt"), img]);
  // systemd's recovery key unlocks through trustvol
  const sd = run("systemd-cryptenroll", [`--unlock-key-file=${pw}`, "--recovery-key", img]).stdout.toString().trim();
  assert.ok(isRecoveryKey(Buffer.from(sd)));
  // systemd's key decodes to 32 bytes that our formatter turns back into the same string
  const M = "cbdefghijklnrtuv";
  const hex = sd.replace(/-/g, "").split("").map((c) => M.indexOf(c).toString(16)).join("");
  assert.equal(formatRecoveryKey(Buffer.from(hex, "hex")).toString(), sd);
  r = trustvol(["unlock", "--test", "--json", "--key-file", "-", img], { input: sd });
  assert.equal(r.status, 0, r.stderr);
});
