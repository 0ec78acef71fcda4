#!/usr/bin/env node
// Runs the test suite with node's own test runner (through tsx for TypeScript).
//   npm test            every tier: unit, reference-tool interop (cryptsetup, swtpm, SoftHSM...), real-kernel guest
//   npm run test:fast   unit + host interop, skipping *.slow.test.ts and the QEMU tier (test/vm/)
//   npm test -- PATTERN only files whose path contains PATTERN   (--no-build: skip the tsc build/type check)
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = join(fileURLToPath(import.meta.url), "..", "..");
const args = process.argv.slice(2);
const fast = args.includes("--fast");
const patterns = args.filter((a) => !a.startsWith("--"));

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (name.endsWith(".test.ts")) out.push(p);
  }
  return out;
}
let files = walk(join(root, "test")).map((p) => relative(root, p));
if (fast) files = files.filter((f) => !f.endsWith(".slow.test.ts") && !f.startsWith("test/vm/"));
if (patterns.length) files = files.filter((f) => patterns.some((p) => f.includes(p)));
if (!files.length) {
  console.error("no test files matched");
  process.exit(1);
}
// Build first: type-checks the whole project, and the CLI the tests spawn then runs compiled (as it ships).
if (!args.includes("--no-build")) {
  const b = spawnSync(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", join(root, "tsconfig.json")], { cwd: root, stdio: "inherit" });
  if (b.status !== 0) {
    console.error("type check / build failed");
    process.exit(1);
  }
  // the bundled CLI (dist/cli/) that bin/trustvol.mjs prefers, as the package ships it
  const c = spawnSync(process.execPath, [join(root, "scripts/build-cli.mjs")], { cwd: root, stdio: "inherit" });
  if (c.status !== 0) {
    console.error("CLI bundle failed");
    process.exit(1);
  }
}
const r = spawnSync(
  process.execPath,
  ["--import", "tsx", "--test", "--test-reporter=spec", `--test-concurrency=${process.env.TEST_CONCURRENCY ?? 2}`, ...files],
  { cwd: root, stdio: "inherit", env: { ...process.env, TRUSTVOL_TEST: "1" } },
);
process.exit(r.status ?? 1);
