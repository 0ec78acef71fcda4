// lockFileMappings: mlock(2) of this process's file-backed mappings (node, libraries, the addon) through the addon,
// used around online re-encryption (the device re-encrypted may hold trustvol itself). Locked pages show in
// /proc/self/status (VmLck); V8 keeps working (allocation, compilation) while they are locked.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, statSync } from "node:fs";
import { lockFileMappings, ioctlAvailable } from "../../src/dm/ioctl.js";

const vmLckKiB = () => Number(/^VmLck:\s+(\d+) kB/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? NaN);

test("lockFileMappings locks node's code and libraries, V8 still allocates and compiles, then unlocks", (t) => {
  if (!ioctlAvailable()) return t.skip("native addon not built");
  const r = lockFileMappings(true)!;
  try {
    assert.equal(r.error, undefined, `mlock failed: ${r.error}`);
    assert.ok(r.bytes > 10 << 20 && vmLckKiB() * 1024 >= r.bytes * 0.9, `locked ${r.bytes} bytes, VmLck ${vmLckKiB()} kB`);
    // what crashed V8 under mlockall(): new heap and code after the lock
    const big = Array.from({ length: 200_000 }, (_, i) => ({ i, s: `x${i}` }));
    const f = new Function("a", "return a.reduce((n, o) => n + o.i, 0)") as (a: { i: number }[]) => number;
    for (let k = 0; k < 50; k++) f(big);
    assert.equal(f(big), 199_999 * 100_000);
  } finally {
    lockFileMappings(false);
  }
  assert.equal(vmLckKiB(), 0);
});

test("lockFileMappings(onlyAbove): files on the device (or above it) are locked, files on an unrelated block device are not", (t) => {
  if (!ioctlAvailable()) return t.skip("native addon not built");
  const st = statSync(process.execPath);
  const major = Math.floor(st.dev / 256) & 0xfff, minor = (st.dev & 0xff) | ((st.dev >> 12) & 0xfff00);
  if (major === 0) return t.skip("node's file system has no block device here");
  const nodeDev = `${major}:${minor}`;
  const all = lockFileMappings(true)!;
  lockFileMappings(false);
  const on = lockFileMappings(true, nodeDev)!;
  lockFileMappings(false);
  const unrelated = lockFileMappings(true, "4095:1048575")!; // no such device: nothing stacks on it
  lockFileMappings(false);
  assert.equal(vmLckKiB(), 0);
  assert.equal(on.error, undefined);
  assert.ok(on.bytes > 10 << 20, `node's own device: node's code locked (${on.bytes} bytes)`);
  assert.ok(on.bytes <= all.bytes && unrelated.bytes <= all.bytes - (10 << 20), `unrelated device: node's code (${on.bytes} of ${all.bytes} bytes) left unlocked, ${unrelated.bytes} locked`);
});
