// X.509 certificates and PKCS#10 requests signed by a key that stays on the token: we build the to-be-signed DER with
// the @peculiar/asn1-* schemas, hand the bytes to a signer (C_Sign on the token), and assemble the result.
// (@peculiar/x509's generators need WebCrypto keys and a reflect-metadata polyfill; the schemas need neither.)
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import * as ax from "@peculiar/asn1-x509";
import * as acsr from "@peculiar/asn1-csr";
import { isIP } from "node:net";
import { randomBytes, type KeyObject } from "node:crypto";
import { usage } from "../../util/errors.js";

export type Signer = (tbs: Buffer) => Buffer;
export type SigKeyType = "rsa" | "ec";

const OID = {
  sha256WithRSA: "1.2.840.113549.1.1.11",
  ecdsaWithSHA256: "1.2.840.10045.4.3.2",
  extensionRequest: "1.2.840.113549.1.9.14",
  clientAuth: "1.3.6.1.5.5.7.3.2",
  serverAuth: "1.3.6.1.5.5.7.3.1",
};

const DN_OIDS: Record<string, { oid: string; printable?: boolean; ia5?: boolean }> = {
  CN: { oid: "2.5.4.3" },
  SN: { oid: "2.5.4.4" },
  SERIALNUMBER: { oid: "2.5.4.5", printable: true },
  C: { oid: "2.5.4.6", printable: true },
  L: { oid: "2.5.4.7" },
  ST: { oid: "2.5.4.8" },
  STREET: { oid: "2.5.4.9" },
  O: { oid: "2.5.4.10" },
  OU: { oid: "2.5.4.11" },
  TITLE: { oid: "2.5.4.12" },
  DC: { oid: "0.9.2342.19200300.100.1.25", ia5: true },
  UID: { oid: "0.9.2342.19200300.100.1.1" },
  EMAILADDRESS: { oid: "1.2.840.113549.1.9.1", ia5: true },
};

