// run.ts sends the boot-critical commands to their single-file programs (src/cli/boot-*.ts, dist/cli/boot-*.cjs):
// each must register exactly the commands routed to it, a routed command must parse and print as through main.ts,
// and the shipped ones start from their V8 code cache (src/cli/boot-script.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { buildProgram } from "../../src/cli/main.js";
import { buildProgram as buildWith, KERNEL_MODULE, LIFECYCLE_MODULES, VOLUME_MODULE } from "../../src/cli/program.js";
import { KERNEL_COMMANDS, LIFECYCLE_COMMANDS, VOLUME_COMMANDS } from "../../src/cli/boot-commands.js";
import { compiledCliIsFresh, trustvol, trustvolInProcess } from "../helpers/cli.js";
import { cpSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

test("each boot program registers exactly the commands run.ts routes to it", async () => {
  for (const [modules, routed] of [[[VOLUME_MODULE], VOLUME_COMMANDS], [[KERNEL_MODULE], KERNEL_COMMANDS], [LIFECYCLE_MODULES, LIFECYCLE_COMMANDS]] as const) {
    const program = await buildWith([], [...modules]);
    assert.deepEqual(program.commands.map((c) => c.name()).sort(), [...routed].sort());
  }
  // and main.ts's full program has the same commands under the same names
  const all = (await buildProgram()).commands.map((c) => c.name());
  for (const c of [...VOLUME_COMMANDS, ...KERNEL_COMMANDS, ...LIFECYCLE_COMMANDS]) assert.ok(all.includes(c), c);
});

test("a routed command prints as main.ts's full program does (help, usage error, missing device, bad option value)", async () => {
  for (const argv of [["unlock", "--help"], ["open", "--help"], ["dump", "--bogus", "x"], ["unlock", "--test", "/nonexistent/x.img"], ["unlock", "--test", "--tries", "0", "x"], ["doctor", "--root", "/nonexistent"], ["close"], ["reencrypt", "--help"], ["reencrypt", "--resilience", "bogus", "x.img"], ["provision", "--help"], ["recovery", "--help"]]) {
    const routed = trustvol(argv); // a child process: bin → run.js → boot-volume.cjs / boot-kernel.cjs / boot-lifecycle.cjs
    const full = await trustvolInProcess(argv); // main.ts with every module
    assert.deepEqual(routed, full, argv.join(" "));
  }
});

test("the shipped boot programs (dist/cli/boot-*.cjs) start from V8's code cache written beside them at build", (t) => {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
  if (!existsSync(join(root, "dist/cli/boot-volume.cjs")) || !compiledCliIsFresh()) return t.skip("no fresh dist/cli build (npm run build): bin/trustvol.mjs runs the sources");
  for (const [argv, file] of [[["unlock", "--help"], "boot-volume"], [["open", "--help"], "boot-kernel"], [["reencrypt", "--help"], "boot-lifecycle"]] as const) {
    assert.ok(existsSync(join(root, "dist/cli", `${file}.cjs.cache`)), `${file}.cjs.cache`);
    const r = trustvol([...argv], { env: { TRUSTVOL_TIMING: "1", NODE_OPTIONS: "" } });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /trustvol-time \d+ \d+ boot program: code cache used\n/, `${argv.join(" ")}: ${r.stderr.split("\n").slice(0, 3).join(" | ")}`);
  }
  // A cache V8 cannot use (another Node, a corrupted file) costs only the compile: the program runs from source.
  const dir = mkdtempSync(join(tmpdir(), "trustvol-codecache-"));
  try {
    cpSync(join(root, "dist/cli"), join(dir, "cli"), { recursive: true });
    writeFileSync(join(dir, "cli", "boot-lifecycle.cjs.cache"), Buffer.alloc(4096, 0x5a));
    rmSync(join(dir, "cli", "boot-volume.cjs.cache"));
    const run = (argv: string[]) => spawnSync(process.execPath, [join(dir, "cli", "run.js"), ...argv], { encoding: "utf8", env: { ...process.env, TRUSTVOL_TIMING: "1", NODE_OPTIONS: "" } });
    const bad = run(["reencrypt", "--help"]);
    assert.equal(bad.status, 0, bad.stderr);
    assert.match(bad.stderr, /boot program: code cache rejected/);
    assert.match(bad.stdout, /re-encrypt a LUKS2 device/);
    const none = run(["unlock", "--help"]);
    assert.equal(none.status, 0, none.stderr);
    assert.match(none.stderr, /boot program: no code cache/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the code-cache training runs (scripts/code-cache-training.mjs) all succeed, in build-cli's order, and leave nothing behind", (t) => {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
  if (!existsSync(join(root, "dist/cli/boot-volume.cjs")) || !compiledCliIsFresh()) return t.skip("no fresh dist/cli build (npm run build)");
  // The same runs through the shipped CLI: a run that starts failing (an option renamed, a refusal) would otherwise
  // only leave a colder cache behind, silently.
  const code = `const { trainingRuns } = await import(${JSON.stringify(pathToFileURL(join(root, "scripts/code-cache-training.mjs")).href)});
const t = trainingRuns();
const { spawnSync } = await import("node:child_process");
const { existsSync } = await import("node:fs");
let bad = [];
try {
  for (const name of ["boot-lifecycle", "boot-volume", "boot-kernel"])
    for (const argv of t.runs[name]) {
      const r = spawnSync(process.execPath, [${JSON.stringify(join(root, "bin/trustvol.mjs"))}, ...argv], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
      if (r.status !== 0) bad.push(argv.slice(0, 2).join(" ") + ": " + r.status + " " + r.stderr.trim());
    }
} finally {
  t.cleanup();
}
console.log(JSON.stringify({ bad, left: existsSync(t.dir) }));`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", code], { encoding: "utf8", env: { ...process.env, NODE_OPTIONS: "" } });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split("\n").at(-1)!) as { bad: string[]; left: boolean };
  assert.deepEqual(out.bad, [], "every training run exits 0");
  assert.equal(out.left, false, "the temporary directory is removed");
});
