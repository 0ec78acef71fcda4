// A RootHashSigner whose private key stays on a PKCS#11 token (OP-TEE's PKCS#11 TA via libckteec, a smart card,
// SoftHSM2 in tests). The token signs: RSA with CKM_SHA256_RSA_PKCS (PKCS#1 v1.5 over SHA-256, the token hashes),
// ECDSA with CKM_ECDSA over a SHA-256 digest we compute, the raw r‖s converted to the DER form CMS carries.
// The certificate comes from the token (CKO_CERTIFICATE with the key's CKA_ID) unless the caller gives one.
import { X509Certificate } from "node:crypto";
import type * as Pkcs11js from "pkcs11js";
import { pkcs11js } from "../trust/pkcs11/pkcs11js.js";
import { TrustvolError, usage } from "../util/errors.js";
import { openToken, type Pkcs11Session } from "../trust/pkcs11/token.js";
import { parsePkcs11Uri, formatPkcs11Uri, redactUri, type Pkcs11Uri } from "../trust/pkcs11/uri.js";
import { fromPem } from "../trust/pkcs11/x509.js";
import type { PinSource } from "../trust/pkcs11/pin.js";
import type { RootHashSigner } from "./sign.js";

const P = pkcs11js;

export interface Pkcs11RootHashSignerOptions {
  /** Key URI, e.g. pkcs11:token=lmp;object=verity (type=private/cert is accepted and ignored). */
  uri: string | Pkcs11Uri;
  /** Where the user PIN comes from (file, stdin, prompt, bytes); never argv or env. Omit for tokens without login. */
  pin?: PinSource;
  /** PKCS#11 module; else the URI's module-path/module-name, else every p11-kit registered module. */
  modulePath?: string;
  /** Signer certificate (PEM or DER); else read from the token next to the key (same CKA_ID). */
  certificate?: Uint8Array | string;
}

export interface Pkcs11RootHashSigner extends RootHashSigner {
  /** Key label and CKA_ID (hex) found on the token. */
  readonly keyLabel: string;
  readonly keyId: string;
  /** Log out and close the session (call when done signing). */
  close(): void;
}

const certDer = (c: Uint8Array | string): Buffer => fromPem(c, "CERTIFICATE");

/**
 * Open the token, log in and locate the private key and its certificate. The session stays open (logged in) until
 * close(): sign() may be called any number of times.
 */
export function pkcs11RootHashSigner(o: Pkcs11RootHashSignerOptions): Pkcs11RootHashSigner {
  const parsed = typeof o.uri === "string" ? parsePkcs11Uri(o.uri) : o.uri;
  if (parsed.type && parsed.type !== "private" && parsed.type !== "cert" && parsed.type !== "public")
    throw usage(`PKCS#11 URI selects type=${parsed.type}, not a signing key`, "use pkcs11:token=…;object=<key label>");
  const u: Pkcs11Uri = { ...parsed, type: undefined };
  const shown = redactUri(formatPkcs11Uri(u));
  const s: Pkcs11Session = openToken({ uri: u, ...(o.modulePath ? { modulePath: o.modulePath } : {}) });
  try {
    s.login(o.pin);
    const key = s.findPrivateKey();
    const a = s.keyAttributes(key);
    if (a.keyType === "other") throw new TrustvolError("EUNSUPPORTED", `the key ${shown} is neither RSA nor EC`, "use an RSA or EC (P-256/P-384) key");
    if (!s.getBool(key, P.CKA_SIGN)) throw new TrustvolError("EPOLICY", `the key ${shown} may not sign (CKA_SIGN is false)`, "generate a signing key");
    let der: Buffer;
    if (o.certificate !== undefined) der = certDer(o.certificate);
    else {
      const tmpl: Pkcs11js.Template = [{ type: P.CKA_CLASS, value: P.CKO_CERTIFICATE }, { type: P.CKA_CERTIFICATE_TYPE, value: P.CKC_X_509 }];
      if (a.id.length) tmpl.push({ type: P.CKA_ID, value: a.id });
      else if (a.label) tmpl.push({ type: P.CKA_LABEL, value: Buffer.from(a.label, "utf8") });
      const certs = s.findObjects(tmpl, 4);
      if (!certs.length)
        throw new TrustvolError("ENOENT", `no certificate next to the key ${shown} on token '${s.token.label}' (CKA_ID ${a.id.toString("hex") || "none"})`,
          "import one with the key's id (trustvol identity import-cert), or give it with --cert");
      if (certs.length > 1) throw usage(`${certs.length} certificates on token '${s.token.label}' share the key's CKA_ID`, "give the signer certificate with --cert");
      der = s.getAttr(certs[0]!, P.CKA_VALUE);
    }
    // The certificate must certify the on-token key: a mismatch would produce signatures nobody can verify.
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(der);
    } catch (e) {
      throw new TrustvolError("ECORRUPT", `signer certificate does not parse: ${(e as Error).message}`, "give an X.509 certificate (PEM or DER)");
    }
    const pub = s.publicKey(a.id.length ? { id: a.id } : u);
    const want = pub.key.export({ type: "spki", format: "der" });
    if (!want.equals(cert.publicKey.export({ type: "spki", format: "der" })))
      throw usage(`the certificate (${cert.subject.replace(/\n/g, ", ")}) is not for the key ${shown}`, "give the certificate issued for this token key");
    const keyType = a.keyType;
    let closed = false;
    return {
      certificate: der,
      algorithm: keyType === "rsa" ? "rsa" : "ecdsa",
      keyLabel: a.label,
      keyId: a.id.toString("hex"),
      async sign(data: Uint8Array): Promise<Uint8Array> {
        if (closed) throw new TrustvolError("EINTERNAL", "PKCS#11 root hash signer used after close()");
        // Pkcs11Session.sign: CKM_SHA256_RSA_PKCS for RSA; for EC, CKM_ECDSA over SHA-256(data) and r‖s → DER.
        return s.sign(key, keyType, data);
      },
      close() {
        if (closed) return;
        closed = true;
        try { s.lib.C_Logout(s.session); } catch { /* not logged in */ }
        s.close();
      },
    };
  } catch (e) {
    s.close();
    throw e;
  }
}
