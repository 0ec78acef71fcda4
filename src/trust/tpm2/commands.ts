// TPM 2.0 Part 3 commands, each a typed definition with its own marshal (parameter area) and unmarshal (response).
import { TrustvolError } from "../../util/errors.js";
import { TpmReader, TpmWriter } from "./marshal.js";
import { HASH_ALG, TPM_CC, TPM_CAP, TPM_RH, type HashName } from "./constants.js";
import { handleName, marshalPcrSelections, marshalPublic, marshalSymDef, unmarshalPcrSelections, unmarshalPublic, type PcrSelection, type SymDef, type TpmtPublic } from "./structures.js";

/** A handle with the name the TPM knows it by (for cpHash) and, when it needs authorising, its authValue. */
export interface HandleRef {
  handle: number;
  name: Buffer;
  authValue?: Uint8Array;
}
export const permanentHandle = (handle: number, authValue?: Uint8Array): HandleRef => ({ handle, name: handleName(handle), ...(authValue ? { authValue } : {}) });

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

const def = <Req, Rsp>(d: CommandDef<Req, Rsp>) => d;
const none = () => [];

export const Startup = def<{ startupType: number }, void>({
  cc: TPM_CC.Startup, handles: none, authHandles: 0, responseHandles: 0,
  params: (q, w) => void w.u16(q.startupType),
  parse: () => undefined,
});

export const Shutdown = def<{ shutdownType: number }, void>({
  cc: TPM_CC.Shutdown, handles: none, authHandles: 0, responseHandles: 0,
  params: (q, w) => void w.u16(q.shutdownType),
  parse: () => undefined,
});

export type CapabilityData =
  | { capability: typeof TPM_CAP.ALGS; algs: { alg: number; attributes: number }[] }
  | { capability: typeof TPM_CAP.HANDLES; handles: number[] }
  | { capability: typeof TPM_CAP.COMMANDS; commands: number[] }
  | { capability: typeof TPM_CAP.PCRS; pcrs: PcrSelection[] }
  | { capability: typeof TPM_CAP.TPM_PROPERTIES; properties: { property: number; value: number }[] }
  | { capability: typeof TPM_CAP.ECC_CURVES; curves: number[] }
  | { capability: number; raw: Buffer };

export const GetCapability = def<{ capability: number; property: number; propertyCount: number }, { moreData: boolean; data: CapabilityData }>({
  cc: TPM_CC.GetCapability, handles: none, authHandles: 0, responseHandles: 0,
  params: (q, w) => void w.u32(q.capability).u32(q.property).u32(q.propertyCount),
  parse: (r) => {
    const moreData = r.u8() !== 0;
    const capability = r.u32();
    const count = () => {
      const n = r.u32();
      if (n > 4096) throw new TrustvolError("EDEVICE", "TPM GetCapability response: implausible list length");
      return n;
    };
    let data: CapabilityData;
    switch (capability) {
      case TPM_CAP.ALGS: {
        const n = count();
        const algs = [];
        for (let i = 0; i < n; i++) algs.push({ alg: r.u16(), attributes: r.u32() });
        data = { capability, algs };
        break;
      }
      case TPM_CAP.HANDLES:
      case TPM_CAP.COMMANDS: {
        const n = count();
        const list = [];
        for (let i = 0; i < n; i++) list.push(r.u32());
        data = capability === TPM_CAP.HANDLES ? { capability, handles: list } : { capability, commands: list };
        break;
      }
      case TPM_CAP.PCRS:
        data = { capability, pcrs: unmarshalPcrSelections(r) };
        break;
      case TPM_CAP.TPM_PROPERTIES: {
        const n = count();
        const properties = [];
        for (let i = 0; i < n; i++) properties.push({ property: r.u32(), value: r.u32() });
        data = { capability, properties };
        break;
      }
      case TPM_CAP.ECC_CURVES: {
        const n = count();
        const curves = [];
        for (let i = 0; i < n; i++) curves.push(r.u16());
        data = { capability, curves };
        break;
      }
      default:
        data = { capability, raw: Buffer.from(r.bytes(r.remaining)) };
    }
    return { moreData, data };
  },
});

