// Validation of a `reencrypt` keyslot as strict as cryptsetup's reenc_keyslot_validate (lib/luks2/luks2_keyslot_reenc.c).
// Standalone (no imports from the metadata module) so metadata validation can call it without an import cycle.
import { TrustvolError } from "../util/errors.js";

const bad = (msg: string) => new TrustvolError("ECORRUPT", `LUKS2 re-encryption metadata: ${msg}`, "the header is damaged or was not written by cryptsetup; restore a header backup");
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const num = (v: unknown, what: string): number => {
  if (typeof v !== "string" || !/^[0-9]{1,20}$/.test(v) || BigInt(v) > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`${what} must be a decimal string`);
  return Number(v);
};
const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

/** Validate one `reencrypt` keyslot as cryptsetup's reenc_keyslot_validate does (called from validateMetadata). */
export function validateReencryptKeyslot(ks: Record<string, unknown>, w: string): void {
  const mode = ks.mode, dir = ks.direction, area = ks.area;
  if (mode !== "reencrypt" && mode !== "encrypt" && mode !== "decrypt") throw bad(`${w}.mode must be reencrypt, encrypt or decrypt`);
  if (dir !== "forward" && dir !== "backward") throw bad(`${w}.direction must be forward or backward`);
  if (!isObj(area)) throw bad(`${w}.area missing`);
  const t = area.type;
  if (t === "checksum" || t === "datashift-checksum") {
    if (typeof area.hash !== "string" || area.hash.length === 0 || area.hash.length > 31) throw bad(`${w}.area.hash must be a hash name`);
    const ss = area.sector_size;
    if (typeof ss !== "number" || !Number.isInteger(ss) || ss < 512 || ss > 0xffffffff || !pow2(ss)) throw bad(`${w}.area.sector_size must be a power of two >= 512`);
  } else if (t !== "none" && t !== "journal" && t !== "datashift" && t !== "datashift-journal") throw bad(`${w}.area.type "${String(t).slice(0, 32)}" is unknown`);
  if (typeof t === "string" && t.startsWith("datashift")) {
    const s = num(area.shift_size, `${w}.area.shift_size`);
    if (s === 0 || s % 512) throw bad(`${w}.area.shift_size must be a non-zero multiple of 512`);
  }
}

