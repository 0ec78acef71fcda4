// The trustvol CLI's program: parse, call the library, print. Exit codes are a contract with scripts (see --help).
// main.ts passes it all command modules; boot-volume.ts and boot-kernel.ts one boot-critical module each,
// boot-lifecycle.ts the re-encryption and provisioning modules.
import { io, jsonError, status, wantsJson } from "./io.js";
import { Command, CommanderError } from "commander";
import { ExitCode } from "../util/errors.js";
import { oneLine, reportError } from "./report.js";
import { VERSION } from "../version.js";
import { resetStdinState } from "./secrets.js";
import { KERNEL_COMMANDS, VOLUME_COMMANDS } from "./boot-commands.js";

export type Register = (program: Command) => unknown;
/** One command module: the commands it registers, and how to import it (only when one of them runs). */
export interface CommandModule {
  commands: string[];
  load: () => Promise<Register>;
}

// The boot-critical modules, which main.ts and their own single-file programs (boot-volume.ts, boot-kernel.ts) run.
export const VOLUME_MODULE: CommandModule = { commands: VOLUME_COMMANDS, load: async () => (await import("./commands/volume.js")).registerVolumeCommands };
export const KERNEL_MODULE: CommandModule = { commands: KERNEL_COMMANDS, load: async () => (await import("./commands/kernel.js")).registerKernelCommands };
export const REENCRYPT_MODULE: CommandModule = { commands: ["reencrypt"], load: async () => (await import("./commands/reencrypt.js")).registerReencryptCommands };
export const PROVISION_MODULE: CommandModule = { commands: ["provision", "recovery"], load: async () => (await import("./commands/provision.js")).registerProvisionCommands };
/** The modules of boot-lifecycle.ts: their commands are LIFECYCLE_COMMANDS. */
export const LIFECYCLE_MODULES = [REENCRYPT_MODULE, PROVISION_MODULE];

/** The modules argv needs: the named command's, none for a bare --version, all for help or an unknown command. */
function modulesFor(argv: string[], modules: CommandModule[]): CommandModule[] {
  const word = argv.find((a) => !a.startsWith("-"));
  if (word === undefined && argv.length > 0 && argv.every((a) => a === "-V" || a === "--version")) return [];
  const m = word === undefined ? undefined : modules.find((x) => x.commands.includes(word));
  return m ? [m] : modules;
}

const EXIT_HELP = `
Examples:
  trustvol image encrypt rootfs.ext4 rootfs.luks --key-file factory.key --target-ram 512   (CI, no root)
  trustvol enroll tpm2 /dev/mmcblk0p3 --pcrs 7 --key-file factory.key --wipe-slot password  (first boot)
  trustvol enroll recovery /dev/mmcblk0p3 --unlock-token       (prints the key once: store it off the device)
  trustvol open --token-only /dev/mmcblk0p3 rootfs                                          (every boot)
  trustvol verity format rootfs.img rootfs.hash
  trustvol doctor

Run \`trustvol <command> --help\` for each command's options.

Exit status:
  0  success
  1  failure (I/O error, internal error)
  2  usage error (bad option or argument)
  3  no key: wrong passphrase, PIN, or a trust source refused (e.g. PCR mismatch)
  4  corrupt: on-disk data is damaged, truncated, or not what it claims to be
  5  not found: device, file, token, TPM or object missing
  6  unsupported cipher, requirement or kernel feature
  7  busy: in use, locked out, or interrupted
  8  doctor found a critical finding
  9  provision left a volume unencrypted, as its config allows (on_failure: continue-unencrypted)

Secrets are never taken from the command line: use --key-file FILE, --key-file - (stdin), or the prompt.
`;

export async function buildProgram(argv: string[], modules: CommandModule[]): Promise<Command> {
  const program = new Command("trustvol")
    .description("LUKS2 / dm-crypt volumes whose keys are sealed to a device's hardware root of trust")
    .version(VERSION)
    .addHelpText("after", EXIT_HELP)
    // One line for usage errors too (subcommands inherit this), through the CLI's io like every other message.
    .configureOutput({
      writeOut: (str) => io.out(str),
      writeErr: (str) => io.err(str),
      outputError: (str) => io.err(`trustvol: ${oneLine(str.replace(/^error: /, ""))} (see --help)\n`),
    })
    .exitOverride();
  for (const register of await Promise.all(modulesFor(argv, modules).map((m) => m.load()))) register(program);
  return program;
}

export async function main(argv: string[], modules: CommandModule[]): Promise<number> {
  // `help enroll tpm2` means `enroll tpm2 --help` (commander's help command looks only one level down).
  if (argv[0] === "help" && argv.length > 1) argv = [...argv.slice(1), "--help"];
  resetStdinState();
  const json = wantsJson(argv);
  try {
    const program = await buildProgram(argv, modules);
    status.exitCode = ExitCode.OK;
    await program.parseAsync(argv, { from: "user" });
    return status.exitCode;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed" || e.code === "commander.version") return ExitCode.OK;
      const rc = e.exitCode === 0 ? ExitCode.OK : ExitCode.USAGE; // e.g. `trustvol enroll` with no subcommand
      // commander already printed its one line on stderr
      if (json && rc !== ExitCode.OK) io.out(jsonError({ code: "EUSAGE", exitCode: rc, message: oneLine(e.message.replace(/^error: /, "")), hint: "see --help" }));
      return rc;
    }
    return reportError(e, json);
  }
}
