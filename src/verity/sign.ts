// Root hash signatures for dm-verity: detached PKCS#7/CMS SignedData over the root hash *as lower-case hex text*.
//
// Spec: the kernel's dm-verity target (drivers/md/dm-verity-target.c, verity_ctr) passes the table's root digest
// argument argv[8] — the hex string, strlen() bytes, no newline — to verity_verify_root_hash()
// (drivers/md/dm-verity-verify-sig.c), which calls verify_pkcs7_signature(root_hash_hex, len, sig, sig_len,
// <builtin|secondary|platform|.dm-verity keyring>, VERIFYING_UNSPECIFIED_SIGNATURE). The signature comes from a
// `user` key named by the table option `root_hash_sig_key_desc` (veritysetup --root-hash-signature loads it).
// The kernel PKCS#7 parser (crypto/asymmetric_keys/pkcs7_parser.c) takes SignedData v1 (issuerAndSerialNumber) or
// v3 (subjectKeyIdentifier), content type id-data, and rejects embedded content when detached data is supplied; signed
// attributes are optional (if present: contentType + messageDigest). RSA is rsaEncryption (PKCS#1 v1.5); ECDSA
// (ecdsa-with-SHA*) needs a newer kernel. We write what `openssl smime -sign -binary -noattr -outform DER` writes.
import { createHash, createPrivateKey, sign as nodeSign, verify as nodeVerify, X509Certificate, type KeyObject } from "node:crypto";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import {
  ContentInfo,
  SignedData,
  SignerInfo,
  SignerInfos,
  SignerIdentifier,
  IssuerAndSerialNumber,
  EncapsulatedContentInfo,
  DigestAlgorithmIdentifiers,
  CertificateSet,
  CertificateChoices,
  Attribute,
  id_signedData,
  id_data,
} from "@peculiar/asn1-cms";
import { AlgorithmIdentifier, Certificate, SubjectKeyIdentifier, id_ce_subjectKeyIdentifier } from "@peculiar/asn1-x509";
import { TrustvolError, corrupt, usage } from "../util/errors.js";

export interface RootHashSigner {
  /** Signer certificate, DER. */
  certificate: Uint8Array;
  /** Sign data with SHA-256: RSA PKCS#1 v1.5, or ECDSA with a DER (X9.62) signature. A PKCS#11 token plugs in here. */
  sign(data: Uint8Array): Promise<Uint8Array>;
  algorithm: "rsa" | "ecdsa";
}

const OID = {
  sha1: "1.3.14.3.2.26",
  sha256: "2.16.840.1.101.3.4.2.1",
  sha384: "2.16.840.1.101.3.4.2.2",
  sha512: "2.16.840.1.101.3.4.2.3",
  sha224: "2.16.840.1.101.3.4.2.4",
  rsaEncryption: "1.2.840.113549.1.1.1",
  sha1WithRSA: "1.2.840.113549.1.1.5",
  sha256WithRSA: "1.2.840.113549.1.1.11",
  sha384WithRSA: "1.2.840.113549.1.1.12",
  sha512WithRSA: "1.2.840.113549.1.1.13",
  ecdsaSha256: "1.2.840.10045.4.3.2",
  ecdsaSha384: "1.2.840.10045.4.3.3",
  ecdsaSha512: "1.2.840.10045.4.3.4",
  contentType: "1.2.840.113549.1.9.3",
  messageDigest: "1.2.840.113549.1.9.4",
} as const;
const DIGEST_BY_OID: Record<string, string> = { [OID.sha1]: "sha1", [OID.sha256]: "sha256", [OID.sha384]: "sha384", [OID.sha512]: "sha512", [OID.sha224]: "sha224" };
const SIG_ALGS = new Set<string>([OID.rsaEncryption, OID.sha1WithRSA, OID.sha256WithRSA, OID.sha384WithRSA, OID.sha512WithRSA, OID.ecdsaSha256, OID.ecdsaSha384, OID.ecdsaSha512]);

/** The exact bytes the kernel verifies: the root hash as lower-case hex, no newline. */
export function rootHashSignedContent(rootHashHex: string): Buffer {
  const s = rootHashHex.trim();
  if (!/^[0-9a-fA-F]+$/.test(s) || s.length % 2 || s.length < 40 || s.length > 128)
    throw usage(`verity: "${s.slice(0, 140)}" is not a root hash`, "give the root hash as hex digits");
  return Buffer.from(s.toLowerCase(), "latin1");
}

function toDer(cert: Uint8Array | string): Buffer {
  if (typeof cert !== "string") return Buffer.from(cert);
  const m = /-----BEGIN CERTIFICATE-----([\s\S]+?)-----END CERTIFICATE-----/.exec(cert);
  if (!m) throw usage("verity: not a PEM certificate");
  return Buffer.from(m[1]!.replace(/\s+/g, ""), "base64");
}

