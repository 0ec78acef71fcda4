// `trustvol key add|change|remove|priority`: keyslot management (cryptsetup luksAddKey / luksChangeKey / luksKillSlot).
import { io } from "../io.js";
import type { Command } from "commander";
import { TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { LuksHandle } from "../../ops/volume.js";
import { getPassphrase, readKeyFile, keyFileLimits, newKeyFileLimits, withPassphraseTries } from "../secrets.js";
import { addKeyOptions, addNewKeyFileLimitOptions, addPbkdfOptions, pbkdfFrom, printJson, int } from "../common.js";

export function registerKeyCommands(program: Command): void {
  const key = program.command("key").description("manage passphrase keyslots");

  addPbkdfOptions(
    addKeyOptions(addNewKeyFileLimitOptions(
      key
        .command("add")
        .description("add a passphrase keyslot, unlocking with an existing passphrase (like `cryptsetup luksAddKey`)")
        .argument("<device>")
        .option("--header <file>", "detached header")
        .option("--new-key-file <file>", "the new passphrase from FILE (- = stdin)")
        .option("--new-key-slot <n>", "keyslot for the new passphrase", int("--new-key-slot", 0, 31))
        .option("--volume-key-file <file>", "unlock with the raw volume key from FILE instead of a passphrase")
        .option("--json", "print the result as JSON"),
    )),
  ).action(async (device: string, o: Record<string, unknown>) => {
    const h = await LuksHandle.open(device, { header: o.header as string | undefined });
    let vk: Buffer | undefined;
    try {
      const v = h.requireLuks2("key add");
      v.refuseInReencryption("key add"); // before any passphrase is asked
      if (o.volumeKeyFile) {
        vk = readKeyFile(o.volumeKeyFile as string);
        v.verifyVolumeKey(vk);
      } else {
        const r = await withPassphraseTries({ keyFile: o.keyFile as string | undefined, prompt: `Enter any existing passphrase: `, tries: o.tries as number | undefined, ...keyFileLimits(o) },
          (old) => h.unlock(old, { slot: o.keySlot as number | undefined }));
        vk = r.volumeKey;
      }
      const neu = await getPassphrase({ keyFile: o.newKeyFile as string | undefined, prompt: "Enter new passphrase for key slot: ", verify: true, ...newKeyFileLimits(o) });
      const slot = await v.addKeyslot(vk, neu, { slot: o.newKeySlot as number | undefined, pbkdf: pbkdfFrom(o) }).finally(() => wipe(neu));
      if (o.json) printJson({ keyslot: slot });
      else io.err(`Key slot ${slot} created.\n`);
    } finally {
      wipe(vk);
      await h.close();
    }
  });

  addPbkdfOptions(
    addKeyOptions(addNewKeyFileLimitOptions(
      key
        .command("change")
        .description("replace a passphrase in place (like `cryptsetup luksChangeKey`): the new keyslot is written before the old one is wiped")
        .argument("<device>")
        .option("--header <file>", "detached header")
        .option("--new-key-file <file>", "the new passphrase from FILE"),
    )),
  ).action(async (device: string, o: Record<string, unknown>) => {
    const h = await LuksHandle.open(device, { header: o.header as string | undefined });
    try {
      const v = h.requireLuks2("key change");
      v.refuseInReencryption("key change");
      const old = await getPassphrase({ keyFile: o.keyFile as string | undefined, prompt: "Enter passphrase to be changed: ", ...keyFileLimits(o) });
      try {
        const { keyslot, volumeKey } = await v.unlock(old, { slot: o.keySlot as number | undefined });
        wipe(volumeKey);
        const neu = await getPassphrase({ keyFile: o.newKeyFile as string | undefined, prompt: "Enter new passphrase: ", verify: true, ...newKeyFileLimits(o) });
        await v.changeKeyslot(keyslot, old, neu, { pbkdf: pbkdfFrom(o) }).finally(() => wipe(neu));
        io.err(`Key slot ${keyslot} changed.\n`);
      } finally {
        wipe(old);
      }
    } finally {
      await h.close();
    }
  });

  addKeyOptions(
    key
      .command("remove")
      .description("remove a keyslot by number (--key-slot) or by its passphrase, and wipe its key material")
      .argument("<device>")
      .option("--header <file>", "detached header")
      .option("--force", "allow removing the last keyslot (the data becomes unrecoverable)"),
  ).action(async (device: string, o: Record<string, unknown>) => {
    const h = await LuksHandle.open(device, { header: o.header as string | undefined });
    try {
      const v = h.requireLuks2("key remove");
      let slot = o.keySlot as number | undefined;
      if (slot === undefined) {
        const r = await withPassphraseTries({ keyFile: o.keyFile as string | undefined, prompt: "Enter passphrase to be deleted: ", tries: o.tries as number | undefined, ...keyFileLimits(o) }, (pass) => v.unlock(pass));
        wipe(r.volumeKey);
        slot = r.keyslot;
      }
      await v.removeKeyslot(slot, { allowLast: !!o.force });
      io.err(`Key slot ${slot} removed.\n`);
    } finally {
      await h.close();
    }
  });

  key
    .command("priority")
    .description("set a keyslot's priority: prefer (tried first), normal, ignore (tried only when named)")
    .argument("<device>")
    .requiredOption("-S, --key-slot <n>", "keyslot", int("--key-slot", 0, 31))
    .requiredOption("--priority <p>", "prefer | normal | ignore")
    .option("--header <file>", "detached header")
    .action(async (device: string, o: Record<string, unknown>) => {
      const p = ({ ignore: 0, normal: 1, prefer: 2 } as const)[o.priority as "ignore"];
      if (p === undefined) throw new TrustvolError("EUSAGE", "--priority must be prefer, normal or ignore");
      const h = await LuksHandle.open(device, { header: o.header as string | undefined });
      try {
        await h.requireLuks2("key priority").setPriority(o.keySlot as number, p);
      } finally {
        await h.close();
      }
    });
}
