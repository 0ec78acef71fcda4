#!/usr/bin/env node
// The CLI as it starts fastest: src/cli/run.ts bundled by esbuild into dist/cli/ — run.js plus shared chunks, each
// command module still its own chunk loaded only when that command runs (code splitting keeps MODULES lazy).
// A handful of files instead of ~40 ES modules and commander's CommonJS: fewer resolves, reads and compiles at boot.
// Native modules (argon2, pkcs11js) stay outside, found in node_modules next to the package as before; the sector
// addon is found by walking up from dist/cli/ to native/build/. bin/trustvol.mjs runs dist/cli/run.js when present.
// The boot-critical commands (src/cli/boot-commands.ts: unlock --test, dump…) run from dist/cli/boot.js, src/cli/boot.ts
// bundled alone without splitting: on Node 20 (no compile cache) resolving and loading each ES module costs ~1-2 ms,
// and the unlock path spans ~40 chunks of the split build. run.js imports it by its runtime path (external below);
// it shares no state with the split chunks (its own copy of the code it needs).
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
/** run.ts's `import("./boot.js")` stays a runtime import of the separately built dist/cli/boot.js. */
const bootExternal = {
  name: "boot-external",
  setup(b) {
    b.onResolve({ filter: /^\.\/boot\.js$/ }, (a) => (a.importer.endsWith(join("src", "cli", "run.ts")) ? { path: "./boot.js", external: true } : undefined));
  },
};
await esbuild.build({ ...common, entryPoints: [join(root, "src", "cli", "run.ts")], outdir: out, splitting: true, plugins: [bootExternal] });
await esbuild.build({ ...common, entryPoints: [join(root, "src", "cli", "boot.ts")], outfile: join(out, "boot.js") });
