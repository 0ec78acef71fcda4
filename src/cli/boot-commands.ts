// Which commands run from src/cli/boot.ts (in the shipped CLI one file, dist/cli/boot.js: no chunk graph to resolve
// at start). Kept apart so run.ts can route without loading the program.
export const VOLUME_COMMANDS = ["format", "dump", "unlock", "repair"];
export const BOOT_COMMANDS: ReadonlySet<string> = new Set(VOLUME_COMMANDS);
