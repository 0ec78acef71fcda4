// Token set-up the way LmP's initramfs does it on OP-TEE: initialise a slot with a label, SO PIN and user PIN;
// generate a non-extractable, sensitive key pair (RSA-2048 for LUKS, or EC P-256 for a device identity) and put a
// self-signed certificate next to it (systemd 252 finds the public key through the certificate).
import { X509Certificate } from "node:crypto";
import type * as Pkcs11js from "pkcs11js";
import { pkcs11js } from "./pkcs11js.js";
import { TrustvolError, usage } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { loadModule } from "./module.js";
import { openToken, p11Error, ckrOf, slotIdOf, EC_PARAMS, newKeyId, type KeyAlgorithm, type Pkcs11Session } from "./token.js";
import { readPin, type PinSource } from "./pin.js";
import { formatPkcs11Uri, parsePkcs11Uri, type Pkcs11Uri } from "./uri.js";
import { buildSelfSignedCert, certFields, type SanOptions } from "./x509.js";

const P = pkcs11js;

export interface InitTokenOptions {
  modulePath: string;
  label: string;
  soPin: PinSource;
  userPin: PinSource;
  /** Slot ID to initialise (LmP: 1 on OP-TEE). Default: the first slot whose token is not initialised. */
  slotId?: number | bigint;
  /** Re-initialise a token that already holds keys (destroys every object on it). */
  force?: boolean;
}

function padLabel(label: string): string {
  const b = Buffer.from(label, "utf8");
  if (!label || b.length > 32) throw usage(`token label must be 1..32 bytes, got ${b.length}`);
  if (/[\0]/.test(label)) throw usage("token label contains NUL");
  return label + " ".repeat(32 - b.length);
}

/** Initialise a token: C_InitToken (SO PIN, label), then C_InitPIN as SO. Returns the token URI. */
export function initToken(o: InitTokenOptions): { uri: string; slotId: bigint } {
  const label32 = padLabel(o.label);
  const mod = loadModule(o.modulePath);
  let so: Buffer | undefined;
  let user: Buffer | undefined;
  try {
    const slots = mod.lib.C_GetSlotList(true);
    let slot: Buffer | undefined;
    if (o.slotId !== undefined) {
      slot = slots.find((s) => slotIdOf(s) === BigInt(o.slotId!));
      if (!slot) throw new TrustvolError("EDEVICE", `no slot ${o.slotId} with a token in ${mod.path}`, `slots: ${slots.map((s) => slotIdOf(s)).join(", ") || "none"}`);
    } else {
      slot = slots.find((s) => !(mod.lib.C_GetTokenInfo(s).flags & P.CKF_TOKEN_INITIALIZED));
      if (!slot) throw new TrustvolError("EDEVICE", `no uninitialised slot in ${mod.path}`, "choose a slot with --slot (re-initialising destroys its keys)");
    }
    const ti = mod.lib.C_GetTokenInfo(slot);
    if (ti.flags & P.CKF_TOKEN_INITIALIZED && !o.force)
      throw new TrustvolError("EBUSY", `slot ${slotIdOf(slot)} already holds token '${ti.label.trim()}'`,
        "re-initialising destroys every key on it (and any volume sealed to them); pass --force only if that is intended");
    so = readPin(o.soPin);
    user = readPin(o.userPin);
    try {
      mod.lib.C_InitToken(slot, so.toString("utf8"), label32);
    } catch (e) {
      throw p11Error(e, `C_InitToken on slot ${slotIdOf(slot)} failed`, ckrOf(e) === P.CKR_PIN_INCORRECT ? "EBADPASS" : "EDEVICE",
        ckrOf(e) === P.CKR_PIN_INCORRECT ? "the token is already initialised with a different SO PIN" : undefined);
    }
    // SoftHSM moves a freshly initialised token to a new slot ID; find it again by label.
    let newSlot = slot;
    for (const s of mod.lib.C_GetSlotList(true)) {
      const t = mod.lib.C_GetTokenInfo(s);
      if (t.label === label32 && t.flags & P.CKF_TOKEN_INITIALIZED && !(t.flags & P.CKF_USER_PIN_INITIALIZED)) newSlot = s;
    }
    const session = mod.lib.C_OpenSession(newSlot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION);
    try {
      mod.lib.C_Login(session, P.CKU_SO, so.toString("utf8"));
      mod.lib.C_InitPIN(session, user.toString("utf8"));
      mod.lib.C_Logout(session);
    } catch (e) {
      throw p11Error(e, "setting the user PIN failed");
    } finally {
      try { mod.lib.C_CloseSession(session); } catch { /* ignore */ }
    }
    return { uri: formatPkcs11Uri({ token: o.label }), slotId: slotIdOf(newSlot) };
  } finally {
    wipe(so, user);
    mod.release();
  }
}

