// LUKS2 JSON metadata: types and the validation cryptsetup applies before trusting a header
// (LUKS2 spec §3, cryptsetup lib/luks2/luks2_json_metadata.c). Unknown fields are kept as-is.
import { TrustvolError } from "../util/errors.js";
import {
  LUKS2_KEYSLOTS_MAX,
  LUKS2_TOKENS_MAX,
  LUKS2_SEGMENT_MAX,
  LUKS2_DIGEST_MAX,
  LUKS2_BINARY_HEADER_SIZE,
  LUKS2_MAX_KEYSLOTS_SIZE,
  LUKS_STRIPES,
  ALIGN_4K,
  SECTOR_SIZE,
} from "./constants.js";
import { validateReencryptKeyslot } from "./reencrypt-validate.js";

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type JsonObject = { [k: string]: Json };

export interface KdfPbkdf2 { type: "pbkdf2"; hash: string; iterations: number; salt: string }
export interface KdfArgon2 { type: "argon2i" | "argon2id"; time: number; memory: number; cpus: number; salt: string }
export type Kdf = KdfPbkdf2 | KdfArgon2;

export interface Luks2Keyslot {
  type: "luks2" | "reencrypt" | string;
  key_size: number;
  priority?: number;
  af?: { type: "luks1"; stripes: number; hash: string };
  area: { type: string; offset: string; size: string; encryption?: string; key_size?: number; [k: string]: Json | undefined };
  kdf?: Kdf;
  [k: string]: Json | undefined | object;
}
export interface Luks2Token { type: string; keyslots: string[]; [k: string]: Json }
export interface Luks2Segment {
  type: "crypt" | "linear" | string;
  offset: string;
  size: string; // "dynamic" or uint64 string
  iv_tweak?: string;
  encryption?: string;
  sector_size?: number;
  flags?: string[];
  [k: string]: Json | undefined;
}
export interface Luks2Digest { type: "pbkdf2" | string; keyslots: string[]; segments: string[]; hash: string; iterations: number; salt: string; digest: string; [k: string]: Json }
export interface Luks2Config { json_size: string; keyslots_size: string; flags?: string[]; requirements?: { mandatory?: string[]; [k: string]: Json | undefined }; [k: string]: Json | undefined | object }
export interface Luks2Metadata {
  keyslots: Record<string, Luks2Keyslot>;
  tokens: Record<string, Luks2Token>;
  segments: Record<string, Luks2Segment>;
  digests: Record<string, Luks2Digest>;
  config: Luks2Config;
  [k: string]: unknown;
}

const HINT = "the header is damaged or was not written by a LUKS2 tool; try `trustvol repair` or restore a header backup";
const bad = (msg: string) => new TrustvolError("ECORRUPT", `LUKS2 metadata: ${msg}`, HINT);

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const U64_MAX = (1n << 64n) - 1n;

