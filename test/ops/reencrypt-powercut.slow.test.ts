// Full power-cut sweep (≥ 200 cuts per resilience mode): every write of a run × unsynced writes dropped / kept /
// random, the in-flight write torn; after each cut, resume (and for half of the crashes `repair` first) → plaintext
// byte-identical.
import { test } from "node:test";
import assert from "node:assert/strict";
import { sweep } from "./reencrypt-fixture.js";

for (const resilience of ["checksum", "journal", "datashift"] as const) {
  test(`power cut at every write of a ${resilience} run, three unsynced-write policies: 0 bytes lost`, async () => {
    const { survived, writes } = await sweep(resilience, 1, ["drop", "keep", "random"], { hotzone: 32 * 1024, fsSize: 11.5 * (1 << 20) });
    console.log(`# ${resilience}: survived ${survived} cuts (${writes} writes × 3 policies)`);
    assert.ok(survived >= 200, `${survived} cut points`);
  });
}
