// Progress: JSON lines for programs (--progress-json, no terminal needed), and a bar that never wraps a narrow
// terminal (80-column serial consoles and narrower).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { writeFileSync, truncateSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { needTools, tmpDir } from "../helpers/tools.js";
import { trustvol, TRUSTVOL_BIN } from "../helpers/cli.js";

const FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

test("image encrypt --progress-json: JSON lines on stderr ending at 100%", (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  writeFileSync(join(dir, "key"), "pw", { mode: 0o600 });
  writeFileSync(join(dir, "plain.img"), "");
  truncateSync(join(dir, "plain.img"), 8 << 20);
  const r = trustvol(["image", "encrypt", join(dir, "plain.img"), join(dir, "enc.img"), "--key-file", join(dir, "key"), ...FAST, "--progress-json"]);
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stderr.trim().split("\n").map((l) => JSON.parse(l) as { progress: string; done: number; total: number; percent: number });
  assert.ok(lines.length >= 1);
  const last = lines.at(-1)!;
  assert.deepEqual([last.progress, last.done, last.total, last.percent], ["Encrypting", 8 << 20, 8 << 20, 100]);
});

test("the progress bar fits a 40-column terminal", (t) => {
  if (!needTools(t, "script", "stty")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  writeFileSync(join(dir, "key"), "pw", { mode: 0o600 });
  writeFileSync(join(dir, "plain.img"), "");
  truncateSync(join(dir, "plain.img"), 8 << 20);
  const cmd = [process.execPath, TRUSTVOL_BIN, "image", "encrypt", join(dir, "plain.img"), join(dir, "enc.img"), "--key-file", join(dir, "key"), ...FAST].map((a) => `'${a}'`).join(" ");
  const r = spawnSync("script", ["-qec", `stty cols 40; ${cmd}`, "/dev/null"], { encoding: "utf8", timeout: 120_000 });
  assert.equal(r.status, 0, r.stdout);
  const frames = r.stdout.split(/\r\n?|\n/).filter((f) => f.includes("Encrypting"));
  assert.ok(frames.length >= 1, r.stdout);
  for (const f of frames) assert.ok(f.length <= 39, `"${f}" is ${f.length} columns`);
  assert.match(frames.at(-1)!, /Encrypting \[#+\] +100\.0%/);
});
