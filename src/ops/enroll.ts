// Enrolment with the CLI's defaults: a new keyslot whose passphrase a trust source seals, plus the systemd-cryptenroll
// compatible token that describes it, in one header commit (optionally dropping the factory passphrase slots).
import type { PbkdfOptions } from "../luks2/kdf.js";
import type { HashName } from "../trust/tpm2/constants.js";
import type { PrimaryAlg } from "../trust/tpm2/structures.js";
import type { Tpm2TrustSource } from "../trust/tpm2/index.js";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { withTpm } from "./handlers.js";
import { enrollToken, resolveWipeSlotsFull, TOKEN_KEYSLOT_PBKDF } from "./tokens.js";
import { unlock, withVolume, type SecretInput, type UnlockOptions } from "./unlock.js";
import type { LuksHandle } from "./volume.js";

/** clevis's keyslots (clevis luks bind): PBKDF2-SHA256. */
export const CLEVIS_KEYSLOT_PBKDF: Readonly<PbkdfOptions> = { type: "pbkdf2", hash: "sha256", forceIterations: 1000 };

/**
 * How to get the volume key for the enrolment: an existing passphrase (bytes, or a function asked only after the
 * volume opened and wipeSlots checked out), the raw volume key, or the volume's enrolled tokens.
 */
export type EnrollUnlock =
  | {
      passphrase: SecretInput;
      /** How many times a passphrase function may be asked while the passphrase is wrong (default 1; cryptsetup's --tries). */
      tries?: number;
      /** Told about each wrong passphrase that is followed by another try. */
      onWrongPassphrase?: (err: TrustvolError, attempt: number) => void;
    }
  | { volumeKey: Uint8Array }
  | { tokens: Omit<UnlockOptions, "passphrase" | "keyslot" | "header"> };

export interface EnrollOptions {
  unlock: EnrollUnlock;
  /** Detached header file (when the volume is given as a path). */
  header?: string;
  /** Keyslot for the new key (default: the first free one). */
  keyslot?: number;
  /**
   * Remove keyslots in the same header commit, as systemd-cryptenroll (257) --wipe-slot: a comma list of all, empty,
   * password, recovery, pkcs11, fido2, tpm2 and keyslot numbers, e.g. "password" or "tpm2,0".
   */
  wipeSlots?: string;
}

export interface EnrollResult {
  keyslot: number;
  tokenId: number;
  /** Keyslots removed by wipeSlots. */
  wipedKeyslots: number[];
}

type MadeToken = { tokenJson: Record<string, unknown>; passphrase: Buffer };

async function volumeKeyFor(h: LuksHandle, u: EnrollUnlock): Promise<Buffer> {
  const v = h.requireLuks2("enroll");
  if ("volumeKey" in u) {
    v.verifyVolumeKey(u.volumeKey);
    return Buffer.from(u.volumeKey);
  }
  if ("tokens" in u) return (await unlock(h, { ...u.tokens, tokenOnly: true })).volumeKey;
  const ask = u.passphrase;
  const tries = ask instanceof Uint8Array ? 1 : Math.max(1, u.tries ?? 1);
  for (let attempt = 1; ; attempt++) {
    const pass = ask instanceof Uint8Array ? ask : await ask();
    try {
      return (await h.unlock(pass)).volumeKey;
    } catch (e) {
      if (attempt >= tries || !(e instanceof TrustvolError) || e.code !== "EBADPASS") throw e;
      u.onWrongPassphrase?.(e, attempt);
    } finally {
      if (!(ask instanceof Uint8Array)) wipe(pass);
    }
  }
}

/**
 * Every enrolment has one shape: resolve wipeSlots (before anything is written), get the volume key, then — with the
 * trust source open — add the keyslot, its token and the slot removals in one header commit; wipe the key.
 */
async function enrollWith<S>(
  volume: string | LuksHandle,
  o: EnrollOptions,
  p: { pbkdf: Readonly<PbkdfOptions>; afHash?: string; withSource: <T>(fn: (src: S) => Promise<T>) => Promise<T>; makeToken: (src: S, slot: number) => Promise<MadeToken> },
): Promise<EnrollResult> {
  return withVolume(volume, { ...(o.header ? { header: o.header } : {}), readOnly: false }, async (h) => {
    const v = h.requireLuks2("enroll");
    const removeSlots = await resolveWipeSlotsFull(v, o.wipeSlots);
    const vk = await volumeKeyFor(h, o.unlock);
    try {
      const r = await p.withSource((src) =>
        enrollToken(v, vk, (slot) => p.makeToken(src, slot), { ...(o.keyslot !== undefined ? { slot: o.keyslot } : {}), pbkdf: { ...p.pbkdf }, ...(p.afHash ? { afHash: p.afHash } : {}), removeSlots }),
      );
      return { keyslot: r.keyslot, tokenId: r.tokenId, wipedKeyslots: r.removed };
    } finally {
      wipe(vk);
    }
  });
}

