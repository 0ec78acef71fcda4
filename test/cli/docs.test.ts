// The man page and the bash/zsh completions come from the CLI's own definitions (scripts/gen-docs.mjs, run by prepack).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { spawnSync } from "node:child_process";
import { hasTool } from "../helpers/tools.js";
import { compiledCliIsFresh } from "../helpers/cli.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

test("gen-docs: a man page groff renders without warnings, completions that know every command and option", (t) => {
  if (!compiledCliIsFresh()) return t.skip("needs the compiled CLI (npm test builds it)");
  const g = spawnSync(process.execPath, [join(root, "scripts/gen-docs.mjs")], { cwd: root, encoding: "utf8" });
  assert.equal(g.status, 0, g.stderr);
  const man = readFileSync(join(root, "dist/man/trustvol.1"), "utf8");
  for (const c of ["format", "dump", "enroll tpm2", "enroll recovery", "header backup", "verity format", "doctor"]) assert.match(man, new RegExp(`^\\.SS trustvol ${c.replace(/ /g, " ")}`, "m"), c);
  assert.match(man, /\\-q, \\-\\-batch\\-mode/);
  assert.match(man, /\\-\\-pcr\\-bank <bank>\n.*\(default: sha256\)/);
  if (hasTool("groff")) {
    const r = spawnSync("groff", ["-man", "-Tutf8", "-ww", "-z", join(root, "dist/man/trustvol.1")], { encoding: "utf8" });
    assert.equal(r.status, 0);
    assert.equal(r.stderr, "", "groff warnings");
  }
  const bash = join(root, "dist/completion/trustvol.bash");
  assert.equal(spawnSync("bash", ["-n", bash]).status, 0);
  const complete = (...words: string[]) =>
    spawnSync("bash", ["-c", `source ${bash}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}; _trustvol; echo "\${COMPREPLY[@]}"`], { encoding: "utf8" }).stdout.trim();
  assert.equal(complete("trustvol", "enr"), "enroll");
  assert.equal(complete("trustvol", "enroll", "tp"), "tpm2");
  assert.match(complete("trustvol", "enroll", "tpm2", "--pcr"), /^--pcrs --pcr-bank --pcrlock$/);
  assert.match(complete("trustvol", "format", "--batch"), /^--batch-mode$/, "hidden aliases are not offered");
  const zsh = readFileSync(join(root, "dist/completion/_trustvol"), "utf8");
  assert.match(zsh, /^#compdef trustvol/);
  assert.match(zsh, /"enroll tpm2"\) _arguments -s .*'--pcrs\[/);
});
