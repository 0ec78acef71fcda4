// Device-mapper ioctls in-process (src/dm/dmioctl.ts) against a real kernel (QEMU guest): create, info, table,
// status, list, load + suspend + resume, remove and the refusals, each compared with what dmsetup reports.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { GUEST_DIR, needGuest, runInGuest } from "./harness.js";

test("device-mapper ioctls in-process agree with dmsetup on a real kernel", { timeout: 10 * 60_000 }, async (t) => {
  if (!needGuest(t)) return;
  const r = await runInGuest({ scriptPath: join(GUEST_DIR, "dm-ioctl.ts"), tpm: false, timeoutMs: 300_000 });
  const line = /^FACTS (.*)$/m.exec(r.stdout);
  assert.ok(line, `${r.stderr}\n${r.stdout}`);
  const f = JSON.parse(line[1]!);
  assert.equal(f.error, undefined, f.error);
  assert.equal(f.enabled, true, "the ioctl path is the default in the guest");
  const [name, uuid, open, major, minor, attr] = String(f.dmsetup_info).split("|");
  assert.deepEqual(f.info, { name, uuid, open: Number(open), major: Number(major), minor: Number(minor), readOnly: false, suspended: false });
  assert.equal(attr!.slice(0, 2), "L-", "live, not suspended");
  assert.equal(f.table, f.dmsetup_table);
  assert.equal(f.table.split("\n").length, 2);
  assert.equal(f.status, f.dmsetup_status);
  assert.deepEqual(f.listed, { name, uuid });
  assert.equal(f.suspended, true);
  assert.equal(f.crypt_table, f.dmsetup_crypt_table);
  assert.match(f.crypt_table, /^0 16384 crypt aes-xts-plain64 :64:logon:cryptsetup:tvdmi-test-d0 0 \d+:\d+ 0 1 sector_size:4096$/);
  assert.match(f.bad_load, /^EDEVICE: device-mapper table load for tvdmi failed \(EINVAL\)$/);
  assert.equal(f.after_bad_table, "crypt", "a refused load leaves the live table");
  assert.equal(f.gone, true);
  assert.match(f.dmsetup_gone, /!1:.*not exist/);
  assert.match(f.missing_table, /^ENOENT: no mapping named tvdmi$/);
  assert.match(f.missing_resume, /^ENOENT: no mapping named tvdmi$/);
  assert.match(f.bad_create, /^EDEVICE: /);
  assert.equal(f.bad_create_left, false, "a refused create removes the empty device");
  assert.equal(f.done, 1);
});
