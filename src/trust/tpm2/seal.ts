// Seal / unseal a short secret the way systemd-cryptenroll 252 does: a KEYEDHASH object (fixedtpm|fixedparent)
// under the ECC (or RSA) storage primary, policy PolicyPCR(bank, pcrs) [+ PolicyAuthValue with authValue = PIN
// hash], blob = TPM2B_PRIVATE ‖ TPM2B_PUBLIC. Every TPM exchange that carries the secret runs in a session salted
// to the (verified) primary, with AES-CFB parameter encryption, so the secret never crosses the bus in clear.
import { createHash } from "node:crypto";
import { TrustvolError } from "../../util/errors.js";
import { constantTimeEqual, wipe } from "../../util/secret.js";
import { TPMA_OBJECT, TPMA_SESSION, TPM_ALG, TPM_RH, hashNameOf, type HashName } from "./constants.js";
import * as C from "./commands.js";
import { decode, encode, keepBytes, struct, tpm2b } from "./schema.js";
import { pcrPinSteps, policyDigestOf, runPolicy } from "./policy.js";
import { TpmRcError } from "./rc.js";
import type { AuthSession } from "./session.js";
import { PUBLIC_2B, objectName, sealedObjectTemplate, type PrimaryAlg, type TpmtPublic } from "./structures.js";
import type { LoadedKey, Tpm } from "./tpm.js";
import { primaryTemplateOf, type SerializedKeyHandle } from "./esys-tr.js";

export interface Tpm2SealOptions {
  pcrs: readonly number[];
  bank: HashName;
  /** Predict the policy from these values instead of the current ones. */
  pcrValues?: Map<number, Uint8Array>;
  /** The TPM authValue (already derived from the PIN, e.g. sha256(PIN) for systemd 252). Not wiped here. */
  authValue?: Uint8Array;
  primaryAlg?: PrimaryAlg;
  /** Name algorithm of the primary and the sealed object (clevis: its `hash`). */
  nameAlg?: HashName;
  /** Object attributes of the sealed object (default fixedtpm|fixedparent, as systemd). */
  attributes?: number;
  /** Use this authPolicy instead of computing PolicyPCR [+ PolicyAuthValue] (e.g. a PolicyAuthorize digest). */
  authPolicy?: Buffer;
  /** Seal under this (persistent, verified) parent instead of a transient primary, e.g. systemd 255+'s SRK. */
  parent?: LoadedKey;
}

export interface Tpm2Sealed {
  /** TPM2B_PRIVATE ‖ TPM2B_PUBLIC, exactly as systemd's tpm2-blob. */
  blob: Buffer;
  policyHash: Buffer;
  pcrs: number[];
  bank: HashName;
  primaryAlg: PrimaryAlg;
  pin: boolean;
}

export interface Tpm2UnsealRequest {
  blob: Uint8Array;
  pcrs: readonly number[];
  bank: HashName;
  primaryAlg?: PrimaryAlg;
  /** When given, the object's authPolicy must equal it (the token's tpm2-policy-hash). */
  policyHash?: Uint8Array;
  /** Whether a PIN (PolicyAuthValue) is part of the policy. */
  pin: boolean;
  nameAlg?: HashName;
  /**
   * Satisfy the object's policy yourself (e.g. PolicyPCR + PolicyAuthorize with a signed policy) instead of the
   * default PolicyPCR(bank, pcrs) [+ PolicyAuthValue]. The session is salted and the response still encrypted.
   */
  runPolicy?: (tpm: Tpm, session: AuthSession) => Promise<void>;
  /** The parent recorded by systemd 255+ (`tpm2_srk`): a persistent SRK instead of a transient primary. */
  srk?: SerializedKeyHandle;
}

/** systemd's tpm2-blob: TPM2B_PRIVATE ‖ TPM2B_PUBLIC, both kept byte for byte. */
const SEALED_BLOB = struct({ inPrivate: keepBytes(tpm2b()), inPublic: keepBytes(PUBLIC_2B) });

/** Split TPM2B_PRIVATE ‖ TPM2B_PUBLIC: priv is the body, privBytes / pubBytes keep their size prefixes (tpm2-tools files). */
export function splitBlob(blob: Uint8Array): { priv: Buffer; privBytes: Buffer; pubBytes: Buffer; pub: TpmtPublic } {
  const { inPrivate, inPublic } = decode(SEALED_BLOB, Buffer.from(blob), "tpm2-blob");
  const [priv, privBytes, pub, pubBytes] = [inPrivate.value, inPrivate.bytes, inPublic.value, inPublic.bytes];
  if (pub.type !== TPM_ALG.KEYEDHASH) throw new TrustvolError("ECORRUPT", "tpm2-blob does not hold a sealed data object", "the token is damaged; use the recovery key and re-enroll");
  return { priv, privBytes, pubBytes, pub };
}

