// `npm run bundle`: one file that runs with only Node; a command that needs a native module that is not next to it
// (argon2, pkcs11js) says which one, in one line.
import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { spawnSync } from "node:child_process";
import { needTools, tmpDir } from "../helpers/tools.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

test("the bundle runs alone and names the native module a command is missing", (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  // The package's own bundle script, written to the temp dir instead of dist/.
  const script = (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { scripts: Record<string, string> }).scripts.bundle!;
  const out = join(dir, "build", "trustvol.mjs");
  const b = spawnSync("sh", ["-c", script.replace("--outfile=dist/trustvol-bundle.mjs", `--outfile=${out}`)], { cwd: root, encoding: "utf8", env: { ...process.env, PATH: `${join(root, "node_modules", ".bin")}:${process.env.PATH}` } });
  assert.equal(b.status, 0, b.stderr);
  const dev = join(dir, "device");
  mkdirSync(dev);
  copyFileSync(out, join(dev, "trustvol.mjs"));
  writeFileSync(join(dev, "key"), "pw", { mode: 0o600 });
  // format refuses a path that does not exist: the images are made first
  for (const img of ["v.img", "w.img"]) {
    writeFileSync(join(dev, img), "");
    truncateSync(join(dev, img), 20 << 20);
  }
  const tv = (...args: string[]) => spawnSync(process.execPath, ["trustvol.mjs", ...args], { cwd: dev, encoding: "utf8", env: { ...process.env, NODE_PATH: "" } });
  let r = tv("--version");
  assert.equal(r.stdout.trim(), (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string }).version, r.stderr);
  r = tv("format", "v.img", "--key-file", "key", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000");
  assert.equal(r.status, 0, r.stderr);
  r = tv("unlock", "--test", "v.img", "--key-file", "key");
  assert.equal(r.status, 0, r.stderr);
  r = tv("format", "w.img", "--key-file", "key");
  assert.equal(r.status, 6, r.stderr);
  assert.equal(r.stderr, "trustvol: Argon2 needs the argon2 native module, which is not installed; install argon2 next to trustvol (npm install argon2), or use --pbkdf pbkdf2\n");
  if (!needTools(t, "softhsm2-util")) return;
  const mod = ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"].find((p) => spawnSync("test", ["-e", p]).status === 0);
  if (!mod) return;
  r = tv("pkcs11", "list", "--module", mod);
  assert.equal(r.status, 6, r.stderr);
  assert.match(r.stderr, /^trustvol: PKCS#11 needs the pkcs11js native module, which is not installed; install pkcs11js next to trustvol/);
});

