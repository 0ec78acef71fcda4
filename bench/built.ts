// Benches run the CLI as an installed package does: compiled dist/, rebuilt first when src/ is newer (a checkout's
// bin/trustvol.mjs would otherwise run the sources through tsx, a second of start-up).
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = join(dirname(fileURLToPath(import.meta.url)), "..");

/** `npm run build` unless `entry` (relative to the repo) is at least as new as every file under src/. */
export function ensureBuilt(entry: string): void {
  const newest = (d: string): number => readdirSync(d, { withFileTypes: true }).reduce((m, e) => Math.max(m, e.isDirectory() ? newest(join(d, e.name)) : statSync(join(d, e.name)).mtimeMs), 0);
  const built = join(REPO, entry);
  if (existsSync(built) && statSync(built).mtimeMs >= newest(join(REPO, "src"))) return;
  console.log("building dist/ (npm run build) so the CLI runs compiled, as it ships");
  const r = spawnSync("npm", ["run", "build"], { cwd: REPO, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`npm run build failed: ${r.stdout}${r.stderr}`);
}
