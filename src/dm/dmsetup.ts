// device-mapper through dmsetup(8): the one place that drives it (cryptsetup keeps the same in lib/libdevmapper.c).
// Every mapping trustvol makes — LUKS/plain/trusted-key/CAAM volumes, dm-verity, re-encryption overlays — is created,
// reloaded, suspended, resumed and removed here. Tables go to dmsetup on stdin and only ever hold keyring references
// (see table.ts), so nothing secret passes through here. Without udev (initramfs, test guest) dmsetup is told to
// create the /dev/mapper nodes itself.
// When the native ioctl addon is there (and /dev/mapper/control), the calls go to the kernel in-process instead
// (dmioctl.ts; TRUSTVOL_DM_IOCTL=0 forces dmsetup): everything but creating a mapping that needs a /dev/mapper node,
// `targets`, `deps` and deferred removal. An explicit DmsetupOptions (another dmsetup binary) always uses dmsetup.
import { DmIoctlError, type DmIoctlInfo, dmIoctlCreate, dmIoctlEnabled, dmIoctlInfo, dmIoctlLoad, dmIoctlNames, dmIoctlRemove, dmIoctlResume, dmIoctlSuspend, dmIoctlTable } from "./dmioctl.js";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, unlinkSync } from "node:fs";
import { TrustvolError } from "../util/errors.js";
import { assertKeyringOnly, checkMappingName, kernelCryptoNames, parseCryptTable, type ParsedCryptTable } from "./table.js";

export interface DmsetupOptions {
  dmsetup?: string;
  timeoutMs?: number;
  /**
   * Do not wait for udev to process the uevent (dmsetup --noudevsync). For online re-encryption's stack: resuming the
   * overlay while the hotzone device under it is suspended makes udev's probe (blkid) of the overlay block on the
   * hotzone; a dmsetup waiting for udev then waits for itself (seen under systemd: dmsetup resume timed out).
   * cryptsetup marks these devices private for the same reason.
   */
  noUdevSync?: boolean;
}

/** Whether a call takes the in-process ioctl path (the default, dmioctl.ts): not when a dmsetup binary or timeout is given. */
function ioctlPath(o: DmsetupOptions | undefined): boolean {
  return (!o || (o.dmsetup === undefined && o.timeoutMs === undefined)) && dmIoctlEnabled();
}

function udevRunning(): boolean {
  return existsSync("/run/udev/control");
}

interface Res {
  status: number;
  stdout: string;
  stderr: string;
}

export function dmsetupRun(args: string[], input?: string, o: DmsetupOptions = {}): Res {
  const env = udevRunning() ? process.env : { ...process.env, DM_DISABLE_UDEV: "1" };
  const extra = !udevRunning() || o.noUdevSync ? ["--noudevsync"] : [];
  const r = spawnSync(o.dmsetup ?? "dmsetup", [...extra, ...args], { input, env, encoding: "utf8", timeout: o.timeoutMs ?? 60_000 });
  if (r.error) {
    if ((r.error as NodeJS.ErrnoException).code === "ENOENT") throw new TrustvolError("EUNSUPPORTED", "dmsetup not found", "install dmsetup (apt-get install dmsetup)");
    throw new TrustvolError("EIO", `dmsetup ${args[0]} failed: ${r.error.message}`);
  }
  return { status: r.status ?? -1, stdout: r.stdout ?? "", stderr: (r.stderr ?? "").trim() };
}

/** Targets the running kernel offers (`dmsetup targets`): name → version. Empty when device-mapper is absent. */
export function dmTargets(o?: DmsetupOptions): Map<string, string> {
  const r = dmsetupRun(["targets"], undefined, o);
  const m = new Map<string, string>();
  if (r.status !== 0) return m;
  for (const line of r.stdout.split("\n")) {
    const [name, ver] = line.trim().split(/\s+/);
    if (name) m.set(name, (ver ?? "").replace(/^v/, ""));
  }
  return m;
}

