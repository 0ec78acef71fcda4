#!/usr/bin/env node
// The CLI as it starts fastest: src/cli/run.ts bundled by esbuild into dist/cli/ — run.js plus shared chunks, each
// command module still its own chunk loaded only when that command runs (code splitting keeps MODULES lazy).
// A handful of files instead of ~40 ES modules and commander's CommonJS: fewer resolves, reads and compiles at boot.
// Native modules (argon2, pkcs11js) stay outside, found in node_modules next to the package as before; the sector
// addon is found by walking up from dist/cli/ to native/build/. bin/trustvol.mjs runs dist/cli/run.js when present.
// The boot-critical command modules (src/cli/boot-commands.ts: the volume commands with unlock --test and dump; the
// kernel commands with open; reencrypt and provision, the first boot's online rotation) run from
// dist/cli/boot-volume.js, boot-kernel.js and boot-lifecycle.js: src/cli/boot-*.ts each bundled alone
// without splitting. On Node 20 (no compile cache) resolving, reading and compiling each ES module costs ~1 ms, and
// `unlock --test` spanned ~38 chunks of the split build. run.js imports them by their runtime paths (external below);
// they share no state with the split chunks (each has its own copy of the code it needs).
import { rmSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

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
/** run.ts's `import("./boot-*.js")` stay runtime imports of the separately built dist/cli/boot-*.js. */
const bootExternal = {
  name: "boot-external",
  setup(b) {
    b.onResolve({ filter: /^\.\/boot-[a-z]+\.js$/ }, (a) =>
      a.importer.endsWith(join("src", "cli", "run.ts")) && BOOT.includes(a.path.slice(2, -3)) ? { path: a.path, external: true } : undefined,
    );
  },
};
await esbuild.build({ ...common, entryPoints: [join(root, "src", "cli", "run.ts")], outdir: out, splitting: true, plugins: [bootExternal] });
// no splitting: one self-contained file per boot program (the outputs share nothing)
await esbuild.build({ ...common, entryPoints: BOOT.map((b) => join(root, "src", "cli", `${b}.ts`)), outdir: out, entryNames: "[name]" });
