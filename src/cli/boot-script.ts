// The boot programs of the shipped CLI (dist/cli/boot-*.cjs, built by scripts/build-cli.mjs) run as classic scripts
// through node:vm with V8's code cache written beside them at build time (boot-*.cjs.cache). Node 20 has no compile
// cache for ES modules (module.enableCompileCache is Node >= 22.1), and parsing and compiling a 0.6-1.1 MB bundle
// took 50-65 ms of every `open`, `unlock` or `reencrypt` start here; from the cache, ~25 ms.
// Each file is one function expression `(function (exports, require, module, __filename, __dirname) {...})` (a
// CommonJS bundle inside that wrapper), so the bytes V8 compiles are exactly the file's, at build time and at run time.
// The cache lives in the package beside the code it belongs to and is as trusted as that code; V8 rejects it (and
// compiles from source) when the source, the V8 version or its flags differ.
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Script } from "node:vm";
import { mark } from "../util/timing.js";

export const CODE_CACHE_SUFFIX = ".cache";

/** What a boot program exports (src/cli/boot-*.ts). */
export interface BootProgram {
  main(argv: string[]): Promise<number>;
}

/** boot-volume's extras: run.ts's commander-free `dump DEVICE [--json]`. */
export interface VolumeBootProgram extends BootProgram {
  dumpCommand(device: string, o: Record<string, unknown>): Promise<void>;
  reportError(e: unknown, json: boolean): number;
}

/** Compile (from the code cache when one is beside it and V8 accepts it) and run a boot script: its exports. */
function runScript(file: string, useCache: boolean): { exports: unknown; script: Script } {
  const source = readFileSync(file, "utf8");
  let cachedData: Buffer | undefined;
  if (useCache) {
    try {
      cachedData = readFileSync(file + CODE_CACHE_SUFFIX);
    } catch {
      cachedData = undefined; // none shipped (or unreadable): compile from source
    }
  }
  const script = new Script(source, { filename: file, cachedData });
  mark(`boot program: ${!cachedData ? "no code cache" : script.cachedDataRejected ? "code cache rejected" : "code cache used"}`);
  const wrapper = script.runInThisContext() as (exports: object, require: NodeJS.Require, module: { exports: unknown }, filename: string, dirname: string) => void;
  const module = { exports: {} as unknown };
  wrapper.call(module.exports, module.exports as object, createRequire(file), module, file, dirname(file));
  return { exports: module.exports, script };
}

/**
 * The boot program `name` ("boot-volume", "boot-kernel", "boot-lifecycle"): dist/cli/<name>.cjs beside the running
 * bundle when it is there, else `fallback` (tsc's dist/src or the sources through tsx: the ES module itself).
 */
export async function bootProgram<P extends BootProgram>(name: string, fallback: () => Promise<P>): Promise<P> {
  const file = fileURLToPath(new URL(`./${name}.cjs`, import.meta.url));
  if (!existsSync(file)) return fallback();
  return runScript(file, true).exports as P;
}

/**
 * Build step: run the script's top level (no cache) and then `train` (a typical run of the program's commands, whose
 * failure is ignored), then write V8's code cache for it beside it (0644, atomically). Made after those runs, the cache
 * holds the functions they compiled, not only the top level's: V8 compiles the rest lazily at each start (~20 ms of a
 * `reencrypt` here).
 */
export async function writeCodeCache(file: string, train?: (program: BootProgram) => Promise<unknown>): Promise<number> {
  const { script, exports } = runScript(file, false);
  if (train) await train(exports as BootProgram).catch(() => undefined);
  const data = script.createCachedData();
  const tmp = `${file}${CODE_CACHE_SUFFIX}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, data, { mode: 0o644 });
    renameSync(tmp, file + CODE_CACHE_SUFFIX);
  } finally {
    rmSync(tmp, { force: true });
  }
  return data.length;
}