export function joinBlob(priv: Buffer, pubBytes: Buffer): Buffer {
  // what Load takes, in the same order
  return encode(struct(C.LOAD_PARAMS), { inPrivate: priv, inPublic: pubBytes }, priv.length + pubBytes.length + 2);
}

/** systemd 252: the TPM authValue of a PIN is sha256 of its bytes. */
export function pinToAuthValue(pin: Uint8Array): Buffer {
  return createHash("sha256").update(pin).digest();
}

async function withPrimary<T>(tpm: Tpm, alg: PrimaryAlg, nameAlg: HashName, fn: (p: LoadedKey) => Promise<T>): Promise<T> {
  const primary = await tpm.createStoragePrimary(alg, nameAlg);
  try {
    return await fn(primary);
  } finally {
    await tpm.flushQuiet(primary.handle);
  }
}

/**
 * The SRK a token names: the persistent handle when it holds that very key, else the same key recreated from its
 * template (the owner seed is unchanged unless the TPM was cleared). Either way its name must equal the token's.
 */
async function withSrk<T>(tpm: Tpm, srk: SerializedKeyHandle, fn: (p: LoadedKey) => Promise<T>): Promise<T> {
  const persisted = await tpm.readPublicVerified(srk.handle).catch((e) => {
    if (e instanceof TpmRcError) return undefined; // not there (evicted, or never persisted on this TPM)
    throw e;
  });
  if (persisted && constantTimeEqual(persisted.name, srk.name)) return fn(persisted);
  const res = await tpm.run(C.CreatePrimary, { primaryHandle: C.permanentHandle(TPM_RH.OWNER), inSensitive: { userAuth: Buffer.alloc(0), data: Buffer.alloc(0) }, inPublic: primaryTemplateOf(srk.public) });
  try {
    if (!constantTimeEqual(objectName(res.outPublic.value), res.name) || !constantTimeEqual(res.name, srk.name))
      throw new TrustvolError("EPOLICY", `the TPM's storage root key is not the one this token was sealed under (0x${srk.handle.toString(16)}): a different TPM, or it was cleared since enrollment`, "use the recovery key and re-enroll on this device");
    return await fn({ handle: res.handle, public: res.outPublic.value, name: res.name });
  } finally {
    await tpm.flushQuiet(res.handle);
  }
}

async function closeSession(tpm: Tpm, s: AuthSession | undefined): Promise<void> {
  if (!s) return;
  s.wipe();
  if (!s.closed) await tpm.flushQuiet(s.handle);
}

export async function sealSecret(tpm: Tpm, secret: Uint8Array, opts: Tpm2SealOptions): Promise<Tpm2Sealed> {
  if (secret.length === 0 || secret.length > 128) throw new TrustvolError("EUSAGE", `a TPM sealed object holds 1..128 bytes, not ${secret.length}`);
  const primaryAlg = opts.primaryAlg ?? "ecc";
  const nameAlg = opts.nameAlg ?? "sha256";
  const pcrs = [...new Set(opts.pcrs)].sort((a, b) => a - b);
  const pin = !!opts.authValue?.length;
  let values = opts.pcrValues;
  if (pcrs.length && !values && !opts.authPolicy) values = await tpm.pcrRead(opts.bank, pcrs);
  const policyHash = opts.authPolicy ? Buffer.from(opts.authPolicy) : pcrs.length || pin ? policyDigestOf(nameAlg, pcrPinSteps({ bank: opts.bank, pcrs, pcrValues: values ?? new Map(), pin })) : Buffer.alloc(0);
  const attributes = opts.attributes ?? (policyHash.length ? TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent : TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.userWithAuth);

  const withParent = <T>(fn: (p: LoadedKey) => Promise<T>) => (opts.parent ? fn(opts.parent) : withPrimary(tpm, primaryAlg, nameAlg, fn));
  return withParent(async (primary) => {
    let session: AuthSession | undefined;
    try {
      session = await tpm.startSession({ type: "hmac", saltKey: primary, symmetric: true });
      session.attributes = TPMA_SESSION.continueSession | TPMA_SESSION.decrypt; // inSensitive goes encrypted
      const userAuth = Buffer.from(opts.authValue ?? Buffer.alloc(0));
      const data = Buffer.from(secret);
      try {
        const res = await tpm.run(
          C.Create,
          { parentHandle: { handle: primary.handle, name: primary.name }, inSensitive: { userAuth, data }, inPublic: sealedObjectTemplate({ nameAlg, authPolicy: policyHash, attributes }) },
          [session],
        );
        return { blob: joinBlob(res.outPrivate, res.outPublic.bytes), policyHash, pcrs, bank: opts.bank, primaryAlg, pin };
      } finally {
        wipe(userAuth, data);
      }
    } finally {
      await closeSession(tpm, session);
    }
  });
}

