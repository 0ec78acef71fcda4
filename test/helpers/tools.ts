// Shared test plumbing: temp dirs, running reference tools with stdin (never secrets in argv), tool presence.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync, type SpawnSyncOptions } from "node:child_process";
import type { TestContext } from "node:test";

export const IN_CI = process.env.CI === "true" || process.env.CI === "1";

export function tmpDir(prefix = "trustvol-test-"): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function hasTool(name: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${name}`], { stdio: "ignore" }).status === 0;
}

/** Skip when a reference tool is missing on a dev machine; in CI a missing tool is a failure, never a silent skip. */
export function needTools(t: TestContext, ...names: string[]): boolean {
  const missing = names.filter((n) => !hasTool(n));
  if (!missing.length) return true;
  if (IN_CI) throw new Error(`reference tool(s) missing in CI: ${missing.join(", ")} (.ci/run must install them)`);
  t.skip(`missing ${missing.join(", ")}`);
  return false;
}

export interface RunResult {
  status: number;
  stdout: Buffer;
  stderr: string;
}

/** Run a command; input (passphrases, keys) goes on stdin. Throws with stderr when check is true and it fails. */
export function run(cmd: string, args: string[], opts: { input?: string | Uint8Array; check?: boolean; env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): RunResult {
  const o: SpawnSyncOptions = { input: opts.input, env: opts.env ?? process.env, cwd: opts.cwd, timeout: opts.timeoutMs ?? 300_000, maxBuffer: 1 << 28 };
  const r = spawnSync(cmd, args, o);
  const res = { status: r.status ?? -1, stdout: r.stdout as Buffer, stderr: (r.stderr as Buffer)?.toString() ?? "" };
  if ((opts.check ?? true) && res.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${res.status}): ${res.stderr.trim()}`);
  return res;
}
