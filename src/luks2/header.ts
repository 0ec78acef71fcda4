// Reading and writing the two LUKS2 header copies (LUKS2 spec §2.3): pick the valid copy with the highest seqid;
// write primary then secondary with a bumped seqid, so a power cut leaves one valid copy (old or new) at any instant.
import { randomBytes } from "node:crypto";
import type { BlockDevice } from "../blockdev/types.js";
import { TrustvolError } from "../util/errors.js";
import { parseBinaryHeader, encodeBinaryHeader, verifyChecksum, sealChecksum, checksumLength, type Luks2BinaryHeader } from "./binary-header.js";
import { parseMetadata, serializeMetadata, validateMetadata, u64Num, type Luks2Metadata } from "./metadata.js";
import { LUKS2_BINARY_HEADER_SIZE, LUKS2_HDR_SIZES, LUKS2_MAGIC_PRIMARY, LUKS2_MAGIC_SECONDARY, LUKS2_SALT_L } from "./constants.js";

export interface Luks2Header {
  hdrSize: number;
  seqid: bigint;
  label: string;
  subsystem: string;
  uuid: string;
  checksumAlg: string;
  salts: [Buffer, Buffer];
  metadata: Luks2Metadata;
}

export interface CopyStatus {
  offset: number;
  ok: boolean;
  seqid?: bigint;
  error?: string;
}

export interface ReadResult {
  header: Luks2Header;
  primary: CopyStatus;
  secondary: CopyStatus;
  /** True when one copy is damaged or older: `trustvol repair` (or the next write) rewrites it. */
  needsRepair: boolean;
}

interface ParsedCopy {
  bin: Luks2BinaryHeader;
  metadata: Luks2Metadata;
}

/** Parse one header copy from a full header area (binary header + JSON area). Pure. */
export function parseHeaderCopy(area: Buffer, expectOffset: number, expectPrimary: boolean): ParsedCopy {
  const bin = parseBinaryHeader(area);
  if (bin.primary !== expectPrimary) throw new TrustvolError("ECORRUPT", `LUKS2 ${expectPrimary ? "primary" : "secondary"} header has the wrong magic`);
  if (bin.version !== 2) throw new TrustvolError(bin.version === 1 ? "ENOTLUKS" : "ECORRUPT", `LUKS2 header: unsupported version ${bin.version}`);
  if (bin.hdrOffset !== expectOffset) throw new TrustvolError("ECORRUPT", `LUKS2 header at ${expectOffset} claims offset ${bin.hdrOffset}`);
  if (area.length < bin.hdrSize) throw new TrustvolError("ETRUNCATED", "LUKS2 header area is truncated");
  const full = area.subarray(0, bin.hdrSize);
  if (checksumLength(bin.checksumAlg) <= 0) throw new TrustvolError("ECORRUPT", `LUKS2 header: unknown checksum algorithm "${bin.checksumAlg}"`);
  if (!verifyChecksum(full, bin)) throw new TrustvolError("ECORRUPT", `LUKS2 header at offset ${expectOffset}: checksum mismatch`);
  const json = full.subarray(LUKS2_BINARY_HEADER_SIZE);
  const nul = json.indexOf(0);
  if (nul < 0) throw new TrustvolError("ECORRUPT", "LUKS2 metadata: JSON area is not NUL-terminated");
  if (nul === 0) throw new TrustvolError("ECORRUPT", "LUKS2 metadata: JSON area is empty");
  // cryptsetup requires the rest of the JSON area to be zero: nothing may hide after the text.
  for (let i = nul; i < json.length; i++) if (json[i] !== 0) throw new TrustvolError("ECORRUPT", `LUKS2 metadata: non-zero byte after the JSON text (offset ${4096 + i})`);
  const metadata = parseMetadata(json.subarray(0, nul).toString("utf8"), bin.hdrSize);
  return { bin, metadata };
}