/** "CN=dev-1, O=Acme, C=DE" (or "/CN=dev-1/O=Acme") → Name, in the order written (first = most significant). */
export function parseDn(dn: string): ax.Name {
  const s = dn.trim();
  if (!s) throw usage("empty subject name", 'e.g. --subject "CN=device-0001,O=Example"');
  const parts: string[] = [];
  if (s.startsWith("/")) parts.push(...s.slice(1).split("/"));
  else {
    let cur = "";
    for (let i = 0; i < s.length; i++) {
      if (s[i] === "\\" && i + 1 < s.length) {
        cur += s[++i];
        continue;
      }
      if (s[i] === "," || s[i] === "+") {
        parts.push(cur);
        cur = "";
        continue;
      }
      cur += s[i];
    }
    parts.push(cur);
  }
  const rdns: ax.RelativeDistinguishedName[] = [];
  for (const p of parts) {
    const eq = p.indexOf("=");
    if (eq <= 0) throw usage(`bad subject component "${p.trim()}"`, 'use KEY=value pairs, e.g. "CN=device-0001,O=Example"');
    const key = p.slice(0, eq).trim().toUpperCase();
    const value = p.slice(eq + 1).trim();
    const def = DN_OIDS[key];
    if (!def) throw usage(`unknown subject attribute "${key}"`, `known: ${Object.keys(DN_OIDS).join(", ")}`);
    if (!value) throw usage(`subject attribute ${key} is empty`);
    if (def.printable && !/^[A-Za-z0-9 '()+,\-./:=?]*$/.test(value)) throw usage(`subject ${key} must be a PrintableString`);
    if (key === "C" && value.length !== 2) throw usage("subject C must be a two-letter country code");
    const v = def.printable ? new ax.AttributeValue({ printableString: value }) : def.ia5 ? new ax.AttributeValue({ ia5String: value }) : new ax.AttributeValue({ utf8String: value });
    rdns.push(new ax.RelativeDistinguishedName([new ax.AttributeTypeAndValue({ type: def.oid, value: v })]));
  }
  return new ax.Name(rdns);
}

export interface SanOptions {
  dns?: string[];
  ip?: string[];
  email?: string[];
  uri?: string[];
}

function sanNames(s: SanOptions): ax.GeneralName[] {
  const out: ax.GeneralName[] = [];
  for (const d of s.dns ?? []) {
    if (!/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(d)) throw usage(`bad DNS name "${d}"`);
    out.push(new ax.GeneralName({ dNSName: d }));
  }
  for (const ip of s.ip ?? []) {
    if (!isIP(ip)) throw usage(`bad IP address "${ip}"`);
    out.push(new ax.GeneralName({ iPAddress: ip }));
  }
  for (const e of s.email ?? []) {
    if (!/^[^@\s]+@[^@\s]+$/.test(e)) throw usage(`bad e-mail address "${e}"`);
    out.push(new ax.GeneralName({ rfc822Name: e }));
  }
  for (const u of s.uri ?? []) {
    if (!/^[A-Za-z][A-Za-z0-9+.-]*:\S+$/.test(u)) throw usage(`bad URI "${u}"`);
    out.push(new ax.GeneralName({ uniformResourceIdentifier: u }));
  }
  return out;
}

function ext(oid: string, critical: boolean, value: unknown): ax.Extension {
  return new ax.Extension({ extnID: oid, critical, extnValue: new OctetString(AsnConvert.serialize(value)) });
}

function deviceExtensions(keyType: SigKeyType, san: SanOptions, usages: ("clientAuth" | "serverAuth")[]): ax.Extension[] {
  const exts: ax.Extension[] = [];
  const names = sanNames(san);
  if (names.length) exts.push(ext(ax.id_ce_subjectAltName, false, new ax.SubjectAlternativeName(names)));
  let ku = ax.KeyUsageFlags.digitalSignature;
  if (keyType === "rsa") ku |= ax.KeyUsageFlags.keyEncipherment;
  exts.push(ext("2.5.29.15", true, new ax.KeyUsage(ku)));
  if (usages.length) exts.push(ext(ax.id_ce_extKeyUsage, false, new ax.ExtendedKeyUsage(usages.map((u) => OID[u]))));
  return exts;
}

function sigAlg(keyType: SigKeyType): ax.AlgorithmIdentifier {
  return keyType === "rsa"
    ? new ax.AlgorithmIdentifier({ algorithm: OID.sha256WithRSA, parameters: new Uint8Array([0x05, 0x00]).buffer })
    : new ax.AlgorithmIdentifier({ algorithm: OID.ecdsaWithSHA256 });
}

function spkiOf(pub: KeyObject): ax.SubjectPublicKeyInfo {
  const der = pub.export({ type: "spki", format: "der" });
  return AsnConvert.parse(der, ax.SubjectPublicKeyInfo);
}

export interface CsrOptions {
  subject: string;
  san?: SanOptions;
  /** Extended key usages to request (default clientAuth: a device identity for mutual TLS). */
  extendedKeyUsage?: ("clientAuth" | "serverAuth")[];
}

/** A PKCS#10 request for `pub`, signed by `sign` (the token). Returns DER. */
export function buildCsr(pub: KeyObject, keyType: SigKeyType, sign: Signer, o: CsrOptions): Buffer {
  const exts = deviceExtensions(keyType, o.san ?? {}, o.extendedKeyUsage ?? ["clientAuth"]);
  const attrs = new acsr.Attributes([
    new ax.Attribute({ type: OID.extensionRequest, values: [AsnConvert.serialize(new ax.Extensions(exts))] }),
  ]);
  const info = new acsr.CertificationRequestInfo({ version: 0, subject: parseDn(o.subject), subjectPKInfo: spkiOf(pub), attributes: attrs });
  const tbs = Buffer.from(AsnConvert.serialize(info));
  const sig = sign(tbs);
  const req = new acsr.CertificationRequest({ certificationRequestInfo: info, signatureAlgorithm: sigAlg(keyType), signature: toAb(sig) });
  return Buffer.from(AsnConvert.serialize(req));
}

export interface SelfSignedOptions {
  subject: string;
  days?: number;
  san?: SanOptions;
}

/** A self-signed certificate for an on-token key (what LmP puts next to its LUKS key, and what systemd 252 reads). */
export function buildSelfSignedCert(pub: KeyObject, keyType: SigKeyType, sign: Signer, o: SelfSignedOptions): Buffer {
  const name = parseDn(o.subject);
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x01; // positive, no leading zero
  const notBefore = new Date(Math.floor(Date.now() / 1000) * 1000 - 60_000);
  const notAfter = new Date(notBefore.getTime() + (o.days ?? 365 * 30) * 86_400_000);
  const tbs = new ax.TBSCertificate({
    version: 2,
    serialNumber: toAb(serial),
    signature: sigAlg(keyType),
    issuer: name,
    validity: new ax.Validity({ notBefore, notAfter }),
    subject: name,
    subjectPublicKeyInfo: spkiOf(pub),
    extensions: new ax.Extensions([
      ext("2.5.29.19", true, new ax.BasicConstraints({ cA: false })),
      ...deviceExtensions(keyType, o.san ?? {}, []),
    ]),
  });
  const tbsDer = Buffer.from(AsnConvert.serialize(tbs));
  const sig = sign(tbsDer);
  const cert = new ax.Certificate({ tbsCertificate: tbs, signatureAlgorithm: sigAlg(keyType), signatureValue: toAb(sig) });
  return Buffer.from(AsnConvert.serialize(cert));
}

/** DER subject / issuer / serial of a certificate, as PKCS#11 wants them in CKA_SUBJECT, CKA_ISSUER, CKA_SERIAL_NUMBER. */
export function certFields(der: Uint8Array): { subject: Buffer; issuer: Buffer; serial: Buffer } {
  const c = AsnConvert.parse(der, ax.Certificate);
  const serialBytes = Buffer.from(c.tbsCertificate.serialNumber);
  // CKA_SERIAL_NUMBER is the DER encoding of the INTEGER.
  const serial = Buffer.concat([Buffer.from([0x02, serialBytes.length]), serialBytes]);
  return {
    subject: Buffer.from(AsnConvert.serialize(c.tbsCertificate.subject)),
    issuer: Buffer.from(AsnConvert.serialize(c.tbsCertificate.issuer)),
    serial,
  };
}

export const toPem = (der: Uint8Array, label: "CERTIFICATE" | "CERTIFICATE REQUEST"): string =>
  `-----BEGIN ${label}-----\n${Buffer.from(der).toString("base64").replace(/(.{64})/g, "$1\n").replace(/\n$/, "")}\n-----END ${label}-----\n`;

/** PEM or DER → DER (first block of the given label). */
export function fromPem(data: Uint8Array | string, label: "CERTIFICATE" | "CERTIFICATE REQUEST"): Buffer {
  const s = typeof data === "string" ? data : Buffer.from(data).toString("latin1");
  const m = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`).exec(s);
  if (m) return Buffer.from(m[1]!.replace(/\s+/g, ""), "base64");
  if (typeof data !== "string" && data[0] === 0x30) return Buffer.from(data);
  throw usage(`not a PEM or DER ${label.toLowerCase()}`);
}

function toAb(b: Uint8Array): ArrayBuffer {
  const ab = new ArrayBuffer(b.length);
  new Uint8Array(ab).set(b);
  return ab;
}
