// `trustvol enroll <source>`: add a keyslot whose passphrase is sealed by a trust source, plus the token that
// describes it (systemd-cryptenroll compatible), in one header commit. Optionally wipe the factory passphrase.
import type { Command } from "commander";
import { TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { LuksHandle } from "../../ops/volume.js";
import { enrollToken, resolveWipeSlots, unlockWithTokens, type TokenUnlockContext } from "../../ops/tokens.js";
import { readPin, type PinSource } from "../../trust/pkcs11/pin.js";
import { getPassphrase, readKeyFile } from "../secrets.js";
import { addUnlockOptions, addPinOptions, int, printJson } from "../common.js";
import { io } from "../io.js";
import type { Kdf } from "../../luks2/metadata.js";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { atomicWriteFileSync } from "../../util/atomic.js";

export function pinSourceFrom(o: Record<string, unknown>): PinSource | undefined {
  const f = o.pinFile as string | undefined;
  if (f === "-") return { kind: "stdin" };
  if (f) return { kind: "file", path: f };
  return process.stdin.isTTY ? { kind: "prompt" } : undefined;
}

/** Get the volume key for an enrollment: passphrase, raw key file, or an existing token. Caller wipes. */
export async function volumeKeyFor(h: LuksHandle, device: string, o: Record<string, unknown>, ctx: TokenUnlockContext = {}): Promise<Buffer> {
  const v = h.requireLuks2("enroll");
  if (o.unlockVolumeKeyFile) {
    const vk = readKeyFile(o.unlockVolumeKeyFile as string);
    try {
      v.verifyVolumeKey(vk);
    } catch (e) {
      wipe(vk);
      throw e;
    }
    return vk;
  }
  if (o.unlockToken) return (await unlockWithTokens(h, ctx)).volumeKey;
  const pass = await getPassphrase({ keyFile: o.keyFile as string | undefined, prompt: `Enter an existing passphrase for ${device}: ` });
  try {
    return (await h.unlock(pass)).volumeKey;
  } finally {
    wipe(pass);
  }
}

/** systemd's token keyslots use PBKDF2 with few iterations: the secret is already high-entropy (systemd-cryptenroll). */
export function tokenKeyslotKdf(p: { type: "pbkdf2"; hash: string; iterations: number }): Kdf {
  return { ...p, salt: randomBytes(32).toString("base64") };
}

export async function finishEnroll(r: { keyslot: number; tokenId: number; removed: number[] }, o: Record<string, unknown>, what: string): Promise<void> {
  const wiped = r.removed;
  if (o.json) printJson({ keyslot: r.keyslot, token: r.tokenId, wiped_keyslots: wiped });
  else {
    io.err(`New ${what} token enrolled as key slot ${r.keyslot} (token ${r.tokenId}).\n`);
    for (const k of wiped) io.err(`Wiped slot ${k}.\n`);
  }
}

type MadeToken = { tokenJson: Record<string, unknown>; passphrase: Buffer };

/**
 * Every token enrollment has one shape: open the volume, resolve --wipe-slot (before anything is written), get the
 * volume key, then — with the trust source open (`withSource`) — add the keyslot, its token and the slot removals in
 * one header commit, report, wipe the key, close.
 */
async function runEnroll<S>(
  device: string,
  o: Record<string, unknown>,
  what: string,
  p: { ctx?: TokenUnlockContext; kdf: Kdf; afHash?: string; withSource: <T>(fn: (src: S) => Promise<T>) => Promise<T>; makeToken: (src: S, slot: number) => Promise<MadeToken> },
): Promise<void> {
  const h = await LuksHandle.open(device, { header: o.header as string | undefined });
  let vk: Buffer | undefined;
  try {
    const v = h.requireLuks2("enroll");
    const removeSlots = resolveWipeSlots(v, o.wipeSlot as string | undefined);
    vk = await volumeKeyFor(h, device, o, p.ctx);
    const key = vk;
    const r = await p.withSource((src) =>
      enrollToken(v, key, (slot) => p.makeToken(src, slot), { slot: o.keySlot as number | undefined, kdf: p.kdf, ...(p.afHash ? { afHash: p.afHash } : {}), removeSlots }),
    );
    await finishEnroll(r, o, what);
  } finally {
    wipe(vk);
    await h.close();
  }
}

const noSource = <T>(fn: (src: undefined) => Promise<T>): Promise<T> => fn(undefined);
const tpmSource = (o: Record<string, unknown>) => async <T>(fn: (tpm: import("../../trust/tpm2/index.js").Tpm2TrustSource) => Promise<T>): Promise<T> => {
  const { withTpm } = await import("../../ops/handlers.js");
  return withTpm({ tpm2Device: o.tpm2Device as string | undefined }, fn);
};

export function registerEnrollCommands(program: Command): Command {
  const enroll = program.command("enroll").description("seal a new keyslot's passphrase to a trust source (writes systemd-cryptenroll compatible tokens)");
  addPinOptions(
    addUnlockOptions(
      enroll
        .command("pkcs11")
        .description("enroll a PKCS#11 token (OP-TEE's libckteec, SoftHSM, a smart card): a random secret encrypted to the token's RSA key")
        .argument("<device>")
        .requiredOption("--uri <uri>", "PKCS#11 URI of the token/key, e.g. pkcs11:token=lmp;object=luks")
        .option("--module <path>", "PKCS#11 module to load (default: p11-kit registrations)")
        .option("-S, --key-slot <n>", "keyslot to use (default: first free)", int("--key-slot", 0, 31))
        .option("--wipe-slot <spec>", "after enrolling, remove keyslots: password (all passphrase slots), all, or a list like 0,31")
        .option("--header <file>", "detached header")
        .option("--json", "print the result as JSON"),
    ),
  ).action(async (device: string, o: Record<string, unknown>) => {
    const pinSrc = pinSourceFrom(o);
    const pin = pinSrc ? readPin(pinSrc) : undefined;
    try {
      const { createSystemdPkcs11Token, SYSTEMD_PKCS11_KEYSLOT_PBKDF } = await import("../../tokens/systemd-pkcs11.js");
      await runEnroll(device, o, "PKCS#11", {
        ctx: { pin, pkcs11Module: o.module as string | undefined },
        kdf: tokenKeyslotKdf(SYSTEMD_PKCS11_KEYSLOT_PBKDF),
        afHash: "sha512",
        withSource: noSource,
        makeToken: (_src, slot) => createSystemdPkcs11Token({ uri: o.uri as string, keyslot: slot, pin: pin ? { kind: "buffer", pin } : undefined, ...(o.module ? { modulePath: o.module as string } : {}) }),
      });
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

  addPinOptions(
    addUnlockOptions(
      enroll
        .command("tpm2")
        .description("enroll the TPM: a random secret sealed to the TPM's storage key under a PCR policy (systemd-tpm2 token, as systemd-cryptenroll 252 writes it)")
        .argument("<device>")
        .option("--pcrs <list>", "PCRs to bind to, e.g. 7 (Secure Boot state) or 0,7; \"none\" for no PCR binding", pcrList, [7])
        .option("--pcr-bank <bank>", "PCR bank", bank, "sha256")
        .option("--with-pin", "also require a PIN at unlock (from --pin-file, or prompted twice)")
        .option("--primary-alg <alg>", "storage primary key: ecc (default) or rsa", "ecc")
        .option("--tpm2-device <dev>", "auto (default), a device path like /dev/tpmrm0, or swtpm:path=SOCKET")
        .option("--public-key <pem>", "bind to PCR policies signed by this RSA key (systemd-measure) instead of fixed PCR values")
        .option("--public-key-pcrs <list>", "PCRs covered by the signed policy", pcrList, [11])
        .option("-S, --key-slot <n>", "keyslot to use (default: first free)", int("--key-slot", 0, 31))
        .option("--wipe-slot <spec>", "after enrolling, remove keyslots: password (all passphrase slots), all, or a list like 0,31")
        .option("--header <file>", "detached header")
        .option("--json", "print the result as JSON"),
    ),
  ).action(async (device: string, o: Record<string, unknown>) => {
    if (o.primaryAlg !== "ecc" && o.primaryAlg !== "rsa") throw new TrustvolError("EUSAGE", "--primary-alg must be ecc or rsa");
    const pubkey = o.publicKey ? readFileSync(o.publicKey as string) : undefined;
    const pin = o.withPin ? (o.pinFile ? readPin(pinSourceFrom(o)!) : await getPassphrase({ prompt: "Enter new TPM2 PIN: ", verify: true })) : undefined;
    try {
      const { createSystemdTpm2Token } = await import("../../tokens/systemd-tpm2.js");
      await runEnroll(device, o, "TPM2", {
        ctx: { tpm2Device: o.tpm2Device as string | undefined },
        kdf: tokenKeyslotKdf({ type: "pbkdf2", hash: "sha512", iterations: 1000 }),
        withSource: tpmSource(o),
        makeToken: async (tpm, slot) => {
          const t = await createSystemdTpm2Token(tpm, { keyslot: slot, pcrs: o.publicKey ? [] : (o.pcrs as number[]), bank: o.pcrBank as "sha256", primaryAlg: o.primaryAlg as "ecc", ...(pin ? { pin } : {}), ...(pubkey ? { pubkey, pubkeyPcrs: o.publicKeyPcrs as number[] } : {}) });
          return { tokenJson: JSON.parse(t.tokenJson) as Record<string, unknown>, passphrase: t.passphrase };
        },
      });
    } finally {
      wipe(pin);
    }
  });

  addUnlockOptions(
    enroll
      .command("clevis")
      .description("enroll a clevis tpm2 pin (a clevis token that `clevis luks unlock` and `clevis luks pass` read)")
      .argument("<device>")
      .option("--pcrs <list>", "PCRs to bind to (clevis pcr_ids); \"none\" for none", pcrList, [7])
      .option("--pcr-bank <bank>", "PCR bank (clevis 19 defaults to sha1 when absent; trustvol writes sha256 unless told)", bank, "sha256")
      .option("--primary-alg <alg>", "clevis key: ecc (default) or rsa", "ecc")
      .option("--tpm2-device <dev>", "auto (default), a device path, or swtpm:path=SOCKET")
      .option("-S, --key-slot <n>", "keyslot to use (default: first free)", int("--key-slot", 0, 31))
      .option("--wipe-slot <spec>", "after enrolling, remove keyslots: password, all, or a list")
      .option("--header <file>", "detached header")
      .option("--json", "print the result as JSON"),
  ).action(async (device: string, o: Record<string, unknown>) => {
    if (o.primaryAlg !== "ecc" && o.primaryAlg !== "rsa") throw new TrustvolError("EUSAGE", "--primary-alg must be ecc or rsa");
    const { createClevisToken } = await import("../../tokens/clevis.js");
    await runEnroll(device, o, "clevis", {
      ctx: { tpm2Device: o.tpm2Device as string | undefined },
      kdf: tokenKeyslotKdf({ type: "pbkdf2", hash: "sha256", iterations: 1000 }),
      withSource: tpmSource(o),
      makeToken: async (tpm, slot) => {
        const t = await createClevisToken(tpm, { keyslot: slot, pcrIds: o.pcrs as number[], pcrBank: o.pcrBank as "sha256", key: o.primaryAlg as "ecc" });
        return { tokenJson: JSON.parse(t.tokenJson) as Record<string, unknown>, passphrase: t.passphrase };
      },
    });
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
    const h = await LuksHandle.open(device, { header: o.header as string | undefined });
    const { newRecoveryKey, encodeSystemdRecoveryToken, SYSTEMD_RECOVERY_KEYSLOT_PBKDF } = await import("../../tokens/systemd-recovery.js");
    const key = newRecoveryKey();
    let vk: Buffer | undefined;
    try {
      vk = await volumeKeyFor(h, device, o);
      // Write the key out before it is enrolled: a key nobody can read back must never guard a keyslot.
      // The bare key, no newline: the file is a key file (`--key-file`) that cryptsetup and trustvol read whole.
      if (o.out) atomicWriteFileSync(o.out as string, key, 0o600);
      const r = await enrollToken(h.requireLuks2("enroll"), vk, async (slot) => ({ tokenJson: encodeSystemdRecoveryToken(slot), passphrase: Buffer.from(key) }), {
        slot: o.keySlot as number | undefined,
        kdf: tokenKeyslotKdf(SYSTEMD_RECOVERY_KEYSLOT_PBKDF),
      });
      if (o.json) printJson({ keyslot: r.keyslot, token: r.tokenId, ...(o.out ? { file: o.out } : { recovery_key: key.toString("latin1") }) });
      else {
        if (!o.out) {
          if (process.stdout.isTTY) io.err("A secret recovery key has been generated for this volume. Write it down and keep it somewhere safe:\n\n");
          io.out(`${key.toString("latin1")}\n`);
        }
        io.err(`New recovery key enrolled as key slot ${r.keyslot} (token ${r.tokenId}).\n`);
      }
    } finally {
      wipe(vk, key);
      await h.close();
    }
  });
  return enroll;
}

export function requireTokenOnly(o: Record<string, unknown>): void {
  if (o.tokenOnly && (o.keyFile || o.keySlot !== undefined)) throw new TrustvolError("EUSAGE", "--token-only cannot be combined with --key-file or --key-slot");
}
