// The kernel commands (boot-commands.ts: open — what an initramfs runs at every boot — close, trusted, caam, doctor)
// as their own program, bundled alone into dist/cli/boot-kernel.cjs like boot-volume.ts.
import { main as run, KERNEL_MODULE } from "./program.js";

export function main(argv: string[]): Promise<number> {
  return run(argv, [KERNEL_MODULE]);
}
