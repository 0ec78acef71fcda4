// Getting a volume key the way cryptsetup and the CLI do: a given passphrase, else the volume's tokens first (TPM,
// PKCS#11, clevis — nobody types anything), then a passphrase asked for only when the tokens could not.
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { LuksHandle } from "./volume.js";
import { tokenHandler, unlockWithTokens } from "./tokens.js";

/** Bytes, or a function asked only when they are needed (a prompt); bytes the function returns are wiped after use. */
export type SecretInput = Uint8Array | (() => Promise<Uint8Array> | Uint8Array);

/** A PIN, or a function asked once, only when a token that will be tried needs one (return undefined for none). */
export type PinInput = Uint8Array | ((need: { tokens: { id: number; type: string; unlocksWith: string }[] }) => Promise<Uint8Array | undefined> | Uint8Array | undefined);

export interface UnlockOptions {
  /** Detached header file (when the volume is given as a path). */
  header?: string;
  /**
   * The passphrase. Given as bytes (like a key file on the CLI), it is used alone and tokens are not tried; given as a
   * function, tokens are tried first and the function is asked only if none of them unlocks.
   */
  passphrase?: SecretInput;
  /** Try only this keyslot with the passphrase (tokens are then not tried). */
  keyslot?: number;
  /** Unlock only through tokens; never use a passphrase. */
  tokenOnly?: boolean;
  /** Try only this token (implies tokenOnly). */
  tokenId?: number;
  /** Try only tokens of this type, e.g. "systemd-tpm2" (implies tokenOnly). */
  tokenType?: string;
  /** The order to try tokens in (default: ascending token id). */
  tokenOrder?: number[];
  /** PIN for tokens that need one (PKCS#11 user PIN, TPM2 PIN policy). */
  pin?: PinInput;
  /** TPM for systemd-tpm2 / clevis tokens: "auto" (default; TRUSTVOL_TPM2_DEVICE, else the kernel's), a path, swtpm:path=SOCK. */
  tpm2Device?: string;
  /** PKCS#11 module for systemd-pkcs11 tokens (default: p11-kit registrations). */
  pkcs11Module?: string;
  /** Signed PCR policy file (systemd-measure's tpm2-pcr-signature.json) for tpm2_pubkey tokens; default: systemd's paths. */
  tpm2Signature?: string;
  /** systemd-pcrlock policy file (pcrlock.json) for tpm2_pcrlock tokens; default: /run/systemd, /var/lib/systemd. */
  tpm2Pcrlock?: string;
  /**
   * How many times a passphrase function may be asked while the passphrase it gives is wrong (default 1). Bytes
   * given as the passphrase are tried once.
   */
  tries?: number;
  /** Told about each wrong passphrase that is followed by another try (e.g. to print it before the next prompt). */
  onWrongPassphrase?: (err: TrustvolError, attempt: number) => void;
}

export interface VolumeUnlockResult {
  /** The volume key; the caller wipes it. */
  volumeKey: Buffer;
  keyslot: number;
  /** The token that unlocked, if one did. */
  tokenId?: number;
  tokenType?: string;
}

/** Run fn on the volume (a path is opened read-only and closed afterwards; a handle is the caller's). */
export async function withVolume<T>(volume: string | LuksHandle, o: { header?: string; readOnly?: boolean }, fn: (h: LuksHandle) => Promise<T>): Promise<T> {
  if (volume instanceof LuksHandle) return fn(volume);
  const h = await LuksHandle.open(volume, { header: o.header, readOnly: o.readOnly ?? true });
  try {
    return await fn(h);
  } finally {
    await h.close();
  }
}

/** Unlock a LUKS volume with the CLI's rules (see UnlockOptions). Throws a TrustvolError that says why not. */
export async function unlock(volume: string | LuksHandle, o: UnlockOptions = {}): Promise<VolumeUnlockResult> {
  return withVolume(volume, o, (h) => unlockHandle(h, o));
}

async function unlockHandle(h: LuksHandle, o: UnlockOptions): Promise<VolumeUnlockResult> {
  const givenPass = o.passphrase instanceof Uint8Array;
  const wantTokens = !!(o.tokenOnly || o.tokenId !== undefined || o.tokenType);
  if (wantTokens && (givenPass || o.keyslot !== undefined)) throw new TrustvolError("EUSAGE", "unlocking only through tokens cannot be combined with a passphrase or a keyslot");
  const v = h.luks2;
  const usable = v
    ? (o.tokenOrder ?? v.tokenIds()).filter((id) => {
        const t = v.metadata.tokens[String(id)];
        return t && tokenHandler(t.type) && (o.tokenId === undefined || o.tokenId === id) && (!o.tokenType || t.type === o.tokenType);
      })
    : [];
  let tokenError: TrustvolError | undefined;
  if (wantTokens || (!givenPass && o.keyslot === undefined && usable.length)) {
    const ctx = { tpm2Device: o.tpm2Device, pkcs11Module: o.pkcs11Module, ...(o.tpm2Signature ? { tpm2Signature: o.tpm2Signature } : {}), ...(o.tpm2Pcrlock ? { tpm2Pcrlock: o.tpm2Pcrlock } : {}) };
    let pin: Uint8Array | undefined;
    let ownPin = false;
    try {
      if (o.pin instanceof Uint8Array) pin = o.pin;
      else if (o.pin) {
        const need = usable.map((id) => ({ id, t: v!.metadata.tokens[String(id)]! })).filter(({ t }) => tokenHandler(t.type)!.needsPin(t));
        if (need.length) {
          pin = await o.pin({ tokens: need.map(({ id, t }) => ({ id, type: t.type, unlocksWith: tokenHandler(t.type)!.unlocksWith })) });
          ownPin = true;
        }
      }
      const r = await unlockWithTokens(h, { ...ctx, ...(pin ? { pin } : {}) }, { ...(o.tokenId !== undefined ? { tokenId: o.tokenId } : {}), ...(o.tokenType ? { tokenType: o.tokenType } : {}), ...(o.tokenOrder ? { tokenOrder: o.tokenOrder } : {}) });
      return { volumeKey: r.volumeKey, keyslot: r.keyslot, tokenId: r.tokenId, tokenType: r.tokenType };
    } catch (e) {
      if (!(e instanceof TrustvolError) || wantTokens) throw e;
      tokenError = e; // fall back to a passphrase, like cryptsetup
    } finally {
      if (ownPin) wipe(pin);
    }
  }
  const ask = o.passphrase;
  if (!ask) throw tokenError ?? new TrustvolError("ENOKEY", "no passphrase given and no token on this volume that trustvol can use", "pass a passphrase");
  const tries = ask instanceof Uint8Array ? 1 : Math.max(1, o.tries ?? 1);
  for (let attempt = 1; ; attempt++) {
    let pass: Uint8Array;
    if (ask instanceof Uint8Array) pass = ask;
    else {
      try {
        pass = await ask();
      } catch (e) {
        // Nothing to fall back to (no terminal, empty stdin): the token's reason is the useful one.
        if (tokenError && attempt === 1 && e instanceof TrustvolError && e.code === "EUSAGE") throw tokenError;
        throw e;
      }
    }
    try {
      const r = await h.unlock(pass, { ...(o.keyslot !== undefined ? { slot: o.keyslot } : {}) });
      return { volumeKey: r.volumeKey, keyslot: r.keyslot };
    } catch (e) {
      if (attempt >= tries || !(e instanceof TrustvolError) || e.code !== "EBADPASS") throw e;
      o.onWrongPassphrase?.(e, attempt);
    } finally {
      if (!givenPass) wipe(pass);
    }
  }
}
