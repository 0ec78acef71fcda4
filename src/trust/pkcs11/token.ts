// A session on one PKCS#11 token chosen by a URI: module selection, token lookup, login with clear errors,
// object search, key-pair generation, on-token decrypt/sign. All errors are TrustvolError; PINs never appear in them.
import { createPublicKey, createHash, X509Certificate, type KeyObject } from "node:crypto";
import type * as Pkcs11js from "pkcs11js";
import { pkcs11js } from "./pkcs11js.js";
import { TrustvolError } from "../../util/errors.js";
import { wipe, randomBytesBuf } from "../../util/secret.js";
import { loadModule, candidateModules, findModuleByName, discoverP11KitModules, oneLineErr, type ModuleHandle, type Pkcs11Lib } from "./module.js";
import { parsePkcs11Uri, formatPkcs11Uri, tokenMatches, redactUri, type Pkcs11Uri } from "./uri.js";
import { readPin, pinSourceFromUri, type PinSource } from "./pin.js";

const P = pkcs11js;
type Handle = Buffer;

export interface TokenInfo {
  label: string;
  manufacturer: string;
  model: string;
  serial: string;
  flags: number;
  slotId: bigint;
  slotDescription: string;
  modulePath: string;
  libraryDescription: string;
  libraryManufacturer: string;
}

export interface OpenTokenOptions {
  uri: string | Pkcs11Uri;
  /** Overrides the URI's module-path/module-name; otherwise all p11-kit registered modules are searched. */
  modulePath?: string;
  /** Read/write session (key generation, certificate import). */
  readWrite?: boolean;
  /** Accept a slot whose token is not initialised yet (token initialisation). */
  allowUninitialized?: boolean;
}

const strip = (s: string) => s.replace(/[ \0]+$/, "");
export const ckrName = (code: number | undefined): string => {
  if (code === undefined) return "unknown error";
  for (const [k, v] of Object.entries(P)) if (k.startsWith("CKR_") && v === code) return k;
  return `CKR_0x${code.toString(16)}`;
};
export const ckrOf = (e: unknown): number | undefined => {
  const c = (e as { code?: unknown })?.code;
  return typeof c === "number" && c !== 0 ? c : undefined;
};

function describeToken(t: TokenInfo): string {
  return `'${t.label}' (${t.manufacturer} ${t.model}, serial ${t.serial})`;
}

export function slotIdOf(h: Buffer): bigint {
  return h.length >= 8 ? h.readBigUInt64LE(0) : BigInt(h.readUInt32LE(0));
}

/** Enumerate the tokens (and empty initialisable slots) a set of modules offers. */
export function listTokens(opts: { modulePath?: string; includeUninitialized?: boolean } = {}): TokenInfo[] {
  const paths = opts.modulePath ? [opts.modulePath] : candidateModules().map((m) => m.path);
  const out: TokenInfo[] = [];
  for (const p of paths) {
    let mod: ModuleHandle;
    try {
      mod = loadModule(p);
    } catch (e) {
      if (opts.modulePath) throw e;
      continue;
    }
    try {
      for (const { info } of slotsOf(mod, !!opts.includeUninitialized)) out.push(info);
    } finally {
      mod.release();
    }
  }
  return out;
}

function slotsOf(mod: ModuleHandle, includeUninit: boolean): { slot: Handle; info: TokenInfo }[] {
  const lib = mod.lib;
  const minfo = lib.C_GetInfo();
  const out: { slot: Handle; info: TokenInfo }[] = [];
  for (const slot of lib.C_GetSlotList(true)) {
    let si, ti;
    try {
      si = lib.C_GetSlotInfo(slot);
      ti = lib.C_GetTokenInfo(slot);
    } catch {
      continue;
    }
    if (!includeUninit && !(ti.flags & P.CKF_TOKEN_INITIALIZED)) continue;
    out.push({
      slot,
      info: {
        label: strip(ti.label),
        manufacturer: strip(ti.manufacturerID),
        model: strip(ti.model),
        serial: strip(ti.serialNumber),
        flags: ti.flags,
        slotId: slotIdOf(slot),
        slotDescription: strip(si.slotDescription),
        modulePath: mod.path,
        libraryDescription: strip(minfo.libraryDescription),
        libraryManufacturer: strip(minfo.manufacturerID),
      },
    });
  }
  return out;
}