/** A 64-bit number stored as a decimal string (spec §3: "uint64 as string"). */
export function parseU64String(v: unknown, what: string): bigint {
  if (typeof v !== "string" || !/^[0-9]{1,20}$/.test(v)) throw bad(`${what} must be a decimal string`);
  const n = BigInt(v);
  if (n > U64_MAX) throw bad(`${what} is out of range`);
  return n;
}
/** Same, but the value must fit a JS number for offset arithmetic (8 PiB). */
export function u64Num(v: unknown, what: string): number {
  const n = parseU64String(v, what);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`${what} is too large`);
  return Number(n);
}
function int(v: unknown, what: string, min = 0, max = 0x7fffffff): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) throw bad(`${what} must be an integer in ${min}..${max}`);
  return v;
}
function str(v: unknown, what: string, maxLen = 1024): string {
  if (typeof v !== "string" || v.length === 0 || v.length > maxLen) throw bad(`${what} must be a non-empty string`);
  return v;
}
function b64(v: unknown, what: string): Buffer {
  if (typeof v !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(v) || v.length % 4 !== 0) throw bad(`${what} must be base64`);
  return Buffer.from(v, "base64");
}
function numberedKeys(o: Record<string, unknown>, what: string, max: number): string[] {
  const keys = Object.keys(o);
  for (const k of keys) if (!/^(0|[1-9][0-9]?)$/.test(k) || Number(k) >= max) throw bad(`${what} id "${k.slice(0, 16)}" is not a number below ${max}`);
  return keys;
}
function idArray(v: unknown, what: string, exists: (id: string) => boolean, allowDuplicates = false): string[] {
  if (!Array.isArray(v)) throw bad(`${what} must be an array`);
  if (v.length > 64) throw bad(`${what} has too many entries`);
  const seen = new Set<string>();
  for (const x of v) {
    if (typeof x !== "string" || !/^(0|[1-9][0-9]?)$/.test(x)) throw bad(`${what} must list ids as decimal strings`);
    if (!exists(x)) throw bad(`${what} references missing id ${x}`);
    if (seen.has(x) && !allowDuplicates) throw bad(`${what} lists id ${x} twice`);
    seen.add(x);
  }
  return v as string[];
}
function strArray(v: unknown, what: string): string[] {
  if (!Array.isArray(v) || v.length > 64 || !v.every((x) => typeof x === "string" && x.length > 0 && x.length < 256)) throw bad(`${what} must be an array of strings`);
  return v as string[];
}

/** Structure only, like cryptsetup: an unknown KDF type or absurd costs leave the header readable (refused at unlock). */
export function validateKdf(k: unknown, what: string): Kdf {
  if (!isObj(k)) throw bad(`${what}.kdf missing`);
  const type = str(k.type, `${what}.kdf.type`, 64);
  str(k.salt, `${what}.kdf.salt`, 1024);
  if (type === "pbkdf2") {
    str(k.hash, `${what}.kdf.hash`, 32);
    int(k.iterations, `${what}.kdf.iterations`, 0, Number.MAX_SAFE_INTEGER);
  } else if (type === "argon2i" || type === "argon2id") {
    int(k.time, `${what}.kdf.time`, 0, Number.MAX_SAFE_INTEGER);
    int(k.memory, `${what}.kdf.memory`, 0, Number.MAX_SAFE_INTEGER);
    int(k.cpus, `${what}.kdf.cpus`, 0, Number.MAX_SAFE_INTEGER);
  }
  return k as unknown as Kdf;
}

/** json-c (cryptsetup's parser) refuses nesting deeper than this (JSON_TOKENER_DEFAULT_DEPTH). */
export const JSON_MAX_DEPTH = 32;

/** Nesting depth of JSON text, counted without parsing (so hostile depth can't overflow the parser's stack). */
export function jsonDepth(text: string): number {
  let depth = 0, max = 0, inStr = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inStr) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inStr = false;
    } else if (c === 0x22) inStr = true;
    else if (c === 0x7b || c === 0x5b) max = Math.max(max, ++depth);
    else if (c === 0x7d || c === 0x5d) depth--;
  }
  return max;
}

/** Nesting depth of a parsed value, walked without recursion (a deep token must not overflow the stack). */
function valueDepth(v: unknown): number {
  let max = 0;
  const stack: [unknown, number][] = [[v, 1]];
  while (stack.length) {
    const [x, d] = stack.pop()!;
    if (typeof x !== "object" || x === null) continue;
    max = Math.max(max, d);
    if (d > JSON_MAX_DEPTH) return d;
    for (const c of Object.values(x)) stack.push([c, d + 1]);
  }
  return max;
}

/** Parse and validate the JSON text of one header copy. hdrSize is the copy's binary hdr_size. */
export function parseMetadata(jsonText: string, hdrSize: number): Luks2Metadata {
  if (!jsonText.startsWith("{")) throw bad("JSON area does not start with \"{\"");
  if (jsonDepth(jsonText) > JSON_MAX_DEPTH) throw bad(`JSON is nested deeper than ${JSON_MAX_DEPTH} levels`);
  let j: unknown;
  try {
    j = JSON.parse(jsonText);
  } catch {
    throw bad("JSON area does not parse");
  }
  return validateMetadata(j, hdrSize);
}