export const GetRandom = def<{ bytesRequested: number }, Buffer>({
  cc: TPM_CC.GetRandom, handles: none, authHandles: 0, responseHandles: 0, encResponse: true,
  params: (q, w) => void w.u16(q.bytesRequested),
  parse: (r) => r.tpm2b(),
});

export interface SensitiveCreate {
  userAuth: Uint8Array;
  data: Uint8Array;
}
export interface CreationResult {
  outPublic: TpmtPublic;
  /** TPM2B_PUBLIC exactly as returned (size-prefixed), for blobs. */
  outPublicBytes: Buffer;
  creationData: Buffer;
  creationHash: Buffer;
  creationTicket: { tag: number; hierarchy: number; digest: Buffer };
}

function sensitiveCreate(w: TpmWriter, s: SensitiveCreate): void {
  w.sized((x) => x.tpm2b(s.userAuth).tpm2b(s.data));
}
function publicIn(w: TpmWriter, p: TpmtPublic): void {
  w.sized((x) => marshalPublic(x, p));
}
function creationTail(r: TpmReader): Omit<CreationResult, "outPublic" | "outPublicBytes"> {
  const creationData = r.tpm2b();
  const creationHash = r.tpm2b(64);
  const tag = r.u16();
  const hierarchy = r.u32();
  const digest = r.tpm2b(64);
  return { creationData, creationHash, creationTicket: { tag, hierarchy, digest } };
}
function publicOut(r: TpmReader): { outPublic: TpmtPublic; outPublicBytes: Buffer } {
  const start = r.off;
  const outPublic = r.sized(unmarshalPublic);
  return { outPublic, outPublicBytes: Buffer.from(r.buf.subarray(start, r.off)) };
}

export const CreatePrimary = def<
  { primaryHandle: HandleRef; inSensitive: SensitiveCreate; inPublic: TpmtPublic; outsideInfo?: Buffer; creationPCR?: PcrSelection[] },
  CreationResult & { handle: number; name: Buffer }
>({
  cc: TPM_CC.CreatePrimary, authHandles: 1, responseHandles: 1, encCommand: true, encResponse: true,
  handles: (q) => [q.primaryHandle],
  params: (q, w) => {
    sensitiveCreate(w, q.inSensitive);
    publicIn(w, q.inPublic);
    w.tpm2b(q.outsideInfo ?? Buffer.alloc(0));
    marshalPcrSelections(w, q.creationPCR ?? []);
  },
  parse: (r, h) => {
    const pub = publicOut(r);
    const tail = creationTail(r);
    return { handle: h[0]!, ...pub, ...tail, name: r.tpm2b(66) };
  },
});

export const Create = def<
  { parentHandle: HandleRef; inSensitive: SensitiveCreate; inPublic: TpmtPublic; outsideInfo?: Buffer; creationPCR?: PcrSelection[] },
  CreationResult & { outPrivate: Buffer }
>({
  cc: TPM_CC.Create, authHandles: 1, responseHandles: 0, encCommand: true, encResponse: true,
  handles: (q) => [q.parentHandle],
  params: (q, w) => {
    sensitiveCreate(w, q.inSensitive);
    publicIn(w, q.inPublic);
    w.tpm2b(q.outsideInfo ?? Buffer.alloc(0));
    marshalPcrSelections(w, q.creationPCR ?? []);
  },
  parse: (r) => {
    const outPrivate = r.tpm2b();
    const pub = publicOut(r);
    return { outPrivate, ...pub, ...creationTail(r) };
  },
});

/** inPublic is the TPM2B_PUBLIC bytes as stored in a blob (size-prefixed), passed through untouched. */
export const Load = def<{ parentHandle: HandleRef; inPrivate: Buffer; inPublic: Buffer }, { handle: number; name: Buffer }>({
  cc: TPM_CC.Load, authHandles: 1, responseHandles: 1, encCommand: true,
  handles: (q) => [q.parentHandle],
  params: (q, w) => void w.tpm2b(q.inPrivate).bytes(q.inPublic),
  parse: (r, h) => ({ handle: h[0]!, name: r.tpm2b(66) }),
});

