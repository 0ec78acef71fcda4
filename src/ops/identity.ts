// Device identity on a PKCS#11 token (seed 003: OP-TEE's PKCS#11 TA keeps the private key in the secure world):
//   create      → key pair generated on the token (sensitive, never extractable)
//   csr         → PKCS#10 request signed on the token (subject / SANs from options)
//   import-cert → the CA-signed certificate stored on the token next to the key (same CKA_ID and label)
//   show        → key attributes + certificate summary
// The private key never leaves the token; TLS clients use it through pkcs11:token=…;object=…;type=private.
import { X509Certificate, createHash } from "node:crypto";
import type * as Pkcs11js from "pkcs11js";
import { pkcs11js } from "../trust/pkcs11/pkcs11js.js";
import { TrustvolError } from "../util/errors.js";
import { openToken, type KeyAlgorithm, type KeyAttributes } from "../trust/pkcs11/token.js";
import { generateKeyPair, importCertificate } from "../trust/pkcs11/setup.js";
import { parsePkcs11Uri, formatPkcs11Uri, type Pkcs11Uri } from "../trust/pkcs11/uri.js";
import { buildCsr, fromPem, toPem, type SanOptions } from "../trust/pkcs11/x509.js";
import type { PinSource } from "../trust/pkcs11/pin.js";

export interface IdentityTarget {
  /** Token (and optionally object) URI, e.g. pkcs11:token=lmp;object=device */
  uri: string;
  modulePath?: string;
  pin?: PinSource;
}

const DEFAULT_LABEL = "device";

function keyUri(uri: string, label?: string): { u: Pkcs11Uri; label: string } {
  const u = parsePkcs11Uri(uri);
  const l = label ?? u.object ?? DEFAULT_LABEL;
  return { u: { ...u, object: l, type: undefined } as Pkcs11Uri, label: l };
}

function open(t: IdentityTarget, u: Pkcs11Uri, rw = false) {
  return openToken({ uri: u, readWrite: rw, ...(t.modulePath ? { modulePath: t.modulePath } : {}) });
}

export interface CreateIdentityOptions extends IdentityTarget {
  algorithm?: KeyAlgorithm;
  label?: string;
  id?: Buffer;
}

export interface IdentityKeyInfo {
  /** URI of the private key, for TLS stacks: pkcs11:token=…;object=…;type=private */
  keyUri: string;
  label: string;
  id: string;
  keyType: "rsa" | "ec";
  attributes: KeyAttributes;
  /** SHA-256 of the SubjectPublicKeyInfo (hex). */
  publicKeySha256: string;
}

/** Generate the device key pair on the token. Refuses if a key with that label exists. */
export async function createIdentity(o: CreateIdentityOptions): Promise<IdentityKeyInfo> {
  const { u, label } = keyUri(o.uri, o.label);
  const s = open(o, { ...u, object: undefined } as Pkcs11Uri, true);
  try {
    s.login(o.pin);
    const have = s.findObjects([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: Buffer.from(label, "utf8") }], 2);
    if (have.length)
      throw new TrustvolError("EBUSY", `token '${s.token.label}' already has a key labelled "${label}"`, "use `identity show`, or choose another --label");
    const k = generateKeyPair(s, { algorithm: o.algorithm ?? "ec-p256", label, ...(o.id ? { id: o.id } : {}) });
    const pub = s.publicKey({ id: k.id });
    return {
      keyUri: formatPkcs11Uri({ token: s.token.label, object: label, type: "private" }),
      label,
      id: k.id.toString("hex"),
      keyType: k.keyType,
      attributes: s.keyAttributes(k.privateKey),
      publicKeySha256: createHash("sha256").update(pub.key.export({ type: "spki", format: "der" })).digest("hex"),
    };
  } finally {
    s.close();
  }
}

export interface CsrOptionsIn extends IdentityTarget {
  label?: string;
  subject: string;
  san?: SanOptions;
  extendedKeyUsage?: ("clientAuth" | "serverAuth")[];
}

type Session = ReturnType<typeof openToken>;
type IdentityKey = { s: Session; key: ReturnType<Session["findPrivateKey"]>; a: KeyAttributes & { keyType: "rsa" | "ec" }; pub: ReturnType<Session["publicKey"]>; label: string };