function pcrChangedError(pcrs: number[], bank: HashName): TrustvolError {
  const which = pcrs.length === 1 ? `PCR ${pcrs[0]} changed` : `one of PCRs ${pcrs.join(",")} (${bank}) changed`;
  return new TrustvolError("EPOLICY", `${which} since enrollment: the boot chain differs`, "use the recovery key and re-enroll");
}

export async function unsealSecret(tpm: Tpm, req: Tpm2UnsealRequest, auth: { authValue?: Uint8Array } = {}): Promise<Buffer> {
  const { priv, pubBytes, pub } = splitBlob(req.blob);
  const pcrs = [...new Set(req.pcrs)].sort((a, b) => a - b);
  if (req.policyHash && req.policyHash.length && !constantTimeEqual(Buffer.from(req.policyHash), pub.authPolicy))
    throw new TrustvolError("ECORRUPT", "the sealed object's policy does not match the token's tpm2-policy-hash", "the token was tampered with or is damaged; use the recovery key and re-enroll");
  if (req.pin && !auth.authValue?.length) throw new TrustvolError("EBADPASS", "this TPM enrollment needs a PIN", "supply the PIN");
  const usesPolicy = pub.authPolicy.length > 0;
  const nameAlg = req.nameAlg ?? hashNameOf(pub.nameAlg);

  const withParent = <T>(fn: (p: LoadedKey) => Promise<T>) => (req.srk ? withSrk(tpm, req.srk, fn) : withPrimary(tpm, req.primaryAlg ?? "ecc", nameAlg, fn));
  return withParent(async (primary) => {
    let loaded: { handle: number; name: Buffer } | undefined;
    let session: AuthSession | undefined;
    try {
      try {
        loaded = await tpm.run(C.Load, { parentHandle: { handle: primary.handle, name: primary.name }, inPrivate: priv, inPublic: pubBytes });
      } catch (e) {
        if (e instanceof TpmRcError && ["INTEGRITY", "SIZE", "VALUE", "KEY", "BINDING", "ASYMMETRIC"].includes(e.rcName))
          throw new TrustvolError("EPOLICY", "the sealed secret was made by a different TPM (or this TPM was cleared since enrollment)", "use the recovery key and re-enroll on this device", { cause: e });
        throw e;
      }
      if (!constantTimeEqual(loaded.name, objectName(pub))) throw new TrustvolError("EDEVICE", "the TPM reports a different name for the loaded sealed object", "the TPM connection is not trustworthy");

      session = await tpm.startSession({ type: usesPolicy ? "policy" : "hmac", saltKey: primary, symmetric: true, hash: nameAlg });
      if (usesPolicy && req.runPolicy) {
        await req.runPolicy(tpm, session);
      } else if (usesPolicy) {
        await runPolicy(tpm, session, pcrPinSteps({ bank: req.bank, pcrs, pin: req.pin }));
        const got = await tpm.policyGetDigest(session);
        if (!constantTimeEqual(got, pub.authPolicy)) {
          if (pcrs.length) throw pcrChangedError(pcrs, req.bank);
          throw new TrustvolError("EPOLICY", "the TPM policy of this sealed secret is not the one expected (PIN flag or PCR selection differ)", "the token does not describe this blob; re-enroll");
        }
      }
      if (req.pin) {
        // Don't spend an authorization attempt on a TPM that is already locked out (it would refuse anyway).
        const l = await tpm.lockoutInfo().catch(() => undefined);
        if (l && l.maxTries > 0 && l.counter >= l.maxTries)
          throw new TrustvolError("ELOCKOUT", "the TPM is in dictionary-attack lockout after too many wrong PINs", `wait ${l.recovery}s per attempt to recover, or clear it with the lockout authorization (tpm2_dictionarylockout --clear-lockout)`);
      }
      // The TPM encrypts outData and flushes the session afterwards.
      session.attributes = TPMA_SESSION.encrypt;
      try {
        return (await tpm.run(C.Unseal, { itemHandle: { handle: loaded.handle, name: loaded.name, ...(auth.authValue ? { authValue: auth.authValue } : {}) } }, [session])).outData;
      } catch (e) {
        if (e instanceof TpmRcError && e.rcName === "POLICY_FAIL" && pcrs.length) throw pcrChangedError(pcrs, req.bank);
        if (e instanceof TpmRcError && (e.rcName === "AUTH_FAIL" || e.rcName === "BAD_AUTH")) {
          let left = "";
          try {
            const l = await tpm.lockoutInfo();
            if (l.maxTries) left = ` (${Math.max(0, l.maxTries - l.counter)} attempts left before the TPM locks out)`;
          } catch {
            /* informational only */
          }
          throw new TrustvolError("EBADPASS", `wrong TPM PIN${left}`, "check the PIN; too many wrong PINs lock the TPM (dictionary-attack protection)", { cause: e });
        }
        throw e;
      }
    } finally {
      await closeSession(tpm, session);
      if (loaded) await tpm.flushQuiet(loaded.handle);
      wipe(priv);
    }
  });
}

