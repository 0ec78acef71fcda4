// TPM 2.0 Part 3 commands, each described once: its handles (in order, the authorised ones first), its parameter
// field list and its response field list. Marshalling, parsing, cpHash handles and whether the first parameter may
// be encrypted by a session (it is a TPM2B) all follow from that description.
import { TrustvolError } from "../../util/errors.js";
import { TpmReader, TpmWriter } from "./marshal.js";
import { TPM_ALG, TPM_CAP, TPM_CC, TPM_RH, type HashName } from "./constants.js";
import { hashAlg, list, opt, preMarshalled, rest, keepBytes, struct, tpm2b, u16, u32, u8, union, yesNo, type Codec, type Fields, type StructOf } from "./schema.js";
import { DIGEST, NAME, PCR_SELECTIONS, PUBLIC_2B, SENSITIVE_CREATE, SYM_DEF, TICKET, TPMT_HA, handleName, type PcrSelection, type Ticket } from "./structures.js";
import { NV_PUBLIC_2B } from "./nv.js";

/** A handle with the name the TPM knows it by (for cpHash) and, when it needs authorising, its authValue. */
export interface HandleRef {
  handle: number;
  name: Buffer;
  authValue?: Uint8Array;
}
export const permanentHandle = (handle: number, authValue?: Uint8Array): HandleRef => ({ handle, name: handleName(handle), ...(authValue ? { authValue } : {}) });
/** A bare number stands for a handle whose name is the handle itself (permanent, PCR, session). */
const refOf = (h: HandleRef | number): HandleRef => (typeof h === "number" ? { handle: h, name: handleName(h) } : h);

/** What Tpm.run needs of a command. */
export interface CommandDef<Req, Rsp> {
  cc: number;
  /** Handles of the handle area, in order; the first `authHandles` need an authorization session. */
  handles(req: Req): HandleRef[];
  authHandles: number;
  params(req: Req, w: TpmWriter): void;
  responseHandles: number;
  parse(r: TpmReader, handles: number[]): Rsp;
  /** The first command / response parameter is a TPM2B and may be encrypted by a session. */
  encCommand?: boolean;
  encResponse?: boolean;
}

/** Handle kinds in a command description: AUTH needs an authorization session, HANDLE does not. */
export const AUTH = "auth" as const;
export const HANDLE = "handle" as const;
/** A handle that may be left out of the request: `fallback` is used (e.g. the lockout hierarchy). */
export const withDefault = <K extends typeof AUTH | typeof HANDLE>(kind: K, fallback: number) => ({ kind, fallback });
type HandleKind = typeof AUTH | typeof HANDLE | { kind: typeof AUTH | typeof HANDLE; fallback: number };
type HandleSpec = Record<string, HandleKind>;
type DefaultedKeys<H extends HandleSpec> = { [K in keyof H]: H[K] extends { fallback: number } ? K : never }[keyof H];
type HandlesOf<H extends HandleSpec> = { [K in Exclude<keyof H, DefaultedKeys<H>>]: HandleRef | number } & { [K in DefaultedKeys<H>]?: HandleRef | number };
const kindOf = (k: HandleKind) => (typeof k === "string" ? k : k.kind);
type OutHandlesOf<H extends readonly string[]> = { [K in H[number]]: number };

