// The trustvol CLI with every command (program.ts does the parsing; boot-volume.ts and boot-kernel.ts are the same
// program with one boot-critical module each, which run.ts runs for their commands).
import type { Command } from "commander";
import { buildProgram as build, main as run, KERNEL_MODULE, PROVISION_MODULE, REENCRYPT_MODULE, VOLUME_MODULE, type CommandModule } from "./program.js";

// Command modules in help order, each imported only when its command runs (start-up time is boot time).
const MODULES: CommandModule[] = [
  VOLUME_MODULE,
  { commands: ["key"], load: async () => (await import("./commands/keys.js")).registerKeyCommands },
  { commands: ["token"], load: async () => (await import("./commands/tokens.js")).registerTokenCommands },
  { commands: ["header"], load: async () => (await import("./commands/header.js")).registerHeaderCommands },
  { commands: ["image"], load: async () => (await import("./commands/image.js")).registerImageCommands },
  { commands: ["enroll"], load: async () => (await import("./commands/enroll.js")).registerEnrollCommands },
  { commands: ["identity", "pkcs11"], load: async () => (await import("./commands/pkcs11.js")).registerPkcs11Commands },
  REENCRYPT_MODULE,
  { commands: ["tpm2"], load: async () => (await import("./commands/tpm2.js")).registerTpm2Commands },
  { commands: ["demo"], load: async () => (await import("./commands/demo.js")).registerDemoCommand },
  KERNEL_MODULE,
  PROVISION_MODULE,
  { commands: ["verity"], load: async () => (await import("./commands/verity.js")).registerVerityCommands },
  { commands: ["boot"], load: async () => (await import("./commands/boot.js")).registerBootCommands },
];

/** The program with the modules argv needs (all of them for help or an unknown command). */
export function buildProgram(argv: string[] = []): Promise<Command> {
  return build(argv, MODULES);
}

export function main(argv: string[]): Promise<number> {
  return run(argv, MODULES);
}
