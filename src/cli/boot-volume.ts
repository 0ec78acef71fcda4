// The volume commands (boot-commands.ts: unlock --test, dump…) as their own program: the same parsing, options and
// output as main.ts gives them, without the other command modules. scripts/build-cli.mjs bundles this file alone into
// dist/cli/boot-volume.cjs (no code splitting): a start resolves, reads and compiles one file instead of the ~38
// chunks the same path spans in the split build — the largest part of `unlock --test`'s start-up above Node's on Node 20.
import { main as run, VOLUME_MODULE } from "./program.js";
// run.ts's commander-free `dump DEVICE [--json]` at boot, from this file's code cache too
export { dumpCommand } from "./commands/dump.js";
export { reportError } from "./report.js";

export function main(argv: string[]): Promise<number> {
  return run(argv, [VOLUME_MODULE]);
}
