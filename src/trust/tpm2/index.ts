// Tpm2TrustSource: the TrustSource for TPM 2.0, in pure TypeScript (no tpm2-tss). Seals the way
// systemd-cryptenroll 252 does, so blobs are interchangeable with systemd-tpm2 tokens.
import { TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import type { SealPolicy, SealedBlob, TrustSourceInfo } from "../types.js";
import { TPM_PT, isHashName, type HashName } from "./constants.js";
import { pinToAuthValue, sealSecret, unsealSecret } from "./seal.js";
import type { PrimaryAlg } from "./structures.js";
import { Tpm } from "./tpm.js";
import type { Tpm2Transport } from "./transport.js";
import { openTpm2Transport, type Tpm2DeviceSpec } from "./transport-select.js";

export interface Tpm2TrustSourceOptions {
  /** "auto" (default; honours TRUSTVOL_TPM2_DEVICE), a device path, "swtpm:path=S", or a parsed spec. */
  device?: string | Tpm2DeviceSpec;
  /** Use this transport instead of opening one (tests wrap transports to sniff the bus). */
  transport?: Tpm2Transport;
  primaryAlg?: PrimaryAlg;
  /** Default PCR bank when the policy names none. */
  defaultBank?: HashName;
}

/** meta of a tpm2 SealedBlob. */
export interface Tpm2BlobMeta {
  pcrs: number[];
  pcrBank: HashName;
  primaryAlg: PrimaryAlg;
  policyHash: string; // hex
  pin: boolean;
}

export class Tpm2TrustSource {
  readonly kind = "tpm2" as const;
  readonly tpm: Tpm;
  private readonly primaryAlg: PrimaryAlg;
  private readonly defaultBank: HashName;

  constructor(opts: Tpm2TrustSourceOptions = {}) {
    this.tpm = new Tpm(opts.transport ?? openTpm2Transport(opts.device));
    this.primaryAlg = opts.primaryAlg ?? "ecc";
    this.defaultBank = opts.defaultBank ?? "sha256";
  }

  async describe(): Promise<TrustSourceInfo> {
    const t = this.tpm.transport;
    const details: Record<string, unknown> = {};
    try {
      const p = await this.tpm.getProperties(TPM_PT.FAMILY_INDICATOR, 0x20);
      const str = (v: number | undefined) => (v === undefined ? "" : Buffer.from([v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255]).toString("latin1").replace(/\0/g, ""));
      details.manufacturer = str(p.get(TPM_PT.MANUFACTURER)).trim();
      details.vendor = [TPM_PT.VENDOR_STRING_1, TPM_PT.VENDOR_STRING_2, TPM_PT.VENDOR_STRING_3, TPM_PT.VENDOR_STRING_4].map((k) => str(p.get(k))).join("").trim();
      const f1 = p.get(TPM_PT.FIRMWARE_VERSION_1);
      if (f1 !== undefined) details.firmware = `${f1 >>> 16}.${f1 & 0xffff}`;
      details.pcrBanks = (await this.tpm.pcrBanks()).filter((b) => b.pcrs.length).map((b) => b.hash);
      const l = await this.tpm.lockoutInfo();
      details.lockout = l;
    } catch (e) {
      details.error = e instanceof Error ? e.message : String(e);
    }
    return { kind: "tpm2", description: t.description, hardwareBacked: t.hardwareBacked, details };
  }

  getRandom(n: number): Promise<Buffer> {
    return this.tpm.getRandom(n);
  }

  async seal(secret: Uint8Array, policy: SealPolicy = {}): Promise<SealedBlob> {
    const bank = policy.pcrBank ?? this.defaultBank;
    if (!isHashName(bank)) throw new TrustvolError("EUSAGE", `unknown PCR bank '${String(bank)}'`, "use sha1, sha256, sha384 or sha512");
    const authValue = policy.pin?.length ? pinToAuthValue(policy.pin) : undefined;
    try {
      const s = await sealSecret(this.tpm, secret, { pcrs: policy.pcrs ?? [], bank, ...(policy.pcrValues ? { pcrValues: policy.pcrValues } : {}), ...(authValue ? { authValue } : {}), primaryAlg: this.primaryAlg });
      const meta: Tpm2BlobMeta = { pcrs: s.pcrs, pcrBank: s.bank, primaryAlg: s.primaryAlg, policyHash: s.policyHash.toString("hex"), pin: s.pin };
      return { kind: "tpm2", data: s.blob, meta: meta as unknown as Record<string, unknown> };
    } finally {
      wipe(authValue);
    }
  }

  async unseal(blob: SealedBlob, auth: { pin?: Uint8Array } = {}): Promise<Buffer> {
    if (blob.kind !== "tpm2") throw new TrustvolError("EUSAGE", `a ${blob.kind} blob cannot be opened by the TPM`);
    const m = blob.meta as Partial<Tpm2BlobMeta>;
    const pcrs = Array.isArray(m.pcrs) ? m.pcrs : [];
    if (!pcrs.every((p) => Number.isInteger(p) && p >= 0 && p < 24)) throw new TrustvolError("ECORRUPT", "sealed blob metadata has invalid PCR indexes");
    const bank = m.pcrBank ?? "sha256";
    if (!isHashName(bank)) throw new TrustvolError("ECORRUPT", `sealed blob metadata names unknown PCR bank '${String(bank)}'`);
    const primaryAlg = m.primaryAlg === "rsa" ? "rsa" : "ecc";
    const authValue = auth.pin?.length ? pinToAuthValue(auth.pin) : undefined;
    try {
      return await unsealSecret(
        this.tpm,
        { blob: blob.data, pcrs, bank, primaryAlg, pin: !!m.pin, ...(typeof m.policyHash === "string" && m.policyHash ? { policyHash: Buffer.from(m.policyHash, "hex") } : {}) },
        authValue ? { authValue } : {},
      );
    } finally {
      wipe(authValue);
    }
  }

  close(): Promise<void> {
    return this.tpm.transport.close();
  }
}

export { Tpm } from "./tpm.js";
export type { LoadedKey } from "./tpm.js";
export { sealSecret, unsealSecret, pinToAuthValue, splitBlob, joinBlob } from "./seal.js";
export type { Tpm2Sealed, Tpm2SealOptions, Tpm2UnsealRequest } from "./seal.js";
export {
  computePolicyDigest, pcrCompositeDigest, extendPolicyPCR, extendPolicyAuthValue, extendPolicyAuthorize, policyAuthorizeDigest, predictPcr,
  PolicyPCR, PolicyAuthValue, PolicyPassword, PolicyAuthorize, PolicyOR, PolicyAuthorizeNV, PolicyNV, TPM_EO, policyDigestOf, runPolicy, encodeNvPolicy,
} from "./policy.js";
export type { PolicyStep, Approval, NvRef } from "./policy.js";
export { TPMA_NV, TPM_NT, nvName } from "./nv.js";
export { decodePcrlockPolicy, encodePcrlockPolicy, loadPcrlockPolicy, pcrlockStep, pcrlockSuperPcrSteps, pcrlockSuperPcrDigest, SYSTEMD_PCRLOCK_PATHS } from "./pcrlock.js";
export type { PcrlockPolicy } from "./pcrlock.js";
export { parseEventLog, predictFromLog, authenticodeHash, EV } from "./predict.js";
export type { LogEvent, PredictInput } from "./predict.js";
export type { NvPublic } from "./nv.js";
export { openTpm2Transport, parseTpm2Device, resolveTpm2Device, swtpmControlFor, TPM2_DEVICE_ENV } from "./transport-select.js";
export type { Tpm2DeviceSpec } from "./transport-select.js";
export { SwtpmTransport, SwtpmControl } from "./transport-swtpm.js";
export { DeviceTransport } from "./transport-device.js";
export { tapTransport } from "./transport.js";
export type { Tpm2Transport } from "./transport.js";
export type { HashName } from "./constants.js";
export type { PrimaryAlg } from "./structures.js";
