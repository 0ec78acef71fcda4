// The PKCS#11 trust source: a secret is encrypted to the token key's RSA public key (host side, no PIN needed) and
// decrypted on the token after login. Works with OP-TEE's libckteec (secure storage in RPMB), SoftHSM2, smart cards.
import { publicEncrypt, constants, type KeyObject } from "node:crypto";
import type { TrustSourceInfo, SealPolicy, SealedBlob } from "../types.js";
import { TrustvolError, unsupported, corrupt } from "../../util/errors.js";
import { wipe, constantTimeEqual } from "../../util/secret.js";
import type * as Pkcs11js from "pkcs11js";
import { pkcs11js } from "./pkcs11js.js";
import { openToken, type RsaPadding, type Pkcs11Session } from "./token.js";
import { parsePkcs11Uri, formatPkcs11Uri, redactUri, type Pkcs11Uri } from "./uri.js";
import type { PinSource } from "./pin.js";

export interface Pkcs11SourceOptions {
  /** pkcs11:token=...;object=... (pin-value refused; pin-source honoured). */
  uri: string;
  /** Explicit module (libckteec.so.0, libsofthsm2.so); default: the URI's module-path/-name or every p11-kit module. */
  modulePath?: string;
  /** Where the user PIN comes from when seal()/unseal() get none. */
  pin?: PinSource;
  /**
   * Padding for new seals: "pkcs1" (what systemd uses), "oaep" (OAEP-SHA-256, falling back to OAEP-SHA-1 when the
   * token only does SHA-1 — SoftHSM2), or a fixed "oaep-sha256" / "oaep-sha1". Default "oaep".
   */
  padding?: RsaPadding | "oaep";
}

const SOFTWARE_TOKEN = /softhsm|software|p11-kit-trust|nss/i;

export function encryptToPublicKey(pub: KeyObject, secret: Uint8Array, padding: RsaPadding): Buffer {
  if (pub.asymmetricKeyType !== "rsa") throw unsupported("sealing needs an RSA key on the token", "generate an RSA-2048 key (EC keys are for signing/identity)");
  const k = Math.ceil((pub.asymmetricKeyDetails?.modulusLength ?? 2048) / 8);
  const max = padding === "pkcs1" ? k - 11 : padding === "oaep-sha1" ? k - 42 : k - 66;
  if (secret.length === 0 || secret.length > max) throw new TrustvolError("EUSAGE", `secret of ${secret.length} bytes does not fit ${padding} under a ${k * 8}-bit key (max ${max})`);
  return padding === "pkcs1"
    ? publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_PADDING }, secret)
    : publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: padding === "oaep-sha1" ? "sha1" : "sha256" }, secret);
}

export class Pkcs11TrustSource {
  readonly kind = "pkcs11" as const;
  private readonly uri: Pkcs11Uri;
  constructor(private readonly opts: Pkcs11SourceOptions) {
    this.uri = parsePkcs11Uri(opts.uri);
    if (opts.padding && !["pkcs1", "oaep", "oaep-sha1", "oaep-sha256"].includes(opts.padding)) throw unsupported(`unknown padding ${opts.padding}`);
  }

  private open(uri: Pkcs11Uri = this.uri): Pkcs11Session {
    return openToken({ uri, ...(this.opts.modulePath ? { modulePath: this.opts.modulePath } : {}) });
  }

  async describe(): Promise<TrustSourceInfo> {
    const s = this.open();
    try {
      const t = s.token;
      const info = s.lib.C_GetInfo();
      const soft = SOFTWARE_TOKEN.test(`${t.manufacturer} ${t.model} ${info.libraryDescription}`);
      return {
        kind: "pkcs11",
        description: `PKCS#11 token '${t.label}' (${t.manufacturer} ${t.model}) via ${s.module.path}`,
        hardwareBacked: !soft,
        details: {
          label: t.label,
          manufacturer: t.manufacturer,
          model: t.model,
          serial: t.serial,
          slotId: t.slotId.toString(),
          module: s.module.path,
          library: info.libraryDescription.trim(),
          loginRequired: !!(t.flags & pkcs11js.CKF_LOGIN_REQUIRED),
          protectedAuthenticationPath: !!(t.flags & pkcs11js.CKF_PROTECTED_AUTHENTICATION_PATH),
          pinCountLow: !!(t.flags & pkcs11js.CKF_USER_PIN_COUNT_LOW),
          pinFinalTry: !!(t.flags & pkcs11js.CKF_USER_PIN_FINAL_TRY),
          pinLocked: !!(t.flags & pkcs11js.CKF_USER_PIN_LOCKED),
        },
      };
    } finally {
      s.close();
    }
  }