/** Describe a command once. */
export function command<H extends HandleSpec = {}, P extends Fields = {}, const OH extends readonly string[] = [], R extends Fields = {}>(d: {
  cc: number;
  handles?: H;
  params?: P;
  responseHandles?: OH;
  response?: R;
}): CommandDef<HandlesOf<H> & StructOf<P>, OutHandlesOf<OH> & StructOf<R>> {
  const hs = Object.entries(d.handles ?? {});
  const authHandles = hs.filter(([, k]) => kindOf(k) === AUTH).length;
  if (hs.slice(0, authHandles).some(([, k]) => kindOf(k) !== AUTH)) throw new Error(`TPM command 0x${d.cc.toString(16)}: authorised handles must come first`);
  const params = struct(d.params ?? ({} as P));
  const response = struct(d.response ?? ({} as R));
  const outNames = d.responseHandles ?? [];
  return {
    cc: d.cc,
    authHandles,
    responseHandles: outNames.length,
    handles: (q) =>
      hs.map(([k, kind]) => {
        const v = (q as Record<string, HandleRef | number | undefined>)[k] ?? (typeof kind === "string" ? undefined : kind.fallback);
        if (v === undefined) throw new TrustvolError("EINTERNAL", `TPM command 0x${d.cc.toString(16)}: handle '${k}' missing`);
        return refOf(v);
      }),
    params: (q, w) => params.write(w, q as StructOf<P>),
    parse: (r, h) => {
      const o = response.read(r) as Record<string, unknown>;
      outNames.forEach((n, i) => (o[n] = h[i]));
      return o as OutHandlesOf<OH> & StructOf<R>;
    },
    encCommand: !!params.tpm2b,
    encResponse: !!response.tpm2b,
  };
}
export type RequestOf<D> = D extends CommandDef<infer Q, unknown> ? Q : never;
export type ResponseOf<D> = D extends CommandDef<unknown, infer R> ? R : never;

const empty = () => Buffer.alloc(0);

export const Startup = command({ cc: TPM_CC.Startup, params: { startupType: u16 } });
export const Shutdown = command({ cc: TPM_CC.Shutdown, params: { shutdownType: u16 } });

// ---------- capabilities ----------

export type CapabilityData =
  | { capability: typeof TPM_CAP.ALGS; algs: { alg: number; attributes: number }[] }
  | { capability: typeof TPM_CAP.HANDLES; handles: number[] }
  | { capability: typeof TPM_CAP.COMMANDS; commands: number[] }
  | { capability: typeof TPM_CAP.PCRS; pcrs: PcrSelection[] }
  | { capability: typeof TPM_CAP.TPM_PROPERTIES; properties: { property: number; value: number }[] }
  | { capability: typeof TPM_CAP.ECC_CURVES; curves: number[] }
  | { capability: number; raw: Buffer };

/** TPMS_CAPABILITY_DATA: TPMU_CAPABILITIES selected by the capability. */
export const CAPABILITY_DATA = union<CapabilityData>({
  what: "TPMS_CAPABILITY_DATA",
  tag: ["capability", u32],
  cases: {
    [TPM_CAP.ALGS]: { algs: list(struct({ alg: u16, attributes: u32 }), 4096, "TPML_ALG_PROPERTY") },
    [TPM_CAP.HANDLES]: { handles: list(u32, 4096, "TPML_HANDLE") },
    [TPM_CAP.COMMANDS]: { commands: list(u32, 4096, "TPML_CCA") },
    [TPM_CAP.PCRS]: { pcrs: PCR_SELECTIONS },
    [TPM_CAP.TPM_PROPERTIES]: { properties: list(struct({ property: u32, value: u32 }), 4096, "TPML_TAGGED_TPM_PROPERTY") },
    [TPM_CAP.ECC_CURVES]: { curves: list(u16, 4096, "TPML_ECC_CURVE") },
  },
  other: { raw: rest },
});

export const GetCapability = command({
  cc: TPM_CC.GetCapability,
  params: { capability: u32, property: u32, propertyCount: u32 },
  response: { moreData: yesNo, data: CAPABILITY_DATA },
});

export const GetRandom = command({ cc: TPM_CC.GetRandom, params: { bytesRequested: u16 }, response: { randomBytes: tpm2b() } });

// ---------- objects ----------

const creation = {
  creationData: tpm2b(),
  creationHash: DIGEST,
  creationTicket: TICKET,
};
const createParams = {
  inSensitive: SENSITIVE_CREATE,
  inPublic: PUBLIC_2B,
  outsideInfo: opt(tpm2b(), empty),
  creationPCR: opt(PCR_SELECTIONS, () => []),
};