const noDeviceMapper = (target = "crypt") =>
  new TrustvolError("EUNSUPPORTED", "this kernel has no device-mapper (no /dev/mapper/control)", `enable CONFIG_BLK_DEV_DM and CONFIG_DM_${target.toUpperCase()}, or load dm_mod`);

const firstLines = (s: string) => s.split("\n").map((l) => l.trim()).filter((l) => l && !/^Command failed\.?$/.test(l)).join("; ");

/** Failures every dmsetup call can meet: no device-mapper, no permission. Undefined when it is something else. */
function commonFailure(op: string, stderr: string, target?: string): TrustvolError | undefined {
  if (/Permission denied|Operation not permitted/i.test(stderr) && !/Key|signature/i.test(stderr))
    return new TrustvolError("EDEVICE", `no access to device-mapper (dmsetup ${op}: ${firstLines(stderr)})`, "run as root");
  if (/Failure to communicate with kernel device-mapper|kernel driver \(unknown version\)/i.test(stderr)) return noDeviceMapper(target);
  return undefined;
}

/** Make sure the kernel offers a target (loading its module when it is one). */
export function requireTarget(target: "crypt" | "verity" | "linear" | "integrity", o?: DmsetupOptions): void {
  if (!deviceMapperPresent()) throw noDeviceMapper(target);
  const has = () => {
    const r = dmsetupRun(["targets"], undefined, o);
    if (r.status !== 0) throw commonFailure("targets", r.stderr, target) ?? new TrustvolError("EIO", `dmsetup targets failed: ${firstLines(r.stderr)}`);
    return new RegExp(`^${target}\\s`, "m").test(r.stdout);
  };
  if (has()) return;
  spawnSync("modprobe", ["-q", `dm-${target}`], { stdio: "ignore", timeout: 30_000 });
  if (!has()) throw new TrustvolError("EUNSUPPORTED", `this kernel has no dm-${target} target`, `load it (modprobe dm-${target}) or build the kernel with CONFIG_DM_${target.toUpperCase()}`);
}

export function deviceMapperPresent(): boolean {
  if (existsSync("/dev/mapper/control")) return true;
  try {
    return /\bdevice-mapper\b/.test(readFileSync("/proc/misc", "utf8"));
  } catch {
    return false;
  }
}

/** What `dmsetup info` (or DM_DEV_STATUS) says of a mapping. */
export type DmInfo = DmIoctlInfo;

/** `dmsetup info` for one mapping; undefined when it does not exist. */
export function dmInfo(name: string, o?: DmsetupOptions): DmInfo | undefined {
  if (ioctlPath(o)) return dmIoctlInfo(name);
  const r = dmsetupRun(["info", "-c", "--noheadings", "--separator", "|", "-o", "name,uuid,open,major,minor,attr", name], undefined, o);
  if (r.status !== 0) {
    if (/not exist|No such device/i.test(r.stderr)) return undefined;
    if (!deviceMapperPresent()) return undefined;
    throw new TrustvolError("EIO", `dmsetup info ${name} failed: ${r.stderr}`);
  }
  const [n, uuid, open, major, minor, attr] = r.stdout.trim().split("|");
  return { name: n!, uuid: uuid ?? "", open: Number(open), major: Number(major), minor: Number(minor), readOnly: (attr ?? "").includes("r"), suspended: (attr ?? "").startsWith("s") };
}

/** Every mapping: name and dm UUID (`dmsetup info -c` without a name). */
export function dmList(o?: DmsetupOptions): { name: string; uuid: string }[] {
  if (!deviceMapperPresent()) return [];
  if (ioctlPath(o)) return dmIoctlNames().flatMap((n) => {
    const i = dmIoctlInfo(n);
    return i ? [{ name: i.name, uuid: i.uuid }] : [];
  });
  const r = dmsetupRun(["info", "-c", "--noheadings", "--separator", "|", "-o", "name,uuid"], undefined, o);
  if (r.status !== 0 || /No devices found/.test(r.stdout)) return [];
  return r.stdout.trim().split("\n").filter((l) => l.includes("|")).map((l) => {
    const [name, uuid] = l.trim().split("|");
    return { name: name!, uuid: uuid ?? "" };
  });
}

