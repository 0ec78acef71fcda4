// `trustvol verity format|verify|dump|sign|verify-sig|open|close`: dm-verity hash trees like veritysetup 2.6.1,
// root hash signatures (PKCS#7, key in a PEM file or on a PKCS#11 token) and activation through device-mapper.
import { io } from "../io.js";
import { readFileSync, writeFileSync, realpathSync, existsSync } from "node:fs";
import { Option, type Command } from "commander";
import { TrustvolError, fsErrorCode, fsReason, usage } from "../../util/errors.js";
import { atomicWriteFileSync } from "../../util/atomic.js";
import { FileBlockDevice } from "../../blockdev/file.js";
import { addAlias, int, printJson } from "../common.js";
import { progressBar, progressMode } from "../progress.js";
import { verityFormat, verityVerify, verityDump, formatVerityDump, type VerityFormatInput } from "../../verity/tree.js";
import { VERITY_HASH_ALGORITHMS, type VerityHashAlgorithm } from "../../verity/superblock.js";
import type { RootHashSigner } from "../../verity/sign.js";
import { verityOpen, verityClose, verityStatus } from "../../verity/activate.js";
import { verityFecEncode, verityFecCheck, type VerityFecLayout } from "../../verity/fec.js";
import type { PinSource } from "../../trust/pkcs11/pin.js";
import { parsePkcs11Uri } from "../../trust/pkcs11/uri.js";
// ASN.1/CMS (sign, verify-sig) and pkcs11js (sign --pkcs11-uri) are loaded only by the commands that need them.
const signing = () => import("../../verity/sign.js");

type Opts = Record<string, unknown>;

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, "latin1");
  } catch (e) {
    throw new TrustvolError(fsErrorCode(e), `cannot read ${what} ${path}: ${fsReason(e)}`, "check the path");
  }
}

function readBin(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new TrustvolError(fsErrorCode(e), `cannot read ${what} ${path}: ${fsReason(e)}`, "check the path");
  }
}

/** Root hash from the positional argument or --root-hash-file (exactly one). */
function rootFrom(arg: string | undefined, o: Opts): string {
  const file = o.rootHashFile as string | undefined;
  if (arg !== undefined && file) throw usage("give the root hash either as an argument or with --root-hash-file, not both");
  if (file) return readText(file, "root hash file").trim();
  if (arg === undefined) throw usage("the root hash is missing", "give it as an argument or with --root-hash-file FILE");
  return arg.trim();
}

function saltFrom(v: string | undefined): Buffer | undefined {
  if (v === undefined) return undefined;
  if (v === "-") return Buffer.alloc(0);
  if (!/^([0-9a-fA-F]{2})*$/.test(v)) throw usage(`--salt must be hex digits (an even number) or -, got "${v.slice(0, 80)}"`);
  return Buffer.from(v, "hex");
}

function addParamOptions(c: Command, forFormat: boolean): Command {
  return c
    .addOption(new Option("--hash <alg>", "hash algorithm").choices([...VERITY_HASH_ALGORITHMS]).default(forFormat ? "sha256" : undefined))
    .option("--data-block-size <bytes>", "data block size (512 .. 524288, power of two; default 4096)", int("--data-block-size", 512, 524288))
    .option("--hash-block-size <bytes>", "hash block size (512 .. 524288, power of two; default 4096)", int("--hash-block-size", 512, 524288))
    .option("--salt <hex>", forFormat ? "salt as hex, - for none (default: 32 random bytes)" : "salt as hex, - for none (with --no-superblock)")
    .addOption(new Option("--format <type>", "hash type: 1 normal (default), 0 original Chrome OS").choices(["0", "1"]))
    .option("--data-blocks <n>", "number of data blocks (default: the whole data device)", int("--data-blocks", 1))
    .option("--hash-offset <bytes>", "superblock / hash area offset in the hash device (multiple of 512)", int("--hash-offset"))
    .option("--no-superblock", forFormat ? "do not write a superblock (parameters must then be given again to verify/open)" : "the hash device has no superblock: take the parameters from the options");
}

