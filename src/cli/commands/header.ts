// `trustvol header backup|restore` in cryptsetup's backup file format (interchangeable with luksHeaderBackup/Restore).
import { io } from "../io.js";
import type { Command } from "commander";
import { existsSync } from "node:fs";
import { TrustvolError } from "../../util/errors.js";
import { FileBlockDevice } from "../../blockdev/file.js";
import { backupHeader, restoreHeader } from "../../luks2/backup.js";
import { printJson } from "../common.js";

export function registerHeaderCommands(program: Command): void {
  const header = program.command("header").description("LUKS2 header backup and restore (cryptsetup-compatible files)");
  header
    .command("backup")
    .description("save the metadata and keyslots area to a new FILE (0600, written atomically; an existing FILE is refused)")
    .argument("<device>")
    .requiredOption("--file <file>", "backup file")
    .option("--json", "print the result as JSON")
    .action(async (device: string, o: Record<string, unknown>) => {
      // Like cryptsetup: a backup may be the only copy of a header; never replace one silently.
      if (existsSync(o.file as string)) throw new TrustvolError("EUSAGE", `header backup file ${o.file} already exists`, "choose a new file name; nothing was written");
      const dev = await FileBlockDevice.open(device, { readOnly: true });
      try {
        const n = await backupHeader(dev, o.file as string);
        if (o.json) printJson({ file: o.file, bytes: n });
      } finally {
        await dev.close();
      }
    });
  header
    .command("restore")
    .description("write a header backup back onto a device (validated first; rerun it if interrupted)")
    .argument("<device>")
    .requiredOption("--file <file>", "backup file")
    .option("--force", "overwrite a device that holds a different LUKS2 volume")
    .option("--json", "print the result as JSON")
    .action(async (device: string, o: Record<string, unknown>) => {
      const dev = await FileBlockDevice.open(device);
      try {
        const r = await restoreHeader(dev, o.file as string, { force: !!o.force });
        if (o.json) printJson({ restored: true, uuid: r.uuid });
        else io.err(`Header of volume ${r.uuid} restored.\n`);
      } finally {
        await dev.close();
      }
    });
}