/** Log in, find the identity's private key (RSA or EC) and its public half, run fn, close the session. */
async function withIdentityKey<T>(o: IdentityTarget & { label?: string }, rw: boolean, fn: (k: IdentityKey) => Promise<T> | T): Promise<T> {
  const { u, label } = keyUri(o.uri, o.label);
  const s = open(o, u, rw);
  try {
    s.login(o.pin);
    const key = s.findPrivateKey();
    const a = s.keyAttributes(key);
    if (a.keyType === "other") throw new TrustvolError("EUNSUPPORTED", "identity key is neither RSA nor EC");
    const pub = s.publicKey(a.id.length ? { id: a.id } : u);
    return await fn({ s, key, a: a as IdentityKey["a"], pub, label });
  } finally {
    s.close();
  }
}

/** PKCS#10 request for the on-token key, signed by the token. Returns PEM. */
export async function identityCsr(o: CsrOptionsIn): Promise<string> {
  return withIdentityKey(o, false, ({ s, key, a, pub }) => {
    const der = buildCsr(pub.key, a.keyType, (tbs) => s.sign(key, a.keyType, tbs), {
      subject: o.subject,
      ...(o.san ? { san: o.san } : {}),
      ...(o.extendedKeyUsage ? { extendedKeyUsage: o.extendedKeyUsage } : {}),
    });
    return toPem(der, "CERTIFICATE REQUEST");
  });
}

export interface ImportCertOptions extends IdentityTarget {
  label?: string;
  /** PEM or DER certificate issued for the on-token key. */
  certificate: Uint8Array | string;
  replace?: boolean;
}

/** Store the CA-signed certificate on the token, after checking it certifies the on-token key. */
export async function identityImportCert(o: ImportCertOptions): Promise<{ subject: string; issuer: string; notAfter: string }> {
  const der = fromPem(o.certificate, "CERTIFICATE");
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(der);
  } catch (e) {
    throw new TrustvolError("ECORRUPT", `certificate does not parse: ${(e as Error).message}`);
  }
  return withIdentityKey(o, true, ({ s, a, pub, label }) => {
    const want = pub.key.export({ type: "spki", format: "der" });
    const have = cert.publicKey.export({ type: "spki", format: "der" });
    if (!want.equals(have))
      throw new TrustvolError("EUSAGE", `the certificate (${cert.subject.replace(/\n/g, ", ")}) is not for the key "${label}" on token '${s.token.label}'`,
        "import the certificate issued for this device's CSR");
    importCertificate(s, der, { id: a.id, label, replace: o.replace ?? true });
    return { subject: cert.subject.replace(/\n/g, ", "), issuer: cert.issuer.replace(/\n/g, ", "), notAfter: cert.validTo };
  });
}

export interface IdentityShow extends IdentityKeyInfo {
  token: { label: string; manufacturer: string; model: string; serial: string };
  certificate?: { subject: string; issuer: string; notBefore: string; notAfter: string; serial: string; selfSigned: boolean; pem: string };
}

/** Key attributes and certificate of the identity (login needed to see a private key on most tokens). */
export async function identityShow(o: IdentityTarget & { label?: string }): Promise<IdentityShow> {
  return withIdentityKey(o, false, ({ s, a, pub, label }) => {
    const out: IdentityShow = {
      keyUri: formatPkcs11Uri({ token: s.token.label, object: label, type: "private" }),
      label,
      id: a.id.toString("hex"),
      keyType: a.keyType,
      attributes: a,
      publicKeySha256: createHash("sha256").update(pub.key.export({ type: "spki", format: "der" })).digest("hex"),
      token: { label: s.token.label, manufacturer: s.token.manufacturer, model: s.token.model, serial: s.token.serial },
    };
    const certs = s.findObjects([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE }, ...(a.id.length ? [{ type: pkcs11js.CKA_ID, value: a.id }] : [])], 2);
    if (certs.length) {
      const c = new X509Certificate(s.getAttr(certs[0]!, pkcs11js.CKA_VALUE));
      out.certificate = {
        subject: c.subject.replace(/\n/g, ", "),
        issuer: c.issuer.replace(/\n/g, ", "),
        notBefore: c.validFrom,
        notAfter: c.validTo,
        serial: c.serialNumber,
        selfSigned: c.subject === c.issuer && c.verify(c.publicKey),
        pem: c.toString(),
      };
    }
    return out;
  });
}
