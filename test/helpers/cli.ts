// Run the trustvol CLI as a user would (a child process), secrets on stdin or in key files.
import { spawnSync } from "node:child_process";
import * as fsMod from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const TRUSTVOL_BIN = join(root, "bin", "trustvol.mjs");

export function trustvol(args: string[], opts: { input?: string | Uint8Array; env?: NodeJS.ProcessEnv } = {}): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [TRUSTVOL_BIN, ...args], { input: opts.input ?? "", env: { ...process.env, ...opts.env }, encoding: "utf8", timeout: 300_000, maxBuffer: 1 << 26 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Run the CLI in this process (fast; no stdin): same argv parsing, same exit code, output captured via the CLI's io. */
export async function trustvolInProcess(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  const { main } = await import("../../src/cli/main.js");
  const { io } = await import("../../src/cli/io.js");
  const out: string[] = [], err: string[] = [];
  const saved = { ...io };
  io.out = (c) => void out.push(typeof c === "string" ? c : Buffer.from(c).toString("latin1"));
  io.err = (c) => void err.push(typeof c === "string" ? c : Buffer.from(c).toString("latin1"));
  try {
    const status = await main(args);
    return { status, stdout: out.join(""), stderr: err.join("") };
  } finally {
    Object.assign(io, saved);
  }
}

/** True when bin/trustvol.mjs will run the compiled build (dist is newer than every source file), as it ships. */
export function compiledCliIsFresh(): boolean {
  const { existsSync, statSync, readdirSync } = fsMod;
  const built = join(root, "dist/src/cli/run.js");
  if (!existsSync(built)) return false;
  const newest = (dir: string): number =>
    readdirSync(dir, { withFileTypes: true }).reduce((m: number, e: { name: string; isDirectory(): boolean }) => Math.max(m, e.isDirectory() ? newest(join(dir, e.name)) : statSync(join(dir, e.name)).mtimeMs), 0);
  return statSync(built).mtimeMs >= newest(join(root, "src"));
}