function paramsFrom(o: Opts): VerityFormatInput & { noSuperblock?: boolean } {
  const p: VerityFormatInput & { noSuperblock?: boolean } = {};
  if (o.hash !== undefined) p.hashAlgorithm = o.hash as VerityHashAlgorithm;
  if (o.dataBlockSize !== undefined) p.dataBlockSize = o.dataBlockSize as number;
  if (o.hashBlockSize !== undefined) p.hashBlockSize = o.hashBlockSize as number;
  const salt = saltFrom(o.salt as string | undefined);
  if (salt) p.salt = salt;
  if (o.format !== undefined) p.hashType = Number(o.format) as 0 | 1;
  if (o.dataBlocks !== undefined) p.dataBlocks = o.dataBlocks as number;
  if (o.hashOffset !== undefined) p.hashOffset = o.hashOffset as number;
  if (o.uuid !== undefined) p.uuid = o.uuid as string;
  if (o.superblock === false) p.noSuperblock = true;
  return p;
}

function threadsOpt(c: Command): Command {
  return c.option("--threads <n>", "hashing threads (default: all cores; 0 = none)", int("--threads", 0, 256)).option("--no-progress", "no progress bar").option("--progress-json", "progress as JSON lines on stderr (for programs; works without a terminal)");
}

/** veritysetup format's text: the dump with "Root hash:" before the device size. */
function formatText(hashName: string, r: Awaited<ReturnType<typeof verityFormat>>, fec?: VerityFecLayout): string {
  const lines = formatVerityDump(hashName, r.params, r.geometry).split("\n");
  const root = `Root hash:      \t${r.rootHash.toString("hex")}`;
  const at = lines.findIndex((l) => l.startsWith("Hash device size"));
  if (at >= 0) lines.splice(at, 0, root);
  else lines.push(root);
  if (fec) {
    const alg = lines.findIndex((l) => l.startsWith("Hash algorithm"));
    lines.splice(alg + 1, 0, `FEC RS roots:   \t${fec.roots}`, `FEC blocks:     \t${fec.rsBlocks}`);
    if (fec.offset === 0) lines.push(`FEC device size: \t${fec.size} [bytes]`);
  }
  return lines.join("\n") + "\n";
}

function paramsJson(p: Awaited<ReturnType<typeof verityDump>>["params"], g: Awaited<ReturnType<typeof verityDump>>["geometry"]) {
  return {
    uuid: p.uuid ?? null,
    hash_type: p.hashType,
    data_blocks: p.dataBlocks,
    data_block_size: p.dataBlockSize,
    hash_blocks: g.hashBlocks,
    hash_block_size: p.hashBlockSize,
    hash_algorithm: p.hashAlgorithm,
    salt: p.salt.length ? p.salt.toString("hex") : "-",
    hash_offset: p.hashOffset,
    superblock: !p.noSuperblock,
    hash_device_size: g.hashDeviceSize,
  };
}

function bar(label: string, o: Opts, blockSize: number) {
  const b = progressBar(label, progressMode(o));
  return { onProgress: (done: number, total: number) => b.update(done * blockSize, total * blockSize), end: b.end };
}

function pinFrom(o: Opts, uri: string): PinSource | undefined {
  if (o.pinFile && o.pinStdin) throw usage("give the PIN with --pin-file or --pin-stdin, not both");
  if (o.pinFile) return { kind: "file", path: o.pinFile as string };
  if (o.pinStdin) return { kind: "stdin" };
  if (parsePkcs11Uri(uri).pinSource) return undefined; // the URI's pin-source=file:…
  return process.stdin.isTTY ? { kind: "prompt", prompt: "Token PIN: " } : undefined;
}