/** cryptsetup reencrypt_candidate_flag: "online-reencrypt" or "online-reencrypt-v" and digits. */
export const isReencryptCandidateFlag = (r: string): boolean => r === "online-reencrypt" || /^online-reencrypt-v[0-9]+$/.test(r);

/**
 * cryptsetup validate_reencrypt_segments: both backups exist; a data segment in re-encryption is of the final kind,
 * any other of the final or the previous kind (json_segment_cmp: type; crypt: sector size and cipher).
 */
function validateReencryptSegments(m: Luks2Metadata): void {
  const ids = Object.keys(m.segments).map(Number).sort((a, b) => a - b);
  const flagsOf = (sg: Luks2Segment) => (Array.isArray(sg.flags) ? sg.flags : []);
  let final: Luks2Segment | undefined, previous: Luks2Segment | undefined;
  for (const id of ids) {
    const sg = m.segments[String(id)]!;
    if (flagsOf(sg).includes("backup-final")) final = sg;
    else if (flagsOf(sg).includes("backup-previous")) previous = sg;
  }
  if (!final || !previous) throw bad("re-encryption without its backup-final and backup-previous segments");
  const same = (a: Luks2Segment, b: Luks2Segment) => a.type === b.type && (a.type !== "crypt" || (a.sector_size === b.sector_size && a.encryption === b.encryption));
  for (const id of ids) {
    const sg = m.segments[String(id)]!;
    if (flagsOf(sg).some((f) => f.startsWith("backup-"))) continue;
    if (flagsOf(sg).includes("in-reencryption") ? !same(sg, final) : !same(sg, final) && !same(sg, previous))
      throw bad(`segment ${id} matches neither the previous nor the final segment of the re-encryption`);
  }
}