export const CreatePrimary = command({
  cc: TPM_CC.CreatePrimary,
  handles: { primaryHandle: AUTH },
  params: createParams,
  responseHandles: ["handle"],
  response: { outPublic: keepBytes(PUBLIC_2B), ...creation, name: NAME },
});

export const Create = command({
  cc: TPM_CC.Create,
  handles: { parentHandle: AUTH },
  params: createParams,
  response: { outPrivate: tpm2b(), outPublic: keepBytes(PUBLIC_2B), ...creation },
});

/** inPublic is the TPM2B_PUBLIC bytes as stored in a blob (size-prefixed), passed through untouched. */
export const LOAD_PARAMS = { inPrivate: tpm2b(), inPublic: preMarshalled(PUBLIC_2B) };
export const Load = command({
  cc: TPM_CC.Load,
  handles: { parentHandle: AUTH },
  params: LOAD_PARAMS,
  responseHandles: ["handle"],
  response: { name: NAME },
});

/** Load only the public part of a key (e.g. a PCR-policy signing key) into `hierarchy` (OWNER: tickets are real). */
export const LoadExternal = command({
  cc: TPM_CC.LoadExternal,
  params: { inPrivate: opt(tpm2b(0), empty), inPublic: PUBLIC_2B, hierarchy: opt(u32, () => TPM_RH.OWNER) },
  responseHandles: ["handle"],
  response: { name: NAME },
});

export const Unseal = command({ cc: TPM_CC.Unseal, handles: { itemHandle: AUTH }, response: { outData: tpm2b(128) } });

export const ReadPublic = command({
  cc: TPM_CC.ReadPublic,
  handles: { objectHandle: HANDLE },
  response: { outPublic: keepBytes(PUBLIC_2B), name: NAME, qualifiedName: NAME },
});

/** flushHandle is a parameter, not a handle (Part 3 §28.4). */
export const FlushContext = command({ cc: TPM_CC.FlushContext, params: { flushHandle: u32 } });

export const EvictControl = command({
  cc: TPM_CC.EvictControl,
  handles: { auth: AUTH, objectHandle: HANDLE },
  params: { persistentHandle: u32 },
});

export const DictionaryAttackLockReset = command({ cc: TPM_CC.DictionaryAttackLockReset, handles: { lockHandle: withDefault(AUTH, TPM_RH.LOCKOUT) } });

// ---------- PCRs ----------

export const PCR_Read = command({
  cc: TPM_CC.PCR_Read,
  params: { selections: PCR_SELECTIONS },
  response: { updateCounter: u32, selections: PCR_SELECTIONS, digests: list(DIGEST, 32, "TPML_DIGEST") },
});

export const PCR_Extend = command({
  cc: TPM_CC.PCR_Extend,
  handles: { pcr: AUTH },
  params: { digests: list(TPMT_HA, 8, "TPML_DIGEST_VALUES") },
});

// ---------- sessions and policy ----------

export const StartAuthSession = command({
  cc: TPM_CC.StartAuthSession,
  handles: { tpmKey: HANDLE, bind: HANDLE },
  params: { nonceCaller: DIGEST, encryptedSalt: tpm2b(), sessionType: u8, symmetric: SYM_DEF, authHash: hashAlg },
  responseHandles: ["handle"],
  response: { nonceTPM: DIGEST },
});

export const PolicyPCR = command({
  cc: TPM_CC.PolicyPCR,
  handles: { policySession: HANDLE },
  params: { pcrDigest: opt(DIGEST, empty), pcrs: PCR_SELECTIONS },
});
export const PolicyAuthValue = command({ cc: TPM_CC.PolicyAuthValue, handles: { policySession: HANDLE } });
export const PolicyPassword = command({ cc: TPM_CC.PolicyPassword, handles: { policySession: HANDLE } });
export const PolicyGetDigest = command({ cc: TPM_CC.PolicyGetDigest, handles: { policySession: HANDLE }, response: { policyDigest: DIGEST } });
export const PolicyOR = command({ cc: TPM_CC.PolicyOR, handles: { policySession: HANDLE }, params: { pHashList: list(DIGEST, 8, "TPML_DIGEST") } });
export const PolicyCommandCode = command({ cc: TPM_CC.PolicyCommandCode, handles: { policySession: HANDLE }, params: { code: u32 } });