function moduleMatches(u: Pkcs11Uri, t: TokenInfo): boolean {
  if (u.libraryDescription !== undefined && u.libraryDescription !== t.libraryDescription) return false;
  if (u.libraryManufacturer !== undefined && u.libraryManufacturer !== t.libraryManufacturer) return false;
  if (u.slotDescription !== undefined && u.slotDescription !== t.slotDescription) return false;
  if (u.slotId !== undefined && BigInt(u.slotId) !== t.slotId) return false;
  return true;
}

/** Open a session on the first token matching the URI. */
export function openToken(opts: OpenTokenOptions): Pkcs11Session {
  const uri = typeof opts.uri === "string" ? parsePkcs11Uri(opts.uri) : opts.uri;
  const shown = redactUri(typeof opts.uri === "string" ? opts.uri : formatPkcs11Uri(opts.uri));
  let paths: string[];
  let explicit = true;
  if (opts.modulePath) paths = [opts.modulePath];
  else if (uri.modulePath) paths = [uri.modulePath];
  else if (uri.moduleName) {
    const m = findModuleByName(uri.moduleName);
    if (!m)
      throw new TrustvolError("EDEVICE", `no p11-kit module registration named "${uri.moduleName}"`,
        `registered: ${discoverP11KitModules().map((x) => x.name).join(", ") || "none"}; or give module-path=`);
    paths = [m.path];
  } else {
    paths = candidateModules().map((m) => m.path);
    explicit = false;
    if (!paths.length)
      throw new TrustvolError("EDEVICE", "no PKCS#11 module is registered with p11-kit", "give the module with --module (e.g. /usr/lib/libckteec.so.0)");
  }
  const seen: TokenInfo[] = [];
  const loadErrors: string[] = [];
  for (const p of paths) {
    let mod: ModuleHandle;
    try {
      mod = loadModule(p);
    } catch (e) {
      if (explicit) throw e;
      loadErrors.push(e instanceof TrustvolError ? e.message : oneLineErr(e));
      continue;
    }
    let keep = false;
    try {
      for (const { slot, info } of slotsOf(mod, !!opts.allowUninitialized)) {
        seen.push(info);
        if (!moduleMatches(uri, info) || !tokenMatches(uri, { label: info.label, manufacturerID: info.manufacturer, serialNumber: info.serial, model: info.model }))
          continue;
        let session: Handle;
        try {
          session = mod.lib.C_OpenSession(slot, P.CKF_SERIAL_SESSION | (opts.readWrite ? P.CKF_RW_SESSION : 0));
        } catch (e) {
          throw p11Error(e, `cannot open a session on token ${describeToken(info)}`);
        }
        keep = true;
        return new Pkcs11Session(mod, slot, session, info, uri);
      }
    } finally {
      if (!keep) mod.release();
    }
  }
  const list = seen.map((t) => `'${t.label}'`).join(", ");
  throw new TrustvolError("EDEVICE", `no PKCS#11 token matches ${shown}`,
    (seen.length ? `tokens present: ${list}` : "no token is present") +
      (loadErrors.length ? `; modules that failed: ${loadErrors.join("; ")}` : "") +
      "; is the token plugged in / OP-TEE's tee-supplicant running, and the label right?");
}

/** Map a pkcs11js error to a TrustvolError with a readable CKR_ name. */
export function p11Error(e: unknown, what: string, code: TrustvolError["code"] = "EDEVICE", hint?: string): TrustvolError {
  if (e instanceof TrustvolError) return e;
  const rv = ckrOf(e);
  return new TrustvolError(code, `${what}: ${rv !== undefined ? ckrName(rv) : oneLineErr(e)}`, hint, { cause: e });
}

export type KeyAlgorithm = "rsa-2048" | "rsa-3072" | "rsa-4096" | "ec-p256" | "ec-p384";
export const EC_PARAMS: Record<string, Buffer> = {
  "ec-p256": Buffer.from("06082a8648ce3d030107", "hex"), // prime256v1
  "ec-p384": Buffer.from("06052b81040022", "hex"), // secp384r1
};

export interface KeyAttributes {
  label: string;
  id: Buffer;
  keyType: "rsa" | "ec" | "other";
  sensitive: boolean;
  extractable: boolean;
  alwaysSensitive: boolean;
  neverExtractable: boolean;
  local: boolean;
  decrypt: boolean;
  sign: boolean;
}

