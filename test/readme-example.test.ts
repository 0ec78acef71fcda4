// The README's library example runs as written (against the sources here; test/package/ runs it against the package).
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { spawnSync } from "node:child_process";
import { tmpDir } from "./helpers/tools.js";
import { readmeExample } from "./helpers/readme.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

test("README API example: format, enroll a recovery key, unlock with it", (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const src = readmeExample().replace(/from "trustvol"/g, `from ${JSON.stringify(pathToFileURL(join(root, "src/index.ts")).href)}`);
  writeFileSync(join(dir, "example.mts"), src);
  const r = spawnSync(process.execPath, ["--import", "tsx", join(dir, "example.mts"), join(dir, "disk.img")], { cwd: root, encoding: "utf8", timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^formatted [0-9a-f-]{36}\nunlocked key slot 1 \(recovery key in slot 1\)\n$/);
});
