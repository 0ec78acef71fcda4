// OTA-transactional TPM re-enrolment. Before an update commits, `stage` adds a systemd-tpm2 token sealed to the
// predicted PCR values of the next boot chain, beside the current one; after the new chain has booted and unlocked,
// `commit` retires the old token(s); if the update is abandoned, `abort` drops the staged one. Each is ONE header
// commit (plus the wipe of unreferenced keyslot areas after it), so a power cut at any write leaves the state before
// or after, and running the same command again finishes it.
//
// The staged token carries `"trustvol-update": "staged"`; systemd (and any reader that ignores unknown fields) uses it
// as an ordinary token, so a device that reboots into the new chain before `commit` still unlocks.
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { enrollTpm2, type EnrollResult, type EnrollTpm2Options } from "./enroll.js";
import { unlock, withVolume } from "./unlock.js";
import type { LuksHandle } from "./volume.js";
import type { Luks2Volume } from "../luks2/volume.js";

export const UPDATE_FIELD = "trustvol-update";
export const STAGED = "staged";

const isTpm2 = (t: { type: string }) => t.type === "systemd-tpm2";
const isStaged = (t: Record<string, unknown>) => t[UPDATE_FIELD] === STAGED;

/** Token ids by role: staged (marked) and current (every other systemd-tpm2 token). */
export function updateTokens(v: Luks2Volume): { staged: number[]; current: number[] } {
  const staged: number[] = [];
  const current: number[] = [];
  for (const [id, t] of Object.entries(v.metadata.tokens)) {
    if (!isTpm2(t)) continue;
    (isStaged(t as unknown as Record<string, unknown>) ? staged : current).push(Number(id));
  }
  return { staged: staged.sort((a, b) => a - b), current: current.sort((a, b) => a - b) };
}

/** Keyslots of `ids` that no other token uses (those go with the tokens). */
function slotsOnlyOf(v: Luks2Volume, ids: number[]): number[] {
  const mine = new Set(ids.map(String));
  const used = new Set<string>();
  for (const [id, t] of Object.entries(v.metadata.tokens)) if (!mine.has(id)) for (const k of t.keyslots) used.add(k);
  const out = new Set<number>();
  for (const id of ids) for (const k of v.metadata.tokens[String(id)]!.keyslots) if (!used.has(k) && k in v.metadata.keyslots) out.add(Number(k));
  return [...out].sort((a, b) => a - b);
}

/** Add the next chain's token (marked staged) beside the current one. Refused while another update is staged. */
export async function stageTpm2Update(volume: string | LuksHandle, o: EnrollTpm2Options): Promise<EnrollResult> {
  await withVolume(volume, { ...(o.header ? { header: o.header } : {}), readOnly: true }, async (h) => {
    const { staged } = updateTokens(h.requireLuks2("tpm2 stage-update"));
    if (staged.length) throw new TrustvolError("EBUSY", `an update is already staged (token ${staged.join(", ")})`, "commit it (tpm2 commit-update) or drop it (tpm2 abort-update) first");
  });
  if (o.wipeSlots) throw new TrustvolError("EUSAGE", "stage-update keeps every current keyslot", "old tokens are retired by tpm2 commit-update");
  return enrollTpm2(volume, { ...o, tokenFields: { ...(o.tokenFields ?? {}), [UPDATE_FIELD]: STAGED } });
}

export interface UpdateCommitOptions {
  header?: string;
  tpm2Device?: string;
  pin?: Uint8Array;
  /** Prove first that a staged token unseals in this boot (default true): never retire the old chain blindly. */
  verify?: boolean;
}

export interface UpdateCommitResult {
  /** The staged token(s) that became the current one(s). */
  committed: number[];
  /** Tokens retired (commit) or dropped (abort), and the keyslots that went with them. */
  removedTokens: number[];
  removedKeyslots: number[];
}

/** After the new chain booted: check a staged token unseals now, then retire the old tokens and unmark the staged. */
export async function commitTpm2Update(volume: string | LuksHandle, o: UpdateCommitOptions = {}): Promise<UpdateCommitResult> {
  return withVolume(volume, { ...(o.header ? { header: o.header } : {}), readOnly: false }, async (h) => {
    const v = h.requireLuks2("tpm2 commit-update");
    const { staged, current } = updateTokens(v);
    if (!staged.length) return { committed: [], removedTokens: [], removedKeyslots: [] };
    if (o.verify !== false) {
      let ok = false;
      let last: unknown;
      for (const id of staged) {
        try {
          wipe((await unlock(h, { tokenOnly: true, tokenId: id, ...(o.tpm2Device ? { tpm2Device: o.tpm2Device } : {}), ...(o.pin ? { pin: o.pin } : {}) })).volumeKey);
          ok = true;
          break;
        } catch (e) {
          last = e;
        }
      }
      if (!ok)
        throw new TrustvolError("EPOLICY", `the staged token${staged.length > 1 ? "s do" : " does"} not unlock in this boot: the new chain is not running (or not as predicted); nothing was changed`, "boot the updated chain first, or drop the staged token (tpm2 abort-update)", { cause: last });
    }
    const drop = slotsOnlyOf(v, current);
    await v.editTokensDroppingSlots(drop, (tokens) => {
      for (const id of current) delete tokens[String(id)];
      for (const id of staged) delete (tokens[String(id)] as unknown as Record<string, unknown>)[UPDATE_FIELD];
    });
    return { committed: staged, removedTokens: current, removedKeyslots: drop };
  });
}

/** The update was abandoned: drop the staged token(s) and their keyslots; the current ones stay. */
export async function abortTpm2Update(volume: string | LuksHandle, o: { header?: string } = {}): Promise<UpdateCommitResult> {
  return withVolume(volume, { ...(o.header ? { header: o.header } : {}), readOnly: false }, async (h) => {
    const v = h.requireLuks2("tpm2 abort-update");
    const { staged } = updateTokens(v);
    if (!staged.length) return { committed: [], removedTokens: [], removedKeyslots: [] };
    const drop = slotsOnlyOf(v, staged);
    await v.editTokensDroppingSlots(drop, (tokens) => {
      for (const id of staged) delete tokens[String(id)];
    });
    return { committed: [], removedTokens: staged, removedKeyslots: drop };
  });
}
