// Process entry: run the CLI and set the exit status (kept apart from main.ts so tests can import the program).
import { VERSION } from "../version.js";

// A reader that stops early (`trustvol --help | head`) is not an error: end quietly, as a SIGPIPE'd C tool would.
process.stdout.on("error", (e: NodeJS.ErrnoException) => (e.code === "EPIPE" ? process.exit(process.exitCode ?? 0) : undefined));

const argv = process.argv.slice(2);
// Scripts ask `--version` at boot: answer without loading commander or any command (same output as commander's).
if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-V")) process.stdout.write(`${VERSION}\n`);
else process.exitCode = await (await import("./main.js")).main(argv);
