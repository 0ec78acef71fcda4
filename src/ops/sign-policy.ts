// `trustvol tpm2 sign-policy`: the job of `systemd-measure sign`. Predict PCR 11 as systemd-stub measures a unified
// kernel image (each section's name with its NUL, then its contents, in systemd's section order) and each boot phase
// word after it, then sign the PolicyPCR digest of every (phase, bank) with the vendor's RSA key. Output is systemd's
// tpm2-pcr-signature.json: {"<bank>":[{"pcrs":[11],"pkfp":hex,"pol":hex,"sig":base64},…],…}.
import { createHash, createPrivateKey, createPublicKey, sign, type KeyObject } from "node:crypto";
import { TrustvolError } from "../util/errors.js";
import { HASH_SIZE, type HashName } from "../trust/tpm2/constants.js";
import { extendPolicyPCR, pcrCompositeDigest, predictPcr } from "../trust/tpm2/policy.js";
import { decodePcrSignatureJson } from "../tokens/systemd-tpm2.js";
import type { PinSource } from "../trust/pkcs11/pin.js";

/** PCR systemd-stub measures the UKI into. */
export const PCR_KERNEL_BOOT = 11;

/** The sections systemd-stub (257) measures, in measuring order (.pcrsig is never measured). */
export const UKI_MEASURED_SECTIONS = [".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey", ".profile", ".dtbauto", ".hwids"] as const;
export type UkiSection = (typeof UKI_MEASURED_SECTIONS)[number];

/** systemd-measure's phases when none are given: from entering the initrd to the start of shutdown. */
export const DEFAULT_PHASES = ["enter-initrd", "enter-initrd:leave-initrd", "enter-initrd:leave-initrd:sysinit", "enter-initrd:leave-initrd:sysinit:ready"];
export const ALL_BANKS: HashName[] = ["sha1", "sha256", "sha384", "sha512"];

/** "a::b:" → "a:b" (systemd-measure normalises phase expressions so). */
export function normalizePhase(p: string): string {
  return p.split(":").filter(Boolean).join(":");
}

/**
 * A PE image's SizeOfImage, when `b` is one: systemd-stub measures VirtualSize bytes of .linux, zero-padded past the
 * file's end, so the prediction pads a kernel that is shorter than its image size (systemd-measure does since 258;
 * 257's does not, which is why `linuxPadding: false` exists). Undefined for anything else.
 */
export function peSizeOfImage(b: Buffer): number | undefined {
  // the checks of systemd's pe_load_headers: a file it would not parse gets no padding from systemd-measure either
  if (b.length < 64 || b.readUInt16LE(0) !== 0x5a4d) return undefined;
  const pe = b.readUInt32LE(0x3c);
  if (pe + 24 > b.length || b.readUInt32LE(pe) !== 0x00004550) return undefined;
  const optSize = b.readUInt16LE(pe + 20);
  const opt = pe + 24; // after "PE\0\0" and the 20-byte COFF header
  if (optSize < 2 || opt + optSize > b.length) return undefined;
  const magic = b.readUInt16LE(opt);
  if (magic !== 0x10b && magic !== 0x20b) return undefined;
  const [nRva, dataDir] = magic === 0x20b ? [108, 112] : [92, 96];
  if (optSize < nRva + 4 || optSize !== dataDir + 8 * b.readUInt32LE(opt + nRva)) return undefined;
  return b.readUInt32LE(opt + 56); // SizeOfImage: the same offset in PE32 and PE32+
}

/** The PCR 11 value after the UKI sections (empty ones skipped, as the stub does) and a phase's words. */
export function predictPcr11(bank: HashName, sections: ReadonlyMap<UkiSection, Buffer>, phase: string, linuxPadding = true): Buffer {
  const h = (...parts: Uint8Array[]) => {
    const c = createHash(bank);
    for (const p of parts) c.update(p);
    return c.digest();
  };
  const events: Buffer[] = [];
  for (const name of UKI_MEASURED_SECTIONS) {
    const data = sections.get(name);
    if (!data?.length) continue;
    const size = name === ".linux" && linuxPadding ? peSizeOfImage(data) : undefined;
    const pad = size !== undefined && size > data.length ? Buffer.alloc(size - data.length) : Buffer.alloc(0);
    events.push(h(Buffer.from(`${name}\0`, "latin1")), h(data, pad));
  }
  for (const word of phase.split(":").filter(Boolean)) events.push(h(Buffer.from(word, "utf8")));
  return predictPcr(bank, events);
}

/** Who signs: a PEM key in memory, or a key that never leaves a PKCS#11 token. */
export interface PolicySigner {
  publicKey: KeyObject;
  /** Banks it can sign for (the PKCS#11 mechanism hashes with SHA-256 only). */
  banks?: HashName[];
  /** RSASSA-PKCS1-v1_5 over H_bank(data). */
  sign(bank: HashName, data: Buffer): Buffer;
}

export interface SignPolicyOptions {
  sections: ReadonlyMap<UkiSection, Buffer>;
  /** PEM private key (RSA). Its bytes are not kept. Either this or `signer`. */
  privateKeyPem?: Buffer;
  signer?: PolicySigner;
  /** PEM public key to fingerprint; must match the private key. Default: derived from it. */
  publicKeyPem?: Buffer;
  banks?: HashName[];
  phases?: string[];
  /** An existing signature JSON to append to (systemd-measure --append). */
  append?: string | Buffer;
  /** Zero-pad a PE kernel to its SizeOfImage as the stub measures it (default); false = systemd-measure 257's result. */
  linuxPadding?: boolean;
}

