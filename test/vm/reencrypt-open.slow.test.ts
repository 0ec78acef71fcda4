// `trustvol open` of LUKS2 volumes in the middle of a re-encryption, on a real kernel (QEMU + swtpm): cryptsetup 2.6.1
// starts a key rotation and is stopped cleanly (SIGINT) or killed mid-hotzone; trustvol starts one unattended through
// a TPM2 token and gets SIGTERM or is killed. trustvol opens each (recovering a crashed hotzone first): the content is
// intact and `dmsetup table` is what cryptsetup's own open loads. Then decryption in place (`reencrypt --decrypt
// --header NEW_FILE`, a data shift), started by cryptsetup and by trustvol, stopped cleanly and killed inside a hotzone:
// both tools open it mid-run with the exported header (moved segment, plain part, the rest one shift on), then it
// finishes to the plain data at offset 0. An --encrypt (detached header) opened mid-run is refused when run again
// (offline it would write under the mapping). Guest side: test/vm/guest/reenc-open.sh.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { GUEST_DIR, needGuest, runInGuest } from "./harness.js";

test("open mid-re-encryption: cryptsetup-started (clean stop, crash), trustvol-started through a TPM2 token, and mid decryption in place started by either tool", { timeout: 20 * 60_000 }, async (t) => {
  if (!needGuest(t)) return;
  const r = await runInGuest({ scriptPath: join(GUEST_DIR, "reenc-open.sh"), timeoutMs: 900_000, env: { TRUSTVOL_TRACE: process.env.TRUSTVOL_TRACE ?? "" } });
  t.diagnostic(`boot ${r.bootMs} ms, total ${r.totalMs} ms`);
  const out = r.stdout;
  const f = Object.fromEntries([...out.matchAll(/^(\w+)=(.*)$/gm)].map((m) => [m[1], m[2]]));
  assert.equal(r.status, 0, `${r.stderr}\n${out}`);
  assert.equal(f.done, "1", out);
  // cryptsetup started, SIGINT: a clean multi-segment state
  assert.equal(f.csclean_state, "clean", out);
  assert.equal(f.csclean_open_rc, "0", r.stderr);
  assert.equal(f.csclean_content_ok, "1", out);
  assert.equal(f.csclean_targets, "2", out);
  assert.match(out, /csclean_tvtable: 0 \d+ crypt aes-xts-plain64 :64:logon:cryptsetup:[0-9a-f-]+-d1 0 7:\d+ 32768 1 sector_size:4096/);
  assert.equal(f.csclean_table_equal, "1", out);
  assert.equal(f.csclean_cs_content_ok, "1", out);
  assert.equal(f.csclean_keys_left, "0");
  // cryptsetup killed mid-hotzone: trustvol recovers, then maps
  assert.equal(f.cscrash_state, "crash", out);
  assert.equal(f.cscrash_open_rc, "0", r.stderr);
  assert.equal(f.cscrash_recovered, "1", out);
  assert.equal(f.cscrash_content_ok, "1", out);
  assert.equal(f.cscrash_table_equal, "1", out);
  assert.equal(f.cscrash_cs_content_ok, "1", out);
  assert.equal(f.cscrash_after_state, "clean", out);
  // trustvol started through the TPM2 token: SIGTERM (exit 7) then a kill; opened unattended each time
  assert.match(out, /tv_TERM_rc_\d+=7/, out);
  assert.equal(f.tpmclean_state, "clean", out);
  assert.equal(f.tpmclean_open_rc, "0", r.stderr);
  assert.equal(f.tpmclean_content_ok, "1", out);
  assert.equal(f.tpmclean_targets, "2", out);
  assert.equal(f.tpmcrash_state, "crash", out);
  assert.equal(f.tpmcrash_open_rc, "0", r.stderr);
  assert.equal(f.tpmcrash_recovered, "1", out);
  assert.equal(f.tpmcrash_content_ok, "1", out);
  // decryption with a data shift, mid-run: [moved segment (crypt) | plain part (linear) | the rest, if any (crypt, one shift on)]
  for (const who of ["csdec", "tvdec"]) {
    for (const state of ["clean", "crash"]) {
      const tag = `${who}${state}`;
      assert.equal(f[`${tag}_state`], state, `${tag}\n${out}`);
      assert.equal(f[`${tag}_open_rc`], "0", `${tag}: ${r.stderr}`);
      if (state === "crash") assert.equal(f[`${tag}_recovered`], "1", `${tag} recovered\n${out}`);
      assert.equal(f[`${tag}_content_ok`], "1", `${tag}: trustvol's mapping is the original plaintext\n${out}`);
      assert.equal(f[`${tag}_cs_content_ok`], "1", `${tag}: cryptsetup's too\n${out}`);
      // three targets while ciphertext is left after the plain part; two once a kill in the last shifted hotzone was
      // recovered (all but the moved segment plain)
      assert.ok(["2", "3"].includes(f[`${tag}_targets`] ?? ""), `${tag}: targets ${f[`${tag}_targets`]}\n${out}`);
      assert.match(out, new RegExp(`^${tag}_tvtable: 0 32768 crypt aes-xts-plain64 :64:logon:cryptsetup:[0-9a-f-]+-d0 0 7:\\d+ 0 1 sector_size:4096$`, "m"));
      assert.match(out, new RegExp(`^${tag}_tvtable: 32768 \\d+ linear 7:\\d+ 32768$`, "m"));
      assert.equal(f[`${tag}_table_equal`], "1", `${tag}: trustvol's table is cryptsetup's\n${out}`);
    }
    assert.equal(f[`${who}_finish_rc`], "0", r.stderr);
    assert.equal(f[`${who}_plain_ok`], "1", `${who}: finished, the plain data at offset 0\n${out}`);
  }
  // an --encrypt opened mid-run, run again: refused in one line (online --encrypt is cryptsetup's), nothing written
  assert.equal(f.encopen_init_rc, "0", r.stderr);
  assert.equal(f.encopen_open_rc, "0", r.stderr);
  assert.equal(f.encopen_rerun_rc, "6", r.stderr);
  assert.equal(f.encopen_refused_online, "1", r.stderr);
  assert.equal(f.encopen_unchanged, "1", "device and header unchanged");
  assert.equal(f.locks_left, "0", "the re-encryption lock files are removed on release");
  t.diagnostic(`killed while frozen in a hotzone: ${[...out.matchAll(/^(\w+_KILL_frozen_in_hotzone_\d+)=(\d+)$/gm)].map((m) => `${m[1]} (probe ${m[2]})`).join(", ")}`);
});
