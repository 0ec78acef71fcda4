// Policy steps (Part 3 §23), each described once: how it updates a policy digest offline (to predict the authPolicy
// of an object sealed to PCR values that are not current, or to check a token's policy hash) right next to how it
// runs on a live policy session. A policy is a list of steps; its digest and its execution both follow from it.
import { TrustvolError } from "../../util/errors.js";
import { HASH_SIZE, TPM_CC, TPM_RH, type HashName } from "./constants.js";
import * as C from "./commands.js";
import { hashOf } from "./crypto.js";
import { encode } from "./schema.js";
import { PCR_SELECTIONS, TPMT_HA, objectName, type PcrSelection, type TpmtPublic } from "./structures.js";
import type { AuthSession } from "./session.js";
import type { Tpm } from "./tpm.js";

const cc = (c: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(c, 0);
  return b;
};

export interface PolicyStep {
  readonly kind: string;
  /** policyDigest' from policyDigest (offline; the TPM computes the same). */
  update(hash: HashName, prev: Buffer): Buffer;
  /** Run the step on a policy (or trial) session. */
  execute(tpm: Tpm, session: AuthSession): Promise<void>;
}

/** The digest a list of steps produces from the all-zero start. */
export function policyDigestOf(hash: HashName, steps: readonly PolicyStep[]): Buffer {
  let d: Buffer = Buffer.alloc(HASH_SIZE[hash]);
  for (const s of steps) d = s.update(hash, d);
  return d;
}
/** Run the steps on a session, in order. */
export async function runPolicy(tpm: Tpm, session: AuthSession, steps: readonly PolicyStep[]): Promise<void> {
  for (const s of steps) await s.execute(tpm, session);
}

// ---------- PolicyPCR ----------

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

/**
 * PolicyPCR(sel): policyDigest' = H(policyDigest ‖ TPM_CC_PolicyPCR ‖ TPML_PCR_SELECTION ‖ pcrDigest). Offline the
 * pcrDigest comes from `values` (or is given); on the TPM the current PCR values are used (pcrDigest left empty).
 */
export function PolicyPCR(sel: PcrSelection, expect: { values?: Map<number, Uint8Array>; pcrDigest?: Buffer } = {}): PolicyStep {
  const canon: PcrSelection = { hash: sel.hash, pcrs: [...new Set(sel.pcrs)].sort((a, b) => a - b) };
  return {
    kind: "PolicyPCR",
    update: (h, prev) => {
      const pcrDigest = expect.pcrDigest ?? pcrCompositeDigest(h, canon.hash, canon.pcrs, expect.values ?? new Map());
      return hashOf(h, prev, cc(TPM_CC.PolicyPCR), encode(PCR_SELECTIONS, [canon], 32), pcrDigest);
    },
    execute: async (tpm, s) => void (await tpm.run(C.PolicyPCR, { policySession: s.handle, pcrs: [sel] })),
  };
}

// ---------- PolicyAuthValue / PolicyPassword ----------

/** PolicyAuthValue: the object's authValue enters the session HMAC. Digest: H(policyDigest ‖ TPM_CC_PolicyAuthValue). */
export const PolicyAuthValue = (): PolicyStep => ({
  kind: "PolicyAuthValue",
  update: (h, prev) => hashOf(h, prev, cc(TPM_CC.PolicyAuthValue)),
  execute: async (tpm, s) => {
    await tpm.run(C.PolicyAuthValue, { policySession: s.handle });
    s.policyAuthValue = true;
  },
});
/** PolicyPassword: the authValue is sent in clear; the digest is PolicyAuthValue's (Part 3 §23.18). */
export const PolicyPassword = (): PolicyStep => ({
  kind: "PolicyPassword",
  update: (h, prev) => hashOf(h, prev, cc(TPM_CC.PolicyAuthValue)),
  execute: async (tpm, s) => {
    await tpm.run(C.PolicyPassword, { policySession: s.handle });
    s.policyPassword = true;
  },
});

// ---------- PolicyAuthorize ----------