async function tryRead(dev: BlockDevice, offset: number, primary: boolean): Promise<{ copy?: ParsedCopy; status: CopyStatus }> {
  try {
    if (offset + LUKS2_BINARY_HEADER_SIZE > dev.size) throw new TrustvolError("ETRUNCATED", "device too small for a LUKS2 header");
    const first = Buffer.alloc(LUKS2_BINARY_HEADER_SIZE);
    await dev.read(first, offset);
    const bin = parseBinaryHeader(first);
    if (offset + bin.hdrSize > dev.size) throw new TrustvolError("ETRUNCATED", `LUKS2 header at ${offset} runs past the end of the device`);
    const area = Buffer.alloc(bin.hdrSize);
    await dev.read(area, offset);
    const copy = parseHeaderCopy(area, offset, primary);
    return { copy, status: { offset, ok: true, seqid: copy.bin.seqid } };
  } catch (e) {
    if (!(e instanceof TrustvolError)) throw e;
    return { status: { offset, ok: false, error: e.message } };
  }
}

/** Quick check: does the device start with a LUKS magic (version 1 or 2)? */
export async function probeLuksVersion(dev: BlockDevice): Promise<1 | 2 | null> {
  if (dev.size < 8) return null;
  const b = Buffer.alloc(8);
  await dev.read(b, 0);
  const v = b.readUInt16BE(6);
  if (b.subarray(0, 6).equals(LUKS2_MAGIC_PRIMARY)) return v === 1 ? 1 : v === 2 ? 2 : null;
  if (b.subarray(0, 6).equals(LUKS2_MAGIC_SECONDARY) && v === 2) return 2;
  return null;
}

export async function readHeader(dev: BlockDevice): Promise<ReadResult> {
  if (dev.size < LUKS2_BINARY_HEADER_SIZE) throw new TrustvolError("ETRUNCATED", `${dev.name}: too small (${dev.size} bytes) to hold a LUKS2 header`, "the image is truncated or this is the wrong device");
  const p = await tryRead(dev, 0, true);
  let s: { copy?: ParsedCopy; status: CopyStatus } | undefined;
  if (p.copy) s = await tryRead(dev, p.copy.bin.hdrSize, false);
  else {
    // Primary unusable: the secondary sits at one of the allowed header sizes (spec §2.3).
    for (const off of LUKS2_HDR_SIZES) {
      const r = await tryRead(dev, off, false);
      if (r.copy || !s) s = r;
      if (r.copy) break;
    }
  }
  s ??= { status: { offset: LUKS2_HDR_SIZES[0]!, ok: false, error: "not found" } };
  const pc = p.copy, sc = s.copy;
  if (!pc && !sc) {
    const v = await probeLuksVersion(dev).catch(() => null);
    if (v === 1) throw new TrustvolError("EUNSUPPORTED", `${dev.name} is LUKS1, not LUKS2`, "this needs LUKS2: convert it (`cryptsetup convert --type luks2`), or use cryptsetup for LUKS1");
    const reason = p.status.error ?? "unreadable";
    if (/magic/.test(reason) && !/magic/.test(s.status.error ?? "magic")) throw new TrustvolError("ECORRUPT", `${dev.name}: both LUKS2 header copies are damaged (primary: ${reason}; secondary: ${s.status.error})`, "restore a header backup with `trustvol header restore`");
    if (/no LUKS2 header magic/.test(reason)) throw new TrustvolError("ENOTLUKS", `${dev.name} is not a LUKS device`, "check the device path; if it held a LUKS volume whose headers were wiped, restore a header backup (`trustvol header restore`)");
    throw new TrustvolError(/truncat|past the end|too small/.test(reason) ? "ETRUNCATED" : "ECORRUPT", `${dev.name}: no valid LUKS2 header (primary: ${reason}; secondary: ${s.status.error})`, "restore a header backup with `trustvol header restore`");
  }
  let use: ParsedCopy;
  if (pc && sc) {
    // Same seqid, different UUIDs: cryptsetup takes the primary and rewrites the secondary at the next write; so do we.
    use = sc.bin.seqid > pc.bin.seqid ? sc : pc;
  } else use = (pc ?? sc)!;
  // cryptsetup refuses a device that cannot hold both header copies and the whole keyslots area ("Device too small").
  const need = 2 * use.bin.hdrSize + u64Num(use.metadata.config.keyslots_size, "config.keyslots_size");
  if (dev.size < need) throw new TrustvolError("ETRUNCATED", `${dev.name} is too small (${dev.size} bytes): its LUKS2 metadata and keyslots need at least ${need} bytes`, "the image is truncated or this is the wrong device");
  const needsRepair = !pc || !sc || pc.bin.seqid !== sc.bin.seqid || pc.bin.uuid !== sc.bin.uuid;
  const other = use === pc ? sc : pc;
  const header: Luks2Header = {
    hdrSize: use.bin.hdrSize,
    seqid: use.bin.seqid,
    label: use.bin.label,
    subsystem: use.bin.subsystem,
    uuid: use.bin.uuid,
    checksumAlg: use.bin.checksumAlg,
    salts: [pc?.bin.salt ?? other?.bin.salt ?? randomBytes(LUKS2_SALT_L), sc?.bin.salt ?? randomBytes(LUKS2_SALT_L)],
    metadata: use.metadata,
  };
  return { header, primary: p.status, secondary: s.status, needsRepair };
}

