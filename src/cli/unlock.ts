// How the CLI gets a volume key: options → ops/unlock (a key file alone; otherwise tokens first, then a passphrase
// unless --token-only). The rules themselves live in ops/unlock.ts, shared with the library.
import type { LuksHandle } from "../ops/volume.js";
import { unlock } from "../ops/unlock.js";
import { getPassphrase, keyFileLimits, willPrompt } from "./secrets.js";
import { io } from "./io.js";
import { cliPin } from "./common.js";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";

export interface CliUnlockResult {
  volumeKey: Buffer;
  keyslot: number;
  token?: number;
}

/** --token-only excludes the passphrase options (open checks it before it looks at the device). */
export function requireTokenOnly(o: Record<string, unknown>): void {
  if (o.tokenOnly && (o.keyFile || o.keySlot !== undefined)) throw new TrustvolError("EUSAGE", "--token-only cannot be combined with --key-file or --key-slot");
}

export async function unlockFromCli(h: LuksHandle, device: string, o: Record<string, unknown>): Promise<CliUnlockResult> {
  const readPass = () => getPassphrase({ keyFile: o.keyFile as string | undefined, prompt: `Enter passphrase for ${device}: `, ...keyFileLimits(o) });
  requireTokenOnly(o);
  const wantTokens = !!(o.tokenOnly || o.tokenId !== undefined || o.tokenType);
  // A key file is read up front and used alone (no tokens), like cryptsetup's --key-file; a prompt only when needed.
  const given = o.keyFile && !wantTokens ? await readPass() : undefined;
  const pin = cliPin(o);
  const r = await unlock(h, {
    passphrase: given ?? readPass,
    ...(o.keySlot !== undefined ? { keyslot: o.keySlot as number } : {}),
    ...(o.tokenOnly ? { tokenOnly: true } : {}),
    ...(o.tokenId !== undefined ? { tokenId: o.tokenId as number } : {}),
    ...(o.tokenType ? { tokenType: o.tokenType as string } : {}),
    ...(pin ? { pin } : {}),
    ...(o.tpm2Device ? { tpm2Device: o.tpm2Device as string } : {}),
    ...(o.pkcs11Module ? { pkcs11Module: o.pkcs11Module as string } : {}),
    ...(o.tpm2Signature ? { tpm2Signature: o.tpm2Signature as string } : {}),
    ...(o.tpm2Pcrlock ? { tpm2Pcrlock: o.tpm2Pcrlock as string } : {}),
    // --tries: only a passphrase typed at the terminal is asked again
    tries: willPrompt(o.keyFile) ? Math.max(1, (o.tries as number | undefined) ?? 3) : 1,
    onWrongPassphrase: (e) => io.err(`trustvol: ${e.message}\n`),
  }).finally(() => wipe(given));
  return { volumeKey: r.volumeKey, keyslot: r.keyslot, ...(r.tokenId !== undefined ? { token: r.tokenId } : {}) };
}

/**
 * Keyslot passphrases from the volume's tokens (TPM2, PKCS#11, clevis-tpm2) for `reencrypt` and `repair`, which unlock
 * keyslots (old and new key) rather than one volume key: --token-id/--token-type choose, --pin-file gives the PIN,
 * --tpm2-device/--pkcs11-module the device. Tokens that fail are in `failures`; the caller wipes the passphrases.
 */
export async function tokenPassphrasesFromCli(m: import("../luks2/metadata.js").Luks2Metadata, o: Record<string, unknown>): Promise<{ passphrases: Map<number, Buffer>; failures: TrustvolError[] }> {
  if (!Object.keys(m.tokens).length) return { passphrases: new Map(), failures: [] };
  const { tokenKeyslotPassphrases } = await import("../ops/reencrypt.js");
  const { readPin } = await import("../trust/pkcs11/pin.js");
  const { pinSourceFrom } = await import("./common.js");
  const pinSrc = o.pinFile ? pinSourceFrom(o) : undefined;
  const pin = pinSrc ? readPin(pinSrc) : undefined;
  try {
    return await tokenKeyslotPassphrases(m, { pin, pkcs11Module: o.pkcs11Module as string | undefined, tpm2Device: o.tpm2Device as string | undefined }, { tokenId: o.tokenId as number | undefined, tokenType: o.tokenType as string | undefined });
  } finally {
    wipe(pin);
  }
}