function rsaPrivateKey(pem: Buffer): KeyObject {
  let k: KeyObject;
  try {
    k = createPrivateKey({ key: pem, format: "pem" });
  } catch {
    throw new TrustvolError("EUSAGE", "the private key is not a PEM private key (an encrypted one needs its passphrase removed first)", "pass the vendor's PEM signing key with --private-key");
  }
  if (k.asymmetricKeyType !== "rsa") throw new TrustvolError("EUNSUPPORTED", `signing PCR policies with ${k.asymmetricKeyType} keys is not supported`, "use an RSA key (systemd's tpm2_pubkey tokens trustvol unlocks are RSA)");
  return k;
}

function pemSigner(pem: Buffer | undefined): PolicySigner {
  if (!pem) throw new TrustvolError("EUSAGE", "no signing key", "pass --private-key FILE or a pkcs11: URI");
  const key = rsaPrivateKey(pem);
  return { publicKey: createPublicKey(key), sign: (bank, data) => sign(bank, data, key) };
}

/**
 * A signer whose RSA key stays on a PKCS#11 token (CKM_SHA256_RSA_PKCS: the sha256 bank only). The session stays
 * logged in until close().
 */
export async function pkcs11PolicySigner(o: { uri: string; pin?: PinSource; modulePath?: string }): Promise<PolicySigner & { close(): void }> {
  const { openToken } = await import("../trust/pkcs11/token.js");
  const { parsePkcs11Uri } = await import("../trust/pkcs11/uri.js");
  const u = { ...parsePkcs11Uri(o.uri), type: undefined };
  const s = openToken({ uri: u, ...(o.modulePath ? { modulePath: o.modulePath } : {}) });
  try {
    s.login(o.pin);
    const key = s.findPrivateKey();
    const a = s.keyAttributes(key);
    if (a.keyType !== "rsa") throw new TrustvolError("EUNSUPPORTED", "signing PCR policies needs an RSA key on the token", "generate an RSA key (trustvol pkcs11 keygen)");
    const pub = s.publicKey(a.id.length ? { ...u, id: a.id } : u).key;
    return {
      publicKey: pub,
      banks: ["sha256"],
      sign: (bank, data) => {
        if (bank !== "sha256") throw new TrustvolError("EUNSUPPORTED", `a PKCS#11 key signs for the sha256 bank only, not ${bank}`);
        return s.sign(key, "rsa", data);
      },
      close: () => s.close(),
    };
  } catch (e) {
    s.close();
    throw e;
  }
}

/** The signature JSON, compact, as systemd-measure prints it (no trailing newline). */
export function signPcrPolicy(o: SignPolicyOptions): string {
  if (!o.sections.get(".linux")?.length) throw new TrustvolError("EUSAGE", "--linux is required (the kernel image systemd-stub boots)", "pass the kernel with --linux and the other UKI sections it carries");
  const signer = o.signer ?? pemSigner(o.privateKeyPem);
  const pub = signer.publicKey;
  if (o.publicKeyPem) {
    let given: KeyObject;
    try {
      given = createPublicKey({ key: o.publicKeyPem, format: "pem" });
    } catch {
      throw new TrustvolError("EUSAGE", "the public key is not a PEM public key", "pass the PEM public key enrolled with --public-key");
    }
    if (!given.equals(pub)) throw new TrustvolError("EUSAGE", "the public key does not belong to the private key", "pass the key pair's own public key (the one devices enrolled)");
  }
  // systemd's fingerprint ("pkfp"): sha256 of the PKCS#1 RSAPublicKey DER
  const pkfp = createHash("sha256").update(pub.export({ type: "pkcs1", format: "der" })).digest("hex");
  const banks = [...new Set(o.banks?.length ? o.banks : (signer.banks ?? ALL_BANKS))].sort();
  const unsigned = banks.filter((b) => signer.banks && !signer.banks.includes(b));
  if (unsigned.length) throw new TrustvolError("EUNSUPPORTED", `this key can only sign for the ${signer.banks!.join(", ")} bank, not ${unsigned.join(", ")}`, "choose --bank sha256 (the bank systemd enrolls by default)");
  const phases = o.phases?.length ? [...new Set(o.phases.map(normalizePhase))].sort() : DEFAULT_PHASES;

  let out: Record<string, unknown[]> = {};
  if (o.append !== undefined) {
    decodePcrSignatureJson(o.append); // validates every entry it will carry over
    out = JSON.parse(o.append.toString()) as Record<string, unknown[]>;
  }
  for (const phase of phases)
    for (const bank of banks) {
      const value = predictPcr11(bank, o.sections, phase, o.linuxPadding ?? true);
      const pol = extendPolicyPCR("sha256", Buffer.alloc(HASH_SIZE.sha256), { hash: bank, pcrs: [PCR_KERNEL_BOOT] }, pcrCompositeDigest("sha256", bank, [PCR_KERNEL_BOOT], new Map([[PCR_KERNEL_BOOT, value]])));
      const sig = signer.sign(bank, pol); // RSASSA-PKCS1-v1_5 over H_bank(pol), as systemd-measure's digest_and_sign
      if (out[bank] !== undefined && !Array.isArray(out[bank])) throw new TrustvolError("ECORRUPT", `--append: '${bank}' is not an array`);
      (out[bank] ??= []).push({ pcrs: [PCR_KERNEL_BOOT], pkfp, pol: pol.toString("hex"), sig: sig.toString("base64") });
    }
  return JSON.stringify(out);
}
