// `trustvol enroll <source>`: add a keyslot whose passphrase is sealed by a trust source, plus the token that
// describes it (systemd-cryptenroll compatible), in one header commit. Optionally wipe the factory passphrase.
import type { Command } from "commander";
import { TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { enrollClevis, enrollPkcs11, enrollRecovery, enrollTpm2, type EnrollOptions, type EnrollResult, type EnrollUnlock } from "../../ops/enroll.js";
import type { HashName } from "../../trust/tpm2/constants.js";
import type { PrimaryAlg } from "../../trust/tpm2/structures.js";
import { readPin } from "../../trust/pkcs11/pin.js";
import { getPassphrase, readKeyFile, keyFileLimits, willPrompt } from "../secrets.js";
import { addAlias, addUnlockOptions, addPinOptions, cliPin, int, pinSourceFrom, printJson } from "../common.js";
import { io } from "../io.js";
import { existsSync, readFileSync } from "node:fs";
import { atomicWriteFileSync } from "../../util/atomic.js";

/** systemd 255+'s --tpm2-pcrs: "7", "7+11", or with expected values "7:sha256=HEX+11:sha256=HEX" (a chain not yet booted). */
export const pcrSpec = (v: string): { pcrs: number[]; values?: Map<number, Buffer>; bank?: HashName } => {
  if (v === "" || v === "none") return { pcrs: [] };
  const pcrs: number[] = [];
  const values = new Map<number, Buffer>();
  let specBank: HashName | undefined;
  for (const x of v.split(/[,+]/)) {
    const m = /^([0-9]+)(?::(sha1|sha256|sha384|sha512)=([0-9a-fA-F]+))?$/.exec(x);
    if (!m || Number(m[1]) > 23) throw new TrustvolError("EUSAGE", `--pcrs: "${x}" is not a PCR index (0..23) or PCR:BANK=HEX`, "e.g. --pcrs 7:sha256=<64 hex digits>,11");
    const pcr = Number(m[1]);
    if (pcrs.includes(pcr)) throw new TrustvolError("EUSAGE", `--pcrs: PCR ${pcr} given twice`);
    pcrs.push(pcr);
    if (m[2]) {
      const b = m[2] as HashName;
      if (specBank && specBank !== b) throw new TrustvolError("EUSAGE", "--pcrs: all values must be of one bank", "a token binds one PCR bank");
      specBank = b;
      const size = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 }[b];
      if (m[3]!.length !== size * 2) throw new TrustvolError("EUSAGE", `--pcrs: PCR ${pcr}: a ${b} value has ${size * 2} hex digits, not ${m[3]!.length}`);
      values.set(pcr, Buffer.from(m[3]!, "hex"));
    }
  }
  return { pcrs, ...(values.size ? { values, bank: specBank! } : {}) };
};

/** How an enrolment gets the volume key, from the CLI's options: raw volume key file, an enrolled token, or a passphrase. */
export function enrollUnlock(device: string, o: Record<string, unknown>): EnrollUnlock {
  if (o.unlockVolumeKeyFile) return { volumeKey: readKeyFile(o.unlockVolumeKeyFile as string) };
  if (o.unlockToken) return { tokens: { ...(o.tpm2Device ? { tpm2Device: o.tpm2Device as string } : {}), pin: cliPin(o) } };
  // Asked for only once the volume has opened and --wipe-slot has checked out.
  return {
    passphrase: () => getPassphrase({ keyFile: o.keyFile as string | undefined, prompt: `Enter an existing passphrase for ${device}: `, ...keyFileLimits(o) }),
    // --tries: only a passphrase typed at the terminal is asked again
    tries: willPrompt(o.keyFile) ? Math.max(1, (o.tries as number | undefined) ?? 3) : 1,
    onWrongPassphrase: (e) => io.err(`trustvol: ${e.message}\n`),
  };
}