export class Pkcs11Session {
  private closed = false;
  readonly lib: Pkcs11Lib;
  constructor(
    readonly module: ModuleHandle,
    readonly slot: Handle,
    readonly session: Handle,
    public token: TokenInfo,
    readonly uri: Pkcs11Uri,
  ) {
    this.lib = module.lib;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try { this.lib.C_CloseSession(this.session); } catch { /* ignore */ }
    this.module.release();
  }

  refreshTokenInfo(): TokenInfo {
    const ti = this.lib.C_GetTokenInfo(this.slot);
    this.token = { ...this.token, flags: ti.flags, label: strip(ti.label) };
    return this.token;
  }

  /**
   * C_Login as the user. `pin` may be omitted when the URI carries pin-source or the token has a protected
   * authentication path (PIN pad, OP-TEE TEE-identity login). Wrong PIN → EBADPASS with what the token says about
   * the remaining tries; locked → ELOCKOUT.
   */
  login(pin?: PinSource | Uint8Array, userType: number = P.CKU_USER): void {
    const t = this.refreshTokenInfo();
    const who = userType === P.CKU_SO ? "SO PIN" : "PIN";
    const lockedFlag = userType === P.CKU_SO ? P.CKF_SO_PIN_LOCKED : P.CKF_USER_PIN_LOCKED;
    if (t.flags & lockedFlag)
      throw new TrustvolError("ELOCKOUT", `the ${who} of token ${describeToken(t)} is locked`,
        userType === P.CKU_SO ? "the token must be re-initialised" : "unlock it with the SO PIN, or open the volume with its recovery key");
    let pinBuf: Buffer | undefined;
    if (pin instanceof Uint8Array) pinBuf = readPin({ kind: "buffer", pin });
    else if (pin) pinBuf = readPin(pin);
    else if (this.uri.pinSource) pinBuf = readPin(pinSourceFromUri(this.uri.pinSource));
    else if (!(t.flags & P.CKF_PROTECTED_AUTHENTICATION_PATH)) {
      if (userType === P.CKU_USER && !(t.flags & P.CKF_LOGIN_REQUIRED)) return;
      throw new TrustvolError("EUSAGE", `token ${describeToken(t)} needs a ${who}`, "give it with --pin-file, on stdin, or at the prompt");
    }
    // pkcs11js only takes PINs as JS strings; the string is short-lived and unreferenced after the call.
    let pinStr = pinBuf ? pinBuf.toString("utf8") : "";
    try {
      this.lib.C_Login(this.session, userType, pinStr);
    } catch (e) {
      const rv = ckrOf(e);
      if (rv === P.CKR_USER_ALREADY_LOGGED_IN) return;
      if (rv === P.CKR_PIN_INCORRECT || rv === P.CKR_PIN_LEN_RANGE) {
        let f = 0;
        try { f = this.refreshTokenInfo().flags; } catch { /* ignore */ }
        const lowFlag = userType === P.CKU_SO ? P.CKF_SO_PIN_COUNT_LOW : P.CKF_USER_PIN_COUNT_LOW;
        const finalFlag = userType === P.CKU_SO ? P.CKF_SO_PIN_FINAL_TRY : P.CKF_USER_PIN_FINAL_TRY;
        const tries = f & lockedFlag ? "the PIN is now locked" : f & finalFlag ? "the token says one try remains before it locks"
          : f & lowFlag ? "the token says few tries remain" : "the token does not report how many tries remain";
        throw new TrustvolError(f & lockedFlag ? "ELOCKOUT" : "EBADPASS", `wrong ${who} for token ${describeToken(t)} (${tries})`,
          f & lockedFlag ? "unlock it with the SO PIN, or open the volume with its recovery key" : "check the PIN; repeated failures lock the token");
      }
      if (rv === P.CKR_PIN_LOCKED)
        throw new TrustvolError("ELOCKOUT", `the ${who} of token ${describeToken(t)} is locked`, "unlock it with the SO PIN, or open the volume with its recovery key");
      if (rv === P.CKR_USER_PIN_NOT_INITIALIZED)
        throw new TrustvolError("EDEVICE", `token ${describeToken(t)} has no user PIN yet`, "initialise it (trustvol pkcs11 init)");
      throw p11Error(e, `login to token ${describeToken(t)} failed`);
    } finally {
      pinStr = "";
      wipe(pinBuf);
    }
  }

