// `trustvol reencrypt DEVICE`: cryptsetup's `reencrypt --force-offline-reencrypt` verb and option spellings.
// Parses and prints only; the engine is src/ops/reencrypt.ts.
import { existsSync, statSync, unlinkSync } from "node:fs";
import { Option, type Command } from "commander";
import { io } from "../io.js";
import { FileBlockDevice, sameStoragePaths } from "../../blockdev/file.js";
import type { BlockDevice } from "../../blockdev/types.js";
import { TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { Luks2Volume } from "../../luks2/volume.js";
import type * as Online from "../../ops/reencrypt-online.js";
import { reencrypt, reencryptLuksVersion, refuseHeaderSizes, repairReencryption, type ReencryptOptions } from "../../ops/reencrypt.js";
import { tokenPassphrasesFromCli } from "../unlock.js";
import { getPassphrase, keyFileLimits } from "../secrets.js";
import { int, keyFileLimitOptions, parseSize, pbkdfFrom, printJson } from "../common.js";
import { progressBar } from "../progress.js";
import { confirmYes } from "../confirm.js";

// The online engine (device-mapper, keyring) loads only when a run may be online: never for --encrypt.
const online = (): Promise<typeof Online> => import("../../ops/reencrypt-online.js");

function abortOnSignal(): { signal: AbortSignal; done: () => void } {
  const ac = new AbortController();
  const h = () => ac.abort();
  process.on("SIGINT", h);
  process.on("SIGTERM", h);
  return { signal: ac.signal, done: () => { process.off("SIGINT", h); process.off("SIGTERM", h); } };
}

export function registerReencryptCommands(program: Command): void {
  program
    .command("reencrypt")
    .description("re-encrypt a LUKS2 device (new volume key) — online when it is open, offline otherwise — or --encrypt / --decrypt it in place; cryptsetup-compatible and resumable")
    .argument("<device>", "block device or image file (online: the LUKS2 device of an active mapping)")
    .option("--encrypt", "encrypt a plain device (with --header FILE)")
    .option("--decrypt", "decrypt to a plain device: with its detached --header FILE, or, when the header is on the device, --header NEW_FILE exports it there and the data moves to the device's start")
    .option("--init-only", "only write the re-encryption metadata; finish later with --resume-only")
    .option("--resume-only", "only resume a re-encryption already in the metadata")
    .addOption(new Option("--resilience <mode>", "hotzone protection: checksum (default), journal, none; with --resume-only it changes the protection of the run, after a crashed hotzone is recovered, as cryptsetup does (a data shift's stays datashift); --encrypt --reduce-device-size is always datashift; decrypting a device that holds its header: checksum or journal (on disk datashift-checksum / datashift-journal)").choices(["checksum", "journal", "none", "datashift", "datashift-checksum", "datashift-journal"]))
    .option("--resilience-hash <hash>", "checksum resilience hash (default sha256); with --resume-only alone, changes a checksum run's hash")
    .option("--hotzone-size <size>", "largest hotzone, a multiple of 4096 bytes (e.g. 4M; default 24M, or the re-encryption area's room for it); a data shift's hotzone is the shift; decrypting a device that holds its header, the moved segment's length (default the data offset, at most 20M)", parseSize("--hotzone-size"))
    .option("--reduce-device-size <size>", "in-place --encrypt with a data shift (e.g. 32M; at least 2M, a multiple of 8K, less than the device): the new data offset is half of it", parseSize("--reduce-device-size"))
    .option("--header <file>", "detached LUKS2 header")
    .option("-d, --key-file <file>", "passphrase from FILE (- = stdin)")
    .addOption(keyFileLimitOptions()[0]!)
    .addOption(keyFileLimitOptions()[1]!)
    .option("-S, --key-slot <n>", "unlock and keep only keyslot N (the others are removed when re-encryption finishes)", int("--key-slot", 0, 31))
    .option("-c, --cipher <spec>", "new data cipher (default: the current one, aes-xts-plain64 for --encrypt)")
    .option("-s, --key-size <bits>", "new volume key size in bits", int("--key-size", 128, 512))
    .option("--sector-size <bytes>", "new encryption sector size: 512, 1024, 2048 or 4096", int("--sector-size", 512, 4096))
    .addOption(new Option("--pbkdf <kdf>", "KDF of the new keyslots").choices(["argon2id", "argon2i", "pbkdf2"]))
    .option("--pbkdf-force-iterations <n>", "fixed PBKDF2 iterations / Argon2 time cost (no benchmark)", int("--pbkdf-force-iterations", 1))
    .option("--pbkdf-memory <kib>", "Argon2 memory in KiB", int("--pbkdf-memory", 32, 4 * 1024 * 1024))
    .option("--pbkdf-parallel <n>", "Argon2 lanes of the new keyslots (default: the CPU count, at most 4)", int("--pbkdf-parallel", 1, 64))
    .option("--hash <hash>", "PBKDF2 hash of the new keyslots (default sha256)")
    .addOption(new Option("--type <type>", "--encrypt: the header's LUKS version (cryptsetup's option; LUKS2 is the only one)").choices(["luks2"]))
    .option("-i, --iter-time <ms>", "benchmark the KDF to take MS milliseconds", int("--iter-time", 1))
    .option("--label <label>", "LUKS2 label (--encrypt)")
    .option("--label-from-fs", "--encrypt: copy the file system's label (ext2/3/4, xfs, btrfs, vfat) to the LUKS2 header, so LABEL= still finds the partition; its UUID is not copied: the opened device keeps it, and a duplicate UUID would confuse blkid/udev")
    .option("--subsystem <name>", "LUKS2 subsystem (--encrypt)")
    .option("--uuid <uuid>", "LUKS2 UUID (--encrypt; default: a new one, never the file system's)")
    .option("--luks2-metadata-size <size>", "--encrypt: size of one metadata copy, 16K .. 4M, a power of two (default 16K)", parseSize("--luks2-metadata-size"))
    .option("--luks2-keyslots-size <size>", "--encrypt: size of the keyslots area, a multiple of 4096 (default: up to the data offset; with --header, 16 MiB less both metadata copies)", parseSize("--luks2-keyslots-size"))
    .option("--token-only", "unlock only through tokens (TPM2, PKCS#11, clevis...)")
    .option("--token-id <n>", "use only this token", int("--token-id", 0, 31))
    .option("--token-type <type>", "use only tokens of this type")
    .option("--pin-file <file>", "token PIN from FILE (- = stdin)")
    .option("--pkcs11-module <path>", "PKCS#11 module for systemd-pkcs11 tokens")
    .option("--tpm2-device <dev>", "TPM for systemd-tpm2/clevis tokens: auto, a path, or swtpm:path=SOCKET")
    .option("--progress-json", "print progress as JSON lines on stdout (on stderr with --json), cryptsetup's fields")
    .option("--no-progress", "no progress bar")
    .option("-q, --batch-mode", "do not ask for confirmation")
    .option("--active-name <name>", "re-encrypt online: the device is open as this mapping (default: found by the LUKS2 UUID)")
    .option("--force-offline-reencrypt", "re-encrypt offline even when the device is open: you vouch that nothing uses the mapping (not checked, as in cryptsetup)")
    .option("--json", "print the result as JSON")
    .action(async (device: string, o: Record<string, unknown>) => {
      if (o.encrypt && o.decrypt) throw new TrustvolError("EUSAGE", "--encrypt and --decrypt exclude each other");
      if (o.tokenOnly && o.keyFile) throw new TrustvolError("EUSAGE", "--token-only cannot be combined with --key-file");
      const mode: ReencryptOptions["mode"] = o.encrypt ? "encrypt" : o.decrypt ? "decrypt" : "reencrypt";
      // (before the online path, which never reaches the engine's own refusal)
      refuseHeaderSizes({ mode, resumeOnly: !!o.resumeOnly, metadataSize: o.luks2MetadataSize as number | undefined, keyslotsSize: o.luks2KeyslotsSize as number | undefined });
      const dev = await FileBlockDevice.open(device);
      let hdr: BlockDevice = dev;
      const secrets: Buffer[] = [];
      const sig = abortOnSignal();
      const bar = progressBar("Re-encrypting", o.progress !== false && !o.progressJson && !o.json && process.stderr.isTTY === true);
      // --encrypt creates its detached header file: a refusal before anything is written must not leave it behind
      const createdHeader = mode === "encrypt" && !!o.header && !existsSync(o.header as string);
      // --decrypt --header NEW_FILE: the device holds its header, which is exported there (cryptsetup's datashift decrypt)
      const exportHeader = mode === "decrypt" && !!o.header && !o.resumeOnly && !existsSync(o.header as string) ? (o.header as string) : undefined;
      let ok = false;
      try {
        // --encrypt writes its header over an existing file: like cryptsetup (and `format`), not over a file system or
        // partition table without a confirmation (a LUKS header there is a run to go on with; the device itself is
        // refused by the engine)
        if (mode === "encrypt" && o.header && !createdHeader && !o.resumeOnly && !o.batchMode && !sameStoragePaths(o.header as string, device)) {
          const found = await (await import("../../ops/probe.js")).probePath(o.header as string);
          if (found && !found.startsWith("LUKS")) await (await import("../confirm.js")).confirmOverwrite(`${String(o.header)} is not empty (${found} found)`, "writing the LUKS2 header there");
        }
        if (o.header && !exportHeader) hdr = await FileBlockDevice.open(o.header as string, { create: mode === "encrypt" });
        if (exportHeader && !o.batchMode) await confirmYes(`Header file ${exportHeader} does not exist. Initialize LUKS2 decryption of ${device} and export its LUKS2 header to ${exportHeader}?`, `decrypting ${device} in place`);
        const version = await reencryptLuksVersion(hdr);
        if (version === 1) throw new TrustvolError("EUNSUPPORTED", `${hdr.name} is LUKS1`, "convert it to LUKS2 first (`cryptsetup convert --type luks2`)");
        const isLuks = version !== null;
        let passphrase: Buffer | undefined;
        let keyslotPassphrases: Map<number, Uint8Array> | undefined;
        let uncovered = true; // a keyslot to carry over that no token opens: the typed passphrase is needed
        // Tokens first (unattended), like the CLI's unlock path; then a key file or the prompt unless --token-only. With
        // a key file too: it opens its keyslot, the tokens theirs, so a rotation keeps every keyslot and token.
        // (a header that does not load: the engine says what it is and what to do)
        const v = isLuks ? await Luks2Volume.open(hdr).catch(() => undefined) : undefined;
        if (v) {
          if (Object.keys(v.metadata.tokens).length) {
            const r = await tokenPassphrasesFromCli(v.metadata, o);
            keyslotPassphrases = r.passphrases;
            secrets.push(...r.passphrases.values());
            const slots = o.keySlot !== undefined ? [o.keySlot as number] : Object.keys(v.metadata.keyslots).filter((k) => v.metadata.keyslots[k]!.type === "luks2").map(Number);
            uncovered = mode === "reencrypt" && !o.resumeOnly ? slots.some((k) => !r.passphrases.has(k)) : !r.passphrases.size;
            if (o.tokenOnly && !r.passphrases.size) throw r.failures[0] ?? new TrustvolError("ENOKEY", "no token on this volume that trustvol can use", "unlock with a passphrase");
          } else if (o.tokenOnly) throw new TrustvolError("ENOKEY", "the volume has no tokens", "unlock with a passphrase");
        }
        const needPass = !o.tokenOnly && (!!o.keyFile || uncovered);
        if (needPass) {
          passphrase = await getPassphrase({ keyFile: o.keyFile as string | undefined, prompt: `Enter passphrase for ${device}: `, verify: mode === "encrypt" && !isLuks, ...keyFileLimits(o) });
          secrets.push(passphrase);
        }
        const t0 = Date.now();
        let first: number | undefined;
        const onProgress = (p: { done: number; total: number }) => {
          bar.update(p.done, p.total);
          if (o.progressJson) {
            // cryptsetup's --progress-json fields (strings); speed in bytes/s over this run
            const ms = Date.now() - t0;
            if (first === undefined) first = p.done;
            const rate = ms ? (p.done - first) / ms : 0;
            const eta = rate > 0 ? Math.round((p.total - p.done) / rate) : 0;
            // stdout as cryptsetup; stderr when --json keeps stdout for the one result document
            (o.json ? io.err : io.out)(JSON.stringify({ device, device_bytes: String(p.done), device_size: String(p.total), speed: String(Math.round(rate * 1000)), eta_ms: String(eta), time_ms: String(ms) }) + "\n");
          }
        };
        // Online when the device is open (cryptsetup's rule): --active-name, or its mapping found by UUID.
        let active = o.activeName as string | undefined;
        // Any LUKS2 run (rotation, --decrypt, an --encrypt going on; with or without --header) looks for the mapping:
        // an open device is never rewritten offline unless --force-offline-reencrypt vouches that the mapping is unused.
        // (a header that does not load maps nothing: the engine says what it is and what to do, e.g. an --encrypt
        // cut before its first commit)
        if (v && !active && !o.forceOfflineReencrypt) active = (await online()).findActiveMapping(v.uuid);
        if (active) onlineRefusal(active, mode, o, active === o.activeName);
        if (active) await dev.close();
        // (an interrupted run names the command that resumes it: with its header file, for this device)
        const resumeCmd = `trustvol reencrypt --resume-only${o.header ? ` --header ${String(o.header)}` : ""} ${device}`;
        const r = await withResumeHint(resumeCmd, async () => active
          ? await (await online()).reencryptOnline(active, { passphrase, keyslot: o.keySlot as number | undefined, keyslotPassphrases, resilience: o.resilience as ReencryptOptions["resilience"], hash: o.resilienceHash as string | undefined, hotzoneSize: o.hotzoneSize as number | undefined, cipher: o.cipher as string | undefined, keySize: o.keySize as number | undefined, sectorSize: o.sectorSize as number | undefined, pbkdf: pbkdfFrom(o), resumeOnly: !!o.resumeOnly, onProgress, signal: sig.signal })
          : await reencrypt(dev, {
          mode,
          passphrase,
          keyslot: o.keySlot as number | undefined,
          keyslotPassphrases,
          header: o.header && !exportHeader ? hdr : undefined,
          exportHeader,
          resilience: o.resilience as ReencryptOptions["resilience"],
          hash: o.resilienceHash as string | undefined,
          hotzoneSize: o.hotzoneSize as number | undefined,
          reduceDeviceSize: o.reduceDeviceSize as number | undefined,
          cipher: o.cipher as string | undefined,
          keySize: o.keySize as number | undefined,
          sectorSize: o.sectorSize as number | undefined,
          pbkdf: pbkdfFrom(o),
          initOnly: !!o.initOnly,
          resumeOnly: !!o.resumeOnly,
          label: o.label as string | undefined,
          labelFromFs: !!o.labelFromFs,
          subsystem: o.subsystem as string | undefined,
          uuid: o.uuid as string | undefined,
          metadataSize: o.luks2MetadataSize as number | undefined,
          keyslotsSize: o.luks2KeyslotsSize as number | undefined,
          onProgress,
          signal: sig.signal,
        }));
        ok = true;
        bar.end();
        if (o.json) printJson(r);
        else if (r.state === "initialized") io.err(`Re-encryption (${r.mode}) initialized in the metadata; finish it with \`trustvol reencrypt --resume-only${o.header ? ` --header ${String(o.header)}` : ""} ${device}\`.\n`);
        else io.err(`Re-encryption (${r.mode}) finished${r.recovered ? " (an interrupted hotzone was recovered first)" : ""}.\n`);
      } finally {
        sig.done();
        for (const s of secrets) wipe(s);
        await dev.close().catch(() => {});
        if (hdr !== dev) await hdr.close();
        if (!ok && createdHeader) try { if (statSync(o.header as string).size === 0) unlinkSync(o.header as string); } catch { /* gone */ }
      }
    });
}

/** An EINTR from the run says how to resume this device (the engine knows neither the command line nor the paths). */
async function withResumeHint<T>(cmd: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (e) {
    if (e instanceof TrustvolError && e.code === "EINTR") throw new TrustvolError("EINTR", e.message, `resume it with \`${cmd}\` (or cryptsetup's)`);
    throw e;
  }
}

export { repairReencryption };


/**
 * What trustvol cannot do online (cryptsetup 2.6 can: online --decrypt and --encrypt with a detached header, online
 * rotation with --header): a one-line refusal that says how to get there — offline after closing, or with cryptsetup.
 */
function onlineRefusal(active: string, mode: "reencrypt" | "encrypt" | "decrypt", o: Record<string, unknown>, named: boolean): void {
  const hdr = o.header ? ` --header ${String(o.header)}` : "";
  // (named by --active-name, the mapping may not exist at all: say what was asked, not that it is open)
  const open = named ? `--active-name ${active} asks for an online run` : `${active} is open`;
  const close = named ? "leave out --active-name and run it with the volume closed" : `unmount and close it (trustvol close ${active}), then run the same command offline`;
  if (mode === "decrypt")
    throw new TrustvolError("EUNSUPPORTED", `${open}: trustvol decrypts offline only`, `${close}; or decrypt it online with \`cryptsetup reencrypt --decrypt${hdr || " --header FILE"} --active-name ${active} DEVICE\``);
  if (mode === "encrypt")
    throw new TrustvolError("EUNSUPPORTED", `online --encrypt (${active} is active) is not supported by trustvol`, `encrypt it before it is mounted (trustvol reencrypt --encrypt offline), or online with \`cryptsetup reencrypt --encrypt --header FILE --active-name ${active} DEVICE\``);
  if (o.header)
    throw new TrustvolError("EUNSUPPORTED", `${open}: trustvol rotates keys online only with the LUKS2 header on the device, not with --header`, `${close}; or rotate online with \`cryptsetup reencrypt${hdr} --active-name ${active} DEVICE\``);
  if (o.initOnly || o.reduceDeviceSize)
    throw new TrustvolError("EUSAGE", `${open}: --init-only and --reduce-device-size are for offline runs`, `drop them to rotate online, or ${close}${named ? "" : " (--force-offline-reencrypt only when nothing uses the mapping)"}`);
}