export function dmExists(name: string, o?: DmsetupOptions): boolean {
  return dmInfo(name, o) !== undefined;
}

/** An in-process call, its kernel refusal explained like dmsetup's. */
function viaIoctl<T>(op: string, name: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (!(e instanceof DmIoctlError)) throw e;
    if (e.errno === "ENXIO" || e.errno === "ENODEV") throw queryFailure(op, name, "No such device or address");
    if (e.errno === "EPERM" || e.errno === "EACCES") throw queryFailure(op, name, "Permission denied");
    throw e;
  }
}

function queryFailure(op: string, name: string, stderr: string): TrustvolError {
  if (/not exist|No such device/i.test(stderr)) return new TrustvolError("ENOENT", `no mapping named ${name}`, "list mappings with `dmsetup ls`");
  return commonFailure(op, stderr) ?? new TrustvolError("EIO", `dmsetup ${op} ${name} failed: ${firstLines(stderr)}`);
}

/** The live table of a mapping (keys are shown as dmsetup shows them: keyring references, or zeros for inline keys). */
export function dmTable(name: string, o?: DmsetupOptions): string {
  if (ioctlPath(o)) return viaIoctl("table", name, () => dmIoctlTable(name));
  const r = dmsetupRun(["table", name], undefined, o);
  if (r.status !== 0) throw queryFailure("table", name, r.stderr);
  return r.stdout.trim();
}

/** The targets' status lines (`dmsetup status`). */
export function dmStatus(name: string, o?: DmsetupOptions): string {
  if (ioctlPath(o)) return viaIoctl("status", name, () => dmIoctlTable(name, true));
  const r = dmsetupRun(["status", name], undefined, o);
  if (r.status !== 0) throw queryFailure("status", name, r.stderr);
  return r.stdout.trim();
}

export function dmCryptTable(name: string, o?: DmsetupOptions): ParsedCryptTable | undefined {
  const line = dmTable(name, o).split("\n").find((l) => l.split(/\s+/)[2] === "crypt");
  return line ? parseCryptTable(line) : undefined;
}

/** Devices a mapping sits on, as [major, minor]. */
export function dmDeps(name: string, o?: DmsetupOptions): [number, number][] {
  const r = dmsetupRun(["deps", "-o", "devno", name], undefined, o);
  if (r.status !== 0) return [];
  return [...r.stdout.matchAll(/\((\d+),\s*(\d+)\)/g)].map((m) => [Number(m[1]), Number(m[2])]);
}

export interface CreateContext {
  /** What the table needs, to explain a refusal: the cipher and the key type. */
  cipher?: string;
  keyType?: string;
  /** A target-specific explanation of a refusal (stderr, kernel log lines written meanwhile); undefined = the generic one. */
  explain?: (stderr: string, kernel: string[]) => TrustvolError | undefined;
}

export interface CreateOptions {
  uuid?: string;
  readOnly?: boolean;
  /** false: no /dev/mapper node is needed (a helper referenced by major:minor), so it may be created in-process. */
  node?: boolean;
}

/**
 * Create and activate a mapping from a keyring-only table (one or more lines, on stdin). Explains the usual kernel
 * refusals. A multi-target table (re-encryption: old-key, new-key and linear segments) is one string of lines.
 */
