// SoftHSM2 as the PKCS#11 module at boot (standing in for OP-TEE's TA, whose libckteec needs no config): the
// initramfs needs softhsm2.conf, and the token directory it names must be readable there — before the root is
// unlocked. The token directory's partition is found in /etc/fstab; the initramfs mounts it (read-write: the first
// boot creates the token and key) before trustvol runs and unmounts it afterwards, at the same mount point, so the
// copied config's directories.tokendir points where the token really is at that stage.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { TrustvolError } from "../util/errors.js";
import { initramfsFiles, type InitramfsFile, type ProvisionConfig } from "../provision/config.js";

/** Debian's build: SoftHSM reads SOFTHSM2_CONF, else this. */
export const SOFTHSM_DEFAULT_CONF = "/etc/softhsm/softhsm2.conf";
/** Compiled-in token directory when the config names none. */
export const SOFTHSM_DEFAULT_TOKENDIR = "/var/lib/softhsm/tokens/";

/** A file system the initramfs mounts before trustvol runs (one `SPEC MOUNTPOINT FSTYPE` line of /etc/trustvol/mounts). */
export interface InitramfsMount {
  spec: string;
  mountpoint: string;
  fstype: string;
  why: string;
}

export function isSoftHsm(module: string): boolean {
  return /softhsm/i.test(basename(module));
}

/** directories.tokendir of a softhsm2.conf (`key = value` lines, `#` comments), else the compiled default. */
export function softhsmTokenDir(conf: string, confPath = SOFTHSM_DEFAULT_CONF): string {
  let dir: string | undefined;
  for (const raw of conf.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const eq = line.indexOf("=");
    if (eq > 0 && line.slice(0, eq).trim() === "directories.tokendir") dir = line.slice(eq + 1).trim();
  }
  if (dir === undefined) return SOFTHSM_DEFAULT_TOKENDIR;
  if (!dir.startsWith("/")) throw new TrustvolError("EUSAGE", `${confPath}: directories.tokendir "${dir.slice(0, 60)}" is not an absolute path`, "name the token directory by its absolute path");
  return dir;
}

const SAFE = /^[A-Za-z0-9_./:=@,+-]+$/;
const under = (path: string, mp: string) => mp === "/" || path === mp || path.startsWith(mp.endsWith("/") ? mp : `${mp}/`);

/** The /etc/fstab entry whose mount point holds `path` (the longest), or undefined. */
export function fstabMountFor(path: string, fstab: string): { spec: string; mountpoint: string; fstype: string } | undefined {
  let best: { spec: string; mountpoint: string; fstype: string } | undefined;
  for (const raw of fstab.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const [spec, mp, fstype] = line.split(/\s+/);
    if (!spec || !mp || !fstype || !mp.startsWith("/") || fstype === "swap") continue;
    const m = mp.length > 1 ? mp.replace(/\/+$/, "") : mp;
    if (under(path, m) && (!best || m.length > best.mountpoint.length)) best = { spec, mountpoint: m, fstype };
  }
  return best;
}

/**
 * What the initramfs needs for a SoftHSM module: its config (copied to SoftHSM's default path, where trustvol finds it
 * there) and the mount of the token directory's partition. Refused (one line) when the token directory is on the root
 * file system — the one being unlocked — or the fstab entry cannot be written into the boot script's list.
 */
export function softhsmInitramfs(module: string, o: { conf?: string; fstab?: string } = {}): { conf: string; tokendir: string; mount: InitramfsMount } {
  // The default path, not SOFTHSM2_CONF: trustvol in the initramfs runs without it (the file keeps its path there).
  const confPath = o.conf ?? SOFTHSM_DEFAULT_CONF;
  const fstabPath = o.fstab ?? "/etc/fstab";
  const read = (p: string, what: string) => {
    try {
      return readFileSync(p, "utf8");
    } catch (e) {
      throw new TrustvolError("ENOENT", `${p} (${what}) is not readable: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, `the initramfs needs it for the PKCS#11 module ${module}`);
    }
  };
  const tokendir = softhsmTokenDir(read(confPath, "SoftHSM config"), confPath);
  const m = fstabMountFor(tokendir, read(fstabPath, "file systems"));
  if (!m || m.mountpoint === "/")
    throw new TrustvolError("EUSAGE", `${confPath}: directories.tokendir ${tokendir} is on the root file system: the initramfs cannot read the PKCS#11 token before the root is unlocked`, `keep the token directory on a partition of its own listed in ${fstabPath} (e.g. /boot), which trustvol mounts in the initramfs`);
  for (const [k, v] of Object.entries(m)) if (!SAFE.test(v)) throw new TrustvolError("EUSAGE", `${fstabPath}: the ${k} "${v.slice(0, 60)}" of ${m.mountpoint} has characters the boot script does not accept`, "name it /dev/..., PARTLABEL=, PARTUUID=, LABEL= or UUID= without spaces or quotes");
  return { conf: confPath, tokendir, mount: { ...m, why: `PKCS#11 token store (${tokendir})` } };
}

/**
 * Everything the initramfs needs (`trustvol boot files`): the files provision.json names, and for each SoftHSM module
 * (the config's, `modules` from boot.conf) its config and the token directory's mount. In order, once each.
 */
export function initramfsNeeds(cfg: ProvisionConfig | undefined, modules: string[] = [], o: { softhsmConf?: string; fstab?: string } = {}): { files: InitramfsFile[]; mounts: InitramfsMount[] } {
  const files = cfg ? initramfsFiles(cfg) : [];
  const mounts: InitramfsMount[] = [];
  const all = [...(cfg?.volumes ?? []).flatMap((v) => (v.trust.type === "pkcs11" && v.trust.module ? [v.trust.module] : [])), ...modules];
  for (const mod of new Set(all)) {
    if (!files.some((f) => f.path === mod)) files.push({ path: mod, kind: "library", why: "PKCS#11 module", secret: false });
    if (!isSoftHsm(mod)) continue;
    const s = softhsmInitramfs(mod, { ...(o.softhsmConf ? { conf: o.softhsmConf } : {}), ...(o.fstab ? { fstab: o.fstab } : {}) });
    if (!files.some((f) => f.path === s.conf)) files.push({ path: s.conf, kind: "file", why: "SoftHSM config", secret: false });
    if (!mounts.some((m) => m.mountpoint === s.mount.mountpoint)) mounts.push(s.mount);
  }
  return { files, mounts };
}
