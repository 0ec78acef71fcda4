// The provisioning config (`/etc/trustvol/provision.json`, docs/provisioning.md): parsed and validated here, with
// one-line errors naming the field ("provision.json: volumes[0].trust.pcrs: expected ..."). JSON only, no dependency.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { TrustvolError } from "../util/errors.js";
import { parsePkcs11Uri } from "../trust/pkcs11/uri.js";

export const DEFAULT_CONFIG_PATH = "/etc/trustvol/provision.json";
/** LmP's shift: the file system is shrunk by 32 MiB, the LUKS2 header (16 MiB) takes half of it. */
export const DEFAULT_REDUCE_DEVICE_SIZE = 32 * 1024 * 1024;

/** Where a PIN comes from: a file (0600, one line), the console, or nothing (no PIN). */
export type PinSourceConfig = { file: string } | "prompt" | "none";
export type PostureLevel = "require" | "warn" | "ignore";

export interface Tpm2TrustConfig {
  type: "tpm2";
  pcrs: number[];
  bank: "sha256" | "sha1" | "sha384" | "sha512";
  pin: PinSourceConfig;
  /** "auto" ($TRUSTVOL_TPM2_DEVICE, else /dev/tpmrm0), a device path, swtpm:path=SOCK. */
  device: string;
}
export interface Pkcs11TrustConfig {
  type: "pkcs11";
  /** The module (default: p11-kit registrations). */
  module?: string;
  token_label: string;
  key_label: string;
  /** Initialise the token (on the first uninitialised slot, or `slot`) and generate an RSA-2048 key when absent. */
  create: boolean;
  slot?: number;
  pin: PinSourceConfig;
  /** SO PIN, needed only to initialise a new token. */
  so_pin?: PinSourceConfig;
}
export interface TrustedKeyTrustConfig {
  type: "trusted-key";
  source: "tpm" | "tee" | "caam" | "dcp";
  /** Where the sealed key descriptor lives (default: /etc/trustvol/NAME.tvkey). */
  descriptor: string;
  keyhandle?: number;
}
export interface CaamTrustConfig {
  type: "caam";
  /** Where the black key's blob lives (default: /etc/trustvol/NAME.caam). */
  descriptor: string;
  /** AES key bytes: 16, 24 or 32 (default 32). */
  key_size: number;
  /** How the CAAM encrypts the black key: ecb (default) or ccm. */
  key_encryption: "ecb" | "ccm";
  sector_size: number;
  /** The CAAM keygen device (default /dev/caam-keygen). */
  keygen_device: string;
}
export type TrustConfig = Tpm2TrustConfig | Pkcs11TrustConfig | TrustedKeyTrustConfig | CaamTrustConfig;

export type RecoveryConfig = { mode: "none" } | { mode: "show-once" } | { mode: "escrow"; public_key: string; output: string };

export interface PostureConfig {
  secure_boot: PostureLevel;
  setup_mode: PostureLevel;
  huk: PostureLevel;
}

export interface VolumeConfig {
  name: string;
  device: string;
  trust: TrustConfig;
  /** Key file holding the factory passphrase; undefined = none (a plain device, or a transitional secret). */
  factory?: { key_file: string };
  encrypt_plain: boolean;
  reduce_device_size: number;
  rotate_key: boolean;
  recovery: RecoveryConfig;
  header_backup?: string;
  posture: PostureConfig;
  on_failure: "stop" | "continue-unencrypted" | "recovery-prompt";
}

export interface ProvisionConfig {
  version: 1;
  volumes: VolumeConfig[];
}

type J = Record<string, unknown>;

class Ctx {
  constructor(readonly file: string) {}
  fail(field: string, what: string, hint?: string): never {
    throw new TrustvolError("EUSAGE", `${this.file}: ${field}: ${what}`, hint ?? "fix the provisioning config (docs/provisioning.md); nothing was changed");
  }
}

const isObj = (v: unknown): v is J => typeof v === "object" && v !== null && !Array.isArray(v);

