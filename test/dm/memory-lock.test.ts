// memoryLock: mlockall(MCL_CURRENT) / munlockall() through the addon, used around online re-encryption (the device
// re-encrypted may hold trustvol itself). Locked pages show in /proc/self/status (VmLck).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { memoryLock, ioctlAvailable } from "../../src/dm/ioctl.js";

const vmLckKiB = () => Number(/^VmLck:\s+(\d+) kB/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? NaN);

test("memoryLock locks this process's pages and unlocks them", (t) => {
  if (!ioctlAvailable()) return t.skip("native addon not built");
  const r = memoryLock(true);
  if (r !== 0) return t.skip(`mlockall refused here (${r}): not root or RLIMIT_MEMLOCK`);
  try {
    assert.ok(vmLckKiB() > 10_000, `VmLck ${vmLckKiB()} kB after mlockall`);
  } finally {
    assert.equal(memoryLock(false), 0);
  }
  assert.equal(vmLckKiB(), 0);
});
