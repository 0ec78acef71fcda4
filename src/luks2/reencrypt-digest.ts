// The re-encryption digest (cryptsetup lib/luks2/luks2_reencrypt_digest.c): a pbkdf2 digest, bound to the reencrypt
// keyslot, over "v<version>" ‖ old key ‖ new key ‖ reencrypt keyslot fields ‖ backup segments. It binds both volume
// keys to the metadata so a tampered keyslot/segment set is refused before any data is touched.
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { createDigest, verifyDigest } from "./digest.js";
import type { Json, Luks2Digest, Luks2Metadata } from "./metadata.js";

const MAX_STR = 64;
const isObj = (v: unknown): v is Record<string, Json> => typeof v === "object" && v !== null && !Array.isArray(v);

type Field = ["str" | "u64" | "x64" | "u32", Record<string, Json> | undefined, string];

/** Serialize fields as cryptsetup's srs(): null when any field is missing or mistyped (then no digest matches). */
function fields(list: Field[]): Buffer | null {
  const out: Buffer[] = [];
  for (const [type, obj, key] of list) {
    if (!isObj(obj) || !(key in obj)) return null;
    const v = obj[key];
    if (type === "str") {
      if (typeof v !== "string" || v.length === 0 || Buffer.byteLength(v) > MAX_STR) return null;
      out.push(Buffer.from(v, "utf8"));
    } else if (type === "u64" || type === "x64") {
      if (typeof v !== "string") return null;
      if (type === "x64" && v === "dynamic") {
        out.push(Buffer.from("dynamic"));
        continue;
      }
      if (!/^[0-9]{1,20}$/.test(v) || BigInt(v) >= 1n << 64n) return null;
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(BigInt(v));
      out.push(b);
    } else {
      if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > 0xffffffff) return null;
      const b = Buffer.alloc(4);
      b.writeUInt32BE(v);
      out.push(b);
    }
  }
  return Buffer.concat(out);
}

function segmentBytes(s: Record<string, Json> | undefined): Buffer | null {
  if (!s) return null;
  if (s.type === "crypt")
    return fields([["str", s, "type"], ["u64", s, "offset"], ["x64", s, "size"], ["u64", s, "iv_tweak"], ["str", s, "encryption"], ["u32", s, "sector_size"]]);
  if (s.type === "linear") return fields([["str", s, "type"], ["u64", s, "offset"], ["x64", s, "size"]]);
  return null;
}

function segByFlag(m: Luks2Metadata, flag: string): Record<string, Json> | undefined {
  const ids = Object.keys(m.segments).sort((a, b) => Number(a) - Number(b));
  for (const id of ids) {
    const s = m.segments[id] as unknown as Record<string, Json>;
    if (Array.isArray(s.flags) && s.flags.includes(flag)) return s;
  }
  return undefined;
}

export function reencryptKeyslotId(m: Luks2Metadata): string | undefined {
  return Object.keys(m.keyslots)
    .sort((a, b) => Number(a) - Number(b))
    .find((k) => m.keyslots[k]!.type === "reencrypt");
}

function keyslotBytes(m: Luks2Metadata): Buffer | null {
  const id = reencryptKeyslotId(m);
  if (id === undefined) return null;
  const ks = m.keyslots[id] as unknown as Record<string, Json>;
  const area = isObj(ks.area) ? ks.area : undefined;
  const base: Field[] = [["str", ks, "mode"], ["str", ks, "direction"], ["str", area, "type"], ["u64", area, "offset"], ["u64", area, "size"]];
  const t = area?.type;
  if (t === "datashift-checksum") return fields([...base, ["str", area, "hash"], ["u32", area, "sector_size"], ["u64", area, "shift_size"]]);
  if (t === "datashift" || t === "datashift-journal") return fields([...base, ["u64", area, "shift_size"]]);
  if (t === "checksum") return fields([...base, ["str", area, "hash"], ["u32", area, "sector_size"]]);
  return fields(base);
}

function backupSegmentsBytes(m: Luks2Metadata): Buffer | null {
  const prev = segmentBytes(segByFlag(m, "backup-previous"));
  const fin = segmentBytes(segByFlag(m, "backup-final"));
  if (!prev || !fin) return null;
  const movedSeg = segByFlag(m, "backup-moved-segment");
  const moved = movedSeg ? segmentBytes(movedSeg) : Buffer.alloc(0);
  if (!moved) return null;
  return Buffer.concat([prev, fin, moved]);
}