/** TPMT_SIGNATURE for the schemes trustvol verifies: ECDSA (r, s) and RSASSA / RSAPSS (one blob). */
export type TpmSignature = { sigAlg: number; hash: HashName; r: Buffer; s: Buffer } | { sigAlg: number; hash: HashName; sig: Buffer };
const rsaSig = { hash: hashAlg, sig: tpm2b(1024) };
export const TPMT_SIGNATURE = union<TpmSignature>({
  what: "TPMT_SIGNATURE",
  tag: ["sigAlg", u16],
  cases: { [TPM_ALG.ECDSA]: { hash: hashAlg, r: tpm2b(128), s: tpm2b(128) }, [TPM_ALG.RSASSA]: rsaSig, [TPM_ALG.RSAPSS]: rsaSig },
});

export const VerifySignature = command({
  cc: TPM_CC.VerifySignature,
  handles: { keyHandle: HANDLE },
  params: { digest: DIGEST, signature: TPMT_SIGNATURE },
  response: { validation: TICKET },
});

export const PolicyAuthorize = command({
  cc: TPM_CC.PolicyAuthorize,
  handles: { policySession: HANDLE },
  params: { approvedPolicy: DIGEST, policyRef: opt(DIGEST, empty), keySign: NAME, checkTicket: TICKET },
});
export type { Ticket };

// ---------- NV indexes ----------

export const NV_DefineSpace = command({
  cc: TPM_CC.NV_DefineSpace,
  handles: { authHandle: AUTH },
  params: { auth: opt(tpm2b(64), empty), publicInfo: NV_PUBLIC_2B },
});
export const NV_UndefineSpace = command({ cc: TPM_CC.NV_UndefineSpace, handles: { authHandle: AUTH, nvIndex: HANDLE } });
export const NV_ReadPublic = command({ cc: TPM_CC.NV_ReadPublic, handles: { nvIndex: HANDLE }, response: { nvPublic: keepBytes(NV_PUBLIC_2B), nvName: NAME } });
export const NV_Read = command({
  cc: TPM_CC.NV_Read,
  handles: { authHandle: AUTH, nvIndex: HANDLE },
  params: { size: u16, offset: u16 },
  response: { data: tpm2b() },
});
export const NV_Write = command({
  cc: TPM_CC.NV_Write,
  handles: { authHandle: AUTH, nvIndex: HANDLE },
  params: { data: tpm2b(), offset: opt(u16, () => 0) },
});
/** PolicyNV: authorised by the index (or its owner), compares operandB with the index contents at offset. */
export const PolicyNV = command({
  cc: TPM_CC.PolicyNV,
  handles: { authHandle: AUTH, nvIndex: HANDLE, policySession: HANDLE },
  params: { operandB: tpm2b(), offset: opt(u16, () => 0), operation: u16 },
});
/** PolicyAuthorizeNV: the policy digest must equal the TPMT_HA stored in the index (systemd's pcrlock). */
export const PolicyAuthorizeNV = command({
  cc: TPM_CC.PolicyAuthorizeNV,
  handles: { authHandle: AUTH, nvIndex: HANDLE, policySession: HANDLE },
});

/** Every command description by name (tests walk it; nothing registers itself). */
export const COMMANDS = {
  Startup, Shutdown, GetCapability, GetRandom, CreatePrimary, Create, Load, LoadExternal, Unseal, ReadPublic, FlushContext, EvictControl,
  DictionaryAttackLockReset, PCR_Read, PCR_Extend, StartAuthSession, PolicyPCR, PolicyAuthValue, PolicyPassword, PolicyGetDigest, PolicyOR,
  PolicyCommandCode, VerifySignature, PolicyAuthorize, NV_DefineSpace, NV_UndefineSpace, NV_ReadPublic, NV_Read, NV_Write, PolicyNV, PolicyAuthorizeNV,
} as const;
export type { Codec };
