// Full power-cut sweep: every write of a run × unsynced writes dropped / kept / random, in-flight write torn.
import { test } from "node:test";
import { sweep } from "./reencrypt-fixture.js";

for (const resilience of ["checksum", "journal"] as const) {
  test(`power cut at every write of a ${resilience} run, three unsynced-write policies: 0 bytes lost`, async () => {
    const { survived, writes } = await sweep(resilience, 1, ["drop", "keep", "random"]);
    console.log(`# ${resilience}: survived ${survived} cuts (${writes} writes × 3 policies)`);
  });
}
