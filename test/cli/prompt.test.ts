// Interactive use: on a terminal the passphrase is prompted for with echo off (never taken from argv).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { spawn, spawnSync } from "node:child_process";
import { needTools, tmpDir } from "../helpers/tools.js";
import { TRUSTVOL_BIN } from "../helpers/cli.js";
import { formatLuks2 } from "../../src/luks2/format.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { writeFileSync, readFileSync, openSync, closeSync } from "node:fs";

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
  const bad = await onTerminal([process.execPath, TRUSTVOL_BIN, "unlock", "--test", img], ["nope", "nope", "nope"]);
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

/** The pty's echo flag while the prompt is on screen: the CLI's own stdin (via /proc) is the pty `stty -a` reads. */
function onTerminalProbingEcho(argv: string[], answers: string[], ttyFile: string): Promise<{ code: number | null; screen: string; echoAtPrompt: boolean[] }> {
  return new Promise((resolve) => {
    const cmd = `echo $$ > '${ttyFile}'; exec ` + argv.map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ");
    const p = spawn("script", ["-qec", cmd, "/dev/null"], { stdio: ["pipe", "pipe", "pipe"] });
    let screen = "";
    let sent = 0;
    const echoAtPrompt: boolean[] = [];
    const feed = () => {
      const prompts = (screen.match(/passphrase[^:\n]*: /g) ?? []).length;
      while (sent < prompts && sent < answers.length) {
        // The prompt is visible: the terminal must already be silent (no window for type-ahead to echo).
        const fd = openSync(`/proc/${readFileSync(ttyFile, "utf8").trim()}/fd/0`, "r");
        try {
          const st = spawnSync("stty", ["-a"], { stdio: [fd, "pipe", "pipe"], encoding: "utf8" });
          echoAtPrompt.push(/(^|\s)echo(\s|$)/.test(st.stdout));
        } finally {
          closeSync(fd);
        }
        p.stdin.write(`${answers[sent++]}\r`);
      }
    };
    p.stdout.on("data", (d) => ((screen += d), feed()));
    p.stderr.on("data", (d) => (screen += d));
    const timer = setTimeout(() => p.kill("SIGKILL"), 60_000);
    p.on("exit", (code) => (clearTimeout(timer), resolve({ code, screen, echoAtPrompt })));
  });
}

test("echo is off before the prompt is written; a wrong passphrase typed at the terminal is asked again (--tries, default 3)", async (t) => {
  if (!needTools(t, "script", "stty")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const dev = new MemoryBlockDevice(17 * 1024 * 1024);
  await formatLuks2(dev, Buffer.from("typed-secret"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 }, digestIterations: 1000 });
  const img = join(dir, "v.img");
  writeFileSync(img, dev.data);
  const tty = join(dir, "tty");
  const r = await onTerminalProbingEcho([process.execPath, TRUSTVOL_BIN, "unlock", "--test", img], ["wrong-one", "wrong-two", "typed-secret"], tty);
  assert.equal(r.code, 0, r.screen);
  assert.equal((r.screen.match(/Enter passphrase for /g) ?? []).length, 3, r.screen);
  assert.equal((r.screen.match(/no key available with this passphrase/g) ?? []).length, 2, r.screen);
  assert.doesNotMatch(r.screen, /wrong-one|wrong-two|typed-secret/, "nothing typed is echoed");
  assert.deepEqual(r.echoAtPrompt, [false, false, false], "echo was on while a prompt was showing");
  // --tries 2: two wrong answers and the command gives up with exit 3.
  const two = await onTerminalProbingEcho([process.execPath, TRUSTVOL_BIN, "unlock", "--test", "--tries", "2", img], ["a", "b", "typed-secret"], tty);
  assert.equal(two.code, 3, two.screen);
  assert.equal((two.screen.match(/Enter passphrase for /g) ?? []).length, 2, two.screen);
  // A key file gets one try: a wrong key file is not retried.
  writeFileSync(join(dir, "kf"), "wrong", { mode: 0o600 });
  const kf = await onTerminalProbingEcho([process.execPath, TRUSTVOL_BIN, "unlock", "--test", "--key-file", join(dir, "kf"), img], [], tty);
  assert.equal(kf.code, 3, kf.screen);
  assert.equal((kf.screen.match(/no key available/g) ?? []).length, 1, kf.screen);
});