function obj(c: Ctx, v: unknown, field: string): J {
  if (!isObj(v)) c.fail(field, "expected an object");
  return v;
}
function only(c: Ctx, o: J, field: string, keys: string[]): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) c.fail(`${field}.${k}`, `unknown field (expected one of ${keys.join(", ")})`);
}
function str(c: Ctx, o: J, k: string, field: string, def?: string): string {
  const v = o[k];
  if (v === undefined && def !== undefined) return def;
  if (typeof v !== "string" || !v) c.fail(`${field}.${k}`, v === undefined ? "missing" : "expected a non-empty string");
  if (v.includes("\0") || v.includes("\n")) c.fail(`${field}.${k}`, "contains a NUL or newline");
  return v;
}
function bool(c: Ctx, o: J, k: string, field: string, def: boolean): boolean {
  const v = o[k];
  if (v === undefined) return def;
  if (typeof v !== "boolean") c.fail(`${field}.${k}`, "expected true or false");
  return v;
}
function oneOf<T extends string | number>(c: Ctx, o: J, k: string, field: string, values: readonly T[], def?: T): T {
  const v = o[k];
  if (v === undefined && def !== undefined) return def;
  if (!values.includes(v as T)) c.fail(`${field}.${k}`, `expected one of ${values.map((x) => JSON.stringify(x)).join(", ")}`);
  return v as T;
}
function absPath(c: Ctx, o: J, k: string, field: string, def?: string): string {
  const p = str(c, o, k, field, def);
  if (!p.startsWith("/")) c.fail(`${field}.${k}`, `expected an absolute path, got "${p.slice(0, 60)}"`);
  return p;
}

const SIZE_UNITS: Record<string, number> = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 };
function size(c: Ctx, o: J, k: string, field: string, def: number): number {
  const v = o[k];
  if (v === undefined) return def;
  let n: number | undefined;
  if (typeof v === "number" && Number.isSafeInteger(v)) n = v;
  else if (typeof v === "string") {
    const m = /^([0-9]+)([KMG]?)(?:i?B)?$/.exec(v);
    if (m) n = Number(m[1]) * SIZE_UNITS[m[2]!]!;
  }
  if (n === undefined || !Number.isSafeInteger(n)) c.fail(`${field}.${k}`, 'expected a size in bytes or with a K/M/G suffix (e.g. "32M")');
  if (n < 2 * 1024 * 1024 || n % 8192) c.fail(`${field}.${k}`, "must be at least 2M and a multiple of 8K (twice the shift, cryptsetup's --reduce-device-size)");
  return n;
}

function pinSource(c: Ctx, v: unknown, field: string): PinSourceConfig {
  if (v === undefined || v === "none") return "none";
  if (v === "prompt") return "prompt";
  if (isObj(v)) {
    only(c, v, field, ["file"]);
    const f = str(c, v, "file", field);
    if (!f.startsWith("/")) c.fail(`${field}.file`, "expected an absolute path");
    return { file: f };
  }
  return c.fail(field, 'expected "none", "prompt" or {"file": "/path"} (a PIN is never written in the config itself)');
}

function level(c: Ctx, o: J, k: string, field: string, def: PostureLevel): PostureLevel {
  return oneOf(c, o, k, field, ["require", "warn", "ignore"] as const, def);
}