export function validateMetadata(j: unknown, hdrSize: number): Luks2Metadata {
  if (!isObj(j)) throw bad("top level is not an object");
  if (valueDepth(j) > JSON_MAX_DEPTH) throw bad(`JSON is nested deeper than ${JSON_MAX_DEPTH} levels`);
  for (const sect of ["keyslots", "tokens", "segments", "digests", "config"]) if (!isObj(j[sect])) throw bad(`missing "${sect}" object`);
  const m = j as unknown as Luks2Metadata;

  // config (spec §3.5)
  const cfg = m.config as unknown as Record<string, unknown>;
  const jsonSize = u64Num(cfg.json_size, "config.json_size");
  if (jsonSize !== hdrSize - LUKS2_BINARY_HEADER_SIZE) throw bad(`config.json_size ${jsonSize} does not match the header size ${hdrSize}`);
  const keyslotsSize = u64Num(cfg.keyslots_size, "config.keyslots_size");
  if (keyslotsSize % ALIGN_4K !== 0) throw bad("config.keyslots_size is not 4096-aligned");
  if (keyslotsSize > LUKS2_MAX_KEYSLOTS_SIZE) throw bad("config.keyslots_size is too large");
  if (cfg.flags !== undefined) strArray(cfg.flags, "config.flags");
  if (cfg.requirements !== undefined) {
    if (!isObj(cfg.requirements)) throw bad("config.requirements must be an object");
    if (cfg.requirements.mandatory !== undefined) strArray(cfg.requirements.mandatory, "config.requirements.mandatory");
  }
  const reqs = (cfg.requirements as { mandatory?: string[] } | undefined)?.mandatory ?? [];
  if (reqs.some((r) => r.startsWith("online-reencrypt")) && !Object.values(m.keyslots).some((k) => isObj(k) && k.type === "reencrypt"))
    throw bad("online-reencrypt requirement without a reencrypt keyslot");
  // cryptsetup hdr_validate_requirements / LUKS2_keyslots_validate: one re-encryption flag, and none without a keyslot
  const reencFlags = reqs.filter(isReencryptCandidateFlag);
  if (reencFlags.length > 1) throw bad(`more than one re-encryption requirement flag (${reencFlags.join(", ")})`);
  const reencSlots = Object.values(m.keyslots).filter((k) => isObj(k) && k.type === "reencrypt").length;
  if (reencSlots > 1) throw bad("more than one reencrypt keyslot");
  if (reencSlots && !reencFlags.length) throw bad("a reencrypt keyslot without a re-encryption requirement flag");
  const areaStart = 2 * hdrSize;
  const areaEnd = areaStart + keyslotsSize;

  // keyslots (spec §3.2)
  const ksIds = numberedKeys(m.keyslots, "keyslot", LUKS2_KEYSLOTS_MAX);
  const areas: { id: string; start: number; end: number }[] = [];
  for (const id of ksIds) {
    const ks = m.keyslots[id] as unknown;
    const w = `keyslot ${id}`;
    if (!isObj(ks)) throw bad(`${w} is not an object`);
    const type = str(ks.type, `${w}.type`, 64);
    if (!isObj(ks.area)) throw bad(`${w}.area missing`);
    const aType = str(ks.area.type, `${w}.area.type`, 32);
    const off = u64Num(ks.area.offset, `${w}.area.offset`);
    const size = u64Num(ks.area.size, `${w}.area.size`);
    // priority: any JSON value loads (cryptsetup 2.6.1 reads it with json-c's int conversion when it unlocks): keyslotPriority()
    if (type === "luks2") {
      int(ks.key_size, `${w}.key_size`, 1, 1024);
      if (!isObj(ks.af) || ks.af.type !== "luks1") throw bad(`${w}.af must be of type luks1`);
      if (int(ks.af.stripes, `${w}.af.stripes`, 1) !== LUKS_STRIPES) throw bad(`${w}.af.stripes must be ${LUKS_STRIPES}`);
      str(ks.af.hash, `${w}.af.hash`, 32);
      if (aType !== "raw") throw bad(`${w}.area.type must be raw`);
      str(ks.area.encryption, `${w}.area.encryption`, 64);
      // Any JSON integer loads (cryptsetup 2.6.1 loads 4000, -1, 2^53 and opens through the other keyslots); the range is
      // checked when this keyslot is opened (keyslot.ts), so only it is unusable.
      if (typeof ks.area.key_size !== "number" || !Number.isInteger(ks.area.key_size)) throw bad(`${w}.area.key_size must be an integer`);
      validateKdf(ks.kdf, w);
      // An area too small for its key material makes only this keyslot unusable (checked when it is opened), as in cryptsetup.
    } else if (type === "reencrypt") {
      str(ks.mode, `${w}.mode`, 32);
      str(ks.direction, `${w}.direction`, 32);
      int(ks.key_size, `${w}.key_size`, 1, 1);
      validateReencryptKeyslot(ks, w);
    }
    // The size need not be sector-aligned to load (cryptsetup 2.6.1 loads area.size "01"): a size below the key
    // material makes only that keyslot unusable, checked when it is opened.
    if (off % SECTOR_SIZE !== 0) throw bad(`${w}.area is not sector-aligned`);
    if (size === 0 || off < areaStart || off + size > areaEnd) throw bad(`${w}.area [${off}, ${off + size}) lies outside the keyslots area [${areaStart}, ${areaEnd})`);
    areas.push({ id, start: off, end: off + size });
  }
  areas.sort((a, b) => a.start - b.start);
  for (let i = 1; i < areas.length; i++)
    if (areas[i]!.start < areas[i - 1]!.end) throw bad(`keyslot ${areas[i - 1]!.id} and keyslot ${areas[i]!.id} areas overlap`);

  // segments (spec §3.3)
  const segIds = numberedKeys(m.segments, "segment", LUKS2_SEGMENT_MAX);
  const segs: { id: string; start: number; end: number; backup: boolean }[] = [];
  for (const id of segIds) {
    const s = m.segments[id] as unknown;
    const w = `segment ${id}`;
    if (!isObj(s)) throw bad(`${w} is not an object`);
    const type = str(s.type, `${w}.type`, 32);
    const off = u64Num(s.offset, `${w}.offset`);
    const dynamic = s.size === "dynamic";
    // Up to 2^64-1 like cryptsetup (BigInt); only overlap arithmetic needs a number, where 2^53+ is as good as infinite.
    const bigSize = dynamic ? 0n : parseU64String(s.size, `${w}.size`);
    if (!dynamic && bigSize === 0n) throw bad(`${w}.size is zero`);
    const size = dynamic ? Infinity : Number(bigSize);
    let backup = false;
    if (s.flags !== undefined) backup = strArray(s.flags, `${w}.flags`).some((f) => f.startsWith("backup-"));
    if (type === "crypt") {
      parseU64String(s.iv_tweak, `${w}.iv_tweak`);
      str(s.encryption, `${w}.encryption`, 64);
      const ss = int(s.sector_size, `${w}.sector_size`, 512, 4096);
      if (![512, 1024, 2048, 4096].includes(ss)) throw bad(`${w}.sector_size must be 512, 1024, 2048 or 4096`);
      if (s.integrity !== undefined && !isObj(s.integrity)) throw bad(`${w}.integrity must be an object`);
      if (off % ss !== 0 && off % SECTOR_SIZE !== 0) throw bad(`${w}.offset is not aligned`);
      if (!dynamic && bigSize % BigInt(ss) !== 0n) throw bad(`${w}.size is not a multiple of its sector size`);
    }
    if (off % SECTOR_SIZE !== 0) throw bad(`${w}.offset is not sector-aligned`);
    if (!dynamic && bigSize % BigInt(SECTOR_SIZE) !== 0n) throw bad(`${w}.size is not a multiple of ${SECTOR_SIZE}`);
    segs.push({ id, start: off, end: off + size, backup });
  }
  // cryptsetup checks the lowest data segment offset only (json_segments_get_minimal_offset skips backups): 0 =
  // detached header (mid re-encryption others may be > 0).
  const firstOff = Math.min(...segs.filter((s) => !s.backup).map((s) => s.start));
  if (segs.length && firstOff !== 0 && firstOff < areaEnd) throw bad(`segment offset ${firstOff} lies inside the metadata/keyslots area (ends at ${areaEnd})`);
  const live = segs.filter((s) => !s.backup).sort((a, b) => a.start - b.start);
  for (let i = 1; i < live.length; i++) if (live[i]!.start < live[i - 1]!.end) throw bad(`segments ${live[i - 1]!.id} and ${live[i]!.id} overlap`);
  // cryptsetup hdr_validate_segments: ids 0..n-1, the data segments first, then the backups; only the last data
  // segment may be dynamic
  for (let i = 0; i < segIds.length; i++) if (!(String(i) in m.segments)) throw bad(`segment ids skip ${i}`);
  const firstBackup = segs.filter((s) => s.backup).reduce((a, s) => Math.min(a, Number(s.id)), segIds.length);
  if (segIds.length && firstBackup === 0) throw bad("no data segment, only backup segments");
  for (const sg of segs) {
    if (!sg.backup && Number(sg.id) > firstBackup) throw bad(`data segment ${sg.id} comes after backup segment ${firstBackup}`);
    if (!sg.backup && sg.end === Infinity && Number(sg.id) !== firstBackup - 1) throw bad(`segment ${sg.id} is dynamic but not the last data segment`);
  }

  // digests (spec §3.4)
  const dIds = numberedKeys(m.digests, "digest", LUKS2_DIGEST_MAX);
  const slotOwner = new Map<string, string>();
  for (const id of dIds) {
    const d = m.digests[id] as unknown;
    const w = `digest ${id}`;
    if (!isObj(d)) throw bad(`${w} is not an object`);
    const type = str(d.type, `${w}.type`, 32);
    const kss = idArray(d.keyslots, `${w}.keyslots`, (x) => x in m.keyslots);
    idArray(d.segments, `${w}.segments`, (x) => x in m.segments, true); // cryptsetup accepts a segment listed twice
    for (const k of kss) {
      if (slotOwner.has(k)) throw bad(`keyslot ${k} is assigned to digests ${slotOwner.get(k)} and ${id}`);
      slotOwner.set(k, id);
    }
    if (type === "pbkdf2") {
      // hash and digest are checked when a key is verified (cryptsetup loads them unchecked; a bad one matches no key).
      // A missing salt or iterations loads too (cryptsetup 2.6.1: luksDump works, the key check fails); a mistyped one is refused.
      if (d.iterations !== undefined) int(d.iterations, `${w}.iterations`, 1, 0xffffffff);
      if (d.salt !== undefined) str(d.salt, `${w}.salt`, 1024);
    }
  }

  // cryptsetup 2.6.1 refuses a crypt segment (a backup too: hdr_validate_crypt_segment) that no digest lists
  // (differential test, seed 99): its key could never be verified.
  for (const [id, sg] of Object.entries(m.segments))
    if (isObj(sg) && sg.type === "crypt" && !Object.values(m.digests).some((d) => isObj(d) && Array.isArray(d.segments) && d.segments.includes(id)))
      throw bad(`segment ${id} is not assigned to any digest`);
  // (any online-reencrypt requirement, v3 — decryption with a data shift — included, as cryptsetup does)
  if (reqs.some((r) => /^online-reencrypt(-v[0-9]+)?$/.test(r))) validateReencryptSegments(m);
  // cryptsetup refuses a keyslot no digest references: nothing could ever verify the key it yields.
  for (const k of ksIds) if (!slotOwner.has(k)) throw bad(`keyslot ${k} is not assigned to any digest`);

  // tokens (spec §3.6)
  const tIds = numberedKeys(m.tokens, "token", LUKS2_TOKENS_MAX);
  for (const id of tIds) {
    const t = m.tokens[id] as unknown;
    const w = `token ${id}`;
    if (!isObj(t)) throw bad(`${w} is not an object`);
    str(t.type, `${w}.type`, 64);
    idArray(t.keyslots, `${w}.keyslots`, (x) => x in m.keyslots);
  }
  return m;
}

