// The first boot's lifecycle commands (boot-commands.ts: reencrypt, provision, recovery — what
// trustvol-provision.service runs to rotate the root online) as their own program, bundled alone into
// dist/cli/boot-lifecycle.cjs like boot-volume.ts. Under QEMU/TCG the split build's module loading took 1.1-1.6 s of
// each online re-encryption's start (60-70 ms on the host).
import { main as run, LIFECYCLE_MODULES } from "./program.js";

export function main(argv: string[]): Promise<number> {
  return run(argv, LIFECYCLE_MODULES);
}
