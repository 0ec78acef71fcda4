// tpm2-tss's serialized ESYS_TR (Esys_TR_Serialize), as systemd 255+ stores the persistent SRK in a token's
// `tpm2_srk`: IESYS_RESOURCE { TPM2_HANDLE handle; TPM2B_NAME name; UINT32 rsrcType; union misc }, big-endian, where
// misc is a TPM2B_PUBLIC for a key (rsrcType 1). Hostile input: every field is checked against the others.
import { TrustvolError } from "../../util/errors.js";
import { constantTimeEqual } from "../../util/secret.js";
import { TPMA_OBJECT, TPM_ALG } from "./constants.js";
import { decode, encode, struct, tpm2b, u32 } from "./schema.js";
import { PUBLIC_2B, objectName, type TpmtPublic } from "./structures.js";
import { NV_PUBLIC_2B, nvName, type NvPublic } from "./nv.js";

/** IESYS_RESOURCE of a key as Esys_TR_Serialize writes it. */
const IESYS_KEY_RESOURCE = struct({ handle: u32, name: tpm2b(66), rsrcType: u32, public: PUBLIC_2B });

/** IESYSC_KEY_RSRC: the resource is a loaded or persistent key, misc holds its public area. */
const IESYSC_KEY_RSRC = 1;
const PERSISTENT_FIRST = 0x81000000;
const PERSISTENT_LAST = 0x81ffffff;

export interface SerializedKeyHandle {
  /** Persistent handle (0x81xxxxxx), e.g. 0x81000001 for systemd's SRK. */
  handle: number;
  name: Buffer;
  public: TpmtPublic;
}

const bad = (what: string) => new TrustvolError("ECORRUPT", `tpm2_srk: ${what}`, "the token's SRK record is damaged; use the recovery key and re-enroll");

export function decodeSerializedKeyHandle(b: Buffer): SerializedKeyHandle {
  let out: SerializedKeyHandle;
  try {
    // rsrcType selects what misc holds: only a key (its TPM2B_PUBLIC) is accepted, checked after the parse
    const { rsrcType, ...k } = decode(IESYS_KEY_RESOURCE, b, "tpm2_srk");
    if (rsrcType !== IESYSC_KEY_RSRC) throw bad(`resource type ${rsrcType} is not a key`);
    out = k;
  } catch (e) {
    if (e instanceof TrustvolError && e.code === "ECORRUPT" && e.message.startsWith("tpm2_srk")) throw e;
    throw bad(`not a serialized TPM key handle (${e instanceof Error ? e.message : String(e)})`);
  }
  if (out.handle < PERSISTENT_FIRST || out.handle > PERSISTENT_LAST) throw bad(`handle 0x${out.handle.toString(16)} is not a persistent handle`);
  if (!constantTimeEqual(out.name, objectName(out.public))) throw bad("name does not match the public area");
  const p = out.public;
  const storage = TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt | TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent;
  if ((p.type !== TPM_ALG.ECC && p.type !== TPM_ALG.RSA) || (p.objectAttributes & storage) !== storage || (p.objectAttributes & TPMA_OBJECT.sign) !== 0)
    throw bad("the key is not a storage key (restricted decrypt, fixedtpm, fixedparent)");
  return out;
}

export function encodeSerializedKeyHandle(k: SerializedKeyHandle): Buffer {
  return encode(IESYS_KEY_RESOURCE, { handle: k.handle, name: k.name, rsrcType: IESYSC_KEY_RSRC, public: k.public });
}

/** The template that recreates a primary from its public area: the same parameters with an empty unique. */
export function primaryTemplateOf(p: TpmtPublic): TpmtPublic {
  if (p.type === TPM_ALG.ECC) return { ...p, unique: Buffer.alloc(0), eccPoint: { x: Buffer.alloc(0), y: Buffer.alloc(0) } };
  return { ...p, unique: Buffer.alloc(0) };
}

/** IESYSC_NV_RSRC: the resource is an NV index, misc holds its TPM2B_NV_PUBLIC (systemd's `nvHandle`, `tpm2_pcrlock_nv`). */
const IESYSC_NV_RSRC = 2;
const IESYS_NV_RESOURCE = struct({ handle: u32, name: tpm2b(66), rsrcType: u32, public: NV_PUBLIC_2B });
export interface SerializedNvHandle {
  handle: number;
  name: Buffer;
  public: NvPublic;
}
export function decodeSerializedNvHandle(b: Buffer, what = "tpm2_pcrlock_nv"): SerializedNvHandle {
  const badNv = (m: string) => new TrustvolError("ECORRUPT", `${what}: ${m}`, "the pcrlock NV index record is damaged; use the recovery key and re-enroll");
  let v;
  try {
    v = decode(IESYS_NV_RESOURCE, b, what);
  } catch (e) {
    throw badNv(`not a serialized TPM NV index handle (${e instanceof Error ? e.message : String(e)})`);
  }
  if (v.rsrcType !== IESYSC_NV_RSRC) throw badNv(`resource type ${v.rsrcType} is not an NV index`);
  if (v.handle >>> 24 !== 0x01 || v.public.nvIndex !== v.handle) throw badNv(`handle 0x${v.handle.toString(16)} is not the NV index its public area names`);
  if (!constantTimeEqual(v.name, nvName(v.public))) throw badNv("name does not match the public area");
  return { handle: v.handle, name: v.name, public: v.public };
}
export function encodeSerializedNvHandle(k: SerializedNvHandle): Buffer {
  return encode(IESYS_NV_RESOURCE, { handle: k.handle, name: k.name, rsrcType: IESYSC_NV_RSRC, public: k.public });
}