export interface GenerateKeyOptions {
  algorithm?: KeyAlgorithm;
  /** CKA_LABEL for the key pair (and its certificate). LmP: "luks". */
  label: string;
  /** CKA_ID; random 8 bytes by default. */
  id?: Buffer;
}

export interface GeneratedKey {
  id: Buffer;
  label: string;
  keyType: "rsa" | "ec";
  privateKey: Buffer;
  publicKey: Buffer;
}

/** Generate a key pair on the token: private key sensitive, never extractable, token object. Session: R/W, logged in. */
export function generateKeyPair(s: Pkcs11Session, o: GenerateKeyOptions): GeneratedKey {
  const alg = o.algorithm ?? "rsa-2048";
  const id = o.id ?? newKeyId();
  const label = Buffer.from(o.label, "utf8");
  const isRsa = alg.startsWith("rsa-");
  const common = [
    { type: P.CKA_TOKEN, value: true },
    { type: P.CKA_LABEL, value: label },
    { type: P.CKA_ID, value: id },
  ];
  const pub: Pkcs11js.Template = [...common, { type: P.CKA_CLASS, value: P.CKO_PUBLIC_KEY }, { type: P.CKA_PRIVATE, value: false }, { type: P.CKA_VERIFY, value: true }];
  const priv: Pkcs11js.Template = [
    ...common,
    { type: P.CKA_CLASS, value: P.CKO_PRIVATE_KEY },
    { type: P.CKA_PRIVATE, value: true },
    { type: P.CKA_SENSITIVE, value: true },
    { type: P.CKA_EXTRACTABLE, value: false },
    { type: P.CKA_SIGN, value: true },
  ];
  let mech: Pkcs11js.Mechanism;
  if (isRsa) {
    const bits = Number(alg.slice(4));
    pub.push({ type: P.CKA_KEY_TYPE, value: P.CKK_RSA }, { type: P.CKA_MODULUS_BITS, value: bits }, { type: P.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
      { type: P.CKA_ENCRYPT, value: true }, { type: P.CKA_WRAP, value: false });
    priv.push({ type: P.CKA_KEY_TYPE, value: P.CKK_RSA }, { type: P.CKA_DECRYPT, value: true }, { type: P.CKA_UNWRAP, value: false });
    mech = { mechanism: P.CKM_RSA_PKCS_KEY_PAIR_GEN };
  } else {
    const params = EC_PARAMS[alg];
    if (!params) throw usage(`unknown key algorithm ${alg}`, "use rsa-2048, rsa-3072, rsa-4096, ec-p256 or ec-p384");
    pub.push({ type: P.CKA_KEY_TYPE, value: P.CKK_EC }, { type: P.CKA_EC_PARAMS, value: params });
    priv.push({ type: P.CKA_KEY_TYPE, value: P.CKK_EC }, { type: P.CKA_DERIVE, value: false }, { type: P.CKA_DECRYPT, value: false });
    mech = { mechanism: P.CKM_EC_KEY_PAIR_GEN };
  }
  try {
    const kp = s.lib.C_GenerateKeyPair(s.session, mech, pub, priv);
    return { id, label: o.label, keyType: isRsa ? "rsa" : "ec", privateKey: kp.privateKey, publicKey: kp.publicKey };
  } catch (e) {
    throw p11Error(e, `key generation (${alg}) on token '${s.token.label}' failed`, "EDEVICE",
      ckrOf(e) === P.CKR_USER_NOT_LOGGED_IN ? "log in with the user PIN first" : undefined);
  }
}

/** Store an X.509 certificate on the token next to the key with the same CKA_ID/CKA_LABEL (replacing an older one). */
export function importCertificate(s: Pkcs11Session, der: Uint8Array, o: { id: Buffer; label: string; replace?: boolean }): Buffer {
  const { subject, issuer, serial } = certFields(der);
  const old = s.findObjects([{ type: P.CKA_CLASS, value: P.CKO_CERTIFICATE }, { type: P.CKA_ID, value: o.id }], 8);
  if (old.length && !o.replace) throw new TrustvolError("EBUSY", `token '${s.token.label}' already has a certificate for this key`, "pass replace to overwrite it");
  try {
    const h = s.lib.C_CreateObject(s.session, [
      { type: P.CKA_CLASS, value: P.CKO_CERTIFICATE },
      { type: P.CKA_CERTIFICATE_TYPE, value: P.CKC_X_509 },
      { type: P.CKA_TOKEN, value: true },
      { type: P.CKA_PRIVATE, value: false },
      { type: P.CKA_MODIFIABLE, value: true },
      { type: P.CKA_LABEL, value: Buffer.from(o.label, "utf8") },
      { type: P.CKA_ID, value: o.id },
      { type: P.CKA_SUBJECT, value: subject },
      { type: P.CKA_ISSUER, value: issuer },
      { type: P.CKA_SERIAL_NUMBER, value: serial },
      { type: P.CKA_VALUE, value: Buffer.from(der) },
    ]);
    for (const x of old) s.lib.C_DestroyObject(s.session, x);
    return h;
  } catch (e) {
    throw p11Error(e, `storing the certificate on token '${s.token.label}' failed`);
  }
}

export interface ProvisionOptions {
  /** Token to use, e.g. "pkcs11:token=lmp". object=/id= in it are ignored (label/id below name the new key). */
  uri: string;
  modulePath?: string;
  pin: PinSource;
  algorithm?: KeyAlgorithm;
  /** Key/certificate label (LmP: "luks"). */
  label?: string;
  id?: Buffer;
  /** Subject of the self-signed certificate (LmP: "CN=LmP"). */
  subject?: string;
  san?: SanOptions;
  /** Skip the self-signed certificate (an identity gets a CA-signed one later). */
  noCertificate?: boolean;
}

/** Generate a key pair (+ self-signed certificate) on a token. Refuses if a key with that label already exists. */
export function provisionKey(o: ProvisionOptions): { uri: string; id: Buffer; label: string; keyType: "rsa" | "ec"; certificate?: Buffer } {
  const base = parsePkcs11Uri(o.uri);
  const tokenUri: Pkcs11Uri = { ...base };
  delete tokenUri.object;
  delete tokenUri.id;
  delete tokenUri.type;
  const label = o.label ?? "luks";
  const s = openToken({ uri: tokenUri, readWrite: true, ...(o.modulePath ? { modulePath: o.modulePath } : {}) });
  try {
    s.login(o.pin);
    const existing = s.findObjects([{ type: P.CKA_CLASS, value: P.CKO_PRIVATE_KEY }, { type: P.CKA_LABEL, value: Buffer.from(label, "utf8") }], 4);
    if (existing.length)
      throw new TrustvolError("EBUSY", `token '${s.token.label}' already has a private key labelled "${label}"`,
        "use it as is, or choose another --label (volumes sealed to the old key still need it)");
    const k = generateKeyPair(s, { label, algorithm: o.algorithm ?? "rsa-2048", ...(o.id ? { id: o.id } : {}) });
    const out: { uri: string; id: Buffer; label: string; keyType: "rsa" | "ec"; certificate?: Buffer } = {
      uri: formatPkcs11Uri({ token: s.token.label, object: label }),
      id: k.id,
      label,
      keyType: k.keyType,
    };
    if (!o.noCertificate) {
      const pub = s.publicKey({ id: k.id });
      const der = buildSelfSignedCert(pub.key, k.keyType, (tbs) => s.sign(k.privateKey, k.keyType, tbs), { subject: o.subject ?? "CN=LmP", ...(o.san ? { san: o.san } : {}) });
      // Sanity: the certificate verifies under the on-token public key.
      if (!new X509Certificate(der).verify(pub.key)) throw new TrustvolError("EINTERNAL", "self-signed certificate does not verify");
      importCertificate(s, der, { id: k.id, label });
      out.certificate = der;
    }
    return out;
  } finally {
    s.close();
  }
}
