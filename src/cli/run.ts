// Process entry: run the CLI and set the exit status (kept apart from main.ts so tests can import the program).
import { VERSION } from "../version.js";
import { KERNEL_COMMANDS, LIFECYCLE_COMMANDS, VOLUME_COMMANDS } from "./boot-commands.js";
import { mark } from "../util/timing.js";
import { bootProgram, type VolumeBootProgram } from "./boot-script.js";

mark("cli");

// A reader that stops early (`trustvol --help | head`) is not an error: end quietly, as a SIGPIPE'd C tool would.
process.stdout.on("error", (e: NodeJS.ErrnoException) => (e.code === "EPIPE" ? process.exit(process.exitCode ?? 0) : undefined));

const argv = process.argv.slice(2);
// Scripts ask `--version` at boot: answer without loading commander or any command (same output as commander's).
if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-V")) process.stdout.write(`${VERSION}\n`);
else if (plainDump(argv)) {
  // `dump DEVICE [--json]` at boot: the same action without commander parsing (from boot-volume's code cache)
  const json = argv.includes("--json");
  const device = argv.find((a, i) => i > 0 && a !== "--json")!;
  const { dumpCommand, reportError } = await bootProgram<VolumeBootProgram>("boot-volume", () => import("./boot-volume.js"));
  process.exitCode = await dumpCommand(device, { json }).then(
    () => 0,
    (e: unknown) => reportError(e, json),
  );
} else if (VOLUME_COMMANDS.includes(argv[0]!)) {
  // `unlock --test` and the other volume commands: one file, the same program (boot-volume.ts)
  process.exitCode = await (await bootProgram("boot-volume", () => import("./boot-volume.js"))).main(argv);
} else if (KERNEL_COMMANDS.includes(argv[0]!)) {
  // `open` at every boot: one file, the same program (boot-kernel.ts)
  process.exitCode = await (await bootProgram("boot-kernel", () => import("./boot-kernel.js"))).main(argv);
} else if (LIFECYCLE_COMMANDS.includes(argv[0]!)) {
  // reencrypt / provision (the first boot's background rotation): one file, the same program (boot-lifecycle.ts)
  process.exitCode = await (await bootProgram("boot-lifecycle", () => import("./boot-lifecycle.js"))).main(argv);
} else process.exitCode = await (await import("./main.js")).main(argv);

// The command is done: exit now rather than when the event loop drains. Node 20 can deadlock in that drain with every
// worker idle (nodejs/node#54918; seen once in ~40 re-encryption runs here), which would leave a boot or provisioning
// unit waiting forever. stdout/stderr are synchronous for files, pipes and terminals on Linux: nothing is cut off.
process.exit(process.exitCode ?? 0);

/** Exactly `dump DEVICE` or `dump DEVICE --json` (either order), DEVICE not an option: nothing for commander to do. */
function plainDump(a: string[]): boolean {
  if (a[0] !== "dump" || (a.length !== 2 && a.length !== 3)) return false;
  const rest = a.slice(1).filter((x) => x !== "--json");
  return rest.length === 1 && a.length - 1 - rest.length === (a.length === 3 ? 1 : 0) && !rest[0]!.startsWith("-") && rest[0] !== "";
}
