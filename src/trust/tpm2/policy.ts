// Offline policy computation (Part 3 §23): predict the policyDigest a sequence of policy commands produces, so a
// secret can be sealed to PCR values that are not current (or checked against a token's tpm2-policy-hash).
import { TrustvolError } from "../../util/errors.js";
import { HASH_SIZE, TPM_CC, type HashName } from "./constants.js";
import { hashOf } from "./crypto.js";
import { encodePcrSelections, type PcrSelection } from "./structures.js";

const cc = (c: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(c, 0);
  return b;
};

/** The digest PolicyPCR checks: H_policy(value(pcr_i) ‖ ...) in ascending PCR order. */
export function pcrCompositeDigest(policyHash: HashName, bank: HashName, pcrs: number[], values: Map<number, Uint8Array>): Buffer {
  const sorted = [...new Set(pcrs)].sort((a, b) => a - b);
  const parts = sorted.map((p) => {
    const v = values.get(p);
    if (!v) throw new TrustvolError("EUSAGE", `no value given for PCR ${p}`, "pass every bound PCR's expected value");
    if (v.length !== HASH_SIZE[bank]) throw new TrustvolError("EUSAGE", `PCR ${p} value has ${v.length} bytes, ${bank} needs ${HASH_SIZE[bank]}`);
    return v;
  });
  return hashOf(policyHash, ...parts);
}

/** policyDigest' = H(policyDigest ‖ TPM_CC_PolicyPCR ‖ TPML_PCR_SELECTION ‖ pcrDigest). */
export function extendPolicyPCR(policyHash: HashName, prev: Buffer, sel: PcrSelection, pcrDigest: Buffer): Buffer {
  return hashOf(policyHash, prev, cc(TPM_CC.PolicyPCR), encodePcrSelections([{ hash: sel.hash, pcrs: [...new Set(sel.pcrs)].sort((a, b) => a - b) }]), pcrDigest);
}

/** PolicyAuthValue and PolicyPassword both extend with TPM_CC_PolicyAuthValue. */
export function extendPolicyAuthValue(policyHash: HashName, prev: Buffer): Buffer {
  return hashOf(policyHash, prev, cc(TPM_CC.PolicyAuthValue));
}

/**
 * PolicyAuthorize(keySign, policyRef): policyDigest' = H(H(policyDigest ‖ TPM_CC_PolicyAuthorize ‖ keySign.name) ‖ policyRef).
 * (On a real session the TPM first resets policyDigest to zeros, so `prev` is zeros for PolicyAuthorize-first policies.)
 */
export function extendPolicyAuthorize(policyHash: HashName, prev: Buffer, keyName: Uint8Array, policyRef: Uint8Array = Buffer.alloc(0)): Buffer {
  const d = hashOf(policyHash, prev, cc(TPM_CC.PolicyAuthorize), keyName);
  return hashOf(policyHash, d, policyRef);
}

/** What the authorising key signs for PolicyAuthorize: aHash = H(approvedPolicy ‖ policyRef). */
export function policyAuthorizeDigest(policyHash: HashName, approvedPolicy: Uint8Array, policyRef: Uint8Array = Buffer.alloc(0)): Buffer {
  return hashOf(policyHash, approvedPolicy, policyRef);
}

export interface PolicySpec {
  bank: HashName;
  pcrs: number[];
  /** PCR values to predict with (index -> digest). */
  pcrValues: Map<number, Uint8Array>;
  /** Whether PolicyAuthValue follows (a PIN is set). */
  pin: boolean;
  policyHash?: HashName;
}

/** The systemd-cryptenroll / clevis policy: [PolicyPCR(bank, pcrs)] then [PolicyAuthValue]. Empty when neither. */
export function computePolicyDigest(spec: PolicySpec): Buffer {
  const h = spec.policyHash ?? "sha256";
  let d: Buffer = Buffer.alloc(HASH_SIZE[h]);
  if (spec.pcrs.length) d = extendPolicyPCR(h, d, { hash: spec.bank, pcrs: spec.pcrs }, pcrCompositeDigest(h, spec.bank, spec.pcrs, spec.pcrValues));
  if (spec.pin) d = extendPolicyAuthValue(h, d);
  return d;
}

/** Predict a PCR value after extending `digests` (each H(event)) from `initial` (zeros after reset). */
export function predictPcr(bank: HashName, digests: Uint8Array[], initial: Uint8Array = Buffer.alloc(HASH_SIZE[bank])): Buffer {
  let v: Buffer = Buffer.from(initial);
  for (const d of digests) v = hashOf(bank, v, d);
  return v;
}