function trust(c: Ctx, v: unknown, field: string, name: string): TrustConfig {
  let o = obj(c, v, field);
  const type = oneOf(c, o, "type", field, ["tpm2", "pkcs11", "trusted-key", "caam"] as const);
  switch (type) {
    case "tpm2": {
      only(c, o, field, ["type", "pcrs", "bank", "pin", "device"]);
      const pcrs = o.pcrs ?? [7];
      if (!Array.isArray(pcrs) || pcrs.some((p) => !Number.isInteger(p) || p < 0 || p > 23) || new Set(pcrs).size !== pcrs.length) c.fail(`${field}.pcrs`, "expected a list of PCR indexes 0–23");
      return { type, pcrs: [...(pcrs as number[])].sort((a, b) => a - b), bank: oneOf(c, o, "bank", field, ["sha256", "sha1", "sha384", "sha512"] as const, "sha256"), pin: pinSource(c, o.pin, `${field}.pin`), device: str(c, o, "device", field, "auto") };
    }
    case "pkcs11": {
      only(c, o, field, ["type", "uri", "module", "token_label", "key_label", "create", "slot", "pin", "so_pin"]);
      // A PKCS#11 URI (pkcs11:token=lmp;object=luks) may name the token and key instead of the two labels.
      let fromUri: { token?: string; object?: string } = {};
      if (o.uri !== undefined) {
        if (o.token_label !== undefined || o.key_label !== undefined) c.fail(`${field}.uri`, "give either uri or token_label/key_label");
        try {
          fromUri = parsePkcs11Uri(str(c, o, "uri", field));
        } catch (e) {
          c.fail(`${field}.uri`, e instanceof TrustvolError ? e.message : "not a PKCS#11 URI");
        }
        if (!fromUri.token || !fromUri.object) c.fail(`${field}.uri`, "must name the token and the key (pkcs11:token=LABEL;object=LABEL)");
        o = { ...o, token_label: fromUri.token, key_label: fromUri.object };
      }
      const pin = pinSource(c, o.pin, `${field}.pin`);
      const create = bool(c, o, "create", field, false);
      const so = o.so_pin === undefined ? undefined : pinSource(c, o.so_pin, `${field}.so_pin`);
      if (create && (so === undefined || so === "none")) c.fail(`${field}.so_pin`, 'needed when "create" is true (the SO PIN a new token is initialised with)');
      if (pin === "none") c.fail(`${field}.pin`, "a PKCS#11 key needs the token's user PIN: give a file or \"prompt\"");
      const tl = str(c, o, "token_label", field, "lmp");
      if (Buffer.byteLength(tl) > 32) c.fail(`${field}.token_label`, "at most 32 bytes");
      const slot = o.slot;
      if (slot !== undefined && (!Number.isSafeInteger(slot) || (slot as number) < 0)) c.fail(`${field}.slot`, "expected a slot ID (a non-negative integer)");
      return { type, ...(o.module !== undefined ? { module: absPath(c, o, "module", field) } : {}), token_label: tl, key_label: str(c, o, "key_label", field, "luks"), create, ...(slot !== undefined ? { slot: slot as number } : {}), pin, ...(so ? { so_pin: so } : {}) };
    }
    case "trusted-key": {
      only(c, o, field, ["type", "source", "descriptor", "keyhandle"]);
      const kh = o.keyhandle;
      let keyhandle: number | undefined;
      if (kh !== undefined) {
        keyhandle = typeof kh === "string" && /^0x[0-9a-fA-F]{8}$/.test(kh) ? Number(kh) : typeof kh === "number" && Number.isSafeInteger(kh) ? kh : undefined;
        if (keyhandle === undefined) c.fail(`${field}.keyhandle`, 'expected a TPM handle such as "0x81000001"');
      }
      return { type, source: oneOf(c, o, "source", field, ["tpm", "tee", "caam", "dcp"] as const), descriptor: absPath(c, o, "descriptor", field, `/etc/trustvol/${name}.tvkey`), ...(keyhandle !== undefined ? { keyhandle } : {}) };
    }
    case "caam":
      only(c, o, field, ["type", "descriptor", "key_size", "key_encryption", "sector_size", "keygen_device"]);
      return {
        type,
        descriptor: absPath(c, o, "descriptor", field, `/etc/trustvol/${name}.caam`),
        key_size: oneOf(c, o, "key_size", field, [16, 24, 32] as const, 32),
        key_encryption: oneOf(c, o, "key_encryption", field, ["ecb", "ccm"] as const, "ecb"),
        sector_size: oneOf(c, o, "sector_size", field, [512, 1024, 2048, 4096] as const, 4096),
        keygen_device: absPath(c, o, "keygen_device", field, "/dev/caam-keygen"),
      };
  }
}

function recovery(c: Ctx, v: unknown, field: string): RecoveryConfig {
  if (v === undefined || v === "none") return { mode: "none" };
  if (v === "show-once") return { mode: "show-once" };
  if (isObj(v)) {
    only(c, v, field, ["escrow"]);
    const e = obj(c, v.escrow, `${field}.escrow`);
    only(c, e, `${field}.escrow`, ["public_key", "output"]);
    return { mode: "escrow", public_key: absPath(c, e, "public_key", `${field}.escrow`), output: absPath(c, e, "output", `${field}.escrow`) };
  }
  return c.fail(field, 'expected "none", "show-once" or {"escrow": {"public_key": "/path.pem", "output": "/path"}}');
}

const DEVICE_RE = /^(?:\/\S+|(?:PARTUUID|PARTLABEL|LABEL|UUID)=\S+)$/;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,126}$/;

function volume(c: Ctx, v: unknown, i: number): VolumeConfig {
  const field = `volumes[${i}]`;
  const o = obj(c, v, field);
  only(c, o, field, ["name", "device", "trust", "factory", "encrypt_plain", "reduce_device_size", "rotate_key", "recovery", "header_backup", "posture", "on_failure"]);
  const name = str(c, o, "name", field);
  if (!NAME_RE.test(name)) c.fail(`${field}.name`, "expected a device-mapper name (letters, digits, _ . + -)");
  const device = str(c, o, "device", field);
  if (!DEVICE_RE.test(device)) c.fail(`${field}.device`, "expected an absolute path or PARTUUID=, PARTLABEL=, LABEL=, UUID=");
  let factory: { key_file: string } | undefined;
  if (o.factory !== undefined && o.factory !== "none") {
    const f = obj(c, o.factory, `${field}.factory`);
    only(c, f, `${field}.factory`, ["key_file"]);
    factory = { key_file: absPath(c, f, "key_file", `${field}.factory`) };
  }
  const t = trust(c, o.trust, `${field}.trust`, name);
  const postureObj = o.posture === undefined ? {} : obj(c, o.posture, `${field}.posture`);
  only(c, postureObj, `${field}.posture`, ["secure_boot", "setup_mode", "huk"]);
  const out: VolumeConfig = {
    name,
    device,
    trust: t,
    ...(factory ? { factory } : {}),
    encrypt_plain: bool(c, o, "encrypt_plain", field, false),
    reduce_device_size: size(c, o, "reduce_device_size", field, DEFAULT_REDUCE_DEVICE_SIZE),
    rotate_key: bool(c, o, "rotate_key", field, false),
    recovery: recovery(c, o.recovery, `${field}.recovery`),
    ...(o.header_backup !== undefined ? { header_backup: absPath(c, o, "header_backup", field) } : {}),
    posture: {
      secure_boot: level(c, postureObj, "secure_boot", `${field}.posture`, "warn"),
      setup_mode: level(c, postureObj, "setup_mode", `${field}.posture`, "warn"),
      huk: level(c, postureObj, "huk", `${field}.posture`, "warn"),
    },
    on_failure: oneOf(c, o, "on_failure", field, ["stop", "continue-unencrypted", "recovery-prompt"] as const, "stop"),
  };
  if (t.type === "trusted-key" || t.type === "caam") {
    if (out.encrypt_plain || out.rotate_key || factory) c.fail(`${field}.trust.type`, `"${t.type}" makes a new plain dm-crypt data volume: encrypt_plain, rotate_key and factory do not apply`, "use tpm2 or pkcs11 for a LUKS2 volume that is converted in place");
    if (out.recovery.mode !== "none") c.fail(`${field}.recovery`, `"${t.type}" volumes have no keyslots for a recovery key`);
  }
  return out;
}