function parseCert(der: Uint8Array): Certificate {
  try {
    return AsnConvert.parse(der, Certificate);
  } catch (e) {
    throw corrupt(`verity: cannot parse certificate: ${(e as Error).message}`, "give an X.509 certificate (DER or PEM)");
  }
}

/** Software signer from a PEM (or DER PKCS#8) private key and its certificate, through node:crypto. */
export function pemPrivateKeySigner(privateKey: string | Buffer | KeyObject, certificate: Uint8Array | string): RootHashSigner {
  const key = typeof privateKey === "object" && "asymmetricKeyType" in privateKey ? privateKey : createPrivateKey(privateKey as string | Buffer);
  const kt = key.asymmetricKeyType;
  if (kt !== "rsa" && kt !== "ec") throw usage(`verity: ${kt ?? "unknown"} keys cannot sign root hashes`, "use an RSA or EC key");
  const certDer = toDer(certificate);
  const pub = new X509Certificate(certDer).publicKey;
  const probe = Buffer.from("trustvol key/certificate match");
  const probeSig = nodeSign("sha256", probe, key);
  if (!nodeVerify("sha256", probe, pub, probeSig)) throw usage("verity: the private key does not belong to the certificate");
  return {
    certificate: certDer,
    algorithm: kt === "rsa" ? "rsa" : "ecdsa",
    async sign(data) {
      return nodeSign("sha256", data, key); // RSA: PKCS#1 v1.5; EC: DER-encoded (r, s)
    },
  };
}

export interface SignRootHashOptions {
  /** Put the signer certificate into the SignedData (default true; false = `-nocerts`, the key must be in the keyring). */
  includeCertificate?: boolean;
}

/** Detached PKCS#7 SignedData (DER) over the root hash hex, as the kernel takes through root_hash_sig_key_desc. */
export async function signRootHash(rootHashHex: string, signer: RootHashSigner, opts: SignRootHashOptions = {}): Promise<Buffer> {
  const content = rootHashSignedContent(rootHashHex);
  const cert = parseCert(signer.certificate);
  const raw = await signer.sign(content);
  const sha256 = new AlgorithmIdentifier({ algorithm: OID.sha256 });
  const sigAlg =
    signer.algorithm === "rsa"
      ? new AlgorithmIdentifier({ algorithm: OID.rsaEncryption, parameters: null })
      : new AlgorithmIdentifier({ algorithm: OID.ecdsaSha256 });
  const signerInfo = new SignerInfo({
    version: 1,
    sid: new SignerIdentifier({
      issuerAndSerialNumber: new IssuerAndSerialNumber({ issuer: cert.tbsCertificate.issuer, serialNumber: cert.tbsCertificate.serialNumber }),
    }),
    digestAlgorithm: sha256,
    signatureAlgorithm: sigAlg,
    signature: new OctetString(raw),
  });
  const sd = new SignedData({
    version: 1,
    digestAlgorithms: new DigestAlgorithmIdentifiers([sha256]),
    encapContentInfo: new EncapsulatedContentInfo({ eContentType: id_data }),
    signerInfos: new SignerInfos([signerInfo]),
  });
  if (opts.includeCertificate ?? true) sd.certificates = new CertificateSet([new CertificateChoices({ certificate: cert })]);
  const ci = new ContentInfo({ contentType: id_signedData, content: AsnConvert.serialize(sd) });
  return Buffer.from(AsnConvert.serialize(ci));
}

function serialKey(b: ArrayBuffer): string {
  const u = Buffer.from(b);
  let i = 0;
  while (i < u.length - 1 && u[i] === 0) i++;
  return u.subarray(i).toString("hex");
}

interface Trusted {
  der: Buffer;
  issuer: Buffer;
  serial: string;
  skid: Buffer | undefined;
  key: KeyObject;
  subject: string;
}

function trustedFrom(der: Buffer): Trusted {
  const c = parseCert(der);
  let skid: Buffer | undefined;
  for (const ext of c.tbsCertificate.extensions ?? [])
    if (ext.extnID === id_ce_subjectKeyIdentifier) skid = Buffer.from(AsnConvert.parse(ext.extnValue, SubjectKeyIdentifier).buffer);
  const x = new X509Certificate(der);
  return {
    der,
    issuer: Buffer.from(AsnConvert.serialize(c.tbsCertificate.issuer)),
    serial: serialKey(c.tbsCertificate.serialNumber),
    skid,
    key: x.publicKey,
    subject: x.subject.replace(/\n/g, ", "),
  };
}

