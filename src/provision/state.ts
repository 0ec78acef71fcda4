// The provisioning state of a volume, read from the device itself (never from a file beside it): what the header
// says (LUKS or not, re-encryption in progress, which tokens and passphrase keyslots exist, the provisioning marker
// token) is the whole truth, so a run after a power cut at any instant picks up where the device is.
import type { BlockDevice } from "../blockdev/types.js";
import { probeLuksVersion } from "../luks2/header.js";
import { Luks2Volume } from "../luks2/volume.js";
import type { Luks2Metadata } from "../luks2/metadata.js";
import { reencryptStatus } from "../luks2/reencrypt-metadata.js";
import { TrustvolError } from "../util/errors.js";
import type { VolumeConfig } from "./config.js";

/** Token kept in the LUKS2 header while a key rotation is still to be started (keyslots: []); cryptsetup ignores it. */
export const MARKER_TOKEN_TYPE = "trustvol-provision";

export type ProvisionStateName =
  | "plain" // no LUKS header: a file system as flashed
  | "encrypting" // in-place encryption (data shift) in progress
  | "factory" // LUKS2 without the configured trust token
  | "enrolled" // trust token enrolled, a passphrase keyslot (factory secret) still there
  | "rotate-pending" // factory secret wiped, key rotation asked for but not started
  | "rotating" // key rotation in progress
  | "needs-recovery" // a recovery key is configured but not enrolled yet
  | "provisioned"; // done (the header backup is a file, checked separately)

export interface VolumeState {
  state: ProvisionStateName;
  luks: 0 | 1 | 2;
  uuid?: string;
  reencrypt?: { mode: "encrypt" | "reencrypt" | "decrypt"; crashed: boolean };
  /** Keyslots no token refers to (the factory / transitional passphrase). */
  passwordSlots: number[];
  trustTokens: number[];
  recoveryTokens: number[];
  markerToken?: number;
}

export const TRUST_TOKEN_TYPE = { tpm2: "systemd-tpm2", pkcs11: "systemd-pkcs11" } as const;

function reencryptMode(m: Luks2Metadata): "encrypt" | "reencrypt" | "decrypt" {
  const k = Object.values(m.keyslots).find((s) => s.type === "reencrypt") as { mode?: string } | undefined;
  return k?.mode === "encrypt" || k?.mode === "decrypt" ? k.mode : "reencrypt";
}

export function stateFromMetadata(m: Luks2Metadata, uuid: string, vol: Pick<VolumeConfig, "trust" | "recovery" | "rotate_key">): VolumeState {
  const tokens = Object.entries(m.tokens).map(([id, t]) => ({ id: Number(id), ...t }));
  const bound = new Set(tokens.flatMap((t) => t.keyslots.map(Number)));
  const passwordSlots = Object.entries(m.keyslots).filter(([, k]) => k.type === "luks2").map(([id]) => Number(id)).filter((k) => !bound.has(k)).sort((a, b) => a - b);
  const tt = vol.trust.type === "tpm2" || vol.trust.type === "pkcs11" ? TRUST_TOKEN_TYPE[vol.trust.type] : undefined;
  const trustTokens = tokens.filter((t) => t.type === tt && t.keyslots.length > 0).map((t) => t.id);
  const recoveryTokens = tokens.filter((t) => t.type === "systemd-recovery").map((t) => t.id);
  const marker = tokens.find((t) => t.type === MARKER_TOKEN_TYPE);
  const rs = reencryptStatus(m);
  const base = { luks: 2 as const, uuid, passwordSlots, trustTokens, recoveryTokens, ...(marker ? { markerToken: marker.id } : {}) };
  if (rs !== "none") {
    const mode = reencryptMode(m);
    const reencrypt = { mode, crashed: rs === "crash" };
    if (mode === "encrypt") return { ...base, state: "encrypting", reencrypt };
    if (mode === "decrypt") throw new TrustvolError("EBUSY", "the volume is being decrypted", "finish or reverse that with `trustvol reencrypt --resume-only` before provisioning");
    return { ...base, state: "rotating", reencrypt };
  }
  if (!trustTokens.length) return { ...base, state: "factory" };
  if (passwordSlots.length) return { ...base, state: "enrolled" };
  if (marker) return { ...base, state: "rotate-pending" };
  if (vol.recovery.mode !== "none" && !recoveryTokens.length) return { ...base, state: "needs-recovery" };
  return { ...base, state: "provisioned" };
}

/** Read the state of a LUKS2/plain device (for LUKS-less trust types the caller decides). */
export async function readVolumeState(dev: BlockDevice, vol: Pick<VolumeConfig, "trust" | "recovery" | "rotate_key">): Promise<VolumeState> {
  const v = await probeLuksVersion(dev);
  if (v === 1) throw new TrustvolError("EUNSUPPORTED", `${dev.name} is LUKS1: provisioning needs LUKS2 tokens`, "convert it with `cryptsetup convert --type luks2`");
  if (v === null) {
    // A header whose primary magic is gone may still have a valid secondary copy: let the LUKS2 reader decide.
    try {
      const vol2 = await Luks2Volume.open(dev);
      return stateFromMetadata(vol2.metadata, vol2.uuid, vol);
    } catch {
      return { state: "plain", luks: 0, passwordSlots: [], trustTokens: [], recoveryTokens: [] };
    }
  }
  const l = await Luks2Volume.open(dev);
  return stateFromMetadata(l.metadata, l.uuid, vol);
}