/** Validate a parsed JSON value; `file` names the config in messages. */
export function parseProvisionConfig(json: unknown, file = "provision.json"): ProvisionConfig {
  const c = new Ctx(file);
  const o = obj(c, json, "(top level)");
  only(c, o, "(top level)", ["version", "volumes"]);
  if (o.version !== undefined && o.version !== 1) c.fail("version", "expected 1");
  const list = o.volumes;
  if (!Array.isArray(list) || list.length === 0) c.fail("volumes", "expected a non-empty list of volumes");
  const volumes = (list as unknown[]).map((v, i) => volume(c, v, i));
  const seen = new Map<string, number>();
  volumes.forEach((v: VolumeConfig, i: number) => {
    if (seen.has(v.name)) c.fail(`volumes[${i}].name`, `"${v.name}" is also volumes[${seen.get(v.name)}].name`);
    seen.set(v.name, i);
  });
  return { version: 1, volumes };
}

/** Read and validate the config file. */
export function loadProvisionConfig(path = DEFAULT_CONFIG_PATH): ProvisionConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new TrustvolError(code === "ENOENT" ? "ENOENT" : "EDEVICE", `${path}: ${code === "ENOENT" ? "no such provisioning config" : "cannot be read"}`, "give --config FILE (see docs/provisioning.md)");
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new TrustvolError("EUSAGE", `${basename(path)}: not valid JSON (${(e as Error).message.split("\n")[0]})`, "fix the provisioning config; nothing was changed");
  }
  return parseProvisionConfig(json, basename(path));
}

/** A file the initramfs stage reads, and whether it is a secret that leaves the encrypted root by being copied. */
export interface InitramfsFile {
  path: string;
  /** "library": copied with its shared libraries (copy_exec); "file": as is. */
  kind: "file" | "library";
  why: string;
  secret: boolean;
}

/**
 * What the initramfs hook must copy for the config to work before the root is mounted: the factory key, PIN files,
 * the PKCS#11 module and the data volumes' key descriptors (sealed: useless off this device). In config order, once each.
 */
export function initramfsFiles(cfg: ProvisionConfig): InitramfsFile[] {
  const out = new Map<string, InitramfsFile>();
  const add = (f: InitramfsFile) => void (out.has(f.path) || out.set(f.path, f));
  const pin = (p: PinSourceConfig, why: string) => typeof p === "object" && add({ path: p.file, kind: "file", why, secret: true });
  for (const v of cfg.volumes) {
    if (v.factory) add({ path: v.factory.key_file, kind: "file", why: `${v.name}: factory key`, secret: true });
    const t = v.trust;
    if (t.type === "tpm2") pin(t.pin, `${v.name}: TPM2 PIN`);
    if (t.type === "pkcs11") {
      if (t.module) add({ path: t.module, kind: "library", why: `${v.name}: PKCS#11 module`, secret: false });
      pin(t.pin, `${v.name}: PKCS#11 user PIN`);
      if (t.so_pin) pin(t.so_pin, `${v.name}: PKCS#11 SO PIN`);
    }
    if (t.type === "trusted-key" || t.type === "caam") add({ path: t.descriptor, kind: "file", why: `${v.name}: sealed key descriptor`, secret: false });
    if (v.recovery.mode === "escrow") add({ path: v.recovery.public_key, kind: "file", why: `${v.name}: recovery escrow public key`, secret: false });
  }
  return [...out.values()];
}
