// image encrypt/decrypt as a CI pipeline uses it: bounded memory, interruption safety, the input never touched.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync, existsSync, statSync, openSync, writeSync, readSync, closeSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { tmpDir, IN_CI } from "../helpers/tools.js";
import { TRUSTVOL_BIN, compiledCliIsFresh } from "../helpers/cli.js";

const RSS_PRELOAD = join(dirname(fileURLToPath(import.meta.url)), "..", "helpers", "report-rss.mjs");

function sha(p: string): string {
  const h = createHash("sha256");
  const fd = openSync(p, "r");
  const b = Buffer.alloc(8 << 20);
  for (let n; (n = readSync(fd, b, 0, b.length, null)) > 0; ) h.update(b.subarray(0, n));
  closeSync(fd);
  return h.digest("hex");
}

/** A sparse image with a few real blocks scattered through it (fast to make, still exercises every chunk). */
function sparseImage(path: string, size: number): void {
  const fd = openSync(path, "w");
  for (let off = 0; off < size; off += 64 * 1024 * 1024) writeSync(fd, randomBytes(4096), 0, 4096, off);
  closeSync(fd);
  spawnSync("truncate", ["-s", String(size), path]);
}

test("image encrypt streams a 1 GiB image with peak RSS under 100 MiB, and decrypts back identically", async (t) => {
  // Memory is measured on the CLI as it ships (compiled); `npm test` builds it first, `--no-build` may leave it stale.
  if (!compiledCliIsFresh() && !IN_CI) return t.skip("dist/ is older than src/: run without --no-build to measure the shipped CLI");
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const img = join(dir, "in.img");
  sparseImage(img, 1024 * 1024 * 1024);
  writeFileSync(join(dir, "pw"), "pw", { mode: 0o600 });
  const rss = join(dir, "rss");
  const r = spawnSync(process.execPath, ["--import", RSS_PRELOAD, TRUSTVOL_BIN, "image", "encrypt", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", join(dir, "pw"), img, join(dir, "out.luks")], { env: { ...process.env, TRUSTVOL_RSS_FILE: rss }, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const peakMiB = Number(readFileSync(rss, "utf8")) / 1024;
  t.diagnostic(`peak RSS ${peakMiB.toFixed(1)} MiB`);
  assert.ok(peakMiB <= 100, `peak RSS ${peakMiB.toFixed(1)} MiB > 100 MiB`);
  assert.equal(statSync(join(dir, "out.luks")).size, 16 * 1024 * 1024 + 1024 * 1024 * 1024);
  const before = sha(img);
  const d = spawnSync(process.execPath, ["--import", RSS_PRELOAD, TRUSTVOL_BIN, "image", "decrypt", "--key-file", join(dir, "pw"), join(dir, "out.luks"), join(dir, "back.img")], { env: { ...process.env, TRUSTVOL_RSS_FILE: rss }, encoding: "utf8" });
  assert.equal(d.status, 0, d.stderr);
  const peakDecMiB = Number(readFileSync(rss, "utf8")) / 1024;
  t.diagnostic(`decrypt peak RSS ${peakDecMiB.toFixed(1)} MiB`);
  assert.ok(peakDecMiB <= 100, `decrypt peak RSS ${peakDecMiB.toFixed(1)} MiB > 100 MiB`);
  assert.equal(sha(join(dir, "back.img")), before);
});

test("a killed image encrypt leaves the input untouched and no output under the final name", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const img = join(dir, "in.img");
  sparseImage(img, 2 * 1024 * 1024 * 1024);
  const before = sha(img);
  writeFileSync(join(dir, "pw"), "pw", { mode: 0o600 });
  const out = join(dir, "out.luks");
  const child = spawn(process.execPath, [TRUSTVOL_BIN, "image", "encrypt", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", join(dir, "pw"), img, out], { stdio: "ignore" });
  // Kill it hard once it is writing (the partial file exists and has grown past the header area).
  await new Promise<void>((resolve) => {
    const iv = setInterval(() => {
      if (existsSync(`${out}.partial`) && statSync(`${out}.partial`).size > 64 * 1024 * 1024) {
        clearInterval(iv);
        child.kill("SIGKILL");
        resolve();
      }
    }, 5);
  });
  await new Promise((r) => child.on("exit", r));
  assert.ok(!existsSync(out), "no file under the final name");
  assert.ok(existsSync(`${out}.partial`), "the incomplete output is named .partial");
  const head = readFileSync(`${out}.partial`).subarray(0, 6);
  assert.notEqual(head.toString("latin1"), "LUKS\xba\xbe", "an incomplete output carries no LUKS header");
  assert.equal(sha(img), before, "input untouched");
  // A rerun replaces the stale partial and completes.
  const r = spawnSync(process.execPath, [TRUSTVOL_BIN, "image", "encrypt", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", join(dir, "pw"), img, out], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.ok(existsSync(out) && !existsSync(`${out}.partial`));
});

test("SIGINT stops image encrypt cleanly: exit 7, one line, nothing left behind", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const img = join(dir, "in.img");
  sparseImage(img, 2 * 1024 * 1024 * 1024);
  writeFileSync(join(dir, "pw"), "pw", { mode: 0o600 });
  const out = join(dir, "out.luks");
  const child = spawn(process.execPath, [TRUSTVOL_BIN, "image", "encrypt", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", join(dir, "pw"), img, out], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  await new Promise<void>((resolve) => {
    const iv = setInterval(() => {
      if (existsSync(`${out}.partial`) && statSync(`${out}.partial`).size > 32 * 1024 * 1024) {
        clearInterval(iv);
        child.kill("SIGINT");
        resolve();
      }
    }, 5);
  });
  const code = await new Promise<number | null>((r) => child.on("exit", r));
  assert.equal(code, 7, stderr);
  assert.match(stderr.trim(), /^trustvol: interrupted: .* was not created; the input is unchanged/);
  assert.ok(!existsSync(out) && !existsSync(`${out}.partial`));
});