/** What the authorising key signs for PolicyAuthorize: aHash = H(approvedPolicy ‖ policyRef). */
export function policyAuthorizeDigest(policyHash: HashName, approvedPolicy: Uint8Array, policyRef: Uint8Array = Buffer.alloc(0)): Buffer {
  return hashOf(policyHash, approvedPolicy, policyRef);
}

/** How a PolicyAuthorize is satisfied at run time: the approved steps, and a signature over their digest. */
export interface Approval {
  steps: PolicyStep[];
  approvedPolicy: Buffer;
  signature: C.TpmSignature;
}

/**
 * PolicyAuthorize(keySign, policyRef): policyDigest' = H(H(zeros ‖ TPM_CC_PolicyAuthorize ‖ keySign.name) ‖ policyRef)
 * (the TPM resets the digest first). Executing runs the approved steps, has the TPM verify the signature with the
 * key (LoadExternal + VerifySignature) and presents the ticket.
 */
export function PolicyAuthorize(key: TpmtPublic | Buffer, policyRef: Buffer = Buffer.alloc(0), approve?: (tpm: Tpm) => Promise<Approval>): PolicyStep {
  const keyName = Buffer.isBuffer(key) ? key : objectName(key);
  return {
    kind: "PolicyAuthorize",
    update: (h, prev) => hashOf(h, hashOf(h, Buffer.alloc(prev.length), cc(TPM_CC.PolicyAuthorize), keyName), policyRef),
    execute: async (tpm, s) => {
      if (!approve || Buffer.isBuffer(key)) throw new TrustvolError("EINTERNAL", "PolicyAuthorize needs the key's public area and an approval to run");
      const a = await approve(tpm);
      await runPolicy(tpm, s, a.steps);
      const k = await tpm.run(C.LoadExternal, { inPublic: key, hierarchy: TPM_RH.OWNER });
      try {
        const { validation } = await tpm.run(C.VerifySignature, { keyHandle: { handle: k.handle, name: k.name }, digest: policyAuthorizeDigest(s.hash, a.approvedPolicy, policyRef), signature: a.signature });
        await tpm.run(C.PolicyAuthorize, { policySession: s.handle, approvedPolicy: a.approvedPolicy, policyRef, keySign: k.name, checkTicket: validation });
      } finally {
        await tpm.flushQuiet(k.handle);
      }
    },
  };
}

// ---------- PolicyOR ----------

/**
 * PolicyOR(branches): policyDigest' = H(zeros ‖ TPM_CC_PolicyOR ‖ digest_1 ‖ ... ‖ digest_n), 2..8 branches. Executing
 * needs the session to be in one of the branch states (run that branch's steps first: `runFirst`).
 */
export function PolicyOR(branches: readonly Buffer[], runFirst?: PolicyStep[]): PolicyStep {
  if (branches.length < 2 || branches.length > 8) throw new TrustvolError("EUSAGE", `PolicyOR takes 2..8 branches, not ${branches.length}`);
  return {
    kind: "PolicyOR",
    update: (h, prev) => hashOf(h, Buffer.alloc(prev.length), cc(TPM_CC.PolicyOR), ...branches),
    execute: async (tpm, s) => {
      if (runFirst) await runPolicy(tpm, s, runFirst);
      await tpm.run(C.PolicyOR, { policySession: s.handle, pHashList: [...branches] });
    },
  };
}

// ---------- NV-based steps ----------

/** An NV index as a policy names it: handle, its name (changes once written) and how to authorise reading it. */
export interface NvRef {
  index: number;
  name: Buffer;
  /** Authorisation handle for reading (default: the index itself with an empty auth). */
  auth?: C.HandleRef;
}
const nvAuth = (nv: NvRef): C.HandleRef => nv.auth ?? { handle: nv.index, name: nv.name };

/** PolicyAuthorizeNV(nv): policyDigest' = H(zeros ‖ TPM_CC_PolicyAuthorizeNV ‖ nvIndex.name); the index holds a TPMT_HA. */
export function PolicyAuthorizeNV(nv: NvRef, runFirst?: PolicyStep[]): PolicyStep {
  return {
    kind: "PolicyAuthorizeNV",
    update: (h, prev) => hashOf(h, Buffer.alloc(prev.length), cc(TPM_CC.PolicyAuthorizeNV), nv.name),
    execute: async (tpm, s) => {
      if (runFirst) await runPolicy(tpm, s, runFirst);
      await tpm.run(C.PolicyAuthorizeNV, { authHandle: nvAuth(nv), nvIndex: { handle: nv.index, name: nv.name }, policySession: s.handle });
    },
  };
}

