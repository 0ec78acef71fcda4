// The package as users get it: `npm pack` a copy of this checkout, install the tarball into an empty project, run the
// installed CLI on an image, compile the README's example and a typed program against the package with `tsc --strict`.
// Needs the npm registry (or its cache) for the dependencies; argon2 and pkcs11js are built from source on install.
import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { spawnSync, type SpawnSyncOptions } from "node:child_process";
import { needTools, tmpDir } from "../helpers/tools.js";
import { readmeExample } from "../helpers/readme.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { name: string; version: string };

function sh(cmd: string, args: string[], o: SpawnSyncOptions & { input?: string } = {}): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 900_000, maxBuffer: 1 << 26, ...o });
  return { status: r.status ?? -1, stdout: String(r.stdout ?? ""), stderr: String(r.stderr ?? r.error ?? "") };
}

test("npm pack → npm install in an empty project → CLI format/unlock, typed API under tsc --strict", { timeout: 1_200_000 }, async (t) => {
  if (!needTools(t, "npm", "cryptsetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-pack-");
  t.after(cleanup);

  // Pack a copy: prepack rebuilds dist/src, which other tests running now may be executing from this checkout.
  const src = join(dir, "src-copy");
  mkdirSync(src);
  for (const e of ["package.json", "package-lock.json", "tsconfig.json", "tsconfig.build.json", "README.md", "LICENSE", "bin", "src", "native", "scripts"]) {
    cpSync(join(root, e), join(src, e), { recursive: true, filter: (p) => !p.includes(`${join("native", "build")}`) });
  }
  symlinkSync(realpathSync(join(root, "node_modules")), join(src, "node_modules")); // for tsc in prepack
  let r = sh("npm", ["pack", "--pack-destination", dir], { cwd: src });
  assert.equal(r.status, 0, r.stderr);
  const tgz = join(dir, `${pkg.name}-${pkg.version}.tgz`);
  assert.ok(existsSync(tgz), r.stdout);
  const listing = sh("tar", ["tzf", tgz]).stdout.split("\n").filter(Boolean);
  assert.ok(listing.includes("package/dist/src/index.js") && listing.includes("package/dist/src/index.d.ts") && listing.includes("package/LICENSE"));
  assert.ok(listing.includes("package/dist/man/trustvol.1") && listing.includes("package/dist/completion/trustvol.bash"), "man page and completions");
  assert.ok(listing.includes("package/native/src/trustvol_native.c") && listing.includes("package/scripts/build-native.mjs"), "the optional addon can be built on install");
  assert.deepEqual(listing.filter((f) => /^package\/(test|bench|\.ci|src|scripts\/vm|dist\/test|dist\/bench)\//.test(f) || f.endsWith(".map")), []);

  // An empty project. npm reads allowScripts from the *consumer's* package.json (trustvol's own is ignored there):
  // without it npm 11 runs the three install scripts with a warning, and refuses them under --strict-allow-scripts.
  const app = join(dir, "app");
  mkdirSync(app);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module", allowScripts: { trustvol: true, argon2: true, pkcs11js: true } }, null, 2));
  r = sh("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", tgz], { cwd: app });
  assert.equal(r.status, 0, r.stderr);
  const nm = join(app, "node_modules");
  assert.ok(!existsSync(join(nm, "tsx")), "tsx is a dev dependency, not installed for users");
  assert.ok(!existsSync(join(nm, "trustvol", "src")));
  assert.ok(existsSync(join(nm, "argon2", "build", "Release", "argon2.node")), "argon2 built from source (its prebuild crashes here)");

  // The installed CLI, compiled, with a key file.
  const env = { ...process.env, TRUSTVOL_FROM_SOURCE: "" };
  writeFileSync(join(app, "key"), "installed-passphrase", { mode: 0o600 });
  writeFileSync(join(app, "disk.img"), "");
  truncateSync(join(app, "disk.img"), 20 << 20); // format refuses a path that does not exist
  r = sh("npx", ["--no-install", "trustvol", "--version"], { cwd: app, env });
  assert.equal(r.stdout.trim(), pkg.version, r.stderr);
  r = sh("npx", ["--no-install", "trustvol", "format", "disk.img", "--key-file", "key", "--pbkdf-memory", "65536", "--pbkdf-force-iterations", "4", "--json"], { cwd: app, env });
  assert.equal(r.status, 0, r.stderr);
  r = sh("npx", ["--no-install", "trustvol", "unlock", "--test", "disk.img", "--key-file", "key"], { cwd: app, env });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /Key slot 0 unlocked/);
  assert.equal(sh("cryptsetup", ["open", "--test-passphrase", "--key-file", join(app, "key"), join(app, "disk.img")]).status, 0, "cryptsetup opens it");

  // Importing the root loads no native module and no ASN.1 code.
  r = sh(process.execPath, ["--input-type=module", "-e", "import { createRequire } from 'node:module'; const m = await import('trustvol'); const c = Object.keys(createRequire(import.meta.url).cache); console.log(JSON.stringify({ n: Object.keys(m).length, native: c.filter((f) => /\\.node$|pkcs11js|argon2|asn1/.test(f)) }));"], { cwd: app });
  assert.equal(r.status, 0, r.stderr);
  const loaded = JSON.parse(r.stdout) as { n: number; native: string[] };
  assert.ok(loaded.n > 20);
  assert.deepEqual(loaded.native, []);

  // A typed program against the root and the subpaths, and the README example, under tsc --strict.
  writeFileSync(
    join(app, "typed.ts"),
    `import { MemoryBlockDevice, formatLuks2, unlock, TrustvolError, type EnrollTpm2Options, type TokenHandler } from "trustvol";
import { Luks2Volume, type Luks2Token } from "trustvol/luks2";
import { parsePkcs11Uri } from "trustvol/pkcs11";
import { verityGeometry } from "trustvol/verity";
import { systemdTpm2 } from "trustvol/tokens";
import { parseTpm2Device } from "trustvol/tpm2";
import { enrollRecovery } from "trustvol/ops";

const dev = new MemoryBlockDevice(17 * 1024 * 1024);
const { volume, volumeKey } = await formatLuks2(dev, Buffer.from("pw"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 }, digestIterations: 1000 });
volumeKey.fill(0);
const v: Luks2Volume = volume;
const handler: TokenHandler = { type: "x", unlocksWith: "nothing", needsPin: (_t: Luks2Token) => false, passphrase: async () => Buffer.alloc(1) };
const opts: Partial<EnrollTpm2Options> = { pcrs: [7] };
const uri = parsePkcs11Uri("pkcs11:token=lmp;object=luks");
const geo = verityGeometry;
try {
  await unlock("/nonexistent.img", { tokenOnly: true });
} catch (e) {
  if (!(e instanceof TrustvolError)) throw e;
  console.log(v.uuid.length, handler.type, opts.pcrs?.[0], uri.token, typeof geo, typeof systemdTpm2, typeof enrollRecovery, parseTpm2Device("swtpm:path=/x") !== "auto", e.code);
}
`,
  );
  writeFileSync(join(app, "example.ts"), readmeExample());
  const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
  r = sh(process.execPath, [tsc, "--strict", "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022", "--typeRoots", join(root, "node_modules", "@types"), "--types", "node", "--outDir", "out", "typed.ts", "example.ts"], { cwd: app });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  r = sh(process.execPath, ["out/typed.js"], { cwd: app });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), "36 x 7 lmp function object function true ENOENT");
  r = sh(process.execPath, ["out/example.js", "ex.img"], { cwd: app });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /unlocked key slot 1/);
  assert.ok(readdirSync(app).includes("ex.img.recovery"));
});