const tpmSource = (tpm2Device: string | undefined) => <T>(fn: (tpm: Tpm2TrustSource) => Promise<T>): Promise<T> => withTpm(tpm2Device ? { tpm2Device } : {}, fn);
const noSource = <T>(fn: (src: undefined) => Promise<T>): Promise<T> => fn(undefined);

export interface EnrollTpm2Options extends EnrollOptions {
  /** PCRs the key is sealed to (default [7], the Secure Boot state; [] for none). */
  pcrs?: number[];
  /** PCR bank (default sha256). */
  bank?: HashName;
  /** Also require this PIN at unlock (TPM2 PolicyAuthValue, as systemd-cryptenroll --tpm2-with-pin). */
  pin?: Uint8Array;
  /** Storage primary key (default ecc). */
  primaryAlg?: PrimaryAlg;
  /** "auto" (default), a device path, swtpm:path=SOCKET. */
  tpm2Device?: string;
  /** PEM RSA public key: bind to PCR policies it signs (systemd-measure) instead of fixed PCR values. */
  publicKey?: Buffer;
  /** PCRs covered by the signed policy (default [11]). */
  publicKeyPcrs?: number[];
  /** As systemd 255+: seal under the persistent SRK at 0x81000001 (created if missing), PIN salted (tpm2_srk, tpm2_salt). */
  srk?: boolean;
  /** Expected PCR values to seal against instead of the current ones (a boot chain that has not run yet); others are read. */
  pcrValues?: Map<number, Buffer>;
  /** Bind to systemd-pcrlock's NV index policy: the pcrlock.json path (implies srk, as systemd-cryptenroll --tpm2-pcrlock). */
  pcrlock?: string;
  /** Extra fields for the token JSON (readers that do not know them ignore them), e.g. the OTA update mark. */
  tokenFields?: Record<string, string | number | boolean>;
}

/** Seal a new keyslot's passphrase to the TPM (systemd-tpm2 token, as systemd-cryptenroll 252 writes it). */
export async function enrollTpm2(volume: string | LuksHandle, o: EnrollTpm2Options): Promise<EnrollResult> {
  const { createSystemdTpm2Token } = await import("../tokens/systemd-tpm2.js");
  const pcrlock = o.pcrlock ? (await import("../trust/tpm2/pcrlock.js")).loadPcrlockPolicy(o.pcrlock) : undefined;
  return enrollWith(volume, withTokenCtx(o, { tpm2Device: o.tpm2Device }), {
    pbkdf: TOKEN_KEYSLOT_PBKDF,
    withSource: tpmSource(o.tpm2Device),
    makeToken: async (tpm, slot) => {
      const t = await createSystemdTpm2Token(tpm, {
        keyslot: slot,
        pcrs: o.publicKey || (pcrlock && !o.pcrs) ? [] : (o.pcrs ?? [7]),
        ...(o.pcrValues ? { pcrValues: o.pcrValues } : {}),
        ...(pcrlock ? { pcrlock } : {}),
        bank: o.bank ?? "sha256",
        primaryAlg: o.primaryAlg ?? "ecc",
        ...(o.pin ? { pin: o.pin } : {}),
        ...(o.publicKey ? { pubkey: o.publicKey, pubkeyPcrs: o.publicKeyPcrs ?? [11] } : {}),
        ...(o.srk ? { srk: true } : {}),
      });
      return { tokenJson: { ...(JSON.parse(t.tokenJson) as Record<string, unknown>), ...(o.tokenFields ?? {}) }, passphrase: t.passphrase };
    },
  });
}

export interface EnrollPkcs11Options extends EnrollOptions {
  /** PKCS#11 URI of the token's RSA key, e.g. pkcs11:token=lmp;object=luks. */
  uri: string;
  /** User PIN (the new token is test-decrypted on the token when given). */
  pin?: Uint8Array;
  /** PKCS#11 module (default: p11-kit registrations). */
  pkcs11Module?: string;
}

