// lockFileMappings: mlock(2) of this process's file-backed mappings (node, libraries, the addon) through the addon,
// used around online re-encryption (the device re-encrypted may hold trustvol itself). Locked pages show in
// /proc/self/status (VmLck); V8 keeps working (allocation, compilation) while they are locked.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
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
