// Option helpers shared by commands: parsing numbers, PBKDF/format options, JSON output.
import { Option, type Command } from "commander";
import { TrustvolError } from "../util/errors.js";
import type { PbkdfOptions } from "../luks2/kdf.js";
import type { FormatOptions } from "../luks2/format.js";
import { readPin, type PinSource } from "../trust/pkcs11/pin.js";
import type { PinInput } from "../ops/unlock.js";

export function int(name: string, min = 0, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    if (!/^[0-9]+$/.test(v)) throw new TrustvolError("EUSAGE", `${name} must be a whole number, got "${v}"`);
    const n = Number(v);
    if (n < min || n > max) throw new TrustvolError("EUSAGE", `${name} must be between ${min} and ${max}`);
    return n;
  };
}

export function addKeyOptions(c: Command): Command {
  return addKeyFileLimitOptions(c.option("-d, --key-file <file>", "read the passphrase from FILE (all bytes, at most 8 MiB; - = standard input)"))
    .option("-S, --key-slot <n>", "use only keyslot N", int("--key-slot", 0, 31))
    .option("-T, --tries <n>", "how many times a passphrase typed at the terminal may be tried", int("--tries", 1, 1000), 3);
}

/** cryptsetup's --keyfile-offset / --keyfile-size, for every command that takes --key-file. */
export function addKeyFileLimitOptions(c: Command): Command {
  for (const opt of keyFileLimitOptions()) c.addOption(opt);
  return c;
}

/** The two options of addKeyFileLimitOptions, to place right after a command's --key-file. */
export function keyFileLimitOptions(): Option[] {
  return [
    new Option("--keyfile-offset <bytes>", "skip BYTES at the start of the key file").argParser(int("--keyfile-offset")),
    new Option("--keyfile-size <bytes>", "read only BYTES from the key file (default: all of it, at most 8 MiB)").argParser(int("--keyfile-size", 1, 1 << 30)),
  ];
}

/** cryptsetup's --new-keyfile-offset / --new-keyfile-size, for --new-key-file. */
export function addNewKeyFileLimitOptions(c: Command): Command {
  return c
    .option("--new-keyfile-offset <bytes>", "skip BYTES at the start of the new key file", int("--new-keyfile-offset"))
    .option("--new-keyfile-size <bytes>", "read only BYTES from the new key file (default: all of it, at most 8 MiB)", int("--new-keyfile-size", 1, 1 << 30));
}

export function addPbkdfOptions(c: Command): Command {
  return c
    .addOption(new Option("--pbkdf <kdf>", "keyslot KDF").choices(["argon2id", "argon2i", "pbkdf2"]).default("argon2id"))
    .option("--hash <hash>", "PBKDF2 hash", "sha256")
    .option("-i, --iter-time <ms>", "benchmark the KDF to take MS milliseconds on this machine", int("--iter-time", 1), 2000)
    .option("--pbkdf-force-iterations <n>", "fixed PBKDF2 iterations / Argon2 time cost (default: benchmarked to --iter-time)", int("--pbkdf-force-iterations", 1))
    .option("--pbkdf-memory <kib>", "Argon2 memory in KiB (default: half the RAM of this machine or of --target-ram, at most 1048576)", int("--pbkdf-memory", 32, 4 * 1024 * 1024))
    .option("--pbkdf-parallel <n>", "Argon2 lanes (default: the CPU count, at most 4)", int("--pbkdf-parallel", 1, 64))
    .option("--target-ram <mib>", "size Argon2 memory for a device with MIB of RAM (not this build host)", int("--target-ram", 64));
}

export function pbkdfFrom(o: Record<string, unknown>): PbkdfOptions {
  return {
    type: o.pbkdf as PbkdfOptions["type"],
    hash: o.hash as string,
    iterTimeMs: o.iterTime as number,
    forceIterations: o.pbkdfForceIterations as number | undefined,
    memoryKiB: o.pbkdfMemory as number | undefined,
    parallel: o.pbkdfParallel as number | undefined,
    targetRamMiB: o.targetRam as number | undefined,
  };
}

export function addFormatOptions(c: Command): Command {
  return addPbkdfOptions(c)
    .option("-c, --cipher <spec>", "data cipher: aes-xts-plain64, aes-cbc-essiv:sha256, aes-cbc-plain64", "aes-xts-plain64")
    .option("-s, --key-size <bits>", "volume key size in bits (xts: 256 or 512, default 512; cbc: 128, 192, 256, default 256)", int("--key-size", 128, 512))
    .option("--sector-size <bytes>", "encryption sector size: 512, 1024, 2048 or 4096", int("--sector-size", 512, 4096), 4096)
    .option("--label <label>", "LUKS2 label")
    .option("--subsystem <name>", "LUKS2 subsystem")
    .option("--uuid <uuid>", "use this UUID instead of a random one")
    .option("--offset <bytes>", "data offset in bytes (default 16 MiB, 0 with --header)", int("--offset"))
    .option("--luks2-metadata-size <bytes>", "size of one metadata copy (16384 .. 4194304; default 16384)", int("--luks2-metadata-size"))
    .option("--luks2-keyslots-size <bytes>", "size of the keyslots area (default: up to the data offset, 16 MiB less both metadata copies)", int("--luks2-keyslots-size"));
}