export function dmCreate(name: string, table: string, opts: CreateOptions = {}, ctx: CreateContext = {}, o?: DmsetupOptions): void {
  checkMappingName(name);
  assertKeyringOnly(table);
  if (!deviceMapperPresent()) throw noDeviceMapper();
  if (dmInfo(name, o)) throw new TrustvolError("EBUSY", `a mapping named ${name} already exists`, `close it first (trustvol close ${name}) or pick another name`);
  const args = ["create", name, ...(opts.uuid ? ["--uuid", opts.uuid] : []), ...(opts.readOnly ? ["--readonly"] : [])];
  const before = ctx.explain ? kernelLog().length : 0; // only a target-specific explanation reads the kernel's lines
  if (opts.node === false && ioctlPath(o)) {
    try {
      return dmIoctlCreate(name, table, { uuid: opts.uuid, readOnly: opts.readOnly });
    } catch (e) {
      if (!(e instanceof DmIoctlError)) throw e;
      const stderr = `device-mapper: reload ioctl on ${name} failed: ${e.errno === "ENOKEY" ? "Required key not available" : e.errno === "EPERM" ? "Operation not permitted" : e.errno}`;
      const after = ctx.explain ? kernelLog() : [];
      throw ctx.explain?.(stderr, after.slice(Math.min(before, after.length))) ?? commonFailure("create", stderr) ?? explainCreateFailure(name, stderr, ctx, o);
    }
  }
  const r = dmsetupRun(args, table + "\n", o);
  if (r.status === 0) return;
  const after = ctx.explain ? kernelLog() : [];
  const kernel = after.slice(Math.min(before, after.length));
  // A failed create can leave an empty device behind (dmsetup creates, then loads): never leave it.
  if (dmInfo(name, o)) dmsetupRun(["remove", name], undefined, o);
  throw ctx.explain?.(r.stderr, kernel) ?? commonFailure("create", r.stderr) ?? explainCreateFailure(name, r.stderr, ctx, o);
}

/** Load a new (inactive) table into an existing mapping; it takes effect at the next resume. */
export function dmLoad(name: string, table: string, o?: DmsetupOptions): void {
  assertKeyringOnly(table);
  if (ioctlPath(o)) return viaIoctl("load", name, () => dmIoctlLoad(name, table));
  const r = dmsetupRun(["load", name], table + "\n", o);
  if (r.status !== 0) throw commonFailure("load", r.stderr) ?? new TrustvolError("EDEVICE", `device-mapper refused the new table for ${name}: ${firstLines(r.stderr)}`);
}

/** Suspend I/O to a mapping. noflush: keep queued I/O (a mounted file system keeps running, as cryptsetup reencrypt does). */
export function dmSuspend(name: string, opts: { noflush?: boolean; nolockfs?: boolean } = {}, o?: DmsetupOptions): void {
  if (ioctlPath(o)) return viaIoctl("suspend", name, () => dmIoctlSuspend(name, opts));
  const r = dmsetupRun(["suspend", ...(opts.noflush ? ["--noflush"] : []), ...(opts.nolockfs ? ["--nolockfs"] : []), name], undefined, o);
  if (r.status !== 0) throw queryFailure("suspend", name, r.stderr);
}

/** Resume a mapping (activating a table loaded with dmLoad). */
export function dmResume(name: string, o?: DmsetupOptions): void {
  if (ioctlPath(o)) return viaIoctl("resume", name, () => dmIoctlResume(name));
  const r = dmsetupRun(["resume", name], undefined, o);
  if (r.status !== 0) throw queryFailure("resume", name, r.stderr);
}

/** Replace a live mapping's table: load, suspend, resume (the table switch is atomic for I/O). */
export function dmReload(name: string, table: string, opts: { noflush?: boolean } = {}, o?: DmsetupOptions): void {
  dmLoad(name, table, o);
  dmSuspend(name, { noflush: opts.noflush }, o);
  dmResume(name, o);
}

/** Kernel log lines (best effort: dmesg may be restricted), to say why the kernel refused a table. */
export function kernelLog(): string[] {
  const r = spawnSync("dmesg", [], { encoding: "utf8", timeout: 5000 });
  return r.status === 0 && r.stdout ? r.stdout.trim().split("\n") : [];
}

function lastKernelDmLine(): string | undefined {
  const lines = kernelLog().filter((l) => /device-mapper|crypt/.test(l));
  return lines.pop()?.replace(/^\[[^\]]*\]\s*/, "");
}

