// cryptsetup reencrypt options a cryptsetup user types (found missing by a new-user walkthrough): --hash and
// --pbkdf-parallel for the new keyslots, --type luks2 with --encrypt (accepted; LUKS1 refused in one line).
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync, existsSync } from "node:fs";
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

test("reencrypt --encrypt --luks2-metadata-size / --luks2-keyslots-size size the new header as cryptsetup does (in place and --header); elsewhere, or too large, refused in one line, file unchanged", (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-reenc-sizes-");
  t.after(cleanup);
  const pw = join(dir, "pw");
  writeFileSync(pw, "pw", { mode: 0o600 });
  const kdf = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", pw];
  const json = (f: string) => JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", f]).stdout.toString());
  const enc = join(dir, "enc.img");
  writeFileSync(enc, randomBytes(24 << 20));
  const e = trustvol(["reencrypt", "--encrypt", "-q", "--reduce-device-size", "8M", "--luks2-metadata-size", "64k", "--luks2-keyslots-size", "1M", ...kdf, enc]);
  assert.equal(e.status, 0, e.stderr);
  assert.match(run("cryptsetup", ["luksDump", enc]).stdout.toString(), /Metadata area: \t65536 \[bytes\]\nKeyslots area: \t1048576 \[bytes\]/);
  assert.equal(json(enc).config.json_size, String(65536 - 4096));
  run("cryptsetup", ["open", "--test-passphrase", "--key-file", pw, enc]);
  const data = join(dir, "data.img"), hdr = join(dir, "hdr.img");
  writeFileSync(data, randomBytes(8 << 20));
  const d = trustvol(["reencrypt", "--encrypt", "-q", "--header", hdr, "--luks2-metadata-size", "32768", ...kdf, data]);
  assert.equal(d.status, 0, d.stderr);
  assert.equal(json(hdr).config.json_size, String(32768 - 4096));
  run("cryptsetup", ["open", "--test-passphrase", "--header", hdr, "--key-file", pw, data]);

  // a header exactly up to the data is a valid layout (the default one is): 2 × 64 KiB + 896 KiB = the 1 MiB shift
  const exact = join(dir, "exact.img");
  writeFileSync(exact, randomBytes(8 << 20));
  const x = trustvol(["reencrypt", "--encrypt", "-q", "--reduce-device-size", "2M", "--luks2-metadata-size", "64k", "--luks2-keyslots-size", "896k", ...kdf, exact]);
  assert.equal(x.status, 0, x.stderr);
  assert.equal(json(exact).config.keyslots_size, String(896 << 10));
  run("cryptsetup", ["open", "--test-passphrase", "--key-file", pw, exact]);
  // an --encrypt run going on with its header: other sizes are refused, not ignored (the same ones go on)
  const again = join(dir, "again.img");
  writeFileSync(again, randomBytes(8 << 20));
  assert.equal(trustvol(["reencrypt", "--encrypt", "--init-only", "-q", "--reduce-device-size", "2M", "--luks2-metadata-size", "32k", ...kdf, again]).status, 0);
  const initialized = readFileSync(again);
  const other = trustvol(["reencrypt", "--encrypt", "-q", "--reduce-device-size", "2M", "--luks2-metadata-size", "64k", ...kdf, again]);
  assert.equal(other.status, 2, other.stderr);
  assert.match(other.stderr, /already in re-encryption with 32768-byte metadata copies/);
  assert.ok(readFileSync(again).equals(initialized), "unchanged");
  const same = trustvol(["reencrypt", "--encrypt", "-q", "--reduce-device-size", "2M", "--luks2-metadata-size", "32k", ...kdf, again]);
  assert.equal(same.status, 0, same.stderr);

  const plain = join(dir, "plain.img");
  writeFileSync(plain, randomBytes(24 << 20));
  const before = { plain: readFileSync(plain), enc: readFileSync(enc) };
  for (const [args, says] of [
    [["--encrypt", "--reduce-device-size", "8M", "--luks2-keyslots-size", "4M", plain], /does not fit before the data, at half of --reduce-device-size/],
    [["--encrypt", "--reduce-device-size", "8M", "--luks2-metadata-size", "48k", plain], /metadata size 49152 is not one of/],
    [["--encrypt", "--reduce-device-size", "8M", "--luks2-keyslots-size", "258048", plain], /leaves no room for the re-encryption area/],
    [["--encrypt", "--reduce-device-size", "8M", "--luks2-keyslots-size", "100k", plain], /too small for one keyslot of a 512-bit key \(258048 bytes\)/],
    [["--encrypt", "--header", join(dir, "new-hdr.img"), "--luks2-keyslots-size", "1G", plain], /over the LUKS2 limit of 134217728 bytes/],
    [["--luks2-metadata-size", "64k", enc], /are for --encrypt/],
    [["--decrypt", "--header", join(dir, "new-hdr.img"), "--luks2-keyslots-size", "1M", enc], /are for --encrypt/],
  ] as const) {
    const r = trustvol(["reencrypt", "-q", ...kdf, ...args]);
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, says);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
  assert.ok(readFileSync(plain).equals(before.plain) && readFileSync(enc).equals(before.enc), "nothing written");
  assert.ok(!existsSync(join(dir, "new-hdr.img")), "no header file left behind");
});
