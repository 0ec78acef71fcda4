// Smoke test of the QEMU + swtpm harness: boots, sees a TPM 2.0 and dm-crypt, propagates exit status and output,
// enforces the timeout, cuts power on a marker, and leaves no process behind.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { needGuest, runInGuest } from "./harness.js";

const T = { timeout: 40 * 60_000 }; // the first run may have to build the kernel

function ourChildren(): string[] {
  const r = spawnSync("ps", ["-o", "pid=,comm=", "--ppid", String(process.pid)], { encoding: "utf8" });
  return r.stdout.split("\n").filter((l) => /qemu|swtpm/.test(l));
}

test("boots: kernel, TPM 2.0, dm-crypt, keyrings, host tools; exit 0 and output come back", T, async (t) => {
  if (!needGuest(t)) return;
  const r = await runInGuest({
    script: "uname -r; cat /sys/class/tpm/tpm0/tpm_version_major; dmsetup targets; keyctl show @u >/dev/null && echo keyrings-ok; node -e 'console.log(\"node\", process.version)'; echo to-stderr >&2",
    srk: true,
  });
  t.diagnostic(`boot ${r.bootMs} ms, total ${r.totalMs} ms`);
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.split("\n");
  assert.match(lines[0]!, /^\d+\.\d+/);
  assert.equal(lines[1], "2", "TPM 2.0 visible in the guest");
  assert.match(r.stdout, /^crypt\s+v\d/m, "dm-crypt target present");
  assert.match(r.stdout, /keyrings-ok/);
  assert.match(r.stdout, /^node v\d+/m);
  assert.equal(r.stderr, "to-stderr\n");
  assert.match(r.consoleLog, /trustvol-vm: script/);
  assert.equal(r.timedOut, false);
  assert.deepEqual(ourChildren(), [], "qemu and swtpm are gone");
});

test("a failing script: its exit status, output and env arrive; the scratch share is writable", T, async (t) => {
  if (!needGuest(t)) return;
  const { dir, cleanup } = tmpDir("trustvol-vm-scratch-");
  t.after(cleanup);
  const r = await runInGuest({
    script: 'echo "arg=$1 env=$GREETING"; echo kept > "$TRUSTVOL_VM_SCRATCH/out.txt"; echo failing >&2; exit 7',
    args: ["a b"],
    env: { GREETING: "it's here" },
    scratchDir: dir,
    tpm: false,
  });
  assert.equal(r.status, 7);
  assert.equal(r.stdout, "arg=a b env=it's here\n");
  assert.equal(r.stderr, "failing\n");
  assert.equal(readFileSync(join(dir, "out.txt"), "utf8"), "kept\n");
});

test("timeout: a hanging script is stopped, status 124", T, async (t) => {
  if (!needGuest(t)) return;
  const r = await runInGuest({ script: "echo before; sleep 600; echo never", timeoutMs: 2_000, tpm: false });
  assert.equal(r.status, 124);
  assert.equal(r.timedOut, true);
  assert.equal(r.stdout, "before\n");
  assert.deepEqual(ourChildren(), []);
});

test("power cut on a marker: the guest dies mid-run, no status, nothing after the marker", T, async (t) => {
  if (!needGuest(t)) return;
  const { dir, cleanup } = tmpDir("trustvol-vm-cut-");
  t.after(cleanup);
  const r = await runInGuest({
    script: 'echo 1 > "$TRUSTVOL_VM_SCRATCH/a"; echo CUT-HERE; sleep 30; echo 2 > "$TRUSTVOL_VM_SCRATCH/b"',
    killOnOutput: "CUT-HERE",
    scratchDir: dir,
    tpm: false,
  });
  assert.equal(r.powerCut, true);
  assert.equal(r.status, null);
  assert.ok(existsSync(join(dir, "a")));
  assert.ok(!existsSync(join(dir, "b")));
  assert.deepEqual(ourChildren(), []);
});
