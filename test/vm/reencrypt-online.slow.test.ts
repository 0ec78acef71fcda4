// Online re-encryption (key rotation) of a mounted LUKS2 volume on a real kernel (QEMU): trustvol's overlay/hotzone
// device stack under an ext4 file system in use. Guest side: test/vm/guest/reenc-online.sh (volume size
// TRUSTVOL_ONLINE_MIB, default 128 MiB: TCG runs dm-crypt at ~40 MB/s).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { GUEST_DIR, needGuest, runInGuest } from "./harness.js";

test("online re-encryption of a mounted ext4 volume (opened by trustvol / by cryptsetup), writer running, SIGTERM + --resume-only --resilience journal", { timeout: 25 * 60_000 }, async (t) => {
  if (!needGuest(t)) return;
  const r = await runInGuest({ scriptPath: join(GUEST_DIR, "reenc-online.sh"), timeoutMs: 1_200_000, env: { TRUSTVOL_TRACE: process.env.TRUSTVOL_TRACE ?? "", TRUSTVOL_ONLINE_MIB: process.env.TRUSTVOL_ONLINE_MIB ?? "128" } });
  const out = r.stdout;
  const f = Object.fromEntries([...out.matchAll(/^(\w+)=(.*)$/gm)].map((m) => [m[1], m[2]]));
  t.diagnostic(`boot ${r.bootMs} ms, total ${r.totalMs} ms; online rotation ${f.online_seconds} s; writer ${f.writer_records} records`);
  assert.equal(r.status, 0, `${r.stderr}\n${out}`);
  assert.equal(f.done, "1", `${r.stderr}\n${out}`);
  // 1. opened by trustvol, mounted, writer running
  assert.equal(f.files, "3000");
  assert.equal(f.during_helpers, "2", "vol-overlay and vol-hotzone-forward exist while it runs");
  assert.equal(f.during_toptable, "linear", "the top device maps onto the overlay");
  assert.equal(f.during_lockfiles, "1", "cryptsetup's re-encryption lock file is held");
  assert.notEqual(f.cs_while_running_rc, "0", `cryptsetup must not re-encrypt at the same time: ${out}`);
  assert.equal(f.during_flock_rc, "1", "cryptsetup's re-encryption lock is held (flock -n fails)");
  // cryptsetup's tool refuses a hotzone in flight (metadata) before it asks for the lock; between hotzones the lock
  // stops it; a commit landing between its two header reads gives "concurrent LUKS2 metadata update": which one it meets
  // depends on timing
  assert.match(out, /^cs_busy: .*(already running|in-progress|lock|requires reencryption recovery|concurrent LUKS2 metadata update)/im, "cryptsetup is refused");
  assert.equal(f.online_rc, "0", r.stderr);
  assert.ok(Number(f.writer_records) > 0);
  assert.equal(f.writer_ok, "1", "every record the writer appended is there, in order");
  assert.equal(f.files_ok, "0", "all checksums match (sha256sum -c exit 0)");
  assert.equal(f.after_helpers, "0");
  assert.match(out, /^after_table: 0 \d+ crypt aes-xts-plain64 :64:logon:cryptsetup:[0-9a-f-]+-d\d+ 0 7:\d+ 32768 1 sector_size:4096$/m);
  assert.equal(f.after_state, "none");
  assert.equal(f.logon_left, "0");
  assert.equal(f.fsck_rc, "0");
  assert.equal(f.cs_files_ok, "0", "cryptsetup opens it afterwards");
  assert.equal(f.tv_files_ok, "0", "trustvol opens it afterwards");
  // 2. opened by cryptsetup, SIGTERM at a safe point, resumed
  assert.equal(f.term_rc, "7", r.stderr);
  assert.equal(f.term_state, "reencrypt");
  assert.equal(f.term_helpers, "0");
  assert.equal(f.term_targets, "2", "back to the two-segment table on the data device");
  assert.equal(f.term_files_ok, "0");
  assert.equal(f.term_resilience, "checksum", "the run was stopped with checksum protection");
  assert.equal(f.resume_rc, "0", r.stderr);
  assert.equal(f.resume_switched, "1", `the online resume switched its protection to journal: ${r.stderr}`);
  assert.equal(f.resume_state, "none");
  assert.equal(f.resume_files_ok, "0");
  assert.equal(f.resume_fsck_rc, "0");
  assert.equal(f.resume_cs_files_ok, "0");
  assert.equal(f.locks_left, "0");
});