/** Digest ids of the backup-previous (old) and backup-final (new) segments; -1 when absent (encrypt / decrypt). */
export function reencryptDigestIds(m: Luks2Metadata): { old: number; new: number } {
  const byFlag = (flag: string): number => {
    const id = Object.keys(m.segments).find((k) => (m.segments[k]!.flags ?? []).includes(flag));
    if (id === undefined) return -1;
    const d = Object.keys(m.digests).find((k) => m.digests[k]!.segments.includes(id));
    return d === undefined ? -1 : Number(d);
  };
  return { old: byFlag("backup-previous"), new: byFlag("backup-final") };
}

/** Requirement version of online-reencrypt-vN (2 for "online-reencrypt-v2"; 1 for the old "online-reencrypt"). */
export function reencryptRequirementVersion(m: Luks2Metadata): number | undefined {
  for (const r of m.config.requirements?.mandatory ?? []) {
    if (r === "online-reencrypt") return 1;
    const x = /^online-reencrypt-v([0-9]+)$/.exec(r);
    if (x) return Number(x[1]);
  }
  return undefined;
}

/**
 * The verification data (a secret: it holds the keys; the caller wipes it). keys maps digest id → volume key.
 * Returns null when the metadata lacks a field cryptsetup would serialize (then verification must fail).
 */
export function verificationData(m: Luks2Metadata, keys: Map<number, Uint8Array>, version: number): Buffer | null {
  const ids = reencryptDigestIds(m);
  const parts: Uint8Array[] = [Buffer.from([0x76, 0x30 + version])];
  let haveKey = false;
  if (ids.old >= 0) {
    const k = keys.get(ids.old);
    if (!k) return null;
    parts.push(k);
    haveKey = true;
  }
  if (ids.new >= 0 && ids.new !== ids.old) {
    const k = keys.get(ids.new);
    if (!k) return null;
    parts.push(k);
    haveKey = true;
  }
  if (!haveKey) return null;
  const ks = keyslotBytes(m);
  const segs = backupSegmentsBytes(m);
  if (!ks || !segs) return null;
  parts.push(ks, segs);
  const len = parts.reduce((n, p) => n + p.length, 0);
  const out = Buffer.allocUnsafeSlow(len);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** The digest bound to the reencrypt keyslot verifies against these keys and this metadata. */
export function verifyReencryptDigest(m: Luks2Metadata, keys: Map<number, Uint8Array>): boolean {
  const ks = reencryptKeyslotId(m);
  const version = reencryptRequirementVersion(m);
  if (ks === undefined || version === undefined || version < 2) return false;
  const dId = Object.keys(m.digests).find((d) => m.digests[d]!.keyslots.includes(ks));
  if (dId === undefined) return false;
  const data = verificationData(m, keys, version);
  if (!data) return false;
  try {
    return verifyDigest(m.digests[dId]!, data);
  } finally {
    wipe(data);
  }
}

/** Create (or replace) the reencrypt digest in m, in place, bound to the reencrypt keyslot (as cryptsetup does). */
export function assignReencryptDigest(m: Luks2Metadata, keys: Map<number, Uint8Array>, opts: { version?: number; iterations?: number } = {}): void {
  const ks = reencryptKeyslotId(m);
  if (ks === undefined) throw new TrustvolError("EINTERNAL", "no reencrypt keyslot to bind the re-encryption digest to");
  const data = verificationData(m, keys, opts.version ?? 2);
  if (!data) throw new TrustvolError("EINTERNAL", "re-encryption metadata is incomplete (keys or backup segments missing)");
  let d: Luks2Digest;
  try {
    d = createDigest(data, { keyslots: [ks], segments: [], iterations: opts.iterations ?? 1000 });
  } finally {
    wipe(data);
  }
  // the new id is taken before the digest it replaces is erased, as cryptsetup does (a resilience change: 2 → 3)
  let id = 0;
  while (String(id) in m.digests) id++;
  for (const dg of Object.values(m.digests)) dg.keyslots = dg.keyslots.filter((k) => k !== ks);
  for (const [id, dg] of Object.entries(m.digests)) if (!dg.keyslots.length && !dg.segments.length) delete m.digests[id];
  m.digests[String(id)] = d;
}
