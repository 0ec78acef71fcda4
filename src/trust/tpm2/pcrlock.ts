// systemd-pcrlock's policy (systemd 255+): the allowed PCR values live in pcrlock.json, their combined policy digest
// in an NV index. A sealed object's policy is PolicyAuthorizeNV(index): the TPM accepts whatever policy the index
// currently holds, so a new boot chain needs a new index value (systemd-pcrlock make-policy), not a re-enrolment.
//
// Security: the pcrlock.json location comes from the administrator (a --tpm2-pcrlock FILE) or systemd's own search
// path, never from a LUKS header; the file and the header are both checked against each other and the TPM.
import { existsSync, readFileSync } from "node:fs";
import { TrustvolError } from "../../util/errors.js";
import { HASH_SIZE, TPM_RH, isHashName, type HashName } from "./constants.js";
import * as C from "./commands.js";
import { permanentHandle } from "./commands.js";
import type { Tpm } from "./tpm.js";
import { decodeSerializedKeyHandle, decodeSerializedNvHandle, type SerializedKeyHandle, type SerializedNvHandle } from "./esys-tr.js";
import { NV_PUBLIC_2B, TPMA_NV, nvName, type NvPublic } from "./nv.js";
import { PolicyAuthorizeNV, PolicyOR, PolicyPCR, policyDigestOf, type NvRef, type PolicyStep } from "./policy.js";
import { decode, encode } from "./schema.js";
import { PUBLIC_2B } from "./structures.js";
import { TpmRcError } from "./rc.js";

/** Where systemd looks for the policy when none is named (tpm2_pcrlock_search_file: /run/systemd, /var/lib/systemd). */
export const SYSTEMD_PCRLOCK_PATHS = ["/run/systemd/pcrlock.json", "/var/lib/systemd/pcrlock.json"];

export interface PcrlockPolicy {
  bank: HashName;
  /** PCR -> allowed values in file order, duplicates dropped (systemd keeps an ordered set). */
  pcrValues: Map<number, Buffer[]>;
  nvIndex: number;
  /** Serialized ESYS_TR of the index (also the token's tpm2_pcrlock_nv), raw and decoded. */
  nvHandle: Buffer;
  nv: SerializedNvHandle;
  /** TPM2B_NV_PUBLIC as defined (TPMA_NV_WRITTEN clear). */
  nvPublic: NvPublic;
  srkHandle: Buffer;
  srk: SerializedKeyHandle;
  /** The recovery-PIN object systemd-pcrlock seals (kept byte for byte, used only to rewrite the index). */
  pinPublic: Buffer;
  pinPrivate: Buffer;
}

const bad = (what: string) => new TrustvolError("ECORRUPT", `pcrlock policy: ${what}`, "regenerate it with systemd-pcrlock make-policy, or name the right file with --tpm2-pcrlock");
const B64 = /^[A-Za-z0-9+/]*={0,2}$/;
const HEX = /^(?:[0-9a-fA-F]{2})+$/;
function b64(v: unknown, what: string, max: number): Buffer {
  if (typeof v !== "string" || !B64.test(v) || v.length % 4 !== 0) throw bad(`'${what}' is not base64`);
  const b = Buffer.from(v, "base64");
  if (!b.length || b.length > max) throw bad(`'${what}' has an implausible size (${b.length} bytes)`);
  return b;
}

