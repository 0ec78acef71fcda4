// The CLI protects data like cryptsetup: format asks before destroying a file system or LUKS volume (-q for scripts),
// header backup never replaces an existing file.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync, truncateSync } from "node:fs";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvol, TRUSTVOL_BIN } from "../helpers/cli.js";

const FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
const digest = (f: string) => createHash("sha256").update(readFileSync(f)).digest("hex");

test("format refuses to overwrite a LUKS volume or a file system without confirmation; -q/--batch-mode formats", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const key = join(dir, "key");
  writeFileSync(key, "pass", { mode: 0o600 });
  const img = join(dir, "v.img");
  // An all-zero image holds nothing: no question. (format refuses a path that does not exist.)
  writeFileSync(img, "");
  truncateSync(img, 20 << 20);
  let r = trustvol(["format", "--key-file", key, ...FAST, img]);
  assert.equal(r.status, 0, r.stderr);
  const before = digest(img);
  r = trustvol(["format", "--key-file", key, ...FAST, img]);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /^trustvol: .*v\.img is not empty \(LUKS volume found\); refusing to overwrite it without confirmation; pass -q\/--batch-mode/);
  assert.equal(r.stderr.trim().split("\n").length, 1);
  assert.equal(digest(img), before, "nothing changed");
  r = trustvol(["format", "-q", "--key-file", key, ...FAST, img]);
  assert.equal(r.status, 0, r.stderr);
  assert.notEqual(digest(img), before);
  r = trustvol(["format", "--batch-mode", "--key-file", key, ...FAST, img]);
  assert.equal(r.status, 0, r.stderr);

  if (!needTools(t, "mkfs.ext4")) return;
  const fs = join(dir, "fs.img");
  writeFileSync(fs, "");
  truncateSync(fs, 24 << 20);
  run("mkfs.ext4", ["-q", "-F", fs]);
  const fsBefore = digest(fs);
  r = trustvol(["format", "--key-file", key, ...FAST, fs]);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /ext2\/3\/4 file system found/);
  assert.equal(digest(fs), fsBefore, "the file system is untouched");
});

test("format on a terminal: only YES goes ahead", async (t) => {
  if (!needTools(t, "script")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const key = join(dir, "key");
  writeFileSync(key, "pass", { mode: 0o600 });
  const img = join(dir, "v.img");
  writeFileSync(img, "");
  truncateSync(img, 20 << 20);
  assert.equal(trustvol(["format", "--key-file", key, ...FAST, img]).status, 0);
  const before = digest(img);
  const onTerminal = (answer: string) => {
    const cmd = [process.execPath, TRUSTVOL_BIN, "format", "--key-file", key, ...FAST, img].map((a) => `'${a}'`).join(" ");
    return spawnSync("script", ["-qec", cmd, "/dev/null"], { input: `${answer}\n`, encoding: "utf8", timeout: 60_000 });
  };
  let r = onTerminal("yes");
  assert.equal(r.status, 2, r.stdout);
  assert.match(r.stdout, /Type 'YES'/);
  assert.match(r.stdout, /format aborted; nothing was changed/);
  assert.equal(digest(img), before);
  r = onTerminal("YES");
  assert.equal(r.status, 0, r.stdout);
  assert.notEqual(digest(img), before);
});

test("header backup refuses to replace an existing file", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const key = join(dir, "key");
  writeFileSync(key, "pass", { mode: 0o600 });
  const img = join(dir, "v.img");
  writeFileSync(img, "");
  truncateSync(img, 20 << 20);
  assert.equal(trustvol(["format", "--key-file", key, ...FAST, img]).status, 0);
  const bak = join(dir, "v.hdr");
  writeFileSync(bak, "an older backup");
  const r = trustvol(["header", "backup", img, "--file", bak]);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /v\.hdr already exists/);
  assert.equal(readFileSync(bak, "utf8"), "an older backup");
  assert.equal(trustvol(["header", "backup", img, "--file", join(dir, "new.hdr")]).status, 0);
});
