// PCR prediction for a boot chain that has not run yet: the TCG PC Client event log (crypto-agile format) replayed
// with what an update changes substituted — UEFI Secure Boot variables for PCR 7 (EV_EFI_VARIABLE_DRIVER_CONFIG),
// the PE images the firmware will load for PCR 4 (EV_EFI_BOOT_SERVICES_APPLICATION: their Authenticode hash) — and
// PCR 11 from a UKI's sections (ops/sign-policy.ts, as systemd-measure calculate). The log is hostile input.
import { createHash } from "node:crypto";
import { TrustvolError } from "../../util/errors.js";
import { HASH_SIZE, hashNameOf, type HashName } from "./constants.js";

export const EV = {
  PREBOOT_CERT: 0x0,
  POST_CODE: 0x1,
  NO_ACTION: 0x3,
  SEPARATOR: 0x4,
  ACTION: 0x5,
  S_CRTM_VERSION: 0x8,
  EFI_VARIABLE_DRIVER_CONFIG: 0x80000001,
  EFI_VARIABLE_BOOT: 0x80000002,
  EFI_BOOT_SERVICES_APPLICATION: 0x80000003,
  EFI_ACTION: 0x80000007,
  EFI_VARIABLE_AUTHORITY: 0x800000e0,
} as const;

export interface LogEvent {
  pcr: number;
  type: number;
  digests: Map<HashName, Buffer>;
  data: Buffer;
}

const bad = (what: string) => new TrustvolError("ECORRUPT", `TPM event log: ${what}`, "pass the firmware's binary_bios_measurements (TCG crypto-agile format)");
const MAX_EVENTS = 100_000;

/** Parse a TCG PC Client crypto-agile event log (Spec ID Event03 header, then TCG_PCR_EVENT2 records). */
export function parseEventLog(b: Buffer): { algorithms: Map<number, number>; events: LogEvent[]; startupLocality: number } {
  let off = 0;
  const need = (n: number) => {
    if (off + n > b.length || n < 0) throw bad(`truncated at offset ${off}`);
  };
  const u16 = () => (need(2), (off += 2), b.readUInt16LE(off - 2));
  const u32 = () => (need(4), (off += 4), b.readUInt32LE(off - 4));
  const bytes = (n: number) => (need(n), (off += n), Buffer.from(b.subarray(off - n, off)));
  // header: TCG_PCClientPCREvent (SHA-1 format) holding TCG_EfiSpecIDEvent
  const hPcr = u32();
  const hType = u32();
  bytes(20);
  const hSize = u32();
  if (hPcr !== 0 || hType !== EV.NO_ACTION || hSize > 4096) throw bad("the first event is not the Spec ID header");
  const spec = bytes(hSize);
  if (spec.length < 29 || spec.subarray(0, 16).toString("latin1") !== "Spec ID Event03\0") throw bad("not a crypto-agile log (Spec ID Event03 missing)");
  const nAlg = spec.readUInt32LE(24);
  if (nAlg < 1 || nAlg > 16 || 28 + nAlg * 4 > spec.length) throw bad("implausible algorithm count");
  const algorithms = new Map<number, number>();
  for (let i = 0; i < nAlg; i++) algorithms.set(spec.readUInt16LE(28 + i * 4), spec.readUInt16LE(30 + i * 4));
  const events: LogEvent[] = [];
  let startupLocality = 0;
  while (off < b.length) {
    if (events.length >= MAX_EVENTS) throw bad("too many events");
    if (b.length - off < 8) break; // firmware may leave zero padding at the end
    const pcr = u32();
    const type = u32();
    if (pcr === 0xffffffff || (pcr === 0 && type === 0 && b.subarray(off).every((x) => x === 0))) break;
    if (pcr > 23) throw bad(`PCR index ${pcr} out of range`);
    const count = u32();
    if (count > 16) throw bad("implausible digest count");
    const digests = new Map<HashName, Buffer>();
    for (let i = 0; i < count; i++) {
      const alg = u16();
      const size = algorithms.get(alg);
      if (size === undefined) throw bad(`digest of algorithm 0x${alg.toString(16)} not declared in the header`);
      const d = bytes(size);
      try {
        digests.set(hashNameOf(alg), d);
      } catch {
        /* a bank trustvol does not know (sm3): skipped */
      }
    }
    const size = u32();
    if (size > 16 * 1024 * 1024) throw bad("implausible event size");
    const data = bytes(size);
    if (type === EV.NO_ACTION && pcr === 0 && data.length === 17 && data.subarray(0, 16).toString("latin1") === "StartupLocality\0") startupLocality = data[16]!;
    events.push({ pcr, type, digests, data });
  }
  return { algorithms, events, startupLocality };
}

