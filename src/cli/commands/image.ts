// `trustvol image encrypt|decrypt`: CI-side conversion of file-system images, no root or device-mapper needed.
import type { Command } from "commander";
import { TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { encryptImage, decryptImage } from "../../ops/image.js";
import { getPassphrase, readKeyFile, keyFileLimits } from "../secrets.js";
import { addFormatOptions, formatFrom, printJson, int } from "../common.js";
import { progressBar, progressMode } from "../progress.js";

/** A run stopped by SIGINT/SIGTERM: say plainly that nothing was created and the input is unchanged. */
function interruptedError(e: unknown, output: string): unknown {
  if (e instanceof TrustvolError && e.message === "interrupted") return new TrustvolError("EBUSY", `interrupted: ${output} was not created`, "the input is unchanged; run the command again");
  return e;
}

function abortOnSignal(): { signal: AbortSignal; done: () => void } {
  const ac = new AbortController();
  const h = () => ac.abort();
  process.once("SIGINT", h);
  process.once("SIGTERM", h);
  return { signal: ac.signal, done: () => { process.off("SIGINT", h); process.off("SIGTERM", h); } };
}

/** Run a conversion with a progress bar on a terminal and a clean stop on SIGINT/SIGTERM. */
async function withProgress<T>(label: string, output: string, o: Record<string, unknown>, fn: (onProgress: (d: number, t: number) => void, signal: AbortSignal) => Promise<T>): Promise<T> {
  const bar = progressBar(label, progressMode(o));
  const sig = abortOnSignal();
  try {
    return await fn(bar.update, sig.signal);
  } catch (e) {
    throw interruptedError(e, output);
  } finally {
    bar.end();
    sig.done();
  }
}

export function registerImageCommands(program: Command): void {
  const image = program.command("image").description("convert image files (for build pipelines: no root, no device-mapper)");
  const encrypt = addFormatOptions(
    image
      .command("encrypt")
      .description("encrypt a plain image (e.g. an ext4 rootfs) into a new LUKS2 image; the input is only read")
      .argument("<input>", "plain image")
      .argument("<output>", "LUKS2 image to create (written as <output>.partial, renamed when complete)")
      .option("--header <file>", "detached header: <output> then holds only the encrypted data")
      .option("-d, --key-file <file>", "passphrase from FILE (- = stdin)")
      .option("--keyfile-offset <bytes>", "skip BYTES at the start of the key file", int("--keyfile-offset"))
      .option("--keyfile-size <bytes>", "read only BYTES from the key file (default: all of it, at most 8 MiB)", int("--keyfile-size", 1, 1 << 30))
      .option("--volume-key-file <file>", "use the raw volume key from FILE instead of a random one")
      .option("--force", "overwrite an existing output")
      .option("--no-progress", "no progress bar")
      .option("--progress-json", "progress as JSON lines on stderr (for programs; works without a terminal)")
      .option("--json", "print the result as JSON"),
  );
  const ssOpt = encrypt.options.find((x) => x.long === "--sector-size");
  if (ssOpt) {
    ssOpt.description = "encryption sector size: 512, 1024, 2048 or 4096 (default: the largest the image's file system allows, up to 4096)";
    ssOpt.defaultValue = undefined;
  }
  encrypt.action(async (input: string, output: string, o: Record<string, unknown>, cmd: Command) => {
    // Without an explicit --sector-size the file system in the image decides (never a sector larger than its blocks).
    const sectorSize = cmd.getOptionValueSource("sectorSize") === "cli" ? (o.sectorSize as number) : undefined;
    const pass = await getPassphrase({ keyFile: o.keyFile as string | undefined, prompt: "Enter passphrase for the new volume: ", verify: true, ...keyFileLimits(o) });
    let vk: Buffer | undefined;
    try {
      vk = o.volumeKeyFile ? readKeyFile(o.volumeKeyFile as string) : undefined;
      const r = await withProgress("Encrypting", output, o, (onProgress, signal) => encryptImage(input, output, pass, { ...formatFrom(o), sectorSize, volumeKey: vk, header: o.header as string | undefined, force: !!o.force, onProgress, signal }));
      if (o.json) printJson({ output, header: o.header ?? null, uuid: r.uuid, data_offset: r.dataOffset, data_length: r.dataLength, sector_size: r.sectorSize, filesystem: r.filesystem ? { type: r.filesystem.type, block_size: r.filesystem.blockSize ?? null } : null });
    } finally {
      wipe(pass, vk);
    }
  });
  image
    .command("decrypt")
    .description("decrypt a LUKS1/LUKS2 image's data into a plain image")
    .argument("<input>", "LUKS image")
    .argument("<output>", "plain image to create")
    .option("--header <file>", "detached header")
    .option("-d, --key-file <file>", "passphrase from FILE (- = stdin)")
    .option("--keyfile-offset <bytes>", "skip BYTES at the start of the key file", int("--keyfile-offset"))
    .option("--keyfile-size <bytes>", "read only BYTES from the key file (default: all of it, at most 8 MiB)", int("--keyfile-size", 1, 1 << 30))
    .option("-S, --key-slot <n>", "use only keyslot N", int("--key-slot", 0, 31))
    .option("--volume-key-file <file>", "use the raw volume key from FILE instead of a passphrase")
    .option("--force", "overwrite an existing output")
    .option("--no-progress", "no progress bar")
    .option("--progress-json", "progress as JSON lines on stderr (for programs; works without a terminal)")
    .option("--json", "print the result as JSON")
    .action(async (input: string, output: string, o: Record<string, unknown>) => {
      const vk = o.volumeKeyFile ? readKeyFile(o.volumeKeyFile as string) : undefined;
      const pass = vk ? undefined : await getPassphrase({ keyFile: o.keyFile as string | undefined, prompt: `Enter passphrase for ${input}: `, ...keyFileLimits(o) });
      try {
        const r = await withProgress("Decrypting", output, o, (onProgress, signal) => decryptImage(input, output, { passphrase: pass, volumeKey: vk }, { header: o.header as string | undefined, keyslot: o.keySlot as number | undefined, force: !!o.force, onProgress, signal }));
        if (o.json) printJson({ output, length: r.length });
      } finally {
        wipe(pass, vk);
      }
    });
}