export function decodePcrlockPolicy(json: string | Uint8Array | Record<string, unknown>): PcrlockPolicy {
  let o: unknown = json;
  if (typeof json === "string" || json instanceof Uint8Array) {
    const s = typeof json === "string" ? json : Buffer.from(json).toString("utf8");
    if (s.length > 256 * 1024) throw bad("file too large");
    try {
      o = JSON.parse(s);
    } catch {
      throw bad("not valid JSON");
    }
  }
  if (typeof o !== "object" || o === null || Array.isArray(o)) throw bad("not a JSON object");
  const r = o as Record<string, unknown>;
  const bank = r.pcrBank;
  if (!isHashName(bank)) throw bad(`unknown pcrBank ${JSON.stringify(bank)}`);
  if (!Array.isArray(r.pcrValues) || r.pcrValues.length > 24) throw bad("'pcrValues' must be an array of at most 24 PCRs");
  const pcrValues = new Map<number, Buffer[]>();
  for (const e of r.pcrValues) {
    if (typeof e !== "object" || e === null || Array.isArray(e)) throw bad("'pcrValues' entry is not an object");
    const { pcr, values } = e as Record<string, unknown>;
    if (typeof pcr !== "number" || !Number.isInteger(pcr) || pcr < 0 || pcr > 23) throw bad(`invalid PCR index ${JSON.stringify(pcr)}`);
    if (pcrValues.has(pcr)) throw bad(`PCR ${pcr} listed twice`);
    if (!Array.isArray(values) || values.length < 1 || values.length > 64) throw bad(`PCR ${pcr}: 'values' must be a non-empty array`);
    const seen = new Set<string>();
    const list: Buffer[] = [];
    for (const v of values) {
      if (typeof v !== "string" || !HEX.test(v) || v.length !== HASH_SIZE[bank] * 2) throw bad(`PCR ${pcr}: value is not a ${bank} digest`);
      if (seen.has(v.toLowerCase())) continue;
      seen.add(v.toLowerCase());
      list.push(Buffer.from(v, "hex"));
    }
    if (list.length > 8) throw bad(`PCR ${pcr} has ${list.length} alternatives; systemd supports at most 8`);
    pcrValues.set(pcr, list);
  }
  const nvIndex = r.nvIndex;
  if (typeof nvIndex !== "number" || !Number.isInteger(nvIndex) || nvIndex >>> 24 !== 0x01) throw bad("'nvIndex' is not an NV index handle");
  const nvPublicRaw = b64(r.nvPublic, "nvPublic", 256);
  let nvPublic: NvPublic;
  try {
    nvPublic = decode(NV_PUBLIC_2B, nvPublicRaw, "nvPublic");
  } catch (e) {
    throw bad(`'nvPublic' is not a TPM2B_NV_PUBLIC (${e instanceof Error ? e.message : String(e)})`);
  }
  if (nvPublic.nvIndex !== nvIndex) throw bad("'nvPublic' names another index than 'nvIndex'");
  const nvHandle = b64(r.nvHandle, "nvHandle", 512);
  const nv = decodeSerializedNvHandle(nvHandle, "pcrlock policy nvHandle");
  if (nv.handle !== nvIndex || !nvNameOf(nvPublic).equals(nv.name)) throw bad("'nvHandle' does not describe the index of 'nvPublic'");
  const srkHandle = b64(r.srkHandle, "srkHandle", 1024);
  const srk = decodeSerializedKeyHandle(srkHandle);
  const pinPublic = b64(r.pinPublic, "pinPublic", 1024);
  const pinPrivate = b64(r.pinPrivate, "pinPrivate", 1024);
  try {
    decode(PUBLIC_2B, pinPublic, "pinPublic");
  } catch {
    throw bad("'pinPublic' is not a TPM2B_PUBLIC");
  }
  return { bank, pcrValues, nvIndex, nvHandle, nv, nvPublic, srkHandle, srk, pinPublic, pinPrivate };
}

/** pcrlock.json as systemd-pcrlock writes it (field order included). */
export function encodePcrlockPolicy(p: PcrlockPolicy): string {
  return JSON.stringify({
    pcrBank: p.bank,
    pcrValues: [...p.pcrValues.entries()].sort(([a], [b]) => a - b).map(([pcr, values]) => ({ pcr, values: values.map((v) => v.toString("hex")) })),
    nvIndex: p.nvIndex,
    nvHandle: p.nvHandle.toString("base64"),
    nvPublic: encode(NV_PUBLIC_2B, p.nvPublic).toString("base64"),
    srkHandle: p.srkHandle.toString("base64"),
    pinPublic: p.pinPublic.toString("base64"),
    pinPrivate: p.pinPrivate.toString("base64"),
  });
}

/** The index's name once written (what the TPM uses from then on, and what systemd computes the policy with). */
export const nvNameOf = (p: NvPublic): Buffer => nvName({ ...p, attributes: (p.attributes | TPMA_NV.WRITTEN) >>> 0 });

/**
 * systemd's "super PCR" policy: one PolicyPCR over every PCR with a single allowed value, then for each PCR with
 * 2..8 values (ascending) PolicyPCR(pcr) + PolicyOR over the digest each value would give. Its digest is what the
 * NV index holds.
 */
export function pcrlockSuperPcrSteps(p: Pick<PcrlockPolicy, "bank" | "pcrValues">): PolicyStep[] {
  const h: HashName = "sha256";
  const pcrs = [...p.pcrValues.keys()].sort((a, b) => a - b);
  const steps: PolicyStep[] = [];
  let d: Buffer = Buffer.alloc(HASH_SIZE[h]);
  const singles = pcrs.filter((i) => p.pcrValues.get(i)!.length === 1);
  if (singles.length) {
    const s = PolicyPCR({ hash: p.bank, pcrs: singles }, { values: new Map(singles.map((i) => [i, p.pcrValues.get(i)![0]!])) });
    steps.push(s);
    d = s.update(h, d);
  }
  for (const pcr of pcrs) {
    const values = p.pcrValues.get(pcr)!;
    if (values.length < 2) continue;
    const prev = d;
    const branches = values.map((v) => PolicyPCR({ hash: p.bank, pcrs: [pcr] }, { values: new Map([[pcr, v]]) }).update(h, prev));
    const or = PolicyOR(branches, [PolicyPCR({ hash: p.bank, pcrs: [pcr] })]);
    steps.push(or);
    d = or.update(h, d);
  }
  return steps;
}
export const pcrlockSuperPcrDigest = (p: Pick<PcrlockPolicy, "bank" | "pcrValues">): Buffer => policyDigestOf("sha256", pcrlockSuperPcrSteps(p));

