// device-mapper through dmsetup(8). Tables go to dmsetup on stdin and only ever hold keyring references
// (see table.ts), so nothing secret passes through here. Without udev (initramfs, test guest) dmsetup is told to
// create the /dev/mapper nodes itself.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { TrustvolError } from "../util/errors.js";
import { assertKeyringOnly, kernelCryptoNames, parseCryptTable, type ParsedCryptTable } from "./table.js";

export interface DmsetupOptions {
  dmsetup?: string;
  timeoutMs?: number;
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
  const extra = udevRunning() ? [] : ["--noudevsync"];
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

export function deviceMapperPresent(): boolean {
  if (existsSync("/dev/mapper/control")) return true;
  try {
    return /\bdevice-mapper\b/.test(readFileSync("/proc/misc", "utf8"));
  } catch {
    return false;
  }
}

export interface DmInfo {
  name: string;
  uuid: string;
  open: number;
  major: number;
  minor: number;
  readOnly: boolean;
  suspended: boolean;
}

/** `dmsetup info` for one mapping; undefined when it does not exist. */
export function dmInfo(name: string, o?: DmsetupOptions): DmInfo | undefined {
  const r = dmsetupRun(["info", "-c", "--noheadings", "--separator", "|", "-o", "name,uuid,open,major,minor,attr", name], undefined, o);
  if (r.status !== 0) {
    if (/not exist|No such device/i.test(r.stderr)) return undefined;
    if (!deviceMapperPresent()) return undefined;
    throw new TrustvolError("EIO", `dmsetup info ${name} failed: ${r.stderr}`);
  }
  const [n, uuid, open, major, minor, attr] = r.stdout.trim().split("|");
  return { name: n!, uuid: uuid ?? "", open: Number(open), major: Number(major), minor: Number(minor), readOnly: (attr ?? "").includes("r"), suspended: (attr ?? "").startsWith("s") };
}

/** The live table of a mapping (keys are shown as dmsetup shows them: keyring references, or zeros for inline keys). */
export function dmTable(name: string, o?: DmsetupOptions): string {
  const r = dmsetupRun(["table", name], undefined, o);
  if (r.status !== 0) throw new TrustvolError("ENOENT", `no mapping named ${name}`, "list mappings with `dmsetup ls`");
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
}

/** Create and activate a mapping from a keyring-only table (stdin). Explains the usual kernel refusals. */
export function dmCreate(name: string, table: string, opts: { uuid?: string; readOnly?: boolean } = {}, ctx: CreateContext = {}, o?: DmsetupOptions): void {
  assertKeyringOnly(table);
  if (!deviceMapperPresent()) throw new TrustvolError("EUNSUPPORTED", "this kernel has no device-mapper (no /dev/mapper/control)", "enable CONFIG_BLK_DEV_DM and CONFIG_DM_CRYPT, or load dm_mod / dm_crypt");
  if (dmInfo(name, o)) throw new TrustvolError("EBUSY", `a mapping named ${name} already exists`, `close it first (trustvol close ${name}) or pick another name`);
  const args = ["create", name, ...(opts.uuid ? ["--uuid", opts.uuid] : []), ...(opts.readOnly ? ["--readonly"] : [])];
  const r = dmsetupRun(args, table + "\n", o);
  if (r.status === 0) return;
  throw explainCreateFailure(name, r.stderr, ctx, o);
}

function lastKernelDmLine(): string | undefined {
  const r = spawnSync("dmesg", [], { encoding: "utf8", timeout: 5000 });
  if (r.status !== 0 || !r.stdout) return undefined;
  const lines = r.stdout.trim().split("\n").filter((l) => /device-mapper|crypt/.test(l));
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

/** Remove a mapping; retries while udev or a closing file system still hold it. */
export function dmRemove(name: string, opts: { deferred?: boolean } = {}, o?: DmsetupOptions): void {
  const r = dmsetupRun(["remove", "--retry", ...(opts.deferred ? ["--deferred"] : []), name], undefined, o);
  if (r.status === 0) return;
  if (/not exist|No such device/i.test(r.stderr)) throw new TrustvolError("ENOENT", `no mapping named ${name}`, "list mappings with `dmsetup ls`");
  if (/busy|in use/i.test(r.stderr)) throw new TrustvolError("EBUSY", `${name} is in use (${r.stderr.split("\n").pop()})`, "unmount it and close whatever holds it open; or use --deferred");
  throw new TrustvolError("EDEVICE", `dmsetup remove ${name} failed: ${r.stderr.split("\n").pop()}`);
}
