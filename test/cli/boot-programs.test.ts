// run.ts sends the boot-critical commands to their single-file programs (src/cli/boot-*.ts, dist/cli/boot-*.js):
// each must register exactly the commands routed to it, and a routed command must parse and print as through main.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { buildProgram } from "../../src/cli/main.js";
import { buildProgram as buildWith, KERNEL_MODULE, LIFECYCLE_MODULES, VOLUME_MODULE } from "../../src/cli/program.js";
import { KERNEL_COMMANDS, LIFECYCLE_COMMANDS, VOLUME_COMMANDS } from "../../src/cli/boot-commands.js";
import { trustvol, trustvolInProcess } from "../helpers/cli.js";

test("each boot program registers exactly the commands run.ts routes to it", async () => {
  for (const [modules, routed] of [[[VOLUME_MODULE], VOLUME_COMMANDS], [[KERNEL_MODULE], KERNEL_COMMANDS], [LIFECYCLE_MODULES, LIFECYCLE_COMMANDS]] as const) {
    const program = await buildWith([], [...modules]);
    assert.deepEqual(program.commands.map((c) => c.name()).sort(), [...routed].sort());
  }
  // and main.ts's full program has the same commands under the same names
  const all = (await buildProgram()).commands.map((c) => c.name());
  for (const c of [...VOLUME_COMMANDS, ...KERNEL_COMMANDS, ...LIFECYCLE_COMMANDS]) assert.ok(all.includes(c), c);
});

test("a routed command prints as main.ts's full program does (help, usage error, missing device, bad option value)", async () => {
  for (const argv of [["unlock", "--help"], ["open", "--help"], ["dump", "--bogus", "x"], ["unlock", "--test", "/nonexistent/x.img"], ["unlock", "--test", "--tries", "0", "x"], ["doctor", "--root", "/nonexistent"], ["close"], ["reencrypt", "--help"], ["reencrypt", "--resilience", "bogus", "x.img"], ["provision", "--help"], ["recovery", "--help"]]) {
    const routed = trustvol(argv); // a child process: bin → run.js → boot-volume.js / boot-kernel.js / boot-lifecycle.js
    const full = await trustvolInProcess(argv); // main.ts with every module
    assert.deepEqual(routed, full, argv.join(" "));
  }
});
