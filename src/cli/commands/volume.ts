// format, dump, unlock --test, repair: the cryptsetup luksFormat / luksDump / open --test-passphrase / repair verbs.
// What only one verb needs is imported in its action: `dump` runs at boot and should load little.
import { io } from "../io.js";
import { Option, type Command } from "commander";
import { FileBlockDevice, checkVolumePath } from "../../blockdev/file.js";
import { TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { Luks2Volume } from "../../luks2/volume.js";
import { LuksHandle } from "../../ops/volume.js";
import { getPassphrase, keyFileLimits } from "../secrets.js";
import { confirmYes } from "../confirm.js";
import { addKeyOptions, addFormatOptions, addPinOptions, formatFrom, printJson, int, keyFileLimitOptions } from "../common.js";
import { dumpCommand } from "./dump.js";

export function registerVolumeCommands(program: Command): void {
  addFormatOptions(
    program
      .command("format")
      .description("create a LUKS2 volume on a device or image file (like `cryptsetup luksFormat`); asks before overwriting a file system or LUKS volume")
      .argument("<device>", "block device or image file")
      .option("--header <file>", "write the header to a separate file (data starts at offset 0 of <device>)")
      .option("-d, --key-file <file>", "new passphrase from FILE (- = stdin)")
      .option("--keyfile-offset <bytes>", "skip BYTES at the start of the key file", int("--keyfile-offset"))
      .option("--keyfile-size <bytes>", "read only BYTES from the key file (default: all of it, at most 8 MiB)", int("--keyfile-size", 1, 1 << 30))
      .option("-S, --key-slot <n>", "keyslot for the passphrase", "0")
      .option("-q, --batch-mode", "do not ask for confirmation before overwriting a file system or LUKS volume")
      .addOption(new Option("--batch").hideHelp())
      .option("--json", "print the result as JSON"),
  ).action(async (device: string, o: Record<string, unknown>) => {
    // Like cryptsetup: the target must exist and hold a volume; checked before any prompt, nothing is created.
    checkVolumePath(device, { createHint: `create the image first (truncate -s 64M ${device}) or name an existing block device` });
    if (o.header) checkVolumePath(o.header as string, { allowMissing: true });
    if (!o.batchMode && !o.batch) {
      const { probePath } = await import("../../ops/probe.js");
      for (const p of o.header ? [o.header as string, device] : [device]) {
        const found = await probePath(p);
        if (found) await (await import("../confirm.js")).confirmOverwrite(`${p} is not empty (${found} found)`);
      }
    }
    const pass = await getPassphrase({ keyFile: o.keyFile as string | undefined, prompt: `Enter passphrase for ${device}: `, verify: true, ...keyFileLimits(o) });
    let dataDev: FileBlockDevice, hdrDev: FileBlockDevice;
    try {
      dataDev = await FileBlockDevice.open(device);
      hdrDev = o.header ? await FileBlockDevice.open(o.header as string, { create: true }) : dataDev;
    } catch (e) {
      wipe(pass);
      throw e;
    }
    try {
      const { formatLuks2 } = await import("../../luks2/format.js");
      const { volume, volumeKey } = await formatLuks2(hdrDev, pass, { ...formatFrom(o), keyslot: Number(o.keySlot) }, o.header ? dataDev : undefined);
      wipe(volumeKey);
      const area = volume.dataArea(dataDev.size);
      if (o.json) printJson({ uuid: volume.uuid, keyslot: Number(o.keySlot), data_offset: area.offset, data_length: area.length, sector_size: area.sectorSize, cipher: area.cipher });
      else if (area.length <= 0) io.err(`warning: ${device} has no room for data after the header (grow the image file before use)\n`);
    } finally {
      wipe(pass);
      await dataDev.close();
      if (hdrDev !== dataDev) await hdrDev.close();
    }
  });

  program
    .command("dump")
    .description("show the LUKS header (like `cryptsetup luksDump`); --json for scripts")
    .argument("<device>")
    .option("--header <file>", "detached header")
    .option("--json", "JSON output (binary header fields and the metadata as stored)")
    .option("--dump-volume-key", "also reveal the volume key (needs the passphrase and --volume-key-file)")
    .option("--volume-key-file <file>", "where to write the volume key (raw bytes; a new file is 0600; /dev/fd/N = an open descriptor; - = stdout if it is not a terminal)")
    .option("-d, --key-file <file>", "passphrase for --dump-volume-key")
    .option("--keyfile-offset <bytes>", "skip BYTES at the start of the key file", int("--keyfile-offset"))
    .option("--keyfile-size <bytes>", "read only BYTES from the key file (default: all of it, at most 8 MiB)", int("--keyfile-size", 1, 1 << 30))
    .action(dumpCommand);

  addPinOptions(
    addKeyOptions(
      program
        .command("unlock")
        .description("unlock a volume; with --test only check that it opens (like `cryptsetup open --test-passphrase`)")
        .argument("<device>")
        .option("--header <file>", "detached header")
        .option("--test", "only verify; do not activate anything")
        .option("--token-only", "unlock only through tokens (TPM, PKCS#11, clevis), never ask for a passphrase (default: tokens first, then a passphrase)")
        .option("--token-id <n>", "use only this token", int("--token-id", 0, 31))
        .option("--token-type <type>", "use only tokens of this type (e.g. systemd-tpm2)")
        .option("--pkcs11-module <path>", "PKCS#11 module for systemd-pkcs11 tokens (default: p11-kit registrations)")
        .option("--tpm2-device <dev>", "TPM for systemd-tpm2/clevis tokens: auto, a path, or swtpm:path=SOCKET")
        .option("--tpm2-signature <file>", "signed PCR policy (tpm2-pcr-signature.json) for tokens enrolled against a public key (default: systemd's paths)")
        .option("--tpm2-pcrlock <file>", "systemd-pcrlock policy (pcrlock.json) for tokens enrolled with --tpm2-pcrlock (default: /run/systemd, /var/lib/systemd)")
        .option("--json", "print the result as JSON"),
    ),
  ).action(async (device: string, o: Record<string, unknown>) => {
    if (!o.test) throw new TrustvolError("EUSAGE", "unlock without --test needs device-mapper: use `trustvol open`", "or add --test to only check the key");
    const h = await LuksHandle.open(device, { header: o.header as string | undefined, readOnly: true });
    try {
      const { unlockFromCli } = await import("../unlock.js");
      const { volumeKey, keyslot, token } = await unlockFromCli(h, device, o);
      wipe(volumeKey);
      if (o.json) printJson({ unlocked: true, keyslot, token: token ?? null, uuid: h.uuid });
      else io.err(token !== undefined ? `Key slot ${keyslot} unlocked through token ${token}.\n` : `Key slot ${keyslot} unlocked.\n`);
    } finally {
      await h.close();
    }
  });

  program
    .command("repair")
    .description("rewrite a damaged or stale LUKS2 header copy from the valid one (the one with the highest sequence id)")
    .argument("<device>")
    .option("--header <file>", "detached header")
    .option("-d, --key-file <file>", "passphrase (needed to recover an interrupted re-encryption)")
    .addOption(keyFileLimitOptions()[0]!)
    .addOption(keyFileLimitOptions()[1]!)
    .option("-S, --key-slot <n>", "keyslot to unlock", int("--key-slot", 0, 31))
    .option("--token-only", "recover through tokens alone (TPM2, PKCS#11, clevis), never ask for a passphrase (default: tokens first, then --key-file or the prompt)")
    .option("--token-id <n>", "use only this token", int("--token-id", 0, 31))
    .option("--token-type <type>", "use only tokens of this type")
    .option("--pin-file <file>", "token PIN from FILE (- = stdin)")
    .option("--pkcs11-module <path>", "PKCS#11 module for systemd-pkcs11 tokens")
    .option("--tpm2-device <dev>", "TPM for systemd-tpm2/clevis tokens: auto, a path, or swtpm:path=SOCKET")
    .option("--drop-old-keyslots", "finish a decryption whose data is all done by dropping its old keyslots that the passphrase does not open (a cryptsetup run killed in its finish wipes a keyslot before it drops it)")
    .option("-q, --batch-mode", "do not ask for confirmation before --drop-old-keyslots drops them")
    .option("--json", "print the result as JSON")
    .action(async (device: string, o: Record<string, unknown>) => {
      if (o.tokenOnly && o.keyFile) throw new TrustvolError("EUSAGE", "--token-only cannot be combined with --key-file");
      const { repairReencryption, strandedDecrypt, withReencryptionLock, refuseHeaderIsDevice } = await import("../../ops/reencrypt.js");
      const dev = await FileBlockDevice.open(device);
      const hdr = o.header ? await FileBlockDevice.open(o.header as string) : dev;
      try {
        await refuseHeaderIsDevice(dev, hdr, "give the volume's header file, or leave out --header when the header is on the device");
        // header copies rewritten under the re-encryption lock (a running re-encryption's commit writes one copy, then
        // the other); the passphrase is asked outside it, and the hotzone recovery takes it again (as cryptsetup)
        const { v, before, repaired } = await withReencryptionLock(hdr, async () => {
          const v = await Luks2Volume.open(hdr);
          const before = { primary: v.readStatus.primary, secondary: v.readStatus.secondary };
          return { v, before, repaired: await v.repair() };
        });
        // A re-encryption that crashed mid-hotzone: recover the hotzone as `cryptsetup repair` does.
        let reencryption = false, finished = false;
        const { reencryptStatus } = await import("../../luks2/reencrypt-metadata.js");
        const status = reencryptStatus(v.metadata);
        // a crashed hotzone, or a decryption stranded in cryptsetup's finalisation (old keyslots that may open no more)
        if (status === "crash" || strandedDecrypt(v.metadata, dev)) {
          // tokens first (an unattended device has no passphrase), then the key file or the prompt unless --token-only
          const { tokenPassphrasesFromCli } = await import("../unlock.js");
          const tokens = await tokenPassphrasesFromCli(v.metadata, o);
          if (o.tokenOnly && !tokens.passphrases.size) throw tokens.failures[0] ?? new TrustvolError("ENOKEY", Object.keys(v.metadata.tokens).length ? "no token on this volume that trustvol can use" : "the volume has no tokens", "recover with a passphrase (--key-file or the prompt)");
          let pass: Buffer | undefined;
          try {
            if (!o.tokenOnly && (o.keyFile || !tokens.passphrases.size)) pass = await getPassphrase({ keyFile: o.keyFile as string | undefined, prompt: `Enter passphrase for ${device}: `, ...keyFileLimits(o) });
            const confirmDrop = async (slots: number[]) => {
              const what = `keyslot${slots.length > 1 ? "s" : ""} ${slots.join(", ")}`;
              if (o.batchMode) return;
              // (a wrong passphrase looks the same as a wiped keyslot: said in the question)
              await confirmYes(`The passphrase opens no old ${what} of ${device}, whose data the header says is all decrypted. A cryptsetup run killed in its finish wipes a keyslot before it drops it; a mistyped passphrase looks the same. Drop ${what} and finish the decryption?`, `dropping ${what}`).catch((e: unknown) => {
                throw e instanceof TrustvolError && e.code === "EUSAGE" && repaired ? new TrustvolError("EUSAGE", `${e.message.replace("nothing was changed", "the header copies were repaired, the keyslots kept")}`, e.hint) : e;
              });
            };
            ({ recovered: reencryption, finished = false } = await repairReencryption(dev, { passphrase: pass, keyslotPassphrases: tokens.passphrases, keyslot: o.keySlot as number | undefined, header: hdr !== dev ? hdr : undefined, confirmDrop: o.dropOldKeyslots ? confirmDrop : undefined }));
          } finally {
            wipe(pass, ...tokens.passphrases.values());
          }
        }
        if (o.json) printJson({ repaired, reencryption_recovered: reencryption, reencryption_finished: finished, ...before });
        else {
          if (repaired) io.err(`Repaired: primary ${before.primary.ok ? "ok" : `was damaged (${before.primary.error})`}, secondary ${before.secondary.ok ? "ok" : `was damaged (${before.secondary.error})`}; both copies rewritten.\n`);
          if (reencryption) io.err("Recovered the interrupted re-encryption hotzone; resume with `trustvol reencrypt --resume-only`.\n");
          if (finished) io.err("Finished the decryption: its old keyslots and re-encryption metadata are gone.\n");
          if (!repaired && !reencryption && !finished) io.err(status === "none" ? "Both header copies are valid; nothing to repair.\n" : "Both header copies are valid and no hotzone needs recovery; resume with `trustvol reencrypt --resume-only`.\n");
        }
      } finally {
        await dev.close();
        if (hdr !== dev) await hdr.close();
      }
    });
}