export const Unseal = def<{ itemHandle: HandleRef }, Buffer>({
  cc: TPM_CC.Unseal, authHandles: 1, responseHandles: 0, encResponse: true,
  handles: (q) => [q.itemHandle],
  params: () => undefined,
  parse: (r) => r.tpm2b(128),
});

export const FlushContext = def<{ flushHandle: number }, void>({
  cc: TPM_CC.FlushContext, handles: none, authHandles: 0, responseHandles: 0,
  params: (q, w) => void w.u32(q.flushHandle),
  parse: () => undefined,
});

export const ReadPublic = def<{ objectHandle: number }, { outPublic: TpmtPublic; outPublicBytes: Buffer; name: Buffer; qualifiedName: Buffer }>({
  cc: TPM_CC.ReadPublic, authHandles: 0, responseHandles: 0, encResponse: true,
  handles: (q) => [{ handle: q.objectHandle, name: handleName(q.objectHandle) }],
  params: () => undefined,
  parse: (r) => {
    const pub = publicOut(r);
    return { ...pub, name: r.tpm2b(66), qualifiedName: r.tpm2b(66) };
  },
});

export const PCR_Read = def<{ selections: PcrSelection[] }, { updateCounter: number; selections: PcrSelection[]; digests: Buffer[] }>({
  cc: TPM_CC.PCR_Read, handles: none, authHandles: 0, responseHandles: 0,
  params: (q, w) => marshalPcrSelections(w, q.selections),
  parse: (r) => {
    const updateCounter = r.u32();
    const selections = unmarshalPcrSelections(r);
    const n = r.u32();
    if (n > 32) throw new TrustvolError("EDEVICE", "TPM PCR_Read response: implausible digest count");
    const digests = [];
    for (let i = 0; i < n; i++) digests.push(r.tpm2b(64));
    return { updateCounter, selections, digests };
  },
});

export const PCR_Extend = def<{ pcr: number; digests: { hash: HashName; digest: Buffer }[] }, void>({
  cc: TPM_CC.PCR_Extend, authHandles: 1, responseHandles: 0,
  handles: (q) => [permanentHandle(q.pcr)],
  params: (q, w) => {
    w.u32(q.digests.length);
    for (const d of q.digests) w.u16(HASH_ALG[d.hash]).bytes(d.digest);
  },
  parse: () => undefined,
});

export const StartAuthSession = def<
  { tpmKey: number; tpmKeyName?: Buffer; bind: number; nonceCaller: Buffer; encryptedSalt: Buffer; sessionType: number; symmetric: SymDef; authHash: HashName },
  { handle: number; nonceTPM: Buffer }
>({
  cc: TPM_CC.StartAuthSession, authHandles: 0, responseHandles: 1,
  handles: (q) => [
    { handle: q.tpmKey, name: q.tpmKeyName ?? handleName(q.tpmKey) },
    { handle: q.bind, name: handleName(q.bind) },
  ],
  params: (q, w) => {
    w.tpm2b(q.nonceCaller).tpm2b(q.encryptedSalt).u8(q.sessionType);
    marshalSymDef(w, q.symmetric);
    w.u16(HASH_ALG[q.authHash]);
  },
  parse: (r, h) => ({ handle: h[0]!, nonceTPM: r.tpm2b(64) }),
});

const policyHandle = (h: number): HandleRef[] => [{ handle: h, name: handleName(h) }];

export const PolicyPCR = def<{ policySession: number; pcrDigest: Buffer; pcrs: PcrSelection[] }, void>({
  cc: TPM_CC.PolicyPCR, authHandles: 0, responseHandles: 0, encCommand: true,
  handles: (q) => policyHandle(q.policySession),
  params: (q, w) => {
    w.tpm2b(q.pcrDigest);
    marshalPcrSelections(w, q.pcrs);
  },
  parse: () => undefined,
});