  findObjects(template: Pkcs11js.Template, max = 64): Handle[] {
    const out: Handle[] = [];
    this.lib.C_FindObjectsInit(this.session, template);
    try {
      for (;;) {
        const batch = this.lib.C_FindObjects(this.session, 16);
        out.push(...batch);
        if (batch.length < 16 || out.length >= max) break;
      }
    } finally {
      this.lib.C_FindObjectsFinal(this.session);
    }
    return out;
  }

  /** The URI's object selectors (object=, id=) as a template, plus a class. */
  objectTemplate(cls: number, u: Pkcs11Uri = this.uri): Pkcs11js.Template {
    const t: Pkcs11js.Template = [{ type: P.CKA_CLASS, value: cls }];
    if (u.object !== undefined) t.push({ type: P.CKA_LABEL, value: Buffer.from(u.object, "utf8") });
    if (u.id !== undefined) t.push({ type: P.CKA_ID, value: u.id });
    return t;
  }

  getAttr(obj: Handle, type: number): Buffer {
    return this.lib.C_GetAttributeValue(this.session, obj, [{ type }])[0]!.value;
  }
  getBool(obj: Handle, type: number): boolean {
    try {
      const v = this.getAttr(obj, type);
      return v.length > 0 && v[0] !== 0;
    } catch {
      return false;
    }
  }
  getUlong(obj: Handle, type: number): number {
    const v = this.getAttr(obj, type);
    return v.length >= 8 ? Number(v.readBigUInt64LE(0)) : v.readUInt32LE(0);
  }

  keyAttributes(obj: Handle): KeyAttributes {
    const kt = this.getUlong(obj, P.CKA_KEY_TYPE);
    let label = "";
    let id: Buffer = Buffer.alloc(0);
    try { label = this.getAttr(obj, P.CKA_LABEL).toString("utf8"); } catch { /* none */ }
    try { id = this.getAttr(obj, P.CKA_ID); } catch { /* none */ }
    return {
      label,
      id,
      keyType: kt === P.CKK_RSA ? "rsa" : kt === P.CKK_EC ? "ec" : "other",
      sensitive: this.getBool(obj, P.CKA_SENSITIVE),
      extractable: this.getBool(obj, P.CKA_EXTRACTABLE),
      alwaysSensitive: this.getBool(obj, P.CKA_ALWAYS_SENSITIVE),
      neverExtractable: this.getBool(obj, P.CKA_NEVER_EXTRACTABLE),
      local: this.getBool(obj, P.CKA_LOCAL),
      decrypt: this.getBool(obj, P.CKA_DECRYPT),
      sign: this.getBool(obj, P.CKA_SIGN),
    };
  }

  /**
   * Exactly one private key selected by the URI (plus `extra` attributes). Missing → ENOKEY naming the recovery
   * key as the way back; ambiguous → EUSAGE asking for object=/id=.
   */
  findPrivateKey(extra: Pkcs11js.Template = []): Handle {
    if (this.uri.type && this.uri.type !== "private" && this.uri.type !== "cert" && this.uri.type !== "public")
      throw new TrustvolError("EUSAGE", `PKCS#11 URI selects type=${this.uri.type}, not a key pair`);
    const objs = this.findObjects([...this.objectTemplate(P.CKO_PRIVATE_KEY), ...extra], 4);
    if (objs.length === 0) throw this.missingKey("private key");
    if (objs.length > 1)
      throw new TrustvolError("EUSAGE", `${objs.length} private keys on token ${describeToken(this.token)} match ${formatPkcs11Uri(this.uri)}`,
        "select one with object=<label> or id=<hex> in the URI");
    return objs[0]!;
  }

  missingKey(what: string): TrustvolError {
    return new TrustvolError("ENOKEY", `no ${what} matching ${redactUri(formatPkcs11Uri(this.uri))} on token ${describeToken(this.token)} (erased, or the token was re-initialised?)`,
      "the key cannot come back: open the volume with its recovery key (or another keyslot), then re-enroll a new token key");
  }