/** Turn "reload ioctl on X failed: Invalid argument" into what the kernel lacks. */
export function explainCreateFailure(name: string, stderr: string, ctx: CreateContext, o?: DmsetupOptions): TrustvolError {
  const oneLine = stderr.split("\n").filter((l) => l.trim()).pop() ?? "failed";
  const targets = dmTargets(o);
  if (targets.size && !targets.has("crypt"))
    return new TrustvolError("EUNSUPPORTED", `this kernel has no dm-crypt target (dmsetup targets: ${[...targets.keys()].join(", ")})`, "enable CONFIG_DM_CRYPT or load the dm_crypt module");
  if (/Required key not available|No such key|ENOKEY/i.test(stderr))
    return new TrustvolError("ENOKEY", `the kernel could not find the ${ctx.keyType ?? "keyring"} key for ${name} (${oneLine})`, "is the key loaded in a keyring dmsetup can search (@u, or the session keyring)?");
  if (ctx.cipher) {
    let crypto = "";
    try {
      crypto = readFileSync("/proc/crypto", "utf8");
    } catch {
      /* no /proc/crypto */
    }
    const names = new Set([...crypto.matchAll(/^(?:name|driver)\s*:\s*(\S+)/gm)].map((m) => m[1]!));
    const need = kernelCryptoNames(ctx.cipher);
    const base = need[0]!;
    const missing = ctx.cipher.startsWith("capi:") ? need.filter((n) => !names.has(n)) : names.has(base) ? [] : [base];
    if (crypto && missing.length)
      return new TrustvolError("EUNSUPPORTED", `the kernel does not offer the cipher ${ctx.cipher} (no ${missing.join(", ")} in /proc/crypto)`, ctx.cipher.includes("tk(") ? "CAAM tagged keys need an i.MX kernel with CONFIG_CRYPTO_DEV_FSL_CAAM_TK_API" : "enable the cipher in the kernel (or load its module) or choose another cipher");
  }
  const kmsg = lastKernelDmLine();
  if (ctx.keyType && /Invalid argument/.test(stderr) && kmsg && /key/i.test(kmsg))
    return new TrustvolError("EUNSUPPORTED", `dm-crypt refused the ${ctx.keyType} key for ${name}: ${kmsg}`, `this kernel's dm-crypt may not accept ${ctx.keyType} keys (CONFIG_TRUSTED_KEYS / CONFIG_ENCRYPTED_KEYS), or the key size does not match the cipher`);
  return new TrustvolError("EDEVICE", `device-mapper refused the mapping ${name} (${oneLine})${kmsg ? `; kernel: ${kmsg}` : ""}`, "check the cipher, key size and that the device is not in use");
}

function inUse(name: string, detail?: string): TrustvolError {
  return new TrustvolError("EBUSY", `${name} is in use${detail ? ` (${detail})` : ""}`, `unmount it first (umount /dev/mapper/${name}) and close whatever holds it open`);
}

/** Remove a mapping; retries while udev or a closing file system still hold it. */
export function dmRemove(name: string, opts: { deferred?: boolean } = {}, o?: DmsetupOptions): void {
  if (!opts.deferred && ioctlPath(o)) {
    viaIoctl("remove", name, () => {
      try {
        dmIoctlRemove(name);
      } catch (e) {
        if (e instanceof DmIoctlError && e.errno === "EBUSY") throw inUse(name);
        throw e;
      }
    });
    // without udev nobody else removes the node dmsetup made when it created the mapping
    if (!udevRunning()) try { unlinkSync(`/dev/mapper/${name}`); } catch { /* none */ }
    return;
  }
  const r = dmsetupRun(["remove", "--retry", ...(opts.deferred ? ["--deferred"] : []), name], undefined, o);
  if (r.status === 0) return;
  if (/busy|in use/i.test(r.stderr)) throw inUse(name, r.stderr.split("\n").pop());
  throw queryFailure("remove", name, r.stderr);
}