/** A random secret encrypted to the token's RSA key (systemd-pkcs11 token). */
export async function enrollPkcs11(volume: string | LuksHandle, o: EnrollPkcs11Options): Promise<EnrollResult> {
  const { createSystemdPkcs11Token, SYSTEMD_PKCS11_KEYSLOT_PBKDF: K } = await import("../tokens/systemd-pkcs11.js");
  return enrollWith(volume, withTokenCtx(o, { pkcs11Module: o.pkcs11Module, ...(o.pin ? { pin: o.pin } : {}) }), {
    pbkdf: { type: K.type, hash: K.hash, forceIterations: K.iterations },
    afHash: "sha512",
    withSource: noSource,
    makeToken: (_src, slot) => createSystemdPkcs11Token({ uri: o.uri, keyslot: slot, pin: o.pin ? { kind: "buffer", pin: o.pin } : undefined, ...(o.pkcs11Module ? { modulePath: o.pkcs11Module } : {}) }),
  });
}

export interface EnrollClevisOptions extends EnrollOptions {
  /** PCRs (clevis pcr_ids; default [7]). */
  pcrs?: number[];
  /** PCR bank (default sha256; clevis itself assumes sha1 when absent). */
  bank?: HashName;
  primaryAlg?: PrimaryAlg;
  tpm2Device?: string;
}

/** A clevis tpm2 pin (a clevis token `clevis luks unlock` reads). */
export async function enrollClevis(volume: string | LuksHandle, o: EnrollClevisOptions): Promise<EnrollResult> {
  const { createClevisToken } = await import("../tokens/clevis.js");
  return enrollWith(volume, withTokenCtx(o, { tpm2Device: o.tpm2Device }), {
    pbkdf: CLEVIS_KEYSLOT_PBKDF,
    withSource: tpmSource(o.tpm2Device),
    makeToken: async (tpm, slot) => {
      const t = await createClevisToken(tpm, { keyslot: slot, pcrIds: o.pcrs ?? [7], pcrBank: o.bank ?? "sha256", key: o.primaryAlg ?? "ecc" });
      return { tokenJson: JSON.parse(t.tokenJson) as Record<string, unknown>, passphrase: t.passphrase };
    },
  });
}

export interface EnrollRecoveryOptions extends EnrollOptions {
  /**
   * Called with the new key before it is enrolled (store it: a key nobody can read back must never guard a keyslot).
   * Throwing stops the enrolment with nothing changed.
   */
  save?: (recoveryKey: Buffer) => Promise<void> | void;
}

/** A recovery key (systemd-recovery token): 64 modhex characters to type when the trust source is gone. */
export async function enrollRecovery(volume: string | LuksHandle, o: EnrollRecoveryOptions): Promise<EnrollResult & { recoveryKey: Buffer }> {
  const { newRecoveryKey, encodeSystemdRecoveryToken, SYSTEMD_RECOVERY_KEYSLOT_PBKDF: K } = await import("../tokens/systemd-recovery.js");
  if (o.wipeSlots) throw new TrustvolError("EUSAGE", "a recovery key is enrolled without wiping other keyslots", "wipe them in a separate step");
  const key = newRecoveryKey();
  try {
    const r = await enrollWith(volume, o, {
      pbkdf: { type: K.type, hash: K.hash, forceIterations: K.iterations },
      withSource: noSource,
      makeToken: async (_src, slot) => {
        await o.save?.(key);
        return { tokenJson: encodeSystemdRecoveryToken(slot), passphrase: Buffer.from(key) };
      },
    });
    return { ...r, recoveryKey: key };
  } catch (e) {
    wipe(key);
    throw e;
  }
}

/** Token unlocking (for `unlock: { tokens }`) uses the trust source settings (and PIN) the enrolment was given. */
function withTokenCtx<O extends EnrollOptions>(o: O, ctx: { tpm2Device?: string | undefined; pkcs11Module?: string | undefined; pin?: Uint8Array }): O {
  if (!("tokens" in o.unlock)) return o;
  const t = o.unlock.tokens;
  return { ...o, unlock: { tokens: { ...t, ...(ctx.tpm2Device ? { tpm2Device: ctx.tpm2Device } : {}), ...(ctx.pkcs11Module ? { pkcs11Module: ctx.pkcs11Module } : {}), ...(ctx.pin ? { pin: ctx.pin } : {}) } } };
}
