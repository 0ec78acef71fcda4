// The trustvol CLI: parse, call the library, print. Exit codes are a contract with scripts (see --help).
import { io } from "./io.js";
import { Command, CommanderError } from "commander";
import { TrustvolError, ExitCode } from "../util/errors.js";
import { registerVolumeCommands } from "./commands/volume.js";
import { registerKeyCommands } from "./commands/keys.js";
import { registerTokenCommands } from "./commands/tokens.js";
import { registerHeaderCommands } from "./commands/header.js";
import { registerImageCommands } from "./commands/image.js";
import { registerDemoCommand } from "./commands/demo.js";
import { registerKernelCommands } from "./commands/kernel.js";
import { registerVerityCommands } from "./commands/verity.js";
import { registerEnrollCommands } from "./commands/enroll.js";
import { registerPkcs11Commands } from "./commands/pkcs11.js";
import { registerReencryptCommands } from "./commands/reencrypt.js";
import { VERSION } from "../version.js";
import { resetStdinState } from "./secrets.js";

const EXIT_HELP = `
Examples:
  trustvol image encrypt rootfs.ext4 rootfs.luks --key-file factory.key --target-ram 512   (CI, no root)
  trustvol enroll tpm2 /dev/mmcblk0p3 --pcrs 7 --key-file factory.key --wipe-slot password  (first boot)
  trustvol enroll recovery /dev/mmcblk0p3 --unlock-token --out /boot/recovery.key
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

Secrets are never taken from the command line: use --key-file FILE, --key-file - (stdin), or the prompt.
`;

export function buildProgram(): Command {
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
  registerVolumeCommands(program);
  registerKeyCommands(program);
  registerTokenCommands(program);
  registerHeaderCommands(program);
  registerImageCommands(program);
  registerEnrollCommands(program);
  registerPkcs11Commands(program);
  registerReencryptCommands(program);
  registerDemoCommand(program);
  registerKernelCommands(program);
  registerVerityCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  resetStdinState();
  try {
    await program.parseAsync(argv, { from: "user" });
    return ExitCode.OK;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed" || e.code === "commander.version") return ExitCode.OK;
      return e.exitCode === 0 ? ExitCode.OK : ExitCode.USAGE; // e.g. `trustvol enroll` with no subcommand
    }
    if (e instanceof TrustvolError) {
      io.err(`trustvol: ${oneLine(e.oneLine())}\n`);
      return e.exitCode;
    }
    const err = e as NodeJS.ErrnoException;
    const sys = systemError(err);
    if (sys) {
      io.err(`trustvol: ${oneLine(sys.oneLine())}\n`);
      return sys.exitCode;
    }
    io.err(`trustvol: internal error: ${oneLine(err?.message ?? String(e))}\n`);
    if (process.env.TRUSTVOL_DEBUG) io.err(`${err?.stack}\n`);
    return ExitCode.FAILURE;
  }
}

/** Messages that quote a tool's stderr can span lines: the CLI always prints one. */
function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, " ").trim();
}

/** Plain Node errors with an errno (a path we could not open or write) become the same one-line errors. */
function systemError(err: NodeJS.ErrnoException | undefined): TrustvolError | undefined {
  if (!err || typeof err.code !== "string") return undefined;
  const path = typeof err.path === "string" ? err.path.replace(/\/\.([^/]+)\.[0-9a-f]{12}\.tmp$/, "/$1") : "a file";
  switch (err.code) {
    case "ENOENT":
      return new TrustvolError("ENOENT", `${path}: no such file or directory`, "check the path");
    case "EACCES":
    case "EPERM":
      return new TrustvolError("EDEVICE", `${path}: permission denied`, "run as a user who may access it (often root)");
    case "EROFS":
      return new TrustvolError("EDEVICE", `${path}: read-only file system`);
    case "ENOSPC":
      return new TrustvolError("ENOSPC", `${path}: no space left on device`);
    case "EISDIR":
      return new TrustvolError("EUSAGE", `${path} is a directory`);
    case "EEXIST":
      return new TrustvolError("EUSAGE", `${path} already exists`);
    default:
      return undefined;
  }
}
