// Volume-key digests (LUKS2 spec §3.4): type "pbkdf2" = PBKDF2(hash, volume key, salt, iterations).
import { pbkdf2Sync, createHash, randomBytes } from "node:crypto";
import { constantTimeEqual, wipe } from "../util/secret.js";
import { opensslHash, PBKDF2_MAX_ITERATIONS } from "./kdf.js";
import { TrustvolError } from "../util/errors.js";
import type { Luks2Digest, Luks2Metadata } from "./metadata.js";

const DIGEST_ITER_MS = 125; // cryptsetup LUKS_MKD_ITERATIONS_MS
const DIGEST_MIN_ITER = 1000;

export function computeDigest(d: Pick<Luks2Digest, "hash" | "iterations" | "salt">, volumeKey: Uint8Array, len: number): Buffer {
  if (!(d.iterations >= 1 && d.iterations <= PBKDF2_MAX_ITERATIONS)) throw new TrustvolError("EUNSUPPORTED", `volume key digest iterations ${d.iterations} out of range (1..${PBKDF2_MAX_ITERATIONS})`);
  return pbkdf2Sync(volumeKey, Buffer.from(d.salt, "base64"), d.iterations, len, opensslHash(d.hash));
}

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

export function verifyDigest(d: Luks2Digest, volumeKey: Uint8Array): boolean {
  if (d.type !== "pbkdf2" || typeof d.hash !== "string" || typeof d.digest !== "string" || typeof d.salt !== "string" || typeof d.iterations !== "number") return false;
  // Loaded unchecked (as cryptsetup does): a digest that is not base64 of 1..64 bytes matches no key.
  if (!B64.test(d.digest) || !B64.test(d.salt) || d.digest.length % 4 || d.salt.length % 4) return false;
  const want = Buffer.from(d.digest, "base64");
  if (want.length === 0 || want.length > 64 || d.salt.length === 0) return false;
  const got = computeDigest(d, volumeKey, want.length);
  const ok = constantTimeEqual(got, want);
  wipe(got);
  return ok;
}

export function createDigest(volumeKey: Uint8Array, opts: { hash?: string; iterations?: number; keyslots: string[]; segments: string[] }): Luks2Digest {
  const hash = opts.hash ?? "sha256";
  const salt = randomBytes(32);
  let iterations = opts.iterations;
  if (!iterations) {
    const probe = 20_000;
    const t0 = process.hrtime.bigint();
    pbkdf2Sync(volumeKey, salt, probe, 32, opensslHash(hash));
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    iterations = Math.max(DIGEST_MIN_ITER, Math.floor((probe * DIGEST_ITER_MS) / Math.max(ms, 0.001)));
  }
  const len = createHash(opensslHash(hash)).digest().length;
  const d: Luks2Digest = { type: "pbkdf2", keyslots: opts.keyslots, segments: opts.segments, hash, iterations, salt: salt.toString("base64"), digest: "" };
  d.digest = computeDigest(d, volumeKey, len).toString("base64");
  return d;
}

/** The digest id a keyslot is bound to, if any. */
export function digestForKeyslot(m: Luks2Metadata, slot: string): string | undefined {
  return Object.keys(m.digests).find((id) => m.digests[id]!.keyslots.includes(slot));
}

/** The digest id of the data segment (the "volume key" digest). */
export function digestForSegment(m: Luks2Metadata, seg: string): string | undefined {
  return Object.keys(m.digests).find((id) => m.digests[id]!.segments.includes(seg));
}
