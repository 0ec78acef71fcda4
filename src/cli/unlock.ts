// How the CLI gets a volume key, cryptsetup's way: a key file if one is named; otherwise the volume's tokens first
// (TPM, PKCS#11, clevis — nobody has to type anything), then a passphrase unless --token-only.
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import type { LuksHandle } from "../ops/volume.js";
import { unlockWithTokens, tokenHandler } from "../ops/tokens.js";
import { readPin } from "../trust/pkcs11/pin.js";
import { getPassphrase } from "./secrets.js";
import { pinSourceFrom } from "./commands/enroll.js";

export interface CliUnlockResult {
  volumeKey: Buffer;
  keyslot: number;
  token?: number;
}

export async function unlockFromCli(h: LuksHandle, device: string, o: Record<string, unknown>): Promise<CliUnlockResult> {
  const wantTokens = !!(o.tokenOnly || o.tokenId !== undefined || o.tokenType);
  if (o.tokenOnly && (o.keyFile || o.keySlot !== undefined)) throw new TrustvolError("EUSAGE", "--token-only cannot be combined with --key-file or --key-slot");
  const usable = h.luks2 ? h.luks2.tokenIds().filter((id) => tokenHandler(h.luks2!.metadata.tokens[String(id)]!.type)) : [];
  let tokenError: TrustvolError | undefined;
  if (wantTokens || (!o.keyFile && o.keySlot === undefined && usable.length)) {
    // A PIN from --pin-file; on a terminal, prompted for when a token that may be used needs one.
    const needsPin = usable.some((id) => {
      const t = h.luks2!.metadata.tokens[String(id)]!;
      return tokenHandler(t.type)!.needsPin(t);
    });
    const pinSrc = o.pinFile ? pinSourceFrom(o) : needsPin && process.stdin.isTTY ? ({ kind: "prompt", prompt: "Enter token PIN: " } as const) : undefined;
    const pin = pinSrc ? readPin(pinSrc) : undefined;
    try {
      const r = await unlockWithTokens(h, { pin, pkcs11Module: o.pkcs11Module as string | undefined, tpm2Device: o.tpm2Device as string | undefined }, { tokenId: o.tokenId as number | undefined, tokenType: o.tokenType as string | undefined });
      return { volumeKey: r.volumeKey, keyslot: r.keyslot, token: r.tokenId };
    } catch (e) {
      if (!(e instanceof TrustvolError) || wantTokens) throw e;
      tokenError = e; // fall back to a passphrase, like cryptsetup
    } finally {
      wipe(pin);
    }
  }
  let pass: Buffer;
  try {
    pass = await getPassphrase({ keyFile: o.keyFile as string | undefined, prompt: `Enter passphrase for ${device}: `, keyfileOffset: o.keyfileOffset as number, keyfileSize: o.keyfileSize as number });
  } catch (e) {
    // Nothing to fall back to (no key file, no terminal, empty stdin): the token's reason is the useful one.
    if (tokenError && e instanceof TrustvolError && e.code === "EUSAGE") throw tokenError;
    throw e;
  }
  try {
    const r = await h.unlock(pass, { slot: o.keySlot as number | undefined });
    return { volumeKey: r.volumeKey, keyslot: r.keyslot };
  } finally {
    wipe(pass);
  }
}
