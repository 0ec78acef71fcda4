#!/usr/bin/env node
// Entry point: run the compiled CLI when present (installed package), else the TypeScript sources via tsx (dev checkout).
import { existsSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join } from "node:path";
const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const built = join(root, "dist/src/cli/run.js");
if (existsSync(built) && !process.env.TRUSTVOL_FROM_SOURCE) {
  await import(pathToFileURL(built).href);
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import(pathToFileURL(join(root, "src/cli/run.ts")).href);
}