/** Run an ops enrolment with the volume key source from the CLI's options; wipe what was read; print the result. */
async function runEnroll(device: string, o: Record<string, unknown>, what: string, enroll: (common: EnrollOptions) => Promise<EnrollResult>): Promise<void> {
  const u = enrollUnlock(device, o);
  try {
    const r = await enroll({ unlock: u, ...(o.header ? { header: o.header as string } : {}), ...(o.keySlot !== undefined ? { keyslot: o.keySlot as number } : {}), ...(o.wipeSlot ? { wipeSlots: o.wipeSlot as string } : {}) });
    if (o.json) printJson({ keyslot: r.keyslot, token: r.tokenId, wiped_keyslots: r.wipedKeyslots });
    else {
      io.err(`New ${what} token enrolled as key slot ${r.keyslot} (token ${r.tokenId}).\n`);
      for (const k of r.wipedKeyslots) io.err(`Wiped slot ${k}.\n`);
    }
  } finally {
    if ("volumeKey" in u) wipe(u.volumeKey);
  }
}

export function registerEnrollCommands(program: Command): Command {
  const enroll = program.command("enroll").description("seal a new keyslot's passphrase to a trust source (writes systemd-cryptenroll compatible tokens)");
  const pkcs11Cmd = addPinOptions(
    addUnlockOptions(
      enroll
        .command("pkcs11")
        .description("enroll a PKCS#11 token (OP-TEE's libckteec, SoftHSM, a smart card): a random secret encrypted to the token's RSA key")
        .argument("<device>")
        .requiredOption("--uri <uri>", "PKCS#11 URI of the token/key, e.g. pkcs11:token=lmp;object=luks")
        .option("--module <path>", "PKCS#11 module to load (default: p11-kit registrations)")
        .option("-S, --key-slot <n>", "keyslot to use (default: first free)", int("--key-slot", 0, 31))
        .option("--wipe-slot <spec>", "after enrolling, remove keyslots as systemd-cryptenroll does: all, empty, password, recovery, pkcs11, fido2, tpm2, keyslot numbers; comma list")
        .option("--header <file>", "detached header")
        .option("--json", "print the result as JSON"),
    ),
  );
  for (const [a, t] of [["--pkcs11-token-uri <uri>", "--uri"], ["--pkcs11-uri <uri>", "--uri"], ["--pkcs11-module <path>", "--module"]] as const) addAlias(pkcs11Cmd, a, t);
  pkcs11Cmd.action(async (device: string, o: Record<string, unknown>) => {
    const pinSrc = pinSourceFrom(o);
    const pin = pinSrc ? readPin(pinSrc) : undefined;
    try {
      await runEnroll(device, o, "PKCS#11", (c) => enrollPkcs11(device, { ...c, uri: o.uri as string, ...(pin ? { pin } : {}), ...(o.module ? { pkcs11Module: o.module as string } : {}) }));
    } finally {
      wipe(pin);
    }
  });

  const pcrList = (v: string): number[] => {
    if (v === "" || v === "none") return [];
    return v.split(/[,+]/).map((x) => {
      if (!/^[0-9]+$/.test(x) || Number(x) > 23) throw new TrustvolError("EUSAGE", `--pcrs: "${x}" is not a PCR index (0..23)`);
      return Number(x);
    });
  };
  const banks = ["sha1", "sha256", "sha384", "sha512"];
  const bank = (v: string) => {
    if (!banks.includes(v)) throw new TrustvolError("EUSAGE", `PCR bank must be one of ${banks.join(", ")}`);
    return v;
  };

  const tpm2Cmd = addPinOptions(
    addUnlockOptions(
      enroll
        .command("tpm2")
        .description("enroll the TPM: a random secret sealed to the TPM's storage key under a PCR policy (systemd-tpm2 token, as systemd-cryptenroll 252 writes it)")
        .argument("<device>")
        .option("--pcrs <list>", "PCRs to bind to, e.g. 7 (Secure Boot state) or 0,7; PCR:BANK=HEX seals to an expected value instead of the current one (see `tpm2 predict`); \"none\" for no PCR binding", pcrSpec)
        .option("--pcr-bank <bank>", "PCR bank", bank, "sha256")
        .option("--pcrlock <file>", "bind to systemd-pcrlock's policy (pcrlock.json and its NV index) instead of fixed PCR values, as systemd-cryptenroll --tpm2-pcrlock; without it a pcrlock.json in /run/systemd or /var/lib/systemd is used (\"\" turns that off)")
        .option("--with-pin", "also require a PIN at unlock (from --pin-file, or prompted twice)")
        .option("--primary-alg <alg>", "storage primary key: ecc (default) or rsa", "ecc")
        .option("--tpm2-device <dev>", "auto (default), a device path like /dev/tpmrm0, or swtpm:path=SOCKET")
        .option("--public-key <pem>", "bind to PCR policies signed by this RSA key (systemd-measure) instead of fixed PCR values")
        .option("--public-key-pcrs <list>", "PCRs covered by the signed policy", pcrList, [11])
        .option("--srk", "as systemd 255+: seal under the persistent SRK at 0x81000001 (created if missing), PIN salted (tpm2_srk, tpm2_salt)")
        .option("-S, --key-slot <n>", "keyslot to use (default: first free)", int("--key-slot", 0, 31))
        .option("--wipe-slot <spec>", "after enrolling, remove keyslots as systemd-cryptenroll does: all, empty, password, recovery, pkcs11, fido2, tpm2, keyslot numbers; comma list")
        .option("--header <file>", "detached header")
        .option("--json", "print the result as JSON"),
    ),
  );
  // systemd-cryptenroll's spellings.
  for (const [a, t] of [["--tpm2-pcrs <list>", "--pcrs"], ["--tpm2-with-pin", "--with-pin"], ["--tpm2-public-key <pem>", "--public-key"], ["--tpm2-public-key-pcrs <list>", "--public-key-pcrs"], ["--tpm2-pcrlock <file>", "--pcrlock"]] as const) addAlias(tpm2Cmd, a, t);
  tpm2Cmd.action(async (device: string, o: Record<string, unknown>) => {
    if (o.primaryAlg !== "ecc" && o.primaryAlg !== "rsa") throw new TrustvolError("EUSAGE", "--primary-alg must be ecc or rsa");
    const pubkey = o.publicKey ? readFileSync(o.publicKey as string) : undefined;
    const pin = o.withPin ? (o.pinFile ? readPin(pinSourceFrom(o)!) : await getPassphrase({ prompt: "Enter new TPM2 PIN: ", verify: true })) : undefined;
    const spec = o.pcrs as ReturnType<typeof pcrSpec> | undefined;
    if (spec?.bank && o.pcrBank !== "sha256" && o.pcrBank !== spec.bank) throw new TrustvolError("EUSAGE", `--pcrs values are ${spec.bank} but --pcr-bank is ${String(o.pcrBank)}`);
    // systemd-cryptenroll 255+: without --tpm2-pcrlock, a pcrlock.json at systemd's paths is used (with --tpm2-pcrs
    // too: then both bind); --tpm2-pcrlock= (empty) turns that off. Not with a signed policy (systemd cannot combine them).
    let pcrlock = o.pcrlock as string | undefined;
    if (pcrlock === undefined && !pubkey) {
      const { SYSTEMD_PCRLOCK_PATHS } = await import("../../trust/tpm2/pcrlock.js");
      pcrlock = SYSTEMD_PCRLOCK_PATHS.find((p) => existsSync(p));
      if (pcrlock) io.err(`Automatically using pcrlock policy '${pcrlock}'.\n`);
    }
    try {
      await runEnroll(device, o, "TPM2", (c) =>
        enrollTpm2(device, {
          ...c,
          ...(spec ? { pcrs: spec.pcrs } : pcrlock ? {} : { pcrs: [7] }),
          ...(spec?.values ? { pcrValues: spec.values } : {}),
          ...(pcrlock ? { pcrlock } : {}),
          bank: (spec?.bank ?? o.pcrBank) as HashName,
          primaryAlg: o.primaryAlg as PrimaryAlg,
          ...(o.tpm2Device ? { tpm2Device: o.tpm2Device as string } : {}),
          ...(pin ? { pin } : {}),
          ...(pubkey ? { publicKey: pubkey, publicKeyPcrs: o.publicKeyPcrs as number[] } : {}),
          ...(o.srk ? { srk: true } : {}),
        }),
      );
    } finally {
      wipe(pin);
    }
  });

  const clevisCmd = addUnlockOptions(
    enroll
      .command("clevis")
      .description("enroll a clevis tpm2 pin (a clevis token that `clevis luks unlock` and `clevis luks pass` read)")
      .argument("<device>")
      .option("--pcrs <list>", "PCRs to bind to (clevis pcr_ids); \"none\" for none", pcrList, [7])
      .option("--pcr-bank <bank>", "PCR bank (clevis 19 defaults to sha1 when absent; trustvol writes sha256 unless told)", bank, "sha256")
      .option("--primary-alg <alg>", "clevis key: ecc (default) or rsa", "ecc")
      .option("--tpm2-device <dev>", "auto (default), a device path, or swtpm:path=SOCKET")
      .option("-S, --key-slot <n>", "keyslot to use (default: first free)", int("--key-slot", 0, 31))
      .option("--wipe-slot <spec>", "after enrolling, remove keyslots as systemd-cryptenroll does: all, empty, password, recovery, pkcs11, fido2, tpm2, keyslot numbers; comma list")
      .option("--header <file>", "detached header")
      .option("--json", "print the result as JSON"),
  );
  addAlias(clevisCmd, "--tpm2-pcrs <list>", "--pcrs");
  clevisCmd.action(async (device: string, o: Record<string, unknown>) => {
    if (o.primaryAlg !== "ecc" && o.primaryAlg !== "rsa") throw new TrustvolError("EUSAGE", "--primary-alg must be ecc or rsa");
    await runEnroll(device, o, "clevis", (c) =>
      enrollClevis(device, { ...c, pcrs: o.pcrs as number[], bank: o.pcrBank as HashName, primaryAlg: o.primaryAlg as PrimaryAlg, ...(o.tpm2Device ? { tpm2Device: o.tpm2Device as string } : {}) }),
    );
  });

  addUnlockOptions(
    enroll
      .command("recovery")
      .description("add a recovery key (systemd-recovery token): 64 modhex characters to type when the trust source is gone; printed once")
      .argument("<device>")
      .option("--out <file>", "write the recovery key to FILE (0600, no newline: a key file for --key-file) instead of printing it; keep it off the device")
      .option("-S, --key-slot <n>", "keyslot to use (default: first free)", int("--key-slot", 0, 31))
      .option("--header <file>", "detached header")
      .option("--json", "print the result (including the key, unless --out) as JSON"),
  ).action(async (device: string, o: Record<string, unknown>) => {
    const u = enrollUnlock(device, o);
    let key: Buffer | undefined;
    try {
      const r = await enrollRecovery(device, {
        unlock: u,
        ...(o.header ? { header: o.header as string } : {}),
        ...(o.keySlot !== undefined ? { keyslot: o.keySlot as number } : {}),
        // The bare key, no newline: the file is a key file (`--key-file`) that cryptsetup and trustvol read whole.
        ...(o.out ? { save: (k: Buffer) => atomicWriteFileSync(o.out as string, k, 0o600) } : {}),
      });
      key = r.recoveryKey;
      if (o.json) printJson({ keyslot: r.keyslot, token: r.tokenId, ...(o.out ? { file: o.out } : { recovery_key: key.toString("latin1") }) });
      else {
        if (!o.out) {
          if (process.stdout.isTTY) io.err("A secret recovery key has been generated for this volume. Write it down and keep it somewhere safe:\n\n");
          io.out(`${key.toString("latin1")}\n`);
        }
        io.err(`New recovery key enrolled as key slot ${r.keyslot} (token ${r.tokenId}).\n`);
      }
    } finally {
      wipe(key);
      if ("volumeKey" in u) wipe(u.volumeKey);
    }
  });
  return enroll;
}
