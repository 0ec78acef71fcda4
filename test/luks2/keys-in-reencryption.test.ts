// Keyslot and token changes on a device marked for re-encryption (issue 10). Measured with cryptsetup 2.6.1 on an
// image from `cryptsetup reencrypt --init-only`: luksAddKey, luksChangeKey, token import/add and config refuse
// ("Operation incompatible with device marked for LUKS2 reencryption"), file unchanged; luksKillSlot/luksRemoveKey
// remove any keyslot, even the reencrypt keyslot or the new key's only keyslot. trustvol refuses the same
// operations with a one-line error + hint, and removal only where the run could no longer be finished.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { tmpDir, needTools, run } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";

const sha = (p: string) => createHash("sha256").update(readFileSync(p)).digest("hex");
const FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

test("key add/change/remove and token import on a device mid-re-encryption: refused like cryptsetup, file unchanged", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-keys-reenc-");
  t.after(cleanup);
  const img = join(dir, "img"), pw = join(dir, "pw"), pw2 = join(dir, "pw2"), pw3 = join(dir, "pw3"), tok = join(dir, "tok.json");
  writeFileSync(pw, "pw", { mode: 0o600 });
  writeFileSync(pw2, "pw2", { mode: 0o600 });
  writeFileSync(pw3, "pw3", { mode: 0o600 });
  writeFileSync(tok, JSON.stringify({ type: "x-test", keyslots: ["0"] }));
  writeFileSync(img, Buffer.alloc(20 << 20));
  run("cryptsetup", ["luksFormat", "--type", "luks2", "-q", ...FAST, "--luks2-keyslots-size", "1m", "--offset", "4096", "--key-file", pw, img]);
  run("cryptsetup", ["luksAddKey", "-q", ...FAST, "--key-file", pw, img, pw2]);
  // keyslot 0 is carried to the new key (keyslot 2), keyslot 1 stays with the old key only; keyslot 3 = reencrypt
  run("cryptsetup", ["reencrypt", "--init-only", "-q", ...FAST, "--key-file", pw, "--key-slot", "0", img]);
  const before = sha(img);
  const hint = `finish or resume the re-encryption first: trustvol reencrypt --resume-only ${img}`;

  // cryptsetup's own verdicts (the reference, re-measured each run)
  for (const args of [["luksAddKey", ...FAST, "--key-file", pw, img, pw3], ["luksChangeKey", ...FAST, "--key-file", pw, img, pw3], ["token", "import", "--json-file", tok, img]]) {
    const r = run("cryptsetup", ["-q", ...args], { check: false });
    assert.notEqual(r.status, 0, `cryptsetup ${args[0]} refuses`);
    assert.equal(sha(img), before);
  }

  for (const args of [
    ["key", "add", "--key-file", pw, "--new-key-file", pw3, img],
    ["key", "change", "--key-file", pw, "--new-key-file", pw3, img],
    ["token", "import", "--json-file", tok, img],
    ["key", "remove", "--key-slot", "3", img], // the reencrypt keyslot
    ["key", "remove", "--key-slot", "2", img], // the new key's only keyslot
  ]) {
    const r = await trustvolInProcess(args);
    assert.notEqual(r.status, 0, `${args.join(" ")} must fail`);
    const line = r.stderr.trim();
    assert.equal(line.split("\n").length, 1, `one line: ${line}`);
    assert.match(line, /in the middle of re-encryption/, line);
    assert.ok(line.includes(hint), line);
    assert.doesNotMatch(line, /free space/, line);
    assert.equal(sha(img), before, `${args.join(" ")} left the file unchanged`);
  }

  // Removing a keyslot the run does not need is allowed (cryptsetup luksKillSlot too); then the run still finishes.
  const r = await trustvolInProcess(["key", "remove", "--key-slot", "1", img]);
  assert.equal(r.status, 0, r.stderr);
  const dump = run("cryptsetup", ["luksDump", img]).stdout.toString();
  assert.doesNotMatch(dump, /^ {2}1: luks2/m);
  const fin = await trustvolInProcess(["reencrypt", "--resume-only", "--key-file", pw, img]);
  assert.equal(fin.status, 0, fin.stderr);
  run("cryptsetup", ["open", "--test-passphrase", "--key-file", pw, img]);
});

test("a passphrase unlocks an --encrypt before its first hotzone (every data segment still plain), as cryptsetup's open does: unlock --test, dump; in place and detached", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const pw = join(dir, "pw");
  writeFileSync(pw, "pw", { mode: 0o600 });
  const inPlace = join(dir, "inplace.img"), data = join(dir, "data.img"), hdr = join(dir, "data.hdr");
  writeFileSync(inPlace, Buffer.alloc(24 << 20, 7));
  writeFileSync(data, Buffer.alloc(8 << 20, 7));
  let r = await trustvolInProcess(["reencrypt", "--encrypt", "--init-only", "-q", "--reduce-device-size", "8M", ...FAST, "--key-file", pw, inPlace]);
  assert.equal(r.status, 0, r.stderr);
  r = await trustvolInProcess(["reencrypt", "--encrypt", "--init-only", "-q", "--header", hdr, ...FAST, "--key-file", pw, data]);
  assert.equal(r.status, 0, r.stderr);
  for (const args of [[inPlace], ["--header", hdr, data]]) {
    // (before: "data segment 0 is not encrypted: the volume was decrypted", and `open` failed the same way)
    r = await trustvolInProcess(["unlock", "--test", "--key-file", pw, "--json", ...args]);
    assert.equal(r.status, 0, `${args.join(" ")}: ${r.stderr}`);
    run("cryptsetup", ["open", "--test-passphrase", "--key-file", pw, ...args]);
  }
  // a wrong passphrase is still wrong
  writeFileSync(join(dir, "bad"), "bad", { mode: 0o600 });
  r = await trustvolInProcess(["unlock", "--test", "--key-file", join(dir, "bad"), inPlace]);
  assert.equal(r.status, 3, r.stderr);
});
