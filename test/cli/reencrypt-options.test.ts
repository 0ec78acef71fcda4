// cryptsetup reencrypt options a cryptsetup user types (found missing by a new-user walkthrough): --hash and
// --pbkdf-parallel for the new keyslots, --type luks2 with --encrypt (accepted; LUKS1 refused in one line).
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { tmpDir, needTools, run } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";

test("reencrypt --hash / --pbkdf-parallel set the new keyslots' KDF; --type luks2 is accepted, luks1 refused", (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-reenc-opts-");
  t.after(cleanup);
  const pw = join(dir, "pw");
  writeFileSync(pw, "pw", { mode: 0o600 });
  const rot = join(dir, "rot.img");
  run("truncate", ["-s", "20M", rot]);
  run("cryptsetup", ["luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", pw, rot]);
  const r = trustvol(["reencrypt", "-q", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--hash", "sha512", "--key-file", pw, rot]);
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", rot]).stdout.toString());
  assert.deepEqual(Object.values<any>(j.keyslots).map((k) => k.kdf.hash), ["sha512"]);
  const enc = join(dir, "enc.img");
  writeFileSync(enc, randomBytes(24 << 20));
  const e = trustvol(["reencrypt", "--encrypt", "--type", "luks2", "--reduce-device-size", "8M", "-q", "--pbkdf", "argon2id", "--pbkdf-parallel", "1", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4", "--key-file", pw, enc]);
  assert.equal(e.status, 0, e.stderr);
  const je = JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", enc]).stdout.toString());
  assert.deepEqual(Object.values<any>(je.keyslots).map((k) => k.kdf.cpus), [1]);
  const l1 = trustvol(["reencrypt", "--encrypt", "--type", "luks1", "--reduce-device-size", "8M", "-q", "--key-file", pw, enc]);
  assert.equal(l1.status, 2);
  assert.equal(l1.stderr.trim().split("\n").length, 1, l1.stderr);
});