  /** Public key of the selected key pair: from the CKO_PUBLIC_KEY object, else from the certificate (systemd only needs the cert). */
  publicKey(u: Pkcs11Uri = this.uri): { key: KeyObject; id: Buffer; label: string } {
    const pubs = this.findObjects(this.objectTemplate(P.CKO_PUBLIC_KEY, u), 4);
    if (pubs.length === 1) {
      const o = pubs[0]!;
      const a = this.keyAttributes(o);
      if (a.keyType === "rsa") {
        const n = this.getAttr(o, P.CKA_MODULUS);
        const e = this.getAttr(o, P.CKA_PUBLIC_EXPONENT);
        return { key: createPublicKey({ key: { kty: "RSA", n: b64u(n), e: b64u(e) }, format: "jwk" }), id: a.id, label: a.label };
      }
      if (a.keyType === "ec") {
        const params = this.getAttr(o, P.CKA_EC_PARAMS);
        const point = unwrapEcPoint(this.getAttr(o, P.CKA_EC_POINT));
        const crv = params.equals(EC_PARAMS["ec-p256"]!) ? "P-256" : params.equals(EC_PARAMS["ec-p384"]!) ? "P-384" : undefined;
        if (!crv) throw new TrustvolError("EUNSUPPORTED", "EC key on an unsupported curve", "use P-256 or P-384");
        const len = (point.length - 1) / 2;
        if (point[0] !== 4 || !Number.isInteger(len)) throw new TrustvolError("ECORRUPT", "EC public point is not uncompressed");
        return {
          key: createPublicKey({ key: { kty: "EC", crv, x: b64u(point.subarray(1, 1 + len)), y: b64u(point.subarray(1 + len)) }, format: "jwk" }),
          id: a.id,
          label: a.label,
        };
      }
      throw new TrustvolError("EUNSUPPORTED", "token key is neither RSA nor EC");
    }
    const certs = this.findObjects([...this.objectTemplate(P.CKO_CERTIFICATE, u), { type: P.CKA_CERTIFICATE_TYPE, value: P.CKC_X_509 }], 4);
    if (certs.length === 1) {
      const der = this.getAttr(certs[0]!, P.CKA_VALUE);
      const c = new X509Certificate(der);
      let id: Buffer = Buffer.alloc(0);
      let label = "";
      try { id = this.getAttr(certs[0]!, P.CKA_ID); } catch { /* none */ }
      try { label = this.getAttr(certs[0]!, P.CKA_LABEL).toString("utf8"); } catch { /* none */ }
      return { key: c.publicKey, id, label };
    }
    if (pubs.length > 1 || certs.length > 1)
      throw new TrustvolError("EUSAGE", `several keys on token ${describeToken(this.token)} match ${formatPkcs11Uri(this.uri)}`, "select one with object=<label> or id=<hex>");
    throw this.missingKey("public key or certificate");
  }

  /** Decrypt on the token (RSA PKCS#1 v1.5 or OAEP). Returns a fresh buffer the caller wipes. */
  decrypt(key: Handle, data: Uint8Array, padding: RsaPadding): Buffer {
    const mech = rsaMechanism(padding);
    const out = Buffer.allocUnsafeSlow(Math.max(512, data.length));
    try {
      this.lib.C_DecryptInit(this.session, mech, key);
      const res = this.lib.C_Decrypt(this.session, Buffer.from(data), out);
      const r = Buffer.allocUnsafeSlow(res.length);
      res.copy(r);
      return r;
    } catch (e) {
      const rv = ckrOf(e);
      if (rv === P.CKR_USER_NOT_LOGGED_IN)
        throw new TrustvolError("EPOLICY", `token ${describeToken(this.token)} refused to decrypt: not logged in`, "give the token PIN");
      if (rv === P.CKR_ENCRYPTED_DATA_INVALID || rv === P.CKR_ENCRYPTED_DATA_LEN_RANGE)
        throw new TrustvolError("ENOKEY", `the token key ${describeToken(this.token)} cannot decrypt this blob (${ckrName(rv)}): it was sealed to a different key`,
          "the key may have been replaced; open the volume with its recovery key and re-enroll");
      if (rv === P.CKR_MECHANISM_INVALID || rv === P.CKR_MECHANISM_PARAM_INVALID || (padding !== "pkcs1" && rv === P.CKR_ARGUMENTS_BAD))
        throw new TrustvolError("EUNSUPPORTED", `token ${describeToken(this.token)} does not support ${padding} decryption (${ckrName(rv)})`,
          padding === "pkcs1" ? undefined : "seal with RSA PKCS#1 v1.5 or another OAEP hash");
      throw p11Error(e, `decryption on token ${describeToken(this.token)} failed`);
    } finally {
      wipe(out);
    }
  }

