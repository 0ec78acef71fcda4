// Process entry: run the CLI and set the exit status (kept apart from main.ts so tests can import the program).
import { main } from "./main.js";
process.exitCode = await main(process.argv.slice(2));