/** Build both header copies (each hdr_size bytes) for writing. Pure. Validates the metadata first. */
export function encodeHeaderCopies(h: Luks2Header): [Buffer, Buffer] {
  const text = serializeMetadata(h.metadata);
  validateMetadata(JSON.parse(text), h.hdrSize); // never write what we would refuse to read
  const json = Buffer.from(text, "utf8");
  const jsonArea = h.hdrSize - LUKS2_BINARY_HEADER_SIZE;
  if (json.length >= jsonArea) throw new TrustvolError("ENOSPC", `LUKS2 metadata (${json.length} bytes) does not fit the ${jsonArea}-byte JSON area`, "remove tokens or keyslots, or reformat with a larger --luks2-metadata-size");
  const out: Buffer[] = [];
  for (const primary of [true, false]) {
    const area = Buffer.alloc(h.hdrSize);
    encodeBinaryHeader({
      primary,
      version: 2,
      hdrSize: h.hdrSize,
      seqid: h.seqid,
      label: h.label,
      checksumAlg: h.checksumAlg,
      salt: h.salts[primary ? 0 : 1],
      uuid: h.uuid,
      subsystem: h.subsystem,
      hdrOffset: primary ? 0 : h.hdrSize,
    }).copy(area, 0);
    json.copy(area, LUKS2_BINARY_HEADER_SIZE);
    sealChecksum(area, h.checksumAlg);
    out.push(area);
  }
  return [out[0]!, out[1]!];
}

/**
 * Commit new metadata: seqid+1, one copy, flush, the other copy, flush (spec §2.3). Primary first normally; when the
 * copies differ, the stale one must go first so a torn write still leaves the newest valid copy intact.
 */
export async function writeHeader(dev: BlockDevice, h: Luks2Header, opts: { firstCopy?: "primary" | "secondary" } = {}): Promise<void> {
  const next = { ...h, seqid: h.seqid + 1n };
  await writeHeaderCopies(dev, encodeHeaderCopies(next), h.hdrSize, opts.firstCopy);
  h.seqid = next.seqid;
}

/** Write encoded copies (encodeHeaderCopies) in writeHeader's order: one copy, flush, the other, flush. */
export async function writeHeaderCopies(dev: BlockDevice, [p, s]: [Buffer, Buffer], hdrSize: number, firstCopy: "primary" | "secondary" = "primary"): Promise<void> {
  const order: [Buffer, number][] = firstCopy === "secondary" ? [[s, hdrSize], [p, 0]] : [[p, 0], [s, hdrSize]];
  for (const [buf, off] of order) {
    await dev.write(buf, off);
    await dev.flush();
  }
}
