// Typed TPM 2.0 wire descriptions (the go-tpm `tpm2` idea): a structure is declared once as a field list of codecs,
// and both its marshalling and its parsing follow from that list. TPM2B and sized structures, lists and unions
// (selected by a tag field) are typed codecs too, so a field order is never written twice.
import { TrustvolError } from "../../util/errors.js";
import { TpmReader, TpmWriter } from "./marshal.js";
import { HASH_ALG, hashNameOf, type HashName } from "./constants.js";

export interface Codec<T> {
  write(w: TpmWriter, v: T): void;
  read(r: TpmReader): T;
  /** TPM2B-shaped (u16 size first): the only parameters a session may encrypt (Part 1 §21.1). */
  readonly tpm2b?: boolean;
  /** Optional in a struct value: written as `fallback` when absent. */
  readonly optional?: boolean;
}
export type TypeOf<C> = C extends Codec<infer T> ? T : never;
export type Fields = Record<string, Codec<any>>;
type OptKeys<S extends Fields> = { [K in keyof S]: S[K] extends { optional: true } ? K : never }[keyof S];
type Flat<T> = { [K in keyof T]: T[K] };
/** The value type of a field list: optional codecs make optional properties. */
export type StructOf<S extends Fields> = Flat<{ [K in Exclude<keyof S, OptKeys<S>>]: TypeOf<S[K]> } & { [K in OptKeys<S>]?: TypeOf<S[K]> }>;

const corrupt = (msg: string) => new TrustvolError("ECORRUPT", msg, "the TPM or the sealed blob is damaged");

export const u8: Codec<number> = { write: (w, v) => void w.u8(v), read: (r) => r.u8() };
export const u16: Codec<number> = { write: (w, v) => void w.u16(v), read: (r) => r.u16() };
export const u32: Codec<number> = { write: (w, v) => void w.u32(v), read: (r) => r.u32() };
export const u64: Codec<bigint> = { write: (w, v) => void w.u64(v), read: (r) => r.u64() };
/** TPMI_YES_NO. */
export const yesNo: Codec<boolean> = { write: (w, v) => void w.u8(v ? 1 : 0), read: (r) => r.u8() !== 0 };
/** TPMI_ALG_HASH as a hash name. */
export const hashAlg: Codec<HashName> = {
  write: (w, v) => void w.u16(HASH_ALG[v]),
  read: (r) => {
    const a = r.u16();
    try {
      return hashNameOf(a);
    } catch {
      throw corrupt(`unsupported hash algorithm 0x${a.toString(16)}`);
    }
  },
};

/** TPM2B_*: u16 size then at most `max` bytes. */
export function tpm2b(max = 0xffff): Codec<Buffer> {
  return { tpm2b: true, write: (w, v) => void w.tpm2b(v), read: (r) => r.tpm2b(max) };
}
/** A size-prefixed structure (TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPM2B_NV_PUBLIC): the size follows from the body. */
export function sized<T>(inner: Codec<T>): Codec<T> {
  return { tpm2b: true, write: (w, v) => void w.sized((x) => inner.write(x, v)), read: (r) => r.sized((x) => inner.read(x)) };
}
/** A value plus the exact bytes it was read from (blobs store what the TPM returned, byte for byte). */
export function keepBytes<T>(inner: Codec<T>): Codec<{ value: T; bytes: Buffer }> {
  return {
    ...(inner.tpm2b ? { tpm2b: true } : {}),
    write: (w, v) => void w.bytes(v.bytes),
    read: (r) => {
      const start = r.off;
      const value = inner.read(r);
      return { value, bytes: Buffer.from(r.buf.subarray(start, r.off)) };
    },
  };
}
/** Bytes that must already hold a marshalled `inner` (passed through untouched, checked). */
export function preMarshalled<T>(inner: Codec<T>): Codec<Buffer> {
  return {
    ...(inner.tpm2b ? { tpm2b: true } : {}),
    write: (w, v) => {
      const r = new TpmReader(v, "pre-marshalled structure");
      inner.read(r);
      r.end();
      w.bytes(v);
    },
    read: (r) => {
      const start = r.off;
      inner.read(r);
      return Buffer.from(r.buf.subarray(start, r.off));
    },
  };
}
/** A field that may be left out of the value; `fallback` is marshalled instead. */
export function opt<T>(inner: Codec<T>, fallback: () => T): Codec<T> & { optional: true } {
  return { ...(inner.tpm2b ? { tpm2b: true } : {}), optional: true, write: (w, v) => inner.write(w, v === undefined ? fallback() : v), read: (r) => inner.read(r) };
}
/** TPML_*: u32 count then the items (count bounded: the input is hostile). */
export function list<T>(item: Codec<T>, max: number, what = "TPM list"): Codec<T[]> {
  return {
    write: (w, v) => {
      w.u32(v.length);
      for (const x of v) item.write(w, x);
    },
    read: (r) => {
      const n = r.u32();
      if (n > max) throw corrupt(`${what}: implausible count ${n}`);
      const out: T[] = [];
      for (let i = 0; i < n; i++) out.push(item.read(r));
      return out;
    },
  };
}
/** Whatever remains of the parameter area (for capability data trustvol does not interpret). */
export const rest: Codec<Buffer> = { write: (w, v) => void w.bytes(v), read: (r) => Buffer.from(r.bytes(r.remaining)) };

