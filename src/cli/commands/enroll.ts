// `trustvol enroll <source>`: add a keyslot whose passphrase is sealed by a trust source, plus the token that
// describes it (systemd-cryptenroll compatible), in one header commit. Optionally wipe the factory passphrase.
import type { Command } from "commander";
import { TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { LuksHandle } from "../../ops/volume.js";
import { enrollToken, wipeSlots, unlockWithTokens, type TokenUnlockContext } from "../../ops/tokens.js";
import { readPin, type PinSource } from "../../trust/pkcs11/pin.js";
import { getPassphrase, readKeyFile } from "../secrets.js";
import { addUnlockOptions, addPinOptions, int, printJson } from "../common.js";
import { io } from "../io.js";
import type { Kdf } from "../../luks2/metadata.js";
import { randomBytes } from "node:crypto";

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
    v.verifyVolumeKey(vk);
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

export async function finishEnroll(h: LuksHandle, r: { keyslot: number; tokenId: number }, o: Record<string, unknown>, what: string): Promise<void> {
  const wiped = o.wipeSlot ? await wipeSlots(h.requireLuks2("enroll"), o.wipeSlot as string, r.keyslot) : [];
  if (o.json) printJson({ keyslot: r.keyslot, token: r.tokenId, wiped_keyslots: wiped });
  else {
    io.err(`New ${what} token enrolled as key slot ${r.keyslot} (token ${r.tokenId}).\n`);
    for (const k of wiped) io.err(`Wiped slot ${k}.\n`);
  }
}

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
    const h = await LuksHandle.open(device, { header: o.header as string | undefined });
    const pinSrc = pinSourceFrom(o);
    const pin = pinSrc ? readPin(pinSrc) : undefined;
    let vk: Buffer | undefined;
    try {
      vk = await volumeKeyFor(h, device, o, { pin, pkcs11Module: o.module as string | undefined });
      const { createSystemdPkcs11Token, SYSTEMD_PKCS11_KEYSLOT_PBKDF } = await import("../../tokens/systemd-pkcs11.js");
      const r = await enrollToken(h.requireLuks2("enroll"), vk, (slot) => createSystemdPkcs11Token({ uri: o.uri as string, keyslot: slot, pin: pin ? { kind: "buffer", pin } : undefined, ...(o.module ? { modulePath: o.module as string } : {}) }), {
        slot: o.keySlot as number | undefined,
        kdf: tokenKeyslotKdf(SYSTEMD_PKCS11_KEYSLOT_PBKDF),
        afHash: "sha512",
      });
      await finishEnroll(h, r, o, "PKCS#11");
    } finally {
      wipe(vk, pin);
      await h.close();
    }
  });
  return enroll;
}

export function requireTokenOnly(o: Record<string, unknown>): void {
  if (o.tokenOnly && (o.keyFile || o.keySlot !== undefined)) throw new TrustvolError("EUSAGE", "--token-only cannot be combined with --key-file or --key-slot");
}