export function registerVerityCommands(program: Command): void {
  const verity = program.command("verity").description("dm-verity: hash trees (veritysetup-compatible), root hash signatures, activation");

  threadsOpt(
    addParamOptions(
      verity
        .command("format")
        .description("build the hash tree of <data> into <hash> (like veritysetup format) and print the root hash")
        .argument("<data>", "data image or device (only read)")
        .argument("<hash>", "hash image (created or extended) or device; may be <data> with --hash-offset past the data")
        .option("--uuid <uuid>", "superblock UUID (default: random)")
        .option("--root-hash-file <file>", "also write the root hash (hex, no newline) to FILE")
        .option("--fec-device <file>", "also write Reed-Solomon parity (veritysetup --fec-device) to FILE or device")
        .option("--fec-roots <n>", "FEC parity bytes per codeword (2 .. 24; default 2)", int("--fec-roots", 2, 24))
        .option("--fec-offset <bytes>", "FEC area offset in the FEC device (multiple of the block size)", int("--fec-offset"))
        .option("--json", "print the result as JSON"),
      true,
    ),
  ).action(async (data: string, hash: string, o: Opts) => {
    if ((o.fecRoots !== undefined || o.fecOffset !== undefined) && !o.fecDevice) throw usage("--fec-roots and --fec-offset need --fec-device");
    const p = paramsFrom(o);
    const same = existsSync(hash) && realpathSync(hash) === realpathSync(data);
    // Data first: a missing data image must not leave an empty hash file behind.
    const dataOnly = same ? undefined : await FileBlockDevice.open(data, { readOnly: true });
    const hashDev = await FileBlockDevice.open(hash, { create: true }).catch(async (e: unknown) => {
      await dataOnly?.close();
      throw e;
    });
    const dataDev = dataOnly ?? hashDev;
    const fecPath = o.fecDevice as string | undefined;
    const fecIs = (x: string) => fecPath !== undefined && existsSync(fecPath) && realpathSync(fecPath) === realpathSync(x);
    let fecDev: FileBlockDevice | undefined;
    const b = bar("Hashing", o, p.dataBlockSize ?? 4096);
    try {
      fecDev = fecPath === undefined ? undefined : fecIs(hash) ? hashDev : fecIs(data) ? dataDev : await FileBlockDevice.open(fecPath, { create: true });
      const r = await verityFormat(dataDev, hashDev, p, { onProgress: b.onProgress, ...(o.threads !== undefined ? { threads: o.threads as number } : {}) });
      b.end();
      let fec: VerityFecLayout | undefined;
      if (fecDev) {
        const fb = progressBar("FEC", progressMode(o));
        try {
          fec = await verityFecEncode(dataDev, hashDev, fecDev, r.params, r.geometry, {
            ...(o.fecRoots !== undefined ? { roots: o.fecRoots as number } : {}),
            ...(o.fecOffset !== undefined ? { offset: o.fecOffset as number } : {}),
            onProgress: (d, t) => fb.update(d, t),
          });
        } finally {
          fb.end();
        }
      }
      const hex = r.rootHash.toString("hex");
      if (o.rootHashFile) writeFileSync(o.rootHashFile as string, hex);
      if (o.json)
        printJson({
          root_hash: hex,
          ...paramsJson(r.params, r.geometry),
          ...(fec ? { fec_roots: fec.roots, fec_blocks: fec.rsBlocks, fec_offset: fec.offset, fec_covered_blocks: fec.fecBlocks } : {}),
        });
      else io.out(formatText(hash, r, fec));
    } catch (e) {
      b.end();
      throw e;
    } finally {
      await hashDev.close();
      if (!same) await dataDev.close();
      if (fecDev && fecDev !== hashDev && fecDev !== dataDev) await fecDev.close();
    }
  });

  threadsOpt(
    addParamOptions(
      verity
        .command("verify")
        .description("check all of <data> against <hash> and the root hash (like veritysetup verify); names the first bad block")
        .argument("<data>", "data image or device")
        .argument("<hash>", "hash image or device")
        .argument("[root-hash]", "root hash (hex)")
        .option("--root-hash-file <file>", "read the root hash from FILE")
        .option("--fec-device <file>", "also check the Reed-Solomon parity made by verity format --fec-device")
        .option("--fec-roots <n>", "FEC parity bytes used at format (default 2)", int("--fec-roots", 2, 24))
        .option("--fec-offset <bytes>", "FEC area offset used at format", int("--fec-offset"))
        .option("--json", "print the result as JSON"),
      false,
    ),
  ).action(async (data: string, hash: string, rootArg: string | undefined, o: Opts) => {
    const root = rootFrom(rootArg, o);
    if ((o.fecRoots !== undefined || o.fecOffset !== undefined) && !o.fecDevice) throw usage("--fec-roots and --fec-offset need --fec-device");
    const fecPath = o.fecDevice as string | undefined;
    if (fecPath && existsSync(fecPath) && existsSync(hash) && realpathSync(fecPath) === realpathSync(hash))
      throw usage("verity verify --fec-device on the hash device itself is not supported", "keep the FEC parity in its own file");
    const p = paramsFrom(o);
    const hashDev = await FileBlockDevice.open(hash, { readOnly: true });
    const dataDev = await FileBlockDevice.open(data, { readOnly: true }).catch(async (e: unknown) => {
      await hashDev.close();
      throw e;
    });
    const b = bar("Verifying", o, p.dataBlockSize ?? 4096);
    try {
      const r = await verityVerify(dataDev, hashDev, root, {
        ...(o.hashOffset !== undefined ? { hashOffset: o.hashOffset as number } : {}),
        ...(p.noSuperblock ? { params: p } : {}),
        onProgress: b.onProgress,
        ...(o.threads !== undefined ? { threads: o.threads as number } : {}),
      });
      b.end();
      if (fecPath) {
        const fecDev = await FileBlockDevice.open(fecPath, { readOnly: true });
        try {
          await verityFecCheck(dataDev, hashDev, fecDev, r.params, r.geometry, {
            ...(o.fecRoots !== undefined ? { roots: o.fecRoots as number } : {}),
            ...(o.fecOffset !== undefined ? { offset: o.fecOffset as number } : {}),
          });
        } finally {
          await fecDev.close();
        }
      }
      if (o.json) printJson({ verified: true, root_hash: root.toLowerCase(), data_blocks: r.params.dataBlocks, fec_checked: !!fecPath });
      else io.err(`Verification of ${data} against root hash ${root.toLowerCase()} succeeded (${r.params.dataBlocks} data blocks${fecPath ? ", FEC parity matches" : ""}).\n`);
    } catch (e) {
      b.end();
      throw e; // with --json, main prints the error document (its `corruption` included)
    } finally {
      await hashDev.close();
      await dataDev.close();
    }
  });

  verity
    .command("dump")
    .description("show the verity superblock of <hash> (like veritysetup dump)")
    .argument("<hash>", "hash image or device")
    .option("--hash-offset <bytes>", "superblock offset (multiple of 512)", int("--hash-offset"))
    .option("--json", "print the result as JSON")
    .action(async (hash: string, o: Opts) => {
      const dev = await FileBlockDevice.open(hash, { readOnly: true });
      try {
        const { params, geometry } = await verityDump(dev, (o.hashOffset as number | undefined) ?? 0);
        if (o.json) printJson(paramsJson(params, geometry));
        else io.out(formatVerityDump(hash, params, geometry) + "\n");
      } finally {
        await dev.close();
      }
    });

  verity
    .command("sign")
    .description("sign a root hash: detached PKCS#7 (DER) as the kernel takes it through root_hash_sig_key_desc")
    .argument("[root-hash]", "root hash (hex)")
    .option("--root-hash-file <file>", "read the root hash from FILE")
    .option("--signing-key <file>", "signer private key file (PEM, unencrypted) — or use --pkcs11-uri")
    .option("--cert <file>", "signer certificate (PEM or DER); with --pkcs11-uri default: the certificate stored next to the key")
    .option("--pkcs11-uri <uri>", "key on a PKCS#11 token, e.g. pkcs11:token=lmp;object=verity")
    .option("--module <path>", "PKCS#11 module (default: the URI's module-path, else p11-kit's registered modules)")
    .option("--pin-file <file>", "read the token PIN from FILE")
    .option("--pin-stdin", "read the token PIN from standard input")
    .option("--no-certs", "leave the certificate out of the signature (the kernel finds the key in its keyring)")
    .requiredOption("-o, --output <file>", "signature file to write (DER)")
    .option("--json", "print the result as JSON")
    .action(async (rootArg: string | undefined, o: Opts) => {
      const root = rootFrom(rootArg, o);
      let signer: RootHashSigner;
      let close = () => {};
      if (o.pkcs11Uri && o.signingKey) throw usage("give either --signing-key or --pkcs11-uri, not both");
      if (o.pkcs11Uri) {
        const uri = o.pkcs11Uri as string;
        const pin = pinFrom(o, uri);
        const { pkcs11RootHashSigner } = await import("../../verity/pkcs11-signer.js");
        const s = pkcs11RootHashSigner({
          uri,
          ...(o.module ? { modulePath: o.module as string } : {}),
          ...(o.cert ? { certificate: readBin(o.cert as string, "certificate") } : {}),
          ...(pin ? { pin } : {}),
        });
        signer = s;
        close = () => s.close();
      } else if (o.signingKey) {
        if (!o.cert) throw usage("--signing-key needs --cert (the signer certificate)");
        const { pemPrivateKeySigner } = await signing();
        let keyBytes = readBin(o.signingKey as string, "private key");
        try {
          signer = pemPrivateKeySigner(keyBytes, readText(o.cert as string, "certificate").includes("-----BEGIN") ? readText(o.cert as string, "certificate") : readBin(o.cert as string, "certificate"));
        } catch (e) {
          if (e instanceof TrustvolError) throw e;
          throw usage(`cannot use private key ${o.signingKey}: ${(e as Error).message.split("\n")[0]}`, "give an unencrypted PEM RSA or EC key");
        } finally {
          keyBytes.fill(0);
        }
      } else throw usage("no signing key", "give --signing-key key.pem --cert cert.pem, or --pkcs11-uri pkcs11:token=…;object=…");
      try {
        const { signRootHash } = await signing();
        const sig = await signRootHash(root, signer, { includeCertificate: o.certs !== false });
        atomicWriteFileSync(o.output as string, sig, 0o644);
        if (o.json) printJson({ signature: o.output, bytes: sig.length, root_hash: root.toLowerCase(), algorithm: signer.algorithm });
        else io.err(`Root hash signature written to ${o.output} (${sig.length} bytes).\n`);
      } finally {
        close();
      }
    });

  verity
    .command("verify-sig")
    .description("check a root hash signature against trusted certificates (what the kernel checks at open)")
    .argument("[root-hash]", "root hash (hex)")
    .option("--root-hash-file <file>", "read the root hash from FILE")
    .requiredOption("--signature <file>", "signature (DER PKCS#7) made by verity sign")
    .requiredOption("--cert <file...>", "trusted certificate(s), PEM or DER")
    .option("--json", "print the result as JSON")
    .action(async (rootArg: string | undefined, o: Opts) => {
      const root = rootFrom(rootArg, o);
      const sig = readBin(o.signature as string, "signature");
      const certs = (o.cert as string[]).map((c) => {
        const b = readBin(c, "certificate");
        return b.includes("-----BEGIN") ? b.toString("latin1") : b;
      });
      const { verifyRootHashSignature } = await signing();
      const r = await verifyRootHashSignature(root, sig, certs);
      if (o.json) printJson({ valid: true, signer: r.signer, root_hash: root.toLowerCase() });
      else io.out(`Signature OK: root hash ${root.toLowerCase()} signed by ${r.signer}\n`);
    });

  verity
    .command("open")
    .description("activate /dev/mapper/<name>: read-only, every block checked by the kernel (root; image files get loop devices)")
    .argument("<data>", "data image or device")
    .argument("<name>", "device-mapper name")
    .argument("<hash>", "hash image or device")
    .argument("[root-hash]", "root hash (hex)")
    .option("--root-hash-file <file>", "read the root hash from FILE")
    .option("--root-hash-signature <file>", "PKCS#7 signature of the root hash, checked by the kernel against its trusted keyring")
    .option("--hash-offset <bytes>", "superblock offset in the hash device", int("--hash-offset"))
    .option("--no-superblock", "the hash device has no superblock: take the parameters from the options")
    .addOption(new Option("--hash <alg>", "hash algorithm (with --no-superblock)").choices([...VERITY_HASH_ALGORITHMS]))
    .option("--data-block-size <bytes>", "with --no-superblock", int("--data-block-size", 512, 524288))
    .option("--hash-block-size <bytes>", "with --no-superblock", int("--hash-block-size", 512, 524288))
    .option("--salt <hex>", "with --no-superblock (- for none)")
    .addOption(new Option("--format <type>", "with --no-superblock").choices(["0", "1"]))
    .option("--data-blocks <n>", "with --no-superblock", int("--data-blocks", 1))
    .option("--fec-device <file>", "Reed-Solomon parity made by verity format --fec-device: the kernel repairs corrupted blocks")
    .option("--fec-roots <n>", "FEC parity bytes used at format (default 2)", int("--fec-roots", 2, 24))
    .option("--fec-offset <bytes>", "FEC area offset used at format", int("--fec-offset"))
    .option("--ignore-corruption", "log corrupted blocks instead of failing the read")
    .option("--restart-on-corruption", "restart the system on a corrupted block")
    .option("--panic-on-corruption", "panic on a corrupted block")
    .option("--ignore-zero-blocks", "do not verify blocks that are expected to be zero")
    .option("--check-at-most-once", "verify each data block only once")
    .option("--json", "print the result as JSON")
    .action(async (data: string, name: string, hash: string, rootArg: string | undefined, o: Opts) => {
      const root = rootFrom(rootArg, o);
      const corr = [o.ignoreCorruption && "ignore", o.restartOnCorruption && "restart", o.panicOnCorruption && "panic"].filter(Boolean) as ("ignore" | "restart" | "panic")[];
      if (corr.length > 1) throw usage("give only one of --ignore-corruption, --restart-on-corruption, --panic-on-corruption");
      const p = paramsFrom(o);
      const r = await verityOpen(data, name, hash, {
        rootHash: root,
        ...(o.hashOffset !== undefined ? { hashOffset: o.hashOffset as number } : {}),
        ...(p.noSuperblock ? { params: p } : {}),
        ...(o.rootHashSignature ? { signature: readBin(o.rootHashSignature as string, "root hash signature") } : {}),
        ...(o.fecDevice
          ? { fec: { device: o.fecDevice as string, ...(o.fecRoots !== undefined ? { roots: o.fecRoots as number } : {}), ...(o.fecOffset !== undefined ? { offset: o.fecOffset as number } : {}) } }
          : {}),
        table: {
          ...(corr[0] ? { onCorruption: corr[0] } : {}),
          ...(o.ignoreZeroBlocks ? { ignoreZeroBlocks: true } : {}),
          ...(o.checkAtMostOnce ? { checkAtMostOnce: true } : {}),
        },
      });
      if (o.json) printJson({ name: r.name, device: r.device, dm_uuid: r.dmUuid, data_device: r.dataDevice, hash_device: r.hashDevice, loops: r.loops, status: r.status, signed: r.signed });
      if (r.status === "corrupted") io.err(`trustvol: warning: ${r.device} detected corruption right after activation\n`);
    });

  verity
    .command("status")
    .description("the kernel's view of /dev/mapper/<name>: verified, or corrupted once a bad block was read (like veritysetup status)")
    .argument("<name>", "device-mapper name")
    .option("--json", "print the result as JSON")
    .action(async (name: string, o: Opts) => {
      const s = await verityStatus(name);
      if (o.json) printJson({ name: s.name, device: s.device, dm_uuid: s.dmUuid, status: s.status, root_hash: s.rootHash, hash_algorithm: s.hashAlgorithm, data_blocks: s.dataBlocks, data_block_size: s.dataBlockSize, hash_block_size: s.hashBlockSize, fec: s.fec, signed: s.signed, loops: s.loops });
      else
        io.out(
          `${s.device} is active.\n  type:        VERITY\n  status:      ${s.status}\n  hash type:   ${s.table.split(/\s+/)[3]}\n  data block:  ${s.dataBlockSize}\n  hash block:  ${s.hashBlockSize}\n` +
            `  hash name:   ${s.hashAlgorithm}\n  root hash:   ${s.rootHash}\n  size:        ${s.dataBlocks * BigInt(s.dataBlockSize / 512)} sectors\n  FEC:         ${s.fec ? "yes" : "no"}\n  signed:      ${s.signed ? "yes" : "no"}\n`,
        );
    });

  verity
    .command("close")
    .description("remove /dev/mapper/<name> and detach the loop devices verity open attached")
    .argument("<name>", "device-mapper name")
    .option("--json", "print the result as JSON")
    .action(async (name: string, o: Opts) => {
      const r = await verityClose(name);
      if (o.json) printJson({ name: r.name, detached: r.detached });
    });
  const sign = verity.commands.find((c) => c.name() === "sign");
  if (sign) addAlias(sign, "--pkcs11-module <path>", "--module"); // the name unlock and the pkcs11 commands accept
}
