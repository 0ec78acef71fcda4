// Real-kernel commands: open / close (dm-crypt through the kernel keyring), trusted (kernel trusted keys: the seed
// 000 flow), caam (NXP black keys through /dev/caam-keygen or the test simulator), doctor (platform audit).
import { io, status } from "../io.js";
import { Option, type Command } from "commander";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { TrustvolError, ExitCode, fsErrorCode, fsReason, usage } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { atomicWriteFileSync } from "../../util/atomic.js";
import { addKeyOptions, addPinOptions, int, printJson } from "../common.js";
import { readKeyFile } from "../secrets.js";
import { requireTokenOnly, unlockFromCli } from "../unlock.js";
import { closeVolume, createTrustedVolume, detectVolumeKind, openLuks, openPlain, openTrustedVolume, type OpenResult } from "../../ops/open.js";
import { runDoctor, formatDoctor } from "../../ops/doctor.js";
import { createTrustedKey, detectTrustedSource, loadTrustedKeyFile, saveTrustedKeyBlob, unlinkKey, type TrustedKeyOptions, type TpmHash, type TrustedKeySource } from "../../trust/kernel/trusted.js";
import type { KeyRef } from "../../trust/kernel/keyring.js";
import { CAAM_TK_CIPHER, decodeTag, encryptionOf, openCaamKeygen, type CaamKeyEncryption } from "../../trust/caam/index.js";
import { KEYRING_KEY_TYPES, type KeyringKeyType } from "../../dm/table.js";

function keyringArg(v: string): KeyRef {
  if (["@s", "@u", "@us"].includes(v)) return v as KeyRef;
  if (/^%:.+/.test(v)) return { keyring: v.slice(2) };
  throw usage(`keyring must be @u, @s, @us or %:NAME, got ${v}`);
}

function handleArg(v: string): number {
  if (!/^(0x[0-9a-fA-F]{1,8}|[0-9]+)$/.test(v)) throw usage(`bad handle "${v}" (e.g. 0x81000001)`);
  return Number(v);
}

function trustedOptionsFrom(o: Record<string, unknown>): TrustedKeyOptions {
  return { ...(o.keyhandle !== undefined ? { keyhandle: o.keyhandle as number } : {}), ...(o.hash ? { hash: o.hash as TpmHash } : {}) };
}

function addTrustedKeyOptions(c: Command): Command {
  return c
    .option("--keyhandle <handle>", "TPM: parent key handle for the trusted key (e.g. 0x81000001)", handleArg)
    .addOption(new Option("--hash <alg>", "TPM 2.0: name algorithm of the sealed object").choices(["sha1", "sha256", "sha384", "sha512"]))
    .addOption(new Option("--source <source>", "trust source (default: what the kernel uses)").choices(["tpm", "tee", "caam", "dcp"]));
}

function printOpen(r: OpenResult, json: boolean): void {
  if (json) printJson(r);
  else if (r.dryRun) io.out(`${r.table}\n`);
  else io.err(`${r.device} is open (${r.kind}${r.loop ? `, on ${r.loop}` : ""}).\n`);
}