const hash = (bank: HashName, ...parts: Uint8Array[]) => {
  const h = createHash(bank);
  for (const p of parts) h.update(p);
  return h.digest();
};

/** UEFI_VARIABLE_DATA: VariableName GUID, UnicodeNameLength, VariableDataLength, UnicodeName (UTF-16LE), data. */
export function parseUefiVariableData(d: Buffer): { guid: Buffer; name: string; data: Buffer } {
  if (d.length < 32) throw bad("UEFI_VARIABLE_DATA too short");
  const nameLen = Number(d.readBigUInt64LE(16));
  const dataLen = Number(d.readBigUInt64LE(24));
  if (nameLen > 1024 || 32 + nameLen * 2 + dataLen !== d.length) throw bad("UEFI_VARIABLE_DATA sizes do not add up");
  return { guid: Buffer.from(d.subarray(0, 16)), name: d.subarray(32, 32 + nameLen * 2).toString("utf16le"), data: Buffer.from(d.subarray(32 + nameLen * 2)) };
}
export function encodeUefiVariableData(guid: Buffer, name: string, data: Buffer): Buffer {
  const n = Buffer.from(name, "utf16le");
  const h = Buffer.alloc(32);
  guid.copy(h, 0);
  h.writeBigUInt64LE(BigInt(name.length), 16);
  h.writeBigUInt64LE(BigInt(data.length), 24);
  return Buffer.concat([h, n, data]);
}

/**
 * The Authenticode digest of a PE/COFF image (what firmware measures for EV_EFI_BOOT_SERVICES_APPLICATION and
 * systemd-pcrlock lock-pe records): the headers without CheckSum and the certificate-table entry, the sections in
 * file order, then any trailing data before the certificate table.
 */