/** The signed attributes as the signature covers them: their DER with the [0] IMPLICIT tag read as SET OF (RFC 5652 §5.4). */
function signedAttrsDer(si: SignerInfo): Buffer {
  if (si.signedAttrsRaw) {
    const raw = Buffer.from(si.signedAttrsRaw);
    raw[0] = 0x31;
    return raw;
  }
  const inner = Buffer.concat((si.signedAttrs ?? []).map((a) => Buffer.from(AsnConvert.serialize(a))));
  const len = inner.length;
  const hdr = len < 0x80 ? Buffer.from([0x31, len]) : len < 0x100 ? Buffer.from([0x31, 0x81, len]) : Buffer.from([0x31, 0x82, len >> 8, len & 0xff]);
  return Buffer.concat([hdr, inner]);
}

/**
 * Check a detached PKCS#7 root hash signature against trusted certificates (DER or PEM), the way the kernel does:
 * the signer (issuer+serial or SKID) must be one of trustedCerts and its signature must cover the root hash hex.
 * Throws ECORRUPT (unparseable / does not verify) or EPOLICY (signed by a key that is not trusted).
 */
export async function verifyRootHashSignature(rootHashHex: string, sig: Uint8Array, trustedCerts: Array<Uint8Array | string>): Promise<{ signer: string }> {
  const content = rootHashSignedContent(rootHashHex);
  if (!trustedCerts.length) throw usage("verity: no trusted certificate given to check the root hash signature against");
  const trusted = trustedCerts.map((c) => trustedFrom(toDer(c)));
  let sd: SignedData;
  try {
    const ci = AsnConvert.parse(sig, ContentInfo);
    if (ci.contentType !== id_signedData) throw new Error(`content type ${ci.contentType} is not signedData`);
    sd = AsnConvert.parse(ci.content, SignedData);
  } catch (e) {
    throw corrupt(`verity: root hash signature is not a PKCS#7 SignedData (${(e as Error).message})`, "give the DER file made by verity sign or openssl smime -sign -binary -outform DER");
  }
  if (sd.version !== 1 && sd.version !== 3) throw corrupt(`verity: unsupported SignedData version ${sd.version}`);
  if (sd.encapContentInfo.eContentType !== id_data) throw corrupt(`verity: signed content type ${sd.encapContentInfo.eContentType} is not id-data`);
  if (sd.encapContentInfo.eContent) throw corrupt("verity: root hash signature embeds its content; the kernel needs a detached signature", "sign with -binary and without -nodetach");
  if (!sd.signerInfos.length) throw corrupt("verity: root hash signature has no signer");
  let sawTrusted = false;
  for (const si of sd.signerInfos) {
    let cand: Trusted[];
    if (si.sid.issuerAndSerialNumber) {
      const iss = Buffer.from(AsnConvert.serialize(si.sid.issuerAndSerialNumber.issuer));
      const ser = serialKey(si.sid.issuerAndSerialNumber.serialNumber);
      cand = trusted.filter((t) => t.issuer.equals(iss) && t.serial === ser);
    } else if (si.sid.subjectKeyIdentifier) {
      const skid = Buffer.from(si.sid.subjectKeyIdentifier.buffer);
      cand = trusted.filter((t) => t.skid?.equals(skid));
    } else cand = [];
    if (!cand.length) continue;
    sawTrusted = true;
    const digestAlg = DIGEST_BY_OID[si.digestAlgorithm.algorithm];
    if (!digestAlg) throw corrupt(`verity: unsupported digest algorithm ${si.digestAlgorithm.algorithm} in root hash signature`);
    if (!SIG_ALGS.has(si.signatureAlgorithm.algorithm)) throw corrupt(`verity: unsupported signature algorithm ${si.signatureAlgorithm.algorithm} in root hash signature`);
    let signed: Buffer = content;
    if (si.signedAttrs && si.signedAttrs.length) {
      const ct = si.signedAttrs.find((a) => a.attrType === OID.contentType);
      const md = si.signedAttrs.find((a) => a.attrType === OID.messageDigest);
      if (!ct || !md) throw corrupt("verity: root hash signature lacks the contentType or messageDigest signed attribute");
      const mdVal = AsnConvert.parse(md.attrValues[0]!, OctetString);
      if (!Buffer.from(mdVal.buffer).equals(createHash(digestAlg).update(content).digest())) continue; // other root hash
      signed = signedAttrsDer(si);
    }
    for (const t of cand) {
      if (nodeVerify(digestAlg, signed, t.key, Buffer.from(si.signature.buffer))) return { signer: t.subject };
    }
  }
  if (!sawTrusted)
    throw new TrustvolError("EPOLICY", "verity: root hash signature is not from a trusted certificate", "add the signer's certificate to the trusted set (the kernel's keyring)");
  throw corrupt(`verity: root hash signature does not match root hash ${content.toString("latin1")}`, "wrong root hash, or the signature belongs to another image");
}
