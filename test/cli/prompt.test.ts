// Interactive use: on a terminal the passphrase is prompted for with echo off (never taken from argv).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { spawn } from "node:child_process";
import { needTools, tmpDir } from "../helpers/tools.js";
import { TRUSTVOL_BIN } from "../helpers/cli.js";
import { formatLuks2 } from "../../src/luks2/format.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { writeFileSync, readFileSync } from "node:fs";

/** Run argv under a pseudo-terminal (util-linux `script`), typing `keys` once the prompt shows. */
function onTerminal(argv: string[], answers: string[]): Promise<{ code: number | null; screen: string }> {
  return new Promise((resolve) => {
    const cmd = argv.map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ");
    const p = spawn("script", ["-qec", cmd, "/dev/null"], { stdio: ["pipe", "pipe", "pipe"] });
    let screen = "";
    let sent = 0;
    const feed = () => {
      const prompts = (screen.match(/(passphrase|PIN)[^:\n]*: /g) ?? []).length;
      while (sent < prompts && sent < answers.length) p.stdin.write(`${answers[sent++]}\r`);
    };
    p.stdout.on("data", (d) => ((screen += d), feed()));
    p.stderr.on("data", (d) => (screen += d));
    const timer = setTimeout(() => p.kill("SIGKILL"), 30_000);
    p.on("exit", (code) => (clearTimeout(timer), resolve({ code, screen })));
  });
}

test("passphrase prompt on a terminal: echo off, right and wrong answers", async (t) => {
  if (!needTools(t, "script")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const dev = new MemoryBlockDevice(17 * 1024 * 1024);
  await formatLuks2(dev, Buffer.from("typed-secret"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 }, digestIterations: 1000 });
  const img = join(dir, "v.img");
  writeFileSync(img, dev.data);
  const ok = await onTerminal([process.execPath, TRUSTVOL_BIN, "unlock", "--test", img], ["typed-secret"]);
  assert.equal(ok.code, 0, ok.screen);
  assert.match(ok.screen, /Enter passphrase for .*v\.img: /);
  assert.doesNotMatch(ok.screen, /typed-secret/, "the passphrase is not echoed");
  assert.match(ok.screen, /Key slot 0 unlocked/);
  const bad = await onTerminal([process.execPath, TRUSTVOL_BIN, "unlock", "--test", img], ["nope"]);
  assert.equal(bad.code, 3, bad.screen);
  assert.match(bad.screen, /no key available with this passphrase/);
  // A new passphrase is asked twice; a mismatch is refused before anything is written.
  writeFileSync(join(dir, "new.img"), Buffer.alloc(1 << 20));
  const fmt = await onTerminal([process.execPath, TRUSTVOL_BIN, "format", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", join(dir, "new.img")], ["one", "two"]);
  assert.equal(fmt.code, 2, fmt.screen);
  assert.match(fmt.screen, /passphrases do not match/);
  assert.ok(readFileSync(join(dir, "new.img")).equals(Buffer.alloc(1 << 20)), "nothing was written");
});

test("a TPM token with a PIN: the PIN is prompted for on a terminal (tokens first, no passphrase asked)", async (t) => {
  if (!needTools(t, "script", "swtpm")) return;
  const { startSwtpm } = await import("../helpers/swtpm.js");
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const dev = new MemoryBlockDevice(17 * 1024 * 1024);
  await formatLuks2(dev, Buffer.from("factory"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 }, digestIterations: 1000 });
  const img = join(dir, "pin.img");
  writeFileSync(img, dev.data);
  writeFileSync(join(dir, "f"), "factory");
  writeFileSync(join(dir, "pin"), "1357");
  const { trustvol } = await import("../helpers/cli.js");
  const e = trustvol(["enroll", "tpm2", img, "--tpm2-device", tpm.device, "--with-pin", "--pin-file", join(dir, "pin"), "--key-file", join(dir, "f")]);
  assert.equal(e.status, 0, e.stderr);
  const r = await onTerminal([process.execPath, TRUSTVOL_BIN, "unlock", "--test", "--tpm2-device", tpm.device, img], ["1357"]);
  assert.equal(r.code, 0, r.screen);
  assert.match(r.screen, /Enter token PIN: /);
  assert.doesNotMatch(r.screen, /1357|Enter passphrase/);
  assert.match(r.screen, /unlocked through token 0/);
});