export function authenticodeHash(bank: HashName, pe: Buffer): Buffer {
  const badPe = (m: string) => new TrustvolError("ECORRUPT", `PE image: ${m}`, "pass the EFI binary (PE/COFF) the firmware will load");
  if (pe.length < 64 || pe.readUInt16LE(0) !== 0x5a4d) throw badPe("no MZ header");
  const peOff = pe.readUInt32LE(0x3c);
  if (peOff + 24 > pe.length || pe.readUInt32LE(peOff) !== 0x00004550) throw badPe("no PE signature");
  const nSections = pe.readUInt16LE(peOff + 6);
  const optSize = pe.readUInt16LE(peOff + 20);
  const opt = peOff + 24;
  if (opt + optSize > pe.length || optSize < 2) throw badPe("optional header out of range");
  const magic = pe.readUInt16LE(opt);
  if (magic !== 0x10b && magic !== 0x20b) throw badPe("unknown optional header magic");
  const dirBase = magic === 0x20b ? opt + 112 : opt + 96;
  const nDirs = pe.readUInt32LE(dirBase - 4);
  const sizeOfHeaders = pe.readUInt32LE(opt + 60);
  const checksumAt = opt + 64;
  const certEntry = dirBase + 4 * 8;
  if (sizeOfHeaders > pe.length || sizeOfHeaders < opt + optSize) throw badPe("SizeOfHeaders out of range");
  const hasCertEntry = nDirs > 4 && certEntry + 8 <= opt + optSize;
  const certOff = hasCertEntry ? pe.readUInt32LE(certEntry) : 0;
  const certSize = hasCertEntry ? pe.readUInt32LE(certEntry + 4) : 0;
  const h = createHash(bank);
  h.update(pe.subarray(0, checksumAt));
  if (hasCertEntry) {
    h.update(pe.subarray(checksumAt + 4, certEntry));
    h.update(pe.subarray(certEntry + 8, sizeOfHeaders));
  } else h.update(pe.subarray(checksumAt + 4, sizeOfHeaders));
  const secTable = opt + optSize;
  if (secTable + nSections * 40 > pe.length || nSections > 96) throw badPe("section table out of range");
  const sections = [];
  for (let i = 0; i < nSections; i++) {
    const s = secTable + i * 40;
    sections.push({ size: pe.readUInt32LE(s + 16), ptr: pe.readUInt32LE(s + 20) });
  }
  sections.sort((a, b) => a.ptr - b.ptr);
  let hashed = sizeOfHeaders;
  for (const s of sections) {
    if (!s.size) continue;
    if (s.ptr + s.size > pe.length) throw badPe("a section lies past the end of the file");
    h.update(pe.subarray(s.ptr, s.ptr + s.size));
    hashed += s.size;
  }
  const end = certSize && certOff ? certOff : pe.length;
  if (end > pe.length || end < hashed) {
    if (end > pe.length) throw badPe("certificate table out of range");
  } else if (end > hashed) h.update(pe.subarray(hashed, end));
  return h.digest();
}

export interface PredictInput {
  log: LogEvent[];
  startupLocality?: number;
  bank: HashName;
  /** PCR 7: Secure Boot variables the update changes, by name (PK, KEK, db, dbx, ...): their new contents. */
  efiVars?: Map<string, Buffer>;
  /** PCR 4: the PE images the firmware will load, in load order (replace the logged EV_EFI_BOOT_SERVICES_APPLICATION digests). */
  peImages?: Buffer[];
}

/** Replay one PCR of the log with the substitutions applied; the value the PCR will have at the same point next boot. */
export function predictFromLog(pcr: number, i: PredictInput): Buffer {
  let v: Buffer = Buffer.alloc(HASH_SIZE[i.bank]);
  if (pcr === 0 && i.startupLocality) v[v.length - 1] = i.startupLocality;
  let pe = 0;
  for (const e of i.log) {
    if (e.pcr !== pcr || e.type === EV.NO_ACTION) continue;
    let d = e.digests.get(i.bank);
    if (!d) throw new TrustvolError("EUNSUPPORTED", `the event log has no ${i.bank} digests`, "predict in a bank the firmware logs");
    if (e.type === EV.EFI_VARIABLE_DRIVER_CONFIG && i.efiVars?.size) {
      const u = parseUefiVariableData(e.data);
      const nv = i.efiVars.get(u.name);
      if (nv) d = hash(i.bank, encodeUefiVariableData(u.guid, u.name, nv));
    }
    if (e.type === EV.EFI_BOOT_SERVICES_APPLICATION && pcr === 4 && i.peImages) {
      const img = i.peImages[pe++];
      if (!img) throw new TrustvolError("EUSAGE", `the log shows more than ${i.peImages.length} loaded image(s) in PCR 4`, "pass every EFI binary the firmware loads, in order (--pe FILE, repeatable)");
      d = authenticodeHash(i.bank, img);
    }
    v = hash(i.bank, v, d);
  }
  if (pcr === 4 && i.peImages && pe !== i.peImages.length) throw new TrustvolError("EUSAGE", `${i.peImages.length} image(s) given, the log shows ${pe} in PCR 4`, "pass one --pe per image the firmware loads");
  return v;
}