export const PolicyAuthValue = def<{ policySession: number }, void>({
  cc: TPM_CC.PolicyAuthValue, authHandles: 0, responseHandles: 0,
  handles: (q) => policyHandle(q.policySession),
  params: () => undefined,
  parse: () => undefined,
});

export const PolicyPassword = def<{ policySession: number }, void>({
  cc: TPM_CC.PolicyPassword, authHandles: 0, responseHandles: 0,
  handles: (q) => policyHandle(q.policySession),
  params: () => undefined,
  parse: () => undefined,
});

export const PolicyGetDigest = def<{ policySession: number }, Buffer>({
  cc: TPM_CC.PolicyGetDigest, authHandles: 0, responseHandles: 0, encResponse: true,
  handles: (q) => policyHandle(q.policySession),
  params: () => undefined,
  parse: (r) => r.tpm2b(64),
});

export const EvictControl = def<{ auth: HandleRef; objectHandle: HandleRef; persistentHandle: number }, void>({
  cc: TPM_CC.EvictControl, authHandles: 1, responseHandles: 0,
  handles: (q) => [q.auth, q.objectHandle],
  params: (q, w) => void w.u32(q.persistentHandle),
  parse: () => undefined,
});

export const DictionaryAttackLockReset = def<{ lockHandle?: HandleRef }, void>({
  cc: TPM_CC.DictionaryAttackLockReset, authHandles: 1, responseHandles: 0,
  handles: (q) => [q.lockHandle ?? permanentHandle(TPM_RH.LOCKOUT)],
  params: () => undefined,
  parse: () => undefined,
});

/** TPMT_TK_VERIFIED (and other tickets): tag, hierarchy, digest. */
export interface Ticket {
  tag: number;
  hierarchy: number;
  digest: Buffer;
}
const readTicket = (r: TpmReader): Ticket => ({ tag: r.u16(), hierarchy: r.u32(), digest: r.tpm2b(64) });

/** TPMT_SIGNATURE for the schemes trustvol verifies: ECDSA (r, s) and RSASSA / RSAPSS (one blob). */
export type TpmSignature = { sigAlg: number; hash: HashName; r: Buffer; s: Buffer } | { sigAlg: number; hash: HashName; sig: Buffer };

/** Load only the public part of a key (e.g. a PCR-policy signing key) into `hierarchy` (OWNER: tickets are real). */
export const LoadExternal = def<{ inPublic: TpmtPublic; hierarchy?: number }, { handle: number; name: Buffer }>({
  cc: TPM_CC.LoadExternal, authHandles: 0, responseHandles: 1, encCommand: true,
  handles: none,
  params: (q, w) => {
    w.u16(0); // no TPM2B_SENSITIVE: public only
    publicIn(w, q.inPublic);
    w.u32(q.hierarchy ?? TPM_RH.OWNER);
  },
  parse: (r, h) => ({ handle: h[0]!, name: r.tpm2b(66) }),
});

export const VerifySignature = def<{ keyHandle: HandleRef; digest: Buffer; signature: TpmSignature }, Ticket>({
  cc: TPM_CC.VerifySignature, authHandles: 0, responseHandles: 0, encCommand: true,
  handles: (q) => [q.keyHandle],
  params: (q, w) => {
    w.tpm2b(q.digest);
    const sig = q.signature;
    w.u16(sig.sigAlg).u16(HASH_ALG[sig.hash]);
    if ("r" in sig) w.tpm2b(sig.r).tpm2b(sig.s);
    else w.tpm2b(sig.sig);
  },
  parse: readTicket,
});

export const PolicyAuthorize = def<{ policySession: number; approvedPolicy: Buffer; policyRef: Buffer; keySign: Buffer; checkTicket: Ticket }, void>({
  cc: TPM_CC.PolicyAuthorize, authHandles: 0, responseHandles: 0, encCommand: true,
  handles: (q) => policyHandle(q.policySession),
  params: (q, w) => {
    w.tpm2b(q.approvedPolicy).tpm2b(q.policyRef).tpm2b(q.keySign);
    w.u16(q.checkTicket.tag).u32(q.checkTicket.hierarchy).tpm2b(q.checkTicket.digest);
  },
  parse: () => undefined,
});

