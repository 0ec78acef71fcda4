#!/usr/bin/env node
// Entry point. Runs the compiled CLI — the bundle in dist/cli/ (fastest start), else tsc's dist/src/ — or, in a
// development checkout whose sources are newer than both builds, the TypeScript sources through tsx (a dev
// dependency), so a stale build is never what runs.
import { existsSync, statSync, readdirSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join } from "node:path";
import module from "node:module";

// V8's on-disk compile cache (Node >= 22.1) saves most of the parse/compile time of every start; absent on Node 20.
module.enableCompileCache?.();

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bundled = join(root, "dist/cli/run.js");
const compiled = join(root, "dist/src/cli/run.js");
const srcDir = join(root, "src");

function newestMtime(dir) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

// An installed package has no src/: it always runs dist/. Only a checkout compares the two.
const checkout = existsSync(join(srcDir, "cli/run.ts"));
let built = [bundled, compiled].filter((f) => existsSync(f));
if (checkout) {
  const newest = process.env.TRUSTVOL_FROM_SOURCE ? Infinity : newestMtime(srcDir);
  built = built.filter((f) => statSync(f).mtimeMs >= newest);
}
if (built.length) {
  await import(pathToFileURL(built[0]).href);
} else if (!checkout) {
  process.stderr.write(`trustvol: ${compiled} is missing; reinstall trustvol\n`);
  process.exitCode = 1;
} else {
  let register;
  try {
    ({ register } = await import("tsx/esm/api"));
  } catch {
    process.stderr.write("trustvol: the build in dist/ is missing or older than src/ and tsx is not installed; run `npm run build`\n");
    process.exit(1);
  }
  register();
  await import(pathToFileURL(join(srcDir, "cli/run.ts")).href);
}
