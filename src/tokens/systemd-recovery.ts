// systemd-recovery tokens (systemd-cryptenroll --recovery-key, 252): 32 random bytes shown as 64 modhex characters in
// 8 dash-separated groups; that 71-character string is the keyslot passphrase. The token only marks the keyslot.
import { TrustvolError } from "../util/errors.js";
import { randomBytesBuf, wipe } from "../util/secret.js";

export const SYSTEMD_RECOVERY_TYPE = "systemd-recovery";
const MODHEX = "cbdefghijklnrtuv"; // YubiKey modhex: keyboard-layout independent
/** systemd enrolls high-entropy secrets with minimal PBKDF2 (cryptsetup_set_minimal_pbkdf). */
export const SYSTEMD_RECOVERY_KEYSLOT_PBKDF = { type: "pbkdf2", hash: "sha512", iterations: 1000 } as const;

/** Format 32 bytes as systemd's recovery key (ASCII bytes, caller wipes). */
export function formatRecoveryKey(raw: Uint8Array): Buffer {
  if (raw.length !== 32) throw new TrustvolError("EINTERNAL", "a recovery key has 32 bytes");
  const out = Buffer.alloc(71);
  let j = 0;
  raw.forEach((b, i) => {
    out[j++] = MODHEX.charCodeAt(b >> 4);
    out[j++] = MODHEX.charCodeAt(b & 15);
    if (i % 4 === 3 && i !== 31) out[j++] = 0x2d;
  });
  return out;
}

/** Does this look like a recovery key (so a prompt can tell the user which kind of secret it wants)? */
export function isRecoveryKey(s: Uint8Array): boolean {
  return /^([cbdefghijklnrtuv]{8}-){7}[cbdefghijklnrtuv]{8}$/.test(Buffer.from(s).toString("latin1"));
}

export function newRecoveryKey(): Buffer {
  const raw = randomBytesBuf(32);
  try {
    return formatRecoveryKey(raw);
  } finally {
    wipe(raw);
  }
}

export function encodeSystemdRecoveryToken(keyslot: number): Record<string, unknown> {
  return { type: SYSTEMD_RECOVERY_TYPE, keyslots: [String(keyslot)] };
}
