// What trustvol remembers about the mappings it made: one small 0600 file per mapping in one runtime directory, naming
// the loop devices it attached for image files (autoclear usually detaches them; this covers kernels where it could
// not be set, and lets status show them). The dm UUID in the file ties it to one activation: a stale file for another
// device of the same name is ignored.
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { TrustvolError, fsReason, usage } from "../util/errors.js";
import { atomicWriteFileSync } from "../util/atomic.js";
import { checkMappingName } from "./table.js";
import { dmDeps, dmInfo, dmRemove, dmTable, type DmsetupOptions } from "./dmsetup.js";
import { loopBackingFile, loopDetach, loopDeviceFor } from "./loop.js";

/** The runtime directory (TRUSTVOL_STATE_DIR overrides it for tests). */
export function stateDir(): string {
  return process.env.TRUSTVOL_STATE_DIR || "/run/trustvol-dm";
}

export interface MappingState {
  name: string;
  dmUuid: string;
  /** Loop devices attached for this mapping, with the file behind each at the time. */
  loops: { device: string; backing?: string }[];
}

const statePath = (name: string) => join(stateDir(), `${name}.json`);

export function rememberMapping(s: MappingState): void {
  try {
    mkdirSync(stateDir(), { recursive: true, mode: 0o700 });
    atomicWriteFileSync(statePath(s.name), Buffer.from(JSON.stringify(s) + "\n"), 0o600);
  } catch (e) {
    throw new TrustvolError("EIO", `cannot record ${s.name} in ${stateDir()} (${fsReason(e)})`, "check that /run is writable");
  }
}

/** The remembered state of `name`, if it belongs to the activation with this dm UUID. */
export function recallMapping(name: string, dmUuid?: string): MappingState | undefined {
  try {
    const s = JSON.parse(readFileSync(statePath(name), "utf8")) as MappingState;
    if (s?.name !== name || !Array.isArray(s.loops)) return undefined;
    if (dmUuid !== undefined && s.dmUuid !== dmUuid) return undefined;
    return s;
  } catch {
    return undefined;
  }
}

export function forgetMapping(name: string): void {
  rmSync(statePath(name), { force: true });
}

export interface CloseMappingResult {
  name: string;
  /** Loop devices the mapping sat on (remembered, or found below it). */
  loops: string[];
  /** Those no longer attached after the close. */
  detached: string[];
  /** Those still attached although trustvol attached them (deferred removal, or the detach failed). */
  failed: string[];
}

/**
 * Remove a mapping and the loop devices trustvol attached for it. `target` refuses to remove a mapping of another
 * kind (verity close on a crypt device). Deferred: the kernel removes it at last close; its loops stay remembered.
 */
export function closeMapping(name: string, opts: { deferred?: boolean; target?: string } = {}, o?: DmsetupOptions): CloseMappingResult {
  checkMappingName(name);
  const info = dmInfo(name, o);
  if (!info) throw new TrustvolError("ENOENT", `no mapping named ${name}`, "list mappings with `dmsetup ls`");
  if (opts.target) {
    const targets = dmTable(name, o).split("\n").map((l) => l.trim().split(/\s+/)[2]).filter(Boolean);
    if (!targets.includes(opts.target)) throw usage(`${name} is not a dm-${opts.target} device (target ${targets[0] ?? "none"})`, "close it with the command that opened it");
  }
  const deps = dmDeps(name, o);
  const state = recallMapping(name, info.uuid);
  dmRemove(name, { deferred: opts.deferred }, o);
  const below = deps.map(([ma, mi]) => loopDeviceFor(ma, mi)).filter((d): d is string => !!d);
  const loops = [...new Set([...(state?.loops.map((l) => l.device) ?? []), ...below])];
  const detached: string[] = [];
  const failed: string[] = [];
  for (const l of loops) {
    const mine = state?.loops.find((x) => x.device === l);
    if (mine && !opts.deferred && loopBackingFile(l) !== undefined && loopBackingFile(l) === mine.backing) {
      try {
        loopDetach(l);
      } catch {
        /* reported below */
      }
    }
    if (loopBackingFile(l) === undefined) detached.push(l);
    else if (mine && !opts.deferred) failed.push(l);
  }
  if (!opts.deferred) forgetMapping(name);
  return { name, loops, detached, failed };
}