  /** Sign `data` on the token: RSA PKCS#1 v1.5 with SHA-256, or ECDSA over SHA-256 (DER-encoded signature). */
  sign(key: Handle, keyType: "rsa" | "ec", data: Uint8Array): Buffer {
    try {
      if (keyType === "rsa") {
        this.lib.C_SignInit(this.session, { mechanism: P.CKM_SHA256_RSA_PKCS }, key);
        return Buffer.from(this.lib.C_Sign(this.session, Buffer.from(data), Buffer.alloc(1024)));
      }
      const digest = createHash("sha256").update(data).digest();
      this.lib.C_SignInit(this.session, { mechanism: P.CKM_ECDSA }, key);
      const raw = Buffer.from(this.lib.C_Sign(this.session, digest, Buffer.alloc(256)));
      return ecdsaRawToDer(raw);
    } catch (e) {
      if (ckrOf(e) === P.CKR_USER_NOT_LOGGED_IN)
        throw new TrustvolError("EPOLICY", `token ${describeToken(this.token)} refused to sign: not logged in`, "give the token PIN");
      throw p11Error(e, `signing on token ${describeToken(this.token)} failed`);
    }
  }

  random(n: number): Buffer {
    try {
      return Buffer.from(this.lib.C_GenerateRandom(this.session, Buffer.alloc(n)));
    } catch (e) {
      throw p11Error(e, `token ${describeToken(this.token)} cannot generate random data`);
    }
  }
}

export type RsaPadding = "pkcs1" | "oaep-sha1" | "oaep-sha256";

export function rsaMechanism(padding: RsaPadding): Pkcs11js.Mechanism {
  if (padding === "pkcs1") return { mechanism: P.CKM_RSA_PKCS };
  const sha1 = padding === "oaep-sha1";
  return {
    mechanism: P.CKM_RSA_PKCS_OAEP,
    parameter: {
      type: P.CK_PARAMS_RSA_OAEP,
      hashAlg: sha1 ? P.CKM_SHA_1 : P.CKM_SHA256,
      mgf: sha1 ? P.CKG_MGF1_SHA1 : P.CKG_MGF1_SHA256,
      source: 1 /* CKZ_DATA_SPECIFIED */,
    } as Pkcs11js.RsaOAEP,
  };
}

export const b64u = (b: Buffer) => b.toString("base64url");

/** CKA_EC_POINT is a DER OCTET STRING wrapping the point (PKCS#11 v2.40); some modules return the raw point. */
export function unwrapEcPoint(v: Buffer): Buffer {
  if (v[0] === 0x04 && v.length >= 2) {
    let len = v[1]!;
    let off = 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      len = 0;
      for (let i = 0; i < n; i++) len = (len << 8) | v[2 + i]!;
      off = 2 + n;
    }
    if (off + len === v.length && v[off] === 0x04) return v.subarray(off);
  }
  return v;
}

/** r‖s (PKCS#11 CKM_ECDSA output) → DER SEQUENCE { INTEGER r, INTEGER s } (X.509 / TLS form). */
export function ecdsaRawToDer(raw: Buffer): Buffer {
  const half = raw.length / 2;
  const int = (b: Buffer) => {
    let i = 0;
    while (i < b.length - 1 && b[i] === 0) i++;
    let v: Buffer = b.subarray(i);
    if (v[0]! & 0x80) v = Buffer.concat([Buffer.from([0]), v]);
    return Buffer.concat([Buffer.from([0x02, v.length]), v]);
  };
  const body = Buffer.concat([int(raw.subarray(0, half)), int(raw.subarray(half))]);
  const lenBytes = body.length < 0x80 ? Buffer.from([body.length]) : Buffer.from([0x81, body.length]);
  return Buffer.concat([Buffer.from([0x30]), lenBytes, body]);
}

export function newKeyId(): Buffer {
  return randomBytesBuf(8);
}