export function formatFrom(o: Record<string, unknown>): FormatOptions {
  return {
    cipher: o.cipher as string,
    keySizeBits: o.keySize as number | undefined,
    sectorSize: o.sectorSize as number,
    label: o.label as string | undefined,
    subsystem: o.subsystem as string | undefined,
    uuid: o.uuid as string | undefined,
    dataOffset: o.offset as number | undefined,
    metadataSize: o.luks2MetadataSize as number | undefined,
    keyslotsSize: o.luks2KeyslotsSize as number | undefined,
    pbkdf: pbkdfFrom(o),
  };
}

export { printJson, verbatim } from "./io.js";

/**
 * Accept another tool's spelling of an option (systemd-cryptenroll's --tpm2-pcrs for --pcrs), hidden from help: the
 * value lands on the target option, parsed by its parser, while commander parses (so required options see it).
 */
export function addAlias(c: Command, flags: string, targetLong: string): Command {
  const alias = new Option(flags).hideHelp();
  c.addOption(alias);
  c.on(`option:${alias.name()}`, (val?: string) => {
    const t = c.options.find((o) => o.long === targetLong);
    if (!t) throw new Error(`alias ${flags}: no option ${targetLong}`);
    const v = val === undefined ? true : t.parseArg ? t.parseArg(val, c.getOptionValue(t.attributeName())) : val;
    c.setOptionValueWithSource(t.attributeName(), v, "cli");
  });
  return c;
}

/** Unlock options shared by commands that need the volume key first: an existing passphrase, a token, or the raw key. */
export function addUnlockOptions(c: Command): Command {
  addAlias(c, "--unlock-key-file <file>", "--key-file"); // systemd-cryptenroll's name
  return addKeyFileLimitOptions(c.option("-d, --key-file <file>", "an existing passphrase from FILE (- = stdin)"))
    .option("-T, --tries <n>", "how many times a passphrase typed at the terminal may be tried", int("--tries", 1, 1000), 3)
    .option("--unlock-volume-key-file <file>", "unlock with the raw volume key from FILE")
    .option("--unlock-token", "unlock through an already enrolled token (TPM, PKCS#11...) instead of a passphrase");
}

/** Where a token PIN comes from: --pin-file FILE (- = stdin), else a prompt on a terminal, else none. */
export function addPinOptions(c: Command): Command {
  return c.option("--pin-file <file>", "token PIN from FILE (- = stdin); default: prompt on a terminal when the token needs one");
}

export function pinSourceFrom(o: Record<string, unknown>): PinSource | undefined {
  const f = o.pinFile as string | undefined;
  if (f === "-") return { kind: "stdin" };
  if (f) return { kind: "file", path: f };
  return process.stdin.isTTY ? { kind: "prompt" } : undefined;
}

/** The token PIN for an unlock: --pin-file, else a prompt on a terminal; read only when a token to try needs one. */
export function cliPin(o: Record<string, unknown>): PinInput | undefined {
  if (o.pinFile) return () => readPin(pinSourceFrom(o)!);
  return process.stdin.isTTY ? () => readPin({ kind: "prompt", prompt: "Enter token PIN: " }) : undefined;
}

/** cryptsetup-style sizes: bytes, or with a unit: 512S, 32K/32KiB (1024), 32KB (1000), M, G, T. */
export function parseSize(name: string) {
  return (v: string): number => {
    const x = /^([0-9]+)(?:(S)|([KMGTP])(iB)?|([KMGTP])B)?$/i.exec(v.trim());
    if (!x) throw new TrustvolError("EUSAGE", `${name}: "${v}" is not a size (e.g. 32M, 4096, 8S)`);
    const n = Number(x[1]);
    const unit = (x[3] ?? x[5] ?? "").toUpperCase();
    const p = unit ? "KMGTP".indexOf(unit) + 1 : 0; // a bare number is bytes (cryptsetup's size[units])
    const mul = x[2] ? 512 : x[5] ? 1000 ** p : 1024 ** p;
    const r = n * mul;
    if (!Number.isSafeInteger(r)) throw new TrustvolError("EUSAGE", `${name}: ${v} is too large`);
    return r;
  };
}