/** The NV index as PolicyAuthorizeNV names it; systemd authorises reading it with the owner hierarchy (empty auth). */
export const pcrlockNvRef = (p: PcrlockPolicy): NvRef => ({ index: p.nvIndex, name: nvNameOf(p.nvPublic), auth: permanentHandle(TPM_RH.OWNER) });

/** PolicyAuthorizeNV(index) after the super-PCR policy: the step a pcrlock-bound object's policy starts with. */
export function pcrlockStep(p: PcrlockPolicy): PolicyStep {
  const inner = PolicyAuthorizeNV(pcrlockNvRef(p), pcrlockSuperPcrSteps(p));
  return {
    kind: "pcrlock",
    update: inner.update,
    execute: async (tpm, s) => {
      try {
        await inner.execute(tpm, s);
      } catch (e) {
        if (e instanceof TpmRcError && ["VALUE", "POLICY_FAIL", "POLICY"].includes(e.rcName)) throw await pcrlockMismatch(tpm, p, e);
        if (e instanceof TpmRcError && ["HANDLE", "NV_UNINITIALIZED", "NV_AUTHORIZATION"].includes(e.rcName))
          throw new TrustvolError("EPOLICY", `the pcrlock NV index 0x${p.nvIndex.toString(16)} is missing or unwritten on this TPM`, "run systemd-pcrlock make-policy on this device, or use the recovery key", { cause: e });
        throw e;
      }
    },
  };
}

/**
 * Why a pcrlock policy failed (TPM_RC_VALUE at PolicyOR or PolicyAuthorizeNV): the PCRs whose current value
 * pcrlock.json does not allow, or — all allowed — an NV index holding another policy than this pcrlock.json's (the file
 * is stale, or was made from other PCR values than this boot's, e.g. on another machine or TPM).
 */
async function pcrlockMismatch(tpm: Tpm, p: PcrlockPolicy, cause: TpmRcError): Promise<TrustvolError> {
  const idx = `NV index 0x${p.nvIndex.toString(16)}`;
  try {
    const now = await tpm.pcrRead(p.bank, [...p.pcrValues.keys()]);
    const off = [...p.pcrValues.entries()].filter(([pcr, allowed]) => !allowed.some((v) => now.get(pcr)?.equals(v))).map(([pcr]) => pcr).sort((a, b) => a - b);
    if (off.length)
      return new TrustvolError("EPOLICY", `the PCR state is not one the pcrlock policy allows: PCR ${off.join(", ")} (${p.bank}) hold values pcrlock.json does not list (${idx})`, "boot a chain the policy covers, or update it (systemd-pcrlock make-policy) before the update; else use the recovery key", { cause });
    const held = await tpm.run(C.NV_Read, { authHandle: permanentHandle(TPM_RH.OWNER), nvIndex: { handle: p.nvIndex, name: nvNameOf(p.nvPublic) }, size: 2 + HASH_SIZE.sha256, offset: 0 });
    if (!held.data.subarray(2).equals(pcrlockSuperPcrDigest(p)))
      return new TrustvolError("EPOLICY", `the pcrlock policy file does not match what ${idx} holds: the file is stale or from another TPM`, "use the pcrlock.json systemd-pcrlock make-policy last wrote on this device (/var/lib/systemd/pcrlock.json), or run it again; else use the recovery key", { cause });
  } catch {
    /* diagnosis only: fall through to the general message */
  }
  return new TrustvolError("EPOLICY", `the PCR state is not one the pcrlock policy allows (${idx})`, "boot a chain the policy covers, or update it (systemd-pcrlock make-policy) before the update; else use the recovery key", { cause });
}

/** Read the administrator's pcrlock policy: `path` when given, else systemd's search path. */
export function loadPcrlockPolicy(path?: string): PcrlockPolicy {
  const candidates = path ? [path] : SYSTEMD_PCRLOCK_PATHS;
  for (const p of candidates) {
    if (!existsSync(p)) continue;
    return decodePcrlockPolicy(readFileSync(p));
  }
  throw new TrustvolError("ENOKEY", path ? `pcrlock policy file ${path} does not exist` : "this TPM2 token is bound to a pcrlock policy but none was found", `name it with --tpm2-pcrlock FILE (looked in ${candidates.join(", ")})`);
}
