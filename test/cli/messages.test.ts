// Issue 13 audit: what a user sees for common mistakes is one line in plain words — no errno names (ENOENT, EISDIR),
// no Node texts ("illegal operation on a directory"), no internal names (the in-memory device "memory").
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";

const RAW = /\bE(NOENT|ISDIR|NOTDIR|ACCES|PERM|EXIST|NXIO|INVAL)\b|illegal operation|\bmemory\b|ERR_[A-Z_]+|\bopen '|undefined|\[object /;

test("mistakes get plain one-line messages: missing files, directories, a 13-byte header backup", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-msg-");
  t.after(cleanup);
  const f = (n: string) => join(dir, n);
  writeFileSync(f("pw"), "pw", { mode: 0o600 });
  writeFileSync(f("s13"), "0123456789abc");
  run("truncate", ["-s", "20M", f("v.img")]);
  let r = await trustvolInProcess(["format", f("v.img"), "--key-file", f("pw"), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "-q"]);
  assert.equal(r.status, 0, r.stderr);
  const cases: [string[], number][] = [
    [["header", "restore", f("v.img"), "--file", f("s13")], 4],
    [["header", "restore", f("v.img"), "--file", f("missing")], 5],
    [["header", "restore", f("v.img"), "--file", dir], 2],
    [["dump", "--header", f("s13"), f("v.img")], 4],
    [["dump", dir], 2],
    [["unlock", "--test", f("v.img"), "--key-file", dir], 2],
    [["unlock", "--test", f("v.img"), "--key-file", f("missing")], 5],
    [["token", "import", f("v.img"), "--json-file", dir], 2],
    [["enroll", "recovery", f("v.img"), "--key-file", f("pw"), "--out", dir], 2],
    [["image", "encrypt", dir, f("x.luks"), "--key-file", f("pw")], 2],
    [["verity", "format", dir, f("x.hash")], 2],
    [["verity", "dump", f("missing")], 5],
    [["caam", "import", f("missing"), "k", "--dir", f("caam")], 5],
    [["trusted", "load", "kmk", "--blob", f("missing")], 5],
  ];
  for (const [argv, code] of cases) {
    r = await trustvolInProcess(argv);
    const what = `${argv.join(" ")} → ${r.stderr.trim()}`;
    assert.equal(r.status, code, what);
    assert.match(r.stderr, /^trustvol: [^\n]+\n$/, `one line: ${what}`);
    assert.doesNotMatch(r.stderr, RAW, what);
  }
});

test("a LUKS1 volume where LUKS2 is needed: exit 6 (valid, not supported) from every command, one line naming the conversion", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-msg-luks1-");
  t.after(cleanup);
  const f = (n: string) => join(dir, n);
  writeFileSync(f("pw"), "pw", { mode: 0o600 });
  run("truncate", ["-s", "8M", f("l1.img")]);
  run("cryptsetup", ["luksFormat", "-q", "--type", "luks1", "--pbkdf-force-iterations", "1000", "--key-file", f("pw"), f("l1.img")]);
  for (const args of [
    ["repair", f("l1.img")],
    ["header", "backup", f("l1.img"), "--file", f("l1.bak")],
    ["reencrypt", "-q", "--key-file", f("pw"), f("l1.img")],
    ["key", "add", "--key-file", f("pw"), "--new-key-file", f("pw"), f("l1.img")],
    ["enroll", "recovery", "--key-file", f("pw"), f("l1.img")],
  ]) {
    const r = await trustvolInProcess(args);
    assert.equal(r.status, 6, `${args.slice(0, 2).join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /LUKS1.*cryptsetup convert --type luks2/);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
});
