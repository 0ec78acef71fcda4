// NV index structures (Part 2 §13): TPMA_NV, TPMS_NV_PUBLIC and the index name.
import { createHash } from "node:crypto";
import { hashNameOf } from "./constants.js";
import { encode, sized, struct, tpm2b, u16, u32, type TypeOf } from "./schema.js";

/** TPMA_NV bits (Part 2 Table 204); TPM_NT in bits 4..7. */
export const TPMA_NV = {
  PPWRITE: 1 << 0,
  OWNERWRITE: 1 << 1,
  AUTHWRITE: 1 << 2,
  POLICYWRITE: 1 << 3,
  POLICY_DELETE: 1 << 10,
  WRITELOCKED: 1 << 11,
  WRITEALL: 1 << 12,
  WRITEDEFINE: 1 << 13,
  WRITE_STCLEAR: 1 << 14,
  GLOBALLOCK: 1 << 15,
  PPREAD: 1 << 16,
  OWNERREAD: 1 << 17,
  AUTHREAD: 1 << 18,
  POLICYREAD: 1 << 19,
  NO_DA: 1 << 25,
  ORDERLY: 1 << 26,
  CLEAR_STCLEAR: 1 << 27,
  READLOCKED: 1 << 28,
  WRITTEN: 1 << 29,
  PLATFORMCREATE: 1 << 30,
  READ_STCLEAR: 1 << 31,
} as const;
export const TPM_NT = { ORDINARY: 0, COUNTER: 1, BITS: 2, EXTEND: 4, PIN_FAIL: 8, PIN_PASS: 9 } as const;
export const nvType = (attributes: number) => (attributes >>> 4) & 0xf;
export const withNvType = (attributes: number, nt: number) => ((attributes & ~0xf0) | (nt << 4)) >>> 0;

/** TPMS_NV_PUBLIC. */
export const NV_PUBLIC = struct({ nvIndex: u32, nameAlg: u16, attributes: u32, authPolicy: tpm2b(64), dataSize: u16 });
export type NvPublic = TypeOf<typeof NV_PUBLIC>;
/** TPM2B_NV_PUBLIC. */
export const NV_PUBLIC_2B = sized(NV_PUBLIC);

/** NV index name: nameAlg ‖ H_nameAlg(TPMS_NV_PUBLIC) (Part 1 §16; changes once TPMA_NV_WRITTEN is set). */
export function nvName(p: NvPublic): Buffer {
  const h = createHash(hashNameOf(p.nameAlg)).update(encode(NV_PUBLIC, { ...p, attributes: p.attributes >>> 0 })).digest();
  const out = Buffer.alloc(2 + h.length);
  out.writeUInt16BE(p.nameAlg, 0);
  h.copy(out, 2);
  return out;
}