export function registerKernelCommands(program: Command): void {
  // ------------------------------------------------------------------ open
  addPinOptions(
    addKeyOptions(
      program
        .command("open")
        .description("map a LUKS2/LUKS1 volume, a trusted-key volume or a plain dm-crypt device to /dev/mapper/<name>; the key reaches dm-crypt only through the kernel keyring")
        .argument("<device>", "block device or image file (image files get a loop device)")
        .argument("<name>", "mapping name")
        .option("--header <file>", "detached LUKS header")
        .option("-r, --read-only", "map read-only")
        .option("--allow-discards", "pass discards (TRIM) through")
        .option("--token-only", "LUKS2: unlock only through tokens (TPM, PKCS#11, clevis)")
        .option("--token-id <n>", "LUKS2: use only this token", int("--token-id", 0, 31))
        .option("--token-type <type>", "LUKS2: use only tokens of this type")
        .option("--pkcs11-module <path>", "PKCS#11 module for systemd-pkcs11 tokens")
        .option("--tpm2-device <dev>", "TPM for systemd-tpm2/clevis tokens")
        .option("--tpm2-signature <file>", "signed PCR policy (tpm2-pcr-signature.json) for tokens enrolled against a public key")
        .option("--tpm2-pcrlock <file>", "systemd-pcrlock policy (pcrlock.json) for tokens enrolled with --tpm2-pcrlock, as crypttab's tpm2-pcrlock= (default: /run/systemd, /var/lib/systemd)")
        .option("--blob <file>", "trusted-key or CAAM black-key volume: its key descriptor (default <image>.tvkey)")
        .option("--plain", "plain dm-crypt (no header): needs --cipher and a key (--key-desc, --trusted-blob, --black-key or --volume-key-file)")
        .option("-c, --cipher <spec>", "plain: dm-crypt cipher (aes-xts-plain64, aes-cbc-plain, capi:tk(cbc(aes))-plain...)")
        .addOption(new Option("--key-type <type>", "plain: kernel key type the table references").choices([...KEYRING_KEY_TYPES]))
        .option("--key-desc <desc>", "plain: description of the kernel key (e.g. kmk)")
        .option("--key-size <bytes>", "plain: key size in BYTES as the table gives it (e.g. 32, 64)", int("--key-size", 1, 1024))
        .option("--trusted-blob <file>", "plain: load this trusted-key blob first (keyctl pipe output), unlink it after activation")
        .option("--black-key <file>", "plain: load this CAAM black key as a logon key (cipher default capi:tk(cbc(aes))-plain)")
        .option("--volume-key-file <file>", "plain: raw key bytes from FILE, loaded as a logon key")
        .option("-o, --offset <sectors>", "plain: data start on the device (512-byte sectors)", int("--offset"))
        .option("-p, --skip <sectors>", "plain: IV offset (512-byte sectors)", int("--skip"))
        .option("--size <sectors>", "plain: mapping size (512-byte sectors)", int("--size", 1))
        .option("--sector-size <bytes>", "plain: encryption sector size", int("--sector-size", 512, 4096))
        .option("--iv-large-sectors", "plain: IVs count encryption sectors, not 512-byte units")
        .option("--keyring <ring>", "keyring that briefly holds the keys trustvol loads (@u, @s, %:name)", keyringArg)
        .option("--dry-run", "print the dm table and stop (loads no key, maps nothing)")
        .option("--json", "print the result as JSON"),
    ),
  ).action(async (device: string, name: string, o: Record<string, unknown>) => {
    requireTokenOnly(o);
    const common = { readOnly: !!o.readOnly, allowDiscards: !!o.allowDiscards, dryRun: !!o.dryRun, ...(o.keyring ? { keyring: o.keyring as KeyRef } : {}) };
    const plain = o.plain || o.cipher || o.keyDesc || o.trustedBlob || o.blackKey || o.volumeKeyFile;
    if (plain) {
      let keyBytes: Buffer | undefined;
      try {
        if (o.volumeKeyFile) keyBytes = readKeyFile(o.volumeKeyFile as string);
        const cipher = (o.cipher as string | undefined) ?? (o.blackKey ? CAAM_TK_CIPHER : undefined);
        if (!cipher) throw usage("plain dm-crypt needs --cipher (there is no header to say which)");
        if (o.blackKey) {
          const { header } = decodeTag(readFileSync(o.blackKey as string), `black key ${o.blackKey}`);
          if (cipher.startsWith("capi:tk(") === false) io.err(`warning: a ${encryptionOf(header.type).toUpperCase()} black key only works with a CAAM tk() cipher\n`);
        }
        const r = await openPlain(device, name, {
          ...common,
          cipher,
          key: {
            type: (o.keyType as KeyringKeyType | undefined) ?? "logon",
            ...(o.keyDesc ? { description: o.keyDesc as string } : {}),
            ...(o.keySize !== undefined ? { size: o.keySize as number } : {}),
            ...(o.trustedBlob ? { trustedBlob: o.trustedBlob as string, trustedOptions: trustedOptionsFrom(o) } : {}),
            ...(o.blackKey ? { blackKeyFile: o.blackKey as string } : {}),
            ...(keyBytes ? { keyBytes } : {}),
          },
          ...(o.offset !== undefined ? { offset: o.offset as number } : {}),
          ...(o.skip !== undefined ? { skip: o.skip as number } : {}),
          ...(o.size !== undefined ? { size: o.size as number } : {}),
          ...(o.sectorSize !== undefined ? { sectorSize: o.sectorSize as number } : {}),
          ivLargeSectors: !!o.ivLargeSectors,
        });
        printOpen(r, !!o.json);
      } finally {
        wipe(keyBytes);
      }
      return;
    }
    if (o.blob) {
      const cv = await import("../../ops/caam-volume.js");
      if (cv.isCaamDescriptor(o.blob as string)) {
        cv.readCaamVolumeDescriptor(o.blob as string); // a damaged descriptor fails before the CAAM is touched
        const kg = openCaamKeygen({});
        try {
          printOpen(await cv.openCaamVolume(device, name, { ...common, descriptor: o.blob as string, keygen: kg }), !!o.json);
        } finally {
          await kg.close();
        }
        return;
      }
    }
    const kind = await detectVolumeKind(device, { header: o.header as string | undefined, descriptor: o.blob as string | undefined });
    if (kind === "trusted-volume") {
      printOpen(await openTrustedVolume(device, name, { ...common, ...(o.blob ? { descriptor: o.blob as string } : {}), keyOptions: trustedOptionsFrom(o) }), !!o.json);
      return;
    }
    if (kind === "unknown") throw new TrustvolError("ENOTLUKS", `${device} has no LUKS header and no trusted-volume descriptor beside it`, "for plain dm-crypt give --plain --cipher and a key; for a trusted-key volume give --blob");
    const r = await openLuks(
      device,
      name,
      (h) => unlockFromCli(h, device, o),
      { ...common, header: o.header as string | undefined },
    );
    printOpen(r, !!o.json);
  });

  // ------------------------------------------------------------------ close
  program
    .command("close")
    .description("remove a dm-crypt mapping and the loop device trustvol attached for it")
    .argument("<name>")
    .option("--deferred", "remove when the last user closes it")
    .option("--json", "print the result as JSON")
    .action((name: string, o: Record<string, unknown>) => {
      const r = closeVolume(name, { deferred: !!o.deferred });
      if (o.json) printJson(r);
    });

  // ------------------------------------------------------------------ trusted
  const trusted = program.command("trusted").description("kernel trusted keys (TPM, OP-TEE, CAAM, DCP trust sources): sealed blobs on disk, keys only in the kernel");
  addTrustedKeyOptions(
    trusted
      .command("new")
      .description("generate a trusted key in the kernel and save its sealed blob (0600, atomic)")
      .argument("<desc>", "key description (the table references :<size>:trusted:<desc>)")
      .requiredOption("--blob <file>", "where to store the sealed blob")
      .option("--size <bytes>", "key length 32..128", int("--size", 32, 128), 32)
      .option("--keyring <ring>", "keyring for the key (default @u)", keyringArg)
      .option("--json", "print the result as JSON"),
  ).action((desc: string, o: Record<string, unknown>) => {
    const ring = (o.keyring as KeyRef | undefined) ?? "@u";
    const id = createTrustedKey(desc, o.size as number, trustedOptionsFrom(o), ring, { source: o.source as TrustedKeySource | undefined });
    saveTrustedKeyBlob(id, o.blob as string);
    if (o.json) printJson({ serial: id, description: desc, blob: resolve(o.blob as string), size: o.size });
  });
  addTrustedKeyOptions(
    trusted
      .command("load")
      .description("unseal a stored blob into the kernel keyring (next boot)")
      .argument("<desc>")
      .requiredOption("--blob <file>", "the sealed blob")
      .option("--keyring <ring>", "keyring for the key (default @u)", keyringArg)
      .option("--json", "print the result as JSON"),
  ).action((desc: string, o: Record<string, unknown>) => {
    const id = loadTrustedKeyFile(desc, o.blob as string, trustedOptionsFrom(o), (o.keyring as KeyRef | undefined) ?? "@u", { source: o.source as TrustedKeySource | undefined });
    if (o.json) printJson({ serial: id, description: desc });
  });
  trusted
    .command("unload")
    .description("unlink a trusted key from a keyring")
    .argument("<desc>")
    .option("--keyring <ring>", "keyring (default @u)", keyringArg)
    .action((desc: string, o: Record<string, unknown>) => {
      unlinkKey({ type: "trusted", description: desc }, (o.keyring as KeyRef | undefined) ?? "@u");
    });
  addTrustedKeyOptions(
    trusted
      .command("format")
      .description("make a trusted-key volume: a new sealed key for plain dm-crypt on <image>, its descriptor beside it (<image>.tvkey) or in --blob")
      .argument("<image>", "image file or block device")
      .option("--blob <file>", "descriptor path (default <image>.tvkey)")
      .option("-c, --cipher <spec>", "dm-crypt cipher", "aes-xts-plain64")
      .option("--key-size <bytes>", "key length in bytes (default 64 for xts, else 32)", int("--key-size", 32, 128))
      .option("--sector-size <bytes>", "encryption sector size", int("--sector-size", 512, 4096), 4096)
      .option("--create-size <mib>", "create the image file with this size when it does not exist", int("--create-size", 1))
      .option("--force", "replace an existing descriptor (its volume's data becomes unreadable)")
      .option("--json", "print the result as JSON"),
  ).action((image: string, o: Record<string, unknown>) => {
    const r = createTrustedVolume(image, {
      ...(o.blob ? { descriptor: o.blob as string } : {}),
      cipher: o.cipher as string,
      ...(o.keySize !== undefined ? { keySize: o.keySize as number } : {}),
      sectorSize: o.sectorSize as number,
      keyOptions: trustedOptionsFrom(o),
      ...(o.source ? { source: o.source as TrustedKeySource } : {}),
      ...(o.createSize ? { createSize: (o.createSize as number) * 1024 * 1024 } : {}),
      force: !!o.force,
    });
    // The descriptor's own format version is not the JSON contract's `version`.
    const { blob: _b, version: descriptorVersion, ...shown } = r.desc;
    if (o.json) printJson({ descriptor: resolve(r.descriptor), descriptor_version: descriptorVersion, ...shown });
    else io.err(`Sealed a ${r.desc.key_size}-byte ${r.desc.source} trusted key for ${image}; descriptor ${r.descriptor} (keep a backup: without it the data is lost).\n`);
  });
  trusted
    .command("source")
    .description("which trust source the kernel uses for trusted keys")
    .option("--json", "print the result as JSON")
    .action((o: Record<string, unknown>) => {
      const d = detectTrustedSource();
      if (o.json) printJson(d);
      else io.out(`${d.source ?? "none"} (${d.how}${d.tpmVersion ? `, TPM ${d.tpmVersion}.0` : ""})\n`);
    });

  // ------------------------------------------------------------------ caam
  const caam = program.command("caam").description("NXP CAAM black keys through /dev/caam-keygen (like keyctl_caam's caam-keygen)");
  const simOpt = (c: Command) =>
    c
      .option("--dir <dir>", "where key and blob files go", "/data/caam")
      .option("--device <path>", "CAAM keygen device", "/dev/caam-keygen")
      .option("--simulator <statedir>", "use the SOFTWARE CAAM SIMULATOR (tests only; needs TRUSTVOL_CAAM_SIMULATOR=1)")
      .option("--json", "print the result as JSON");
  simOpt(
    caam
      .command("keygen")
      .description("create a black key (<dir>/<name>) and its blob (<dir>/<name>.bb), both 0600")
      .argument("<name>")
      .addOption(new Option("--enc <mode>", "black key encryption").choices(["ecb", "ccm"]).default("ecb"))
      .option("-s, --size <bytes>", "random key of this size (16..64)", int("--size", 16, 64), 32)
      .option("--key-file <file>", "blacken this plaintext key instead of a random one (- = stdin)"),
  ).action(async (name: string, o: Record<string, unknown>) => {
    if (/[/\0]/.test(name) || name.startsWith(".")) throw usage(`bad key name "${name}"`);
    const kg = openCaamKeygen({ ...(o.simulator ? { simulatorStateDir: o.simulator as string } : {}), device: o.device as string });
    let plain: Buffer | undefined;
    try {
      if (o.keyFile) plain = readKeyFile(o.keyFile as string);
      const r = await kg.create(o.enc as CaamKeyEncryption, plain ? { plaintext: plain } : { size: o.size as number });
      const dir = o.dir as string;
      const { mkdirSync } = await import("node:fs");
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      atomicWriteFileSync(join(dir, `${name}.bb`), r.blob, 0o600);
      atomicWriteFileSync(join(dir, name), r.blackKey, 0o600);
      if (o.json) printJson({ blackKey: resolve(dir, name), blob: resolve(dir, `${name}.bb`), blackKeySize: r.blackKey.length, blobSize: r.blob.length, backend: kg.description, tableKey: `:${r.blackKey.length}:logon:<desc>`, cipher: CAAM_TK_CIPHER });
      else if (kg.kind === "simulator") io.err(`warning: ${kg.description}\n`);
      wipe(r.blackKey);
    } finally {
      wipe(plain);
      await kg.close();
    }
  });
  simOpt(
    caam
      .command("import")
      .description("turn a blob back into a black key for this boot (<dir>/<name>, 0600)")
      .argument("<blob>", "the .bb file")
      .argument("<name>"),
  ).action(async (blobPath: string, name: string, o: Record<string, unknown>) => {
    if (/[/\0]/.test(name) || name.startsWith(".")) throw usage(`bad key name "${name}"`);
    const kg = openCaamKeygen({ ...(o.simulator ? { simulatorStateDir: o.simulator as string } : {}), device: o.device as string });
    try {
      let blob: Buffer;
      try {
        blob = readFileSync(blobPath);
      } catch (e) {
        throw new TrustvolError(fsErrorCode(e), `cannot read blob ${blobPath}: ${fsReason(e)}`, "check the path");
      }
      const bk = await kg.import(blob);
      const dir = o.dir as string;
      const { mkdirSync } = await import("node:fs");
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      atomicWriteFileSync(join(dir, name), bk, 0o600);
      if (o.json) printJson({ blackKey: resolve(dir, name), blackKeySize: bk.length, backend: kg.description });
      wipe(bk);
    } finally {
      await kg.close();
    }
  });

  // ------------------------------------------------------------------ doctor
  program
    .command("doctor")
    .description("audit this device: trust sources, kernel support, Secure Boot, plaintext swap//tmp, volumes and their tokens (exit 8 on a critical finding)")
    .option("--json", "JSON report")
    .option("--root <dir>", "audit a tree mounted at DIR instead of / (no commands are run)")
    .option("--no-scan", "do not open block devices to look for LUKS headers")
    .action((o: Record<string, unknown>) => {
      const r = runDoctor({ ...(o.root ? { root: o.root as string } : {}), skipVolumeScan: o.scan === false });
      if (o.json) printJson(r);
      else io.out(formatDoctor(r));
      if (r.critical) {
        // a report, not an error: exit 8 with the report as the only JSON document
        const n = r.findings.filter((f) => f.severity === "critical").length;
        io.err(`trustvol: ${n} critical finding${n === 1 ? "" : "s"}\n`);
        status.exitCode = ExitCode.CRITICAL;
      }
    });
}