  async getRandom(n: number): Promise<Buffer> {
    const s = this.open();
    try {
      return s.random(n);
    } finally {
      s.close();
    }
  }

  /**
   * Encrypt `secret` to the token key. With a PIN (policy.pin or the configured source) the blob is test-decrypted
   * on the token before it is returned, so an enrollment never writes something the token cannot open.
   */
  async seal(secret: Uint8Array, policy?: SealPolicy): Promise<SealedBlob> {
    if (policy?.pcrs?.length || policy?.pcrValues?.size || policy?.pcrBank)
      throw unsupported("a PKCS#11 token cannot bind a secret to PCRs", "use the tpm2 trust source for measured-boot policies");
    const s = this.open();
    try {
      const pub = s.publicKey();
      let padding: RsaPadding = this.opts.padding === undefined || this.opts.padding === "oaep" ? "oaep-sha256" : this.opts.padding;
      const auto = this.opts.padding === undefined || this.opts.padding === "oaep";
      let data = encryptToPublicKey(pub.key, secret, padding);
      const pin = policy?.pin ?? this.opts.pin;
      if (pin || this.uri.pinSource) {
        s.login(pin);
        const key = s.findPrivateKey(pub.id.length ? [{ type: pkcs11js.CKA_ID, value: pub.id }] : []);
        let back: Buffer | undefined;
        try {
          back = s.decrypt(key, data, padding);
        } catch (e) {
          if (!(auto && e instanceof TrustvolError && e.code === "EUNSUPPORTED")) throw e;
          padding = "oaep-sha1";
          data = encryptToPublicKey(pub.key, secret, padding);
          back = s.decrypt(key, data, padding);
        }
        const ok = constantTimeEqual(back, secret);
        wipe(back);
        if (!ok) throw new TrustvolError("EDEVICE", `token '${s.token.label}' decrypted the test blob to something else`, "the public key and private key on the token do not match");
      }
      return {
        kind: "pkcs11",
        data,
        meta: {
          uri: formatPkcs11Uri(this.uri),
          padding,
          keyId: pub.id.toString("hex"),
          keyLabel: pub.label,
          token: s.token.label,
        },
      };
    } finally {
      s.close();
    }
  }

  async unseal(blob: SealedBlob, auth?: { pin?: Uint8Array }): Promise<Buffer> {
    if (blob.kind !== "pkcs11") throw corrupt(`sealed blob is for ${blob.kind}, not pkcs11`);
    const padding = (blob.meta.padding ?? "pkcs1") as RsaPadding;
    if (!["pkcs1", "oaep-sha1", "oaep-sha256"].includes(padding)) throw corrupt(`sealed blob names unknown padding ${String(padding)}`);
    const keyId = typeof blob.meta.keyId === "string" && /^([0-9a-f]{2})*$/.test(blob.meta.keyId) ? Buffer.from(blob.meta.keyId, "hex") : undefined;
    const s = this.open();
    try {
      s.login(auth?.pin ?? this.opts.pin);
      const extra = keyId?.length && !this.uri.id ? [{ type: pkcs11js.CKA_ID, value: keyId }] : [];
      const key = s.findPrivateKey(extra);
      return s.decrypt(key, blob.data, padding);
    } catch (e) {
      if (e instanceof TrustvolError) throw e;
      throw new TrustvolError("EDEVICE", `unsealing with ${redactUri(this.opts.uri)} failed: ${(e as Error).message}`);
    } finally {
      s.close();
    }
  }

  async close(): Promise<void> {
    /* sessions are per call */
  }
}
