#!/usr/bin/env node
// Entry point. Runs the compiled CLI (dist/) — or, in a development checkout whose sources are newer than the build,
// the TypeScript sources through tsx, so a stale build is never what runs.
import { existsSync, statSync, readdirSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const built = join(root, "dist/src/cli/run.js");
const srcDir = join(root, "src");

function newestMtime(dir) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

const useBuilt = existsSync(built) && !process.env.TRUSTVOL_FROM_SOURCE && (!existsSync(srcDir) || statSync(built).mtimeMs >= newestMtime(srcDir));
if (useBuilt) {
  await import(pathToFileURL(built).href);
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import(pathToFileURL(join(srcDir, "cli/run.ts")).href);
}