/** TPM_EO comparison operators of PolicyNV / PolicyCounterTimer. */
export const TPM_EO = { EQ: 0, NEQ: 1, SIGNED_GT: 2, UNSIGNED_GT: 3, SIGNED_LT: 4, UNSIGNED_LT: 5, SIGNED_GE: 6, UNSIGNED_GE: 7, SIGNED_LE: 8, UNSIGNED_LE: 9, BITSET: 10, BITCLEAR: 11 } as const;

/** PolicyNV: args = H(operandB ‖ offset ‖ operation); policyDigest' = H(policyDigest ‖ TPM_CC_PolicyNV ‖ args ‖ nvIndex.name). */
export function PolicyNV(nv: NvRef, operandB: Buffer, operation: number, offset = 0): PolicyStep {
  const tail = Buffer.alloc(4);
  tail.writeUInt16BE(offset, 0);
  tail.writeUInt16BE(operation, 2);
  return {
    kind: "PolicyNV",
    update: (h, prev) => hashOf(h, prev, cc(TPM_CC.PolicyNV), hashOf(h, operandB, tail), nv.name),
    execute: async (tpm, s) => void (await tpm.run(C.PolicyNV, { authHandle: nvAuth(nv), nvIndex: { handle: nv.index, name: nv.name }, policySession: s.handle, operandB, offset, operation })),
  };
}

/** What a PolicyAuthorizeNV index holds: the approved policy as TPMT_HA. */
export const encodeNvPolicy = (hash: HashName, digest: Buffer): Buffer => encode(TPMT_HA, { hash, digest });

// ---------- the PCR(+PIN) policy of systemd-cryptenroll 252 / clevis, and PCR prediction ----------

export interface PolicySpec {
  bank: HashName;
  pcrs: number[];
  /** PCR values to predict with (index -> digest). */
  pcrValues: Map<number, Uint8Array>;
  /** Whether PolicyAuthValue follows (a PIN is set). */
  pin: boolean;
  policyHash?: HashName;
}

/** [PolicyPCR(bank, pcrs)] then [PolicyAuthValue]; empty when neither. */
export function pcrPinSteps(spec: Omit<PolicySpec, "pcrValues" | "policyHash"> & { pcrValues?: Map<number, Uint8Array> }): PolicyStep[] {
  const steps: PolicyStep[] = [];
  if (spec.pcrs.length) steps.push(PolicyPCR({ hash: spec.bank, pcrs: spec.pcrs }, spec.pcrValues ? { values: spec.pcrValues } : {}));
  if (spec.pin) steps.push(PolicyAuthValue());
  return steps;
}
export function computePolicyDigest(spec: PolicySpec): Buffer {
  return policyDigestOf(spec.policyHash ?? "sha256", pcrPinSteps(spec));
}

/** One step's offline update, for callers that build a digest by hand (tests, sign-policy). */
export const extendPolicyPCR = (h: HashName, prev: Buffer, sel: PcrSelection, pcrDigest: Buffer): Buffer => PolicyPCR(sel, { pcrDigest }).update(h, prev);
export const extendPolicyAuthValue = (h: HashName, prev: Buffer): Buffer => PolicyAuthValue().update(h, prev);
export const extendPolicyAuthorize = (h: HashName, prev: Buffer, keyName: Uint8Array, policyRef: Uint8Array = Buffer.alloc(0)): Buffer =>
  PolicyAuthorize(Buffer.from(keyName), Buffer.from(policyRef)).update(h, prev);

/** Predict a PCR value after extending `digests` (each H(event)) from `initial` (zeros after reset). */
export function predictPcr(bank: HashName, digests: Uint8Array[], initial: Uint8Array = Buffer.alloc(HASH_SIZE[bank])): Buffer {
  let v: Buffer = Buffer.from(initial);
  for (const d of digests) v = hashOf(bank, v, d);
  return v;
}
