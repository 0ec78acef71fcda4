// Test fixtures for PCR prediction: a minimal PE32+ EFI binary with sections, and a TCG crypto-agile event log of a
// firmware that measures Secure Boot variables (PCR 7) and loaded images (PCR 4), plus replaying it into a TPM.
import { createHash } from "node:crypto";
import { encodeUefiVariableData, EV } from "../../src/trust/tpm2/predict.js";
import type { Tpm } from "../../src/trust/tpm2/tpm.js";

/** A PE32+ EFI application: 2 sections, optional trailing bytes, a valid layout for systemd's PE parser. */
export function makePe(seed: string, trailing = 0): Buffer {
  const b = Buffer.alloc(0x800 + trailing);
  const fill = createHash("sha512").update(seed).digest();
  for (let i = 0x400; i < b.length; i++) b[i] = fill[i % fill.length]!;
  b.writeUInt16LE(0x5a4d, 0);
  b.writeUInt32LE(0x80, 0x3c);
  const pe = 0x80;
  b.writeUInt32LE(0x00004550, pe);
  b.writeUInt16LE(0x8664, pe + 4); // x86-64
  b.writeUInt16LE(2, pe + 6); // sections
  b.writeUInt16LE(240, pe + 20); // SizeOfOptionalHeader (PE32+, 16 directories)
  b.writeUInt16LE(0x0022, pe + 22);
  const opt = pe + 24;
  b.writeUInt16LE(0x20b, opt);
  b.writeUInt32LE(0x200, opt + 4); // SizeOfCode
  b.writeUInt32LE(0x1000, opt + 16); // AddressOfEntryPoint
  b.writeUInt32LE(0x1000, opt + 20); // BaseOfCode
  b.writeBigUInt64LE(0x10000000n, opt + 24); // ImageBase
  b.writeUInt32LE(0x1000, opt + 32); // SectionAlignment
  b.writeUInt32LE(0x200, opt + 36); // FileAlignment
  b.writeUInt32LE(0x3000, opt + 56); // SizeOfImage
  b.writeUInt32LE(0x400, opt + 60); // SizeOfHeaders
  b.writeUInt32LE(0x12345678, opt + 64); // CheckSum: excluded from the Authenticode hash
  b.writeUInt16LE(10, opt + 68); // EFI application
  b.writeUInt32LE(16, opt + 108);
  const sec = opt + 240;
  const section = (i: number, name: string, va: number, ptr: number, chars: number) => {
    const s = sec + i * 40;
    b.write(name, s, "latin1");
    b.writeUInt32LE(0x200, s + 8); // VirtualSize
    b.writeUInt32LE(va, s + 12);
    b.writeUInt32LE(0x200, s + 16); // SizeOfRawData
    b.writeUInt32LE(ptr, s + 20);
    b.writeUInt32LE(chars, s + 36);
  };
  section(0, ".text", 0x1000, 0x400, 0x60000020);
  section(1, ".data", 0x2000, 0x600, 0xc0000040);
  return b;
}

const EFI_GLOBAL = Buffer.from("61dfe48bca93d211aa0d00e098032b8c", "hex");
const EFI_IMAGE_SECURITY_DB = Buffer.from("cbb219d73a3d9645a3bcdad00e67656f", "hex");
const sha256 = (...p: Uint8Array[]) => {
  const h = createHash("sha256");
  for (const x of p) h.update(x);
  return h.digest();
};

export interface FirmwareBoot {
  vars: { PK: Buffer; KEK: Buffer; db: Buffer; dbx: Buffer };
  images: Buffer[];
}

interface Ev {
  pcr: number;
  type: number;
  data: Buffer;
  digest: Buffer;
}

/** The events such a firmware measures: SecureBoot, PK, KEK, db, dbx, separators, then each loaded image. */
export function firmwareEvents(f: FirmwareBoot, authenticode: (pe: Buffer) => Buffer): Ev[] {
  const ev: Ev[] = [];
  const v = (name: string, guid: Buffer, data: Buffer) => {
    const d = encodeUefiVariableData(guid, name, data);
    ev.push({ pcr: 7, type: EV.EFI_VARIABLE_DRIVER_CONFIG, data: d, digest: sha256(d) });
  };
  v("SecureBoot", EFI_GLOBAL, Buffer.from([1]));
  v("PK", EFI_GLOBAL, f.vars.PK);
  v("KEK", EFI_GLOBAL, f.vars.KEK);
  v("db", EFI_IMAGE_SECURITY_DB, f.vars.db);
  v("dbx", EFI_IMAGE_SECURITY_DB, f.vars.dbx);
  const sep = Buffer.alloc(4);
  for (const pcr of [7, 4]) ev.push({ pcr, type: EV.SEPARATOR, data: sep, digest: sha256(sep) });
  const act = Buffer.from("Calling EFI Application from Boot Option", "latin1");
  ev.push({ pcr: 4, type: EV.EFI_ACTION, data: act, digest: sha256(act) });
  for (const [i, img] of f.images.entries()) {
    const data = Buffer.alloc(32); // UEFI_IMAGE_LOAD_EVENT (its contents are not part of the digest)
    ev.push({ pcr: 4, type: EV.EFI_BOOT_SERVICES_APPLICATION, data, digest: authenticode(img) });
    // the db certificate that verified the image (the same vendor certificate across the update)
    const auth = Buffer.from(`db certificate that verified image ${i}`);
    ev.push({ pcr: 7, type: EV.EFI_VARIABLE_AUTHORITY, data: auth, digest: sha256(auth) });
  }
  return ev;
}

/** Serialise events as a crypto-agile log (sha256 only). */
export function eventLog(events: Ev[]): Buffer {
  const spec = Buffer.alloc(33);
  spec.write("Spec ID Event03\0", 0, "latin1");
  spec[21] = 2; // specVersionMajor
  spec[23] = 2; // uintnSize
  spec.writeUInt32LE(1, 24);
  spec.writeUInt16LE(0x000b, 28);
  spec.writeUInt16LE(32, 30);
  const hdr = Buffer.alloc(32);
  hdr.writeUInt32LE(3, 4);
  hdr.writeUInt32LE(spec.length, 28);
  const parts: Buffer[] = [hdr, spec];
  for (const e of events) {
    const h = Buffer.alloc(14);
    h.writeUInt32LE(e.pcr, 0);
    h.writeUInt32LE(e.type, 4);
    h.writeUInt32LE(1, 8);
    h.writeUInt16LE(0x000b, 12);
    const sz = Buffer.alloc(4);
    sz.writeUInt32LE(e.data.length, 0);
    parts.push(h, e.digest, sz, e.data);
  }
  return Buffer.concat(parts);
}

/** What the firmware does to the TPM during that boot. */
export async function replayIntoTpm(tpm: Tpm, events: Ev[]): Promise<void> {
  for (const e of events) await tpm.pcrExtend(e.pcr, "sha256", e.digest);
}