/** Requirements we don't implement: a header that needs them must not be written or activated (spec §3.5). */
export function unknownRequirements(m: Luks2Metadata, known: Set<string>): string[] {
  const req = m.config.requirements?.mandatory ?? [];
  return req.filter((r) => !known.has(r));
}

/** Serialize like cryptsetup (json-c plain, no slash escaping): compact JSON. */
export function serializeMetadata(m: Luks2Metadata): string {
  return JSON.stringify(m);
}

export function sortedIds(o: Record<string, unknown>): number[] {
  return Object.keys(o).map(Number).sort((a, b) => a - b);
}

/**
 * A keyslot's priority as cryptsetup 2.6.1 reads it (json_object_get_int: numbers truncated, booleans 0/1, a string's
 * leading integer, anything else 0; absent = 1 normal). Only 2 (prefer) and 1 (normal) are tried without --key-slot.
 */
export function keyslotPriority(v: unknown): number {
  if (v === undefined) return 1;
  if (typeof v === "number") return Number.isFinite(v) ? Math.max(-(2 ** 31), Math.min(2 ** 31 - 1, Math.trunc(v))) : 0;
  if (typeof v === "boolean") return v ? 1 : 0;
  if (typeof v === "string") {
    const x = /^\s*([+-]?\d+)/.exec(v);
    return x ? Math.max(-(2 ** 31), Math.min(2 ** 31 - 1, Number(x[1]))) : 0;
  }
  return 0;
}