function writeFields(w: TpmWriter, fields: Fields, v: Record<string, unknown>): void {
  for (const [k, c] of Object.entries(fields)) c.write(w, v[k]);
}
function readFields(r: TpmReader, fields: Fields, into: Record<string, unknown>): void {
  for (const [k, c] of Object.entries(fields)) into[k] = c.read(r);
}

/** A TPMS_/TPMT_ structure: the fields in declaration order. */
export function struct<S extends Fields>(fields: S): Codec<StructOf<S>> & { fields: S } {
  const first = Object.values(fields)[0];
  return {
    fields,
    ...(first?.tpm2b ? { tpm2b: true } : {}),
    write: (w, v) => writeFields(w, fields, v as Record<string, unknown>),
    read: (r) => {
      const o: Record<string, unknown> = {};
      readFields(r, fields, o);
      return o as StructOf<S>;
    },
  };
}

/**
 * A tagged union (TPMT_PUBLIC, TPMT_SYM_DEF, TPMT_SIGNATURE, TPMS_CAPABILITY_DATA...): the tag field, the fields
 * common to every member, then the member's fields selected by the tag (`other` for any tag not listed, else the
 * tag is refused). `defaults` fills value properties that a member does not marshal (so every member has one shape).
 */
export function union<T>(d: {
  what: string;
  tag: [name: string, codec: Codec<number>];
  common?: Fields;
  cases: Record<number, Fields>;
  other?: Fields;
  defaults?: Record<number, () => Record<string, unknown>>;
}): Codec<T> {
  const [tagName, tagCodec] = d.tag;
  const member = (tag: number): Fields => {
    const m = d.cases[tag] ?? d.other;
    if (!m) throw new TrustvolError("EUNSUPPORTED", `${d.what}: unsupported selector 0x${tag.toString(16)}`, "the structure was not made by a TPM 2.0 tool trustvol knows");
    return m;
  };
  return {
    write: (w, v) => {
      const o = v as Record<string, unknown>;
      const tag = o[tagName] as number;
      tagCodec.write(w, tag);
      if (d.common) writeFields(w, d.common, o);
      writeFields(w, member(tag), o);
    },
    read: (r) => {
      const tag = tagCodec.read(r);
      const o: Record<string, unknown> = { [tagName]: tag };
      if (d.common) readFields(r, d.common, o);
      readFields(r, member(tag), o);
      const def = d.defaults?.[tag];
      if (def) for (const [k, v] of Object.entries(def())) if (!(k in o)) o[k] = v;
      return o as T;
    },
  };
}

/** Marshal one value to a fresh buffer / parse a buffer that must hold exactly one value. */
export function encode<T>(c: Codec<T>, v: T, initial = 256): Buffer {
  const w = new TpmWriter(initial);
  c.write(w, v);
  return w.finish();
}
export function decode<T>(c: Codec<T>, b: Buffer, what: string): T {
  const r = new TpmReader(b, what);
  const v = c.read(r);
  r.end();
  return v;
}
