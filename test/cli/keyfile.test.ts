// Key files are read like cryptsetup reads them: at most 8 MiB (devices and pipes included), --keyfile-offset and
// --keyfile-size with its semantics, judged against cryptsetup on the same image; errors are one line, exit 2.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { writeFileSync, readFileSync, mkdirSync, chmodSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { run, tmpDir, hasTool, IN_CI } from "../helpers/tools.js";
import { trustvol, TRUSTVOL_BIN } from "../helpers/cli.js";

const RSS_PRELOAD = join(dirname(fileURLToPath(import.meta.url)), "..", "helpers", "report-rss.mjs");
const haveCryptsetup = hasTool("cryptsetup");
if (!haveCryptsetup && IN_CI) throw new Error("cryptsetup is needed in CI");

let dir: string, img: string, cleanup: () => void;
const file = (name: string, data: string | Buffer, mode = 0o600) => {
  const p = join(dir, name);
  writeFileSync(p, data, { mode });
  chmodSync(p, mode);
  return p;
};

before(() => {
  ({ dir, cleanup } = tmpDir());
  img = join(dir, "v.img");
  run("truncate", ["-s", "20M", img]);
  const pass = file("pass", "pass");
  if (haveCryptsetup) run("cryptsetup", ["luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", pass, img]);
  else assert.equal(trustvol(["format", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", pass, img]).status, 0);
});
after(() => cleanup?.());

const oneLine = (s: string) => assert.equal(s.trim().split("\n").length, 1, s);

test("--key-file /dev/zero: refused after 8 MiB with a one-line error, exit 2, memory stays small", () => {
  const rss = join(dir, "rss");
  const r = spawnSync(process.execPath, ["--import", RSS_PRELOAD, TRUSTVOL_BIN, "unlock", "--test", "--key-file", "/dev/zero", img], {
    env: { ...process.env, TRUSTVOL_RSS_FILE: rss }, encoding: "utf8", timeout: 120_000,
  });
  assert.equal(r.status, 2, r.stderr);
  oneLine(r.stderr);
  assert.match(r.stderr, /larger than 8 MiB/);
  const peakMiB = Number(readFileSync(rss, "utf8")) / 1024;
  assert.ok(peakMiB < 400, `peak RSS ${peakMiB.toFixed(0)} MiB`);
  // The same through stdin, and with --keyfile-size the device is fine (a wrong key, not a refusal).
  const s = trustvol(["unlock", "--test", "--key-file", "-", img], { input: Buffer.alloc(9 << 20) });
  assert.equal(s.status, 2, s.stderr);
  oneLine(s.stderr);
  const l = trustvol(["unlock", "--test", "--key-file", "/dev/zero", "--keyfile-size", "4", img]);
  assert.equal(l.status, 3, l.stderr);
});

test("--keyfile-offset / --keyfile-size agree with cryptsetup on the same image", (t) => {
  if (!haveCryptsetup) return t.skip("cryptsetup missing");
  const kf = file("kf", "xxpassyy");
  const big = file("big", Buffer.alloc(9_000_000));
  const cases: { args: string[]; input?: string; cs: number; tv: number }[] = [
    { args: ["--key-file", kf, "--keyfile-offset", "2", "--keyfile-size", "4"], cs: 0, tv: 0 },
    { args: ["--key-file", kf], cs: 2, tv: 3 }, // the whole file is the passphrase: wrong
    { args: ["--key-file", kf, "--keyfile-offset", "2"], cs: 2, tv: 3 }, // "passyy": wrong
    { args: ["--key-file", kf, "--keyfile-offset", "20", "--keyfile-size", "4"], cs: 1, tv: 2 }, // cannot seek
    { args: ["--key-file", kf, "--keyfile-offset", "20"], cs: 1, tv: 2 },
    { args: ["--key-file", kf, "--keyfile-offset", "2", "--keyfile-size", "10"], cs: 1, tv: 2 }, // too short
    { args: ["--key-file", big], cs: 1, tv: 2 }, // over the maximum
    { args: ["--key-file", big, "--keyfile-size", "4"], cs: 2, tv: 3 },
    { args: ["--key-file", "-", "--keyfile-offset", "2", "--keyfile-size", "4"], input: "xxpassyy", cs: 0, tv: 0 },
    { args: ["--key-file", "-", "--keyfile-offset", "2"], input: "xxpass", cs: 0, tv: 0 },
  ];
  for (const c of cases) {
    const cs = run("cryptsetup", ["open", "--test-passphrase", ...c.args, img], { input: c.input ?? "", check: false });
    assert.equal(cs.status, c.cs, `cryptsetup ${c.args.join(" ")}: ${cs.stderr}`);
    const tv = trustvol(["unlock", "--test", ...c.args, img], { input: c.input ?? "" });
    assert.equal(tv.status, c.tv, `trustvol ${c.args.join(" ")}: ${tv.stderr}`);
    if (c.tv !== 0) oneLine(tv.stderr);
  }
});

test("key file errors say what is wrong in words (no errno), and a file others can read is warned about", () => {
  let r = trustvol(["unlock", "--test", "--key-file", join(dir, "nope"), img]);
  assert.equal(r.status, 5, r.stderr);
  assert.match(r.stderr, /^trustvol: key file \S+nope does not exist/);
  assert.doesNotMatch(r.stderr, /ENOENT/);
  oneLine(r.stderr);
  const d = join(dir, "adir");
  mkdirSync(d);
  r = trustvol(["unlock", "--test", "--key-file", d, img]);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /is a directory/);
  assert.doesNotMatch(r.stderr, /EISDIR/);
  oneLine(r.stderr);
  const open = file("open", "pass", 0o644);
  r = trustvol(["unlock", "--test", "--key-file", open, img]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /warning: key file \S+ is readable by other users/);
  r = trustvol(["unlock", "--test", "--key-file", file("closed", "pass"), img]);
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /warning/);
});

test("token import from a missing or directory JSON file: words, not errno", () => {
  let r = trustvol(["token", "import", img, "--json-file", join(dir, "missing.json")]);
  assert.equal(r.status, 5, r.stderr);
  assert.match(r.stderr, /token JSON file \S+missing\.json does not exist/);
  assert.doesNotMatch(r.stderr, /ENOENT|errno/);
  oneLine(r.stderr);
  r = trustvol(["token", "import", img, "--json-file", dir]);
  assert.equal(r.status, 2, r.stderr);
  assert.doesNotMatch(r.stderr, /EISDIR|illegal operation/);
  oneLine(r.stderr);
});

test("reencrypt and repair take --keyfile-offset / --keyfile-size (a volume whose key is a slice of a key file can be rotated)", () => {
  const kf = file("kf-reenc", "xxpassyy");
  const v = join(dir, "rot.img");
  run("truncate", ["-s", "20M", v]);
  const limits = ["--key-file", kf, "--keyfile-offset", "2", "--keyfile-size", "4"];
  const kdf = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
  assert.equal(trustvol(["format", "-q", ...kdf, ...limits, v]).status, 0);
  const r = trustvol(["reencrypt", "-q", ...kdf, "--init-only", ...limits, v]);
  assert.equal(r.status, 0, r.stderr);
  const rep = trustvol(["repair", ...limits, v]);
  assert.equal(rep.status, 0, rep.stderr);
  const fin = trustvol(["reencrypt", "-q", "--resume-only", ...limits, v]);
  assert.equal(fin.status, 0, fin.stderr);
  assert.equal(trustvol(["unlock", "--test", ...limits, v]).status, 0, "the same slice of the key file opens the rotated volume");
  const whole = trustvol(["reencrypt", "-q", ...kdf, "--key-file", kf, v]);
  assert.equal(whole.status, 3, "the whole file is another passphrase");
  oneLine(whole.stderr);
});
