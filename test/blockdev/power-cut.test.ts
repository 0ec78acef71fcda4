// The power-cut device itself: flushed writes survive, the in-flight write lands torn, unsynced writes follow the policy.
import { test } from "node:test";
import assert from "node:assert/strict";
import { PowerCutDevice, PowerCut, countWrites } from "../helpers/power-cut.js";

test("power cut: flushed data survives, in-flight write is torn, unsynced writes follow the policy", async () => {
  const base = Buffer.alloc(8192);
  const op = async (d: PowerCutDevice) => {
    await d.write(Buffer.alloc(512, 1), 0);
    await d.flush();
    await d.write(Buffer.alloc(512, 2), 512);
    await d.write(Buffer.alloc(4096, 3), 1024);
  };
  assert.equal(await countWrites(base, op), 3);
  for (const unsynced of ["drop", "keep"] as const) {
    for (let seed = 1; seed < 20; seed++) {
      const d = new PowerCutDevice(base, { cutAtWrite: 3, unsynced, seed });
      await assert.rejects(op(d), PowerCut);
      const img = d.image();
      assert.ok(img.subarray(0, 512).every((b) => b === 1));
      assert.ok(img.subarray(512, 1024).every((b) => b === (unsynced === "keep" ? 2 : 0)));
      const torn = img.subarray(1024, 1024 + 4096);
      const n = torn.indexOf(0);
      assert.ok(n === -1 || torn.subarray(n).every((b) => b === 0), "torn write is a prefix");
      await assert.rejects(d.read(Buffer.alloc(1), 0), PowerCut);
    }
  }
});
