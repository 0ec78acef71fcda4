#!/usr/bin/env node
// The CLI as it starts fastest: src/cli/run.ts bundled by esbuild into dist/cli/ — run.js plus shared chunks, each
// command module still its own chunk loaded only when that command runs (code splitting keeps MODULES lazy).
// A handful of files instead of ~40 ES modules and commander's CommonJS: fewer resolves, reads and compiles at boot.
// Native modules (argon2, pkcs11js) stay outside, found in node_modules next to the package as before; the sector
// addon is found by walking up from dist/cli/ to native/build/. bin/trustvol.mjs runs dist/cli/run.js when present.
// The boot-critical command modules (src/cli/boot-commands.ts: the volume commands with unlock --test and dump; the
// kernel commands with open; reencrypt and provision, the first boot's online rotation) run from
// dist/cli/boot-volume.cjs, boot-kernel.cjs and boot-lifecycle.cjs: src/cli/boot-*.ts each bundled alone
// without splitting. On Node 20 (no compile cache) resolving, reading and compiling each ES module costs ~1 ms, and
// `unlock --test` spanned ~38 chunks of the split build. run.js loads them through src/cli/boot-script.ts (with V8's
// code cache, below), else imports the ES modules by their runtime paths (external below);
// they share no state with the split chunks (each has its own copy of the code it needs).
import { rmSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { join, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, "dist", "cli");
let esbuild;
try {
  esbuild = await import("esbuild");
} catch {
  console.error("build-cli: esbuild (a dev dependency) is not installed; bin/trustvol.mjs falls back to dist/src");
  process.exit(1);
}
rmSync(out, { recursive: true, force: true });
const common = {
  bundle: true,
  format: "esm",
  platform: "node",
  target: "node20",
  external: ["argon2", "pkcs11js"],
  // commander and other CommonJS code bundled into ESM call require() for Node built-ins
  banner: { js: "import { createRequire as __trustvolRequire } from 'node:module'; const require = __trustvolRequire(import.meta.url);" },
  logLevel: "warning",
};
const BOOT = ["boot-volume", "boot-kernel", "boot-lifecycle"];
/** run.ts's `import("./boot-*.js")` (the fallback when no boot-*.cjs is beside it) stay runtime imports. */
const bootExternal = {
  name: "boot-external",
  setup(b) {
    b.onResolve({ filter: /^\.\/boot-[a-z]+\.js$/ }, (a) =>
      a.importer.endsWith(join("src", "cli", "run.ts")) && BOOT.includes(a.path.slice(2, -3)) ? { path: a.path, external: true } : undefined,
    );
  },
};
await esbuild.build({ ...common, entryPoints: [join(root, "src", "cli", "run.ts")], outdir: out, splitting: true, plugins: [bootExternal] });
// No splitting: one self-contained file per boot program (the outputs share nothing), as a classic script that
// src/cli/boot-script.ts compiles with V8's code cache (Node 20 caches no ES module): a CommonJS bundle inside one
// function expression, strict as the ES modules it comes from; import.meta.url is the file's URL; import() of the
// externals (argon2) becomes require().
await esbuild.build({
  ...common,
  format: "cjs",
  entryPoints: BOOT.map((b) => join(root, "src", "cli", `${b}.ts`)),
  outdir: out,
  entryNames: "[name]",
  outExtension: { ".js": ".cjs" },
  supported: { "dynamic-import": false },
  define: { "import.meta.url": "__trustvolImportMetaUrl" },
  banner: { js: '(function (exports, require, module, __filename, __dirname) {"use strict";\nconst __trustvolImportMetaUrl = require("node:url").pathToFileURL(__filename).href;' },
  footer: { js: "})" },
});
// V8's code cache of each, made by the node that builds (a start with another Node/V8 compiles from source instead):
// a child process runs each script's top level through the same loader as the CLI, then a typical run of its commands
// on a throw-away image in a temporary directory (scripts/code-cache-training.mjs: nothing device-mapper, no root),
// then writes <file>.cache, which then holds the functions those runs compiled.
const loader = join(out, ".boot-script-build.mjs");
await esbuild.build({ ...common, entryPoints: [join(root, "src", "cli", "boot-script.ts")], outfile: loader });
try {
  // boot-lifecycle first: its runs encrypt the image the volume program's runs then dump and unlock
  const programs = ["boot-lifecycle", ...BOOT.filter((b) => b !== "boot-lifecycle")].map((b) => [b, join(out, `${b}.cjs`)]);
  const training = pathToFileURL(join(root, "scripts", "code-cache-training.mjs")).href;
  const code = `const { writeCodeCache } = await import(${JSON.stringify(pathToFileURL(loader).href)});
const { trainingRuns } = await import(${JSON.stringify(training)});
const t = trainingRuns();
try {
  for (const [name, file] of ${JSON.stringify(programs)}) {
    const runs = t.runs[name] ?? [];
    await writeCodeCache(file, async (p) => { for (const argv of runs) await p.main(argv); });
  }
} finally {
  t.cleanup();
}`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", code], { cwd: root, stdio: ["ignore", "ignore", "pipe"], encoding: "utf8", env: { ...process.env, NODE_OPTIONS: "", TRUSTVOL_TIMING: "", NODE_EXTRA_CA_CERTS: "" } });
  if (r.status !== 0) console.error(`build-cli: no code cache for the boot programs (they compile from source at each start): ${r.stderr.trim().split("\n").slice(-3).join(" / ")}`);
} finally {
  rmSync(loader, { force: true });
}
