// A resilience change asked when a re-encryption resumes (`--resume-only --resilience journal`, cryptsetup 2.5+):
// the reencrypt keyslot's area gets the new protection and the re-encryption digest is made again over it
// (cryptsetup lib/luks2/luks2_keyslot_reenc.c reenc_keyslot_update_needed / reenc_keyslot_update_is_valid /
// LUKS2_keyslot_reencrypt_update). Pure: which area to write, or why the change is refused.
import { usage } from "../util/errors.js";
import type { Json } from "./metadata.js";
import type { ReencryptKeyslot } from "./reencrypt-metadata.js";

export interface ResilienceRequest {
  /** --resilience as given (checksum, journal, none, datashift, datashift-checksum, datashift-journal) */
  resilience?: string;
  /** --resilience-hash as given */
  hash?: string;
}

const summed = (t: string) => t === "checksum" || t === "datashift-checksum";

/**
 * The reencrypt keyslot area a resume must write before its next hotzone, or null when the request keeps the one on
 * disk. `block` is the checksum block a switch to checksum gets (the init's rule); `hashLen(alg)` a digest's size;
 * `movedSize` the moved segment of a decryption with a data shift, which the new protection must still hold whole.
 * Refused as cryptsetup 2.6.1 refuses: no change to or from datashift, none for a decryption with a data shift, a
 * moved segment larger than the new area can protect; and (cryptsetup switches it) a moved segment that is not whole
 * checksum blocks. `--resilience-hash` alone changes a checksum run's hash and is refused on journal or none (where
 * cryptsetup ignores it); only a data shift's encryption ignores it, as its init does, so its same command resumes.
 */
export function resilienceSwitch(ks: ReencryptKeyslot, req: ResilienceRequest, o: { block: number; hashLen(alg: string): number; movedSize?: number }): Record<string, Json> | null {
  const t = ks.area.type;
  if (req.resilience === undefined && req.hash === undefined) return null;
  if (t === "datashift") {
    // (its init takes and ignores --resilience-hash, as cryptsetup's does: the same command resumes)
    if ((req.resilience ?? "datashift") === "datashift") return null;
    throw usage(`the re-encryption encrypts with a data shift: its resilience is datashift and cannot become ${req.resilience}`, "resume without --resilience");
  }
  if (req.resilience === undefined && !summed(t)) throw usage(`--resilience-hash applies to checksum resilience; this re-encryption uses ${t}`, "resume without --resilience-hash, or switch with --resilience checksum --resilience-hash HASH");
  let want = req.resilience ?? t;
  const shifted = t.startsWith("datashift-");
  if (shifted && (want === "checksum" || want === "journal")) want = `datashift-${want}`;
  if (shifted !== want.startsWith("datashift-") || want === "datashift")
    throw usage(
      shifted ? `a decryption with a data shift is protected by checksum or journal, not ${want}` : `resilience ${want} is not for this re-encryption (it uses ${t})`,
      shifted ? "resume with --resilience checksum or journal, or without --resilience" : "use checksum, journal or none",
    );
  // (cryptsetup keeps a checksum run's hash when none is given; any other switch to checksum gets sha256)
  const hash = summed(want) ? (req.hash ?? (t === "checksum" && want === "checksum" ? ks.area.hash : "sha256")) : undefined;
  if (want === t && (!hash || hash === ks.area.hash)) return null;
  const sectorSize = want === t ? ks.area.sectorSize! : o.block;
  if (shifted && o.movedSize !== undefined) {
    // the moved segment is one hotzone, protected whole (cryptsetup: "New type only provides N bytes")
    const room = hash ? Math.floor(ks.area.size / o.hashLen(hash)) * sectorSize : ks.area.size;
    if (o.movedSize > room)
      throw usage(`resilience ${want} cannot protect this decryption: its area holds ${room} bytes of hotzone, the moved segment is ${o.movedSize}`, `resume with ${want === "datashift-journal" ? "checksum" : "another hash"}, or without --resilience`);
    // (cryptsetup 2.6.1 switches it; the engine checksums whole blocks and refuses such a header: never write one)
    if (hash && o.movedSize % sectorSize)
      throw usage(`resilience ${want} cannot protect this decryption: the moved segment (${o.movedSize} bytes) is not a multiple of the ${sectorSize}-byte checksum block`, "resume without --resilience");
  }
  const area: Record<string, Json> = { offset: String(ks.area.offset), size: String(ks.area.size), type: want };
  if (hash) {
    area.hash = hash;
    area.sector_size = sectorSize;
  }
  if (shifted) area.shift_size = String(ks.area.shiftSize);
  return area;
}
