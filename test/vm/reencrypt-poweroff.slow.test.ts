// Hard power-offs (QEMU killed, nothing flushed by a shutdown) during online re-encryption of a mounted volume, on a
// real kernel; the volume is a virtio disk whose host file survives the kill, so the next boot sees what the "power
// cut" left. Interop both ways (cryptsetup starts → power-off → trustvol opens and resumes; trustvol starts →
// power-off → cryptsetup opens and resumes), then TRUSTVOL_POWERCUTS (default 20) power-offs at different moments of
// trustvol's own online run, each followed by a boot that opens, checks (files, fsynced writer records, fsck) and
// resumes. TRUSTVOL_POWEROFF_ONLY=interop|cuts runs one of the two. Guest side: test/vm/guest/reenc-poweroff.sh.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { mkdirSync, writeFileSync, truncateSync } from "node:fs";
import { tmpDir } from "../helpers/tools.js";
import { GUEST_DIR, needGuest, runInGuest, type GuestRunResult } from "./harness.js";

const facts = (r: GuestRunResult) => Object.fromEntries([...r.stdout.matchAll(/^(\w+)=(.*)$/gm)].map((m) => [m[1]!, m[2]!]));
const lastAck = (r: GuestRunResult) => Math.max(-1, ...[...r.stdout.matchAll(/^ACK (\d+)$/gm)].map((m) => Number(m[1])));

function world(t: import("node:test").TestContext) {
  const { dir, cleanup } = tmpDir("trustvol-poweroff-");
  t.after(cleanup);
  const disk = join(dir, "disk.img");
  writeFileSync(disk, "");
  truncateSync(disk, 48 << 20); // 32 MiB of data after the 16 MiB header
  const scratch = join(dir, "scratch");
  mkdirSync(scratch);
  const boot = (args: string[], cut: boolean) =>
    runInGuest({ scriptPath: join(GUEST_DIR, "reenc-poweroff.sh"), args, disks: [disk], scratchDir: scratch, timeoutMs: 600_000, tpm: false, env: { TRUSTVOL_TRACE: process.env.TRUSTVOL_TRACE ?? "" }, ...(cut ? { killOnOutput: /KILLME$/m } : {}) });
  return boot;
}

function check(r: GuestRunResult, what: string, cut: boolean) {
  const f = facts(r);
  const ctx = `${what}: ${r.stderr.slice(-3000)}\n${r.stdout.replace(/^ACK \d+\n/gm, "")}`;
  assert.equal(f.open_rc, "0", ctx);
  assert.equal(f.fsck_rc, "0", ctx);
  assert.equal(f.files_rc, "0", ctx);
  assert.equal(f.writer_ok, "1", ctx);
  if (cut) assert.equal(r.powerCut, true, ctx);
  else {
    assert.equal(r.status, 0, ctx);
    assert.equal(f.resume_rc, "0", ctx);
    assert.equal(f.state_after, "none", ctx);
    assert.equal(f.fsck_after_rc, "0", ctx);
  }
  return f;
}

const only = process.env.TRUSTVOL_POWEROFF_ONLY; // "interop" | "cuts" (default both)

test("hard power-off during online re-encryption, interop both ways: cryptsetup → trustvol resumes, trustvol → cryptsetup resumes", { timeout: 60 * 60_000, skip: only === "cuts" }, async (t) => {
  if (!needGuest(t)) return;
  const boot = world(t);
  const t0 = Date.now();
  const s = await boot(["setup"], false);
  assert.equal(s.status, 0, s.stderr);
  // cryptsetup starts online, power-off; trustvol opens (recovers) and resumes online to the end
  let r = await boot(["start", "cs", String(8 << 20)], true);
  assert.equal(r.powerCut, true, `${r.stderr}\n${r.stdout}`);
  r = await boot(["check", "tv", String(lastAck(r))], false);
  const a = check(r, "cryptsetup → trustvol", false);
  t.diagnostic(`cryptsetup cut in state ${a.state_before}; trustvol recovered=${a.recovered ?? 0}`);
  // trustvol starts online, power-off; cryptsetup opens and resumes online to the end
  r = await boot(["start", "tv", String(12 << 20)], true);
  assert.equal(r.powerCut, true, `${r.stderr}\n${r.stdout}`);
  r = await boot(["check", "cs", String(lastAck(r))], false);
  const b = check(r, "trustvol → cryptsetup", false);
  t.diagnostic(`trustvol cut in state ${b.state_before}; interop total ${Math.round((Date.now() - t0) / 1000)} s`);
});

test("repeated hard power-offs (TRUSTVOL_POWERCUTS, default 20) at different moments of trustvol's online run: each next boot opens, checks, resumes; 0 bytes lost", { timeout: 120 * 60_000, skip: only === "interop" }, async (t) => {
  if (!needGuest(t)) return;
  const boot = world(t);
  const t0 = Date.now();
  const s = await boot(["setup"], false);
  assert.equal(s.status, 0, s.stderr);
  const n = Number(process.env.TRUSTVOL_POWERCUTS ?? 20);
  const states: string[] = [];
  let recovered = 0;
  let r = await boot(["start", "tv", String(1 << 20)], true);
  assert.equal(r.powerCut, true, `${r.stderr}\n${r.stdout}`);
  let ack = lastAck(r);
  let missed = 0;
  for (let i = 1; i <= n; i++) {
    const thresh = ((i * 7 + missed) % 30) << 20; // 0..29 MiB of 32, in a scattered order
    const last = i === n;
    r = await boot(last ? ["check", "tv", String(ack)] : ["check", "tv", String(ack), String(thresh), "tv"], !last);
    if (!last && !r.powerCut && facts(r).run_ended_before_cut === "0") {
      // the run finished between two polls of its progress (its last hotzone is quick): no cut this time, the data
      // checks of this boot still count; the next boot starts a new rotation and cuts it
      const g = facts(r);
      for (const k of ["open_rc", "fsck_rc", "files_rc"]) assert.equal(g[k], "0", `${k}: ${r.stdout}`);
      assert.equal(g.writer_ok, "1", r.stdout);
      assert.ok(++missed <= 3, `the run finished before the cut ${missed} times: ${r.stdout}`);
      process.stderr.write(`power cut ${i}/${n}: the run finished before the cut point; retrying with another point\n`);
      ack = Math.max(ack, lastAck(r));
      i--;
      continue;
    }
    const f = check(r, `cut ${i}`, !last);
    states.push(f.state_before!);
    if (f.recovered === "1") recovered++;
    ack = Math.max(ack, lastAck(r));
    process.stderr.write(`power cut ${i}/${n} survived: state at next boot ${f.state_before}, recovered ${f.recovered ?? 0}, ${Math.round((Date.now() - t0) / 1000)} s\n`);
  }
  t.diagnostic(`survived ${n} of ${n} power cuts (each next boot opened, checked, resumed; 0 bytes lost): states at next boot ${JSON.stringify(states)}; hotzones recovered ${recovered}; total ${Math.round((Date.now() - t0) / 1000)} s`);
  if (n >= 10) assert.ok(states.includes("crash"), "some cuts hit a hotzone in flight");
});
