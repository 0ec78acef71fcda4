// `trustvol doctor`: what this device offers for sealed-key disk encryption, and what makes it unsafe.
// Every probe reads below `root` (default "/"), so tests run it against a fake /sys, /proc, /dev tree; commands
// (dmsetup, tpm2_pcrread) go through an injectable `exec` that is off unless root is "/".
//
// Findings carry a severity: "critical" (the protection does not hold: plaintext swap, Secure Boot off while keys
// are sealed to the platform), "warning" (something to fix or check), "info". A critical finding makes the CLI
// exit with 8. Seed-000 lessons are built in: a TEE sealing with OP-TEE's default hard-coded HUK protects nothing,
// and without Secure Boot anyone who can boot their own code can unseal (TPM PCR 7, OP-TEE, CAAM alike).
import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync, readlinkSync, statSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { discoverP11KitModules } from "../trust/pkcs11/module.js";
import { TPM2_DEVICE_ENV, parseTpm2Device } from "../trust/tpm2/transport-select.js";
import { TrustvolError } from "../util/errors.js";

export type Severity = "critical" | "warning" | "info";

export interface Finding {
  id: string;
  severity: Severity;
  title: string;
  detail?: string;
  hint?: string;
}

export type Tristate = "yes" | "module" | "no" | "unknown";

export interface DoctorReport {
  root: string;
  kernel: { release?: string; config: "found" | "missing"; dmCrypt: Tristate; dmVerity: Tristate; dmIntegrity: Tristate; loop: Tristate; trustedKeys: Tristate; trustedSources: Record<"tpm" | "tee" | "caam" | "dcp", Tristate>; encryptedKeys: Tristate; caamTaggedKeys: Tristate; dmTargets?: string[] };
  trustSources: {
    tpm?: { device: string; version?: number; resourceManager: boolean; pcr7?: string };
    tee?: { device: string; trustedKeysTa: boolean };
    caam?: { jobRings: number; keygen: boolean; taggedKeyCiphers: string[] };
    dcp?: { bound: boolean };
    pkcs11Modules: { name: string; path: string }[];
    trustedKeySource?: string;
  };
  secureBoot: { state: "enabled" | "disabled" | "unknown"; how: string; setupMode?: boolean };
  swap: { device: string; type: string; encrypted: boolean | "unknown" }[];
  tmp: { fstype: string; source: string; encrypted: boolean | "unknown" } | undefined;
  volumes: { device: string; version: 1 | 2; uuid?: string; tokens: string[]; keyslots: number }[];
  mappings: { name: string; uuid: string }[];
  findings: Finding[];
  critical: boolean;
}

export interface DoctorOptions {
  /** Prefix for every probed path (tests: a fake tree). Default "/". */
  root?: string;
  /** Run a command; default: real commands when root is "/", none otherwise. Return undefined when it cannot run. */
  exec?: ((cmd: string, args: string[]) => { status: number; stdout: string } | undefined) | null;
  /** p11-kit config dirs (default: p11-kit's, below root). */
  p11KitDirs?: string[];
  /** Do not open block devices to look for LUKS headers. */
  skipVolumeScan?: boolean;
  /** Environment (TRUSTVOL_TPM2_DEVICE); default process.env when root is "/", none otherwise. */
  env?: NodeJS.ProcessEnv;
}

const EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
const OPTEE_TRUSTED_KEYS_TA = "optee-ta-f04a0fe7-1f5d-4b9b-abf7-619b85b4ce8c";

export function runDoctor(o: DoctorOptions = {}): DoctorReport {
  const root = o.root ?? "/";
  // Auditing a tree that is not there would report a device with nothing in it: refuse instead.
  let isDir = false;
  try {
    isDir = statSync(root).isDirectory();
  } catch {
    /* reported below */
  }
  if (!isDir) throw new TrustvolError("ENOENT", `${root}: no such directory to audit`, "--root names the directory where the device's root file system is mounted");
  const env = o.env ?? (root === "/" ? process.env : {});
  const p = (...s: string[]) => join(root, ...s);
  const read = (f: string): string | undefined => {
    try {
      return readFileSync(p(f), "utf8");
    } catch {
      return undefined;
    }
  };
  const ls = (d: string): string[] => {
    try {
      return readdirSync(p(d)).sort();
    } catch {
      return [];
    }
  };
  const exists = (f: string) => existsSync(p(f));
  const exec =
    o.exec === null
      ? undefined
      : o.exec ??
        (root === "/"
          ? (cmd: string, args: string[]) => {
              const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 15_000 });
              return r.error ? undefined : { status: r.status ?? -1, stdout: r.stdout ?? "" };
            }
          : undefined);
  const findings: Finding[] = [];
  const add = (f: Finding) => findings.push(f);

  // ---------------------------------------------------------------- kernel configuration
  const release = read("proc/sys/kernel/osrelease")?.trim();
  let config: string | undefined;
  try {
    config = gunzipSync(readFileSync(p("proc/config.gz"))).toString("utf8");
  } catch {
    config = release ? read(`boot/config-${release}`) : undefined;
  }
  const builtin = release ? read(`lib/modules/${release}/modules.builtin`) ?? read(`usr/lib/modules/${release}/modules.builtin`) : undefined;
  const loaded = read("proc/modules") ?? "";
  const cfg = (sym: string, mod?: string): Tristate => {
    if (config) {
      const m = new RegExp(`^CONFIG_${sym}=(y|m)$`, "m").exec(config);
      if (m) return m[1] === "y" ? "yes" : "module";
      return "no";
    }
    if (mod) {
      if (new RegExp(`^${mod} `, "m").test(loaded) || exists(`sys/module/${mod}`)) return "module";
      if (builtin && new RegExp(`/${mod.replace(/_/g, "[-_]")}\\.ko`, "m").test(builtin)) return "yes";
    }
    return "unknown";
  };
  let dmTargets: string[] | undefined;
  const t = exec?.("dmsetup", ["targets"]);
  if (t && t.status === 0) dmTargets = t.stdout.split("\n").map((l) => l.trim().split(/\s+/)[0]!).filter(Boolean);
  const fromTargets = (name: string, c: Tristate): Tristate => (dmTargets?.includes(name) ? (c === "module" ? "module" : "yes") : c);
  const kernel: DoctorReport["kernel"] = {
    ...(release ? { release } : {}),
    config: config ? "found" : "missing",
    dmCrypt: fromTargets("crypt", cfg("DM_CRYPT", "dm_crypt")),
    dmVerity: fromTargets("verity", cfg("DM_VERITY", "dm_verity")),
    dmIntegrity: fromTargets("integrity", cfg("DM_INTEGRITY", "dm_integrity")),
    loop: exists("dev/loop-control") ? "yes" : cfg("BLK_DEV_LOOP", "loop"),
    trustedKeys: cfg("TRUSTED_KEYS", "trusted"),
    trustedSources: { tpm: cfg("TRUSTED_KEYS_TPM"), tee: cfg("TRUSTED_KEYS_TEE"), caam: cfg("TRUSTED_KEYS_CAAM"), dcp: cfg("TRUSTED_KEYS_DCP") },
    encryptedKeys: cfg("ENCRYPTED_KEYS", "encrypted_keys"),
    caamTaggedKeys: cfg("CRYPTO_DEV_FSL_CAAM_TK_API"),
    ...(dmTargets ? { dmTargets } : {}),
  };
  if (kernel.dmCrypt === "no" || (dmTargets && !dmTargets.includes("crypt") && kernel.dmCrypt !== "module"))
    add({ id: "kernel.no-dm-crypt", severity: "warning", title: "the kernel has no dm-crypt", hint: "enable CONFIG_DM_CRYPT; trustvol can still build images offline, but cannot open volumes here" });

  // ---------------------------------------------------------------- trust sources
  const ts: DoctorReport["trustSources"] = { pkcs11Modules: [] };
  if (exists("sys/class/tpm/tpm0") || exists("dev/tpm0") || exists("dev/tpmrm0")) {
    const v = read("sys/class/tpm/tpm0/tpm_version_major")?.trim();
    let pcr7 = read("sys/class/tpm/tpm0/pcr-sha256/7")?.trim().toLowerCase();
    if (!pcr7 && exec && root === "/") {
      const r = exec("tpm2_pcrread", ["sha256:7"]);
      const m = r?.status === 0 ? /7\s*:\s*0x([0-9A-Fa-f]{64})/.exec(r.stdout) : null;
      if (m) pcr7 = m[1]!.toLowerCase();
    }
    ts.tpm = { device: exists("dev/tpmrm0") ? "/dev/tpmrm0" : "/dev/tpm0", ...(v ? { version: Number(v) } : {}), resourceManager: exists("dev/tpmrm0"), ...(pcr7 ? { pcr7 } : {}) };
  }
  // The TPM trustvol itself would use: TRUSTVOL_TPM2_DEVICE overrides the kernel's (as for `--tpm2-device auto`).
  const envTpm = env[TPM2_DEVICE_ENV]?.trim();
  if (envTpm) {
    let spec: ReturnType<typeof parseTpm2Device> | undefined;
    try {
      spec = parseTpm2Device(envTpm);
    } catch {
      add({ id: "tpm.env-invalid", severity: "warning", title: `${TPM2_DEVICE_ENV}=${envTpm} is not a TPM device trustvol understands`, hint: "use a device path (/dev/tpmrm0), swtpm:path=SOCKET or swtpm:host=H,port=P" });
    }
    if (spec && spec !== "auto") {
      const path = spec.kind === "device" ? spec.path : "path" in spec.addr ? spec.addr.path : undefined;
      if (path !== undefined && !existsSync(path)) add({ id: "tpm.env-missing", severity: "warning", title: `${TPM2_DEVICE_ENV} names ${path}, which does not exist`, hint: `start the TPM (or swtpm) or unset ${TPM2_DEVICE_ENV}` });
      else {
        const same = spec.kind === "device" && ts.tpm?.device === spec.path ? ts.tpm : undefined; // sysfs facts only for the kernel's TPM
        ts.tpm = { device: envTpm, ...(spec.kind === "swtpm" ? { version: 2 } : same?.version ? { version: same.version } : {}), resourceManager: spec.kind === "swtpm" || /tpmrm/.test(envTpm), ...(same?.pcr7 ? { pcr7: same.pcr7 } : {}) };
      }
    }
  }
  if (exists("dev/tee0") || exists("sys/class/tee/tee0")) ts.tee = { device: "/dev/tee0", trustedKeysTa: exists(`sys/bus/tee/devices/${OPTEE_TRUSTED_KEYS_TA}`) };
  const jr = ls("sys/bus/platform/drivers/caam_jr").filter((n) => !["bind", "unbind", "uevent", "module"].includes(n));
  const crypto = read("proc/crypto") ?? "";
  const tk = [...new Set([...crypto.matchAll(/^name\s*:\s*(tk\(\S+\))$/gm)].map((m) => m[1]!))];
  if (jr.length || exists("dev/caam-keygen") || tk.length) ts.caam = { jobRings: jr.length, keygen: exists("dev/caam-keygen"), taggedKeyCiphers: tk };
  if (ls("sys/bus/platform/drivers/mxs-dcp").some((n) => !["bind", "unbind", "uevent", "module"].includes(n))) ts.dcp = { bound: true };
  try {
    const dirs = o.p11KitDirs ?? ["usr/share/p11-kit/modules", "etc/pkcs11/modules"].map((d) => p(d));
    ts.pkcs11Modules = discoverP11KitModules({ dirs }).map((m) => ({ name: m.name, path: m.path }));
  } catch {
    ts.pkcs11Modules = [];
  }
  const cmdline = read("proc/cmdline") ?? "";
  const src = /(?:^|\s)trusted\.source=(\S+)/.exec(cmdline)?.[1] ?? read("sys/module/trusted/parameters/source")?.trim();
  if (src) ts.trustedKeySource = src;
  const anySource = !!(ts.tpm || ts.tee || ts.caam || ts.dcp || ts.pkcs11Modules.length);
  if (!anySource)
    add({ id: "trust.none", severity: "warning", title: "no hardware trust source found (no TPM, OP-TEE, CAAM, DCP or PKCS#11 module)", hint: "keys can only be protected by a passphrase here" });
  if (ts.caam && !ts.caam.keygen) add({ id: "caam.no-keygen", severity: "info", title: "CAAM is present but /dev/caam-keygen is not", hint: "black keys need linux-imx with CONFIG_CRYPTO_DEV_FSL_CAAM_KEYGEN" });
  if (ts.caam && !tk.length && kernel.caamTaggedKeys !== "yes")
    add({ id: "caam.no-tk", severity: "info", title: "no CAAM tagged-key cipher (tk(cbc(aes))) in /proc/crypto", hint: "dm-crypt with black keys needs CONFIG_CRYPTO_DEV_FSL_CAAM_TK_API" });
  if (kernel.trustedKeys === "no" && (ts.tee || ts.caam || ts.dcp || ts.tpm))
    add({ id: "kernel.no-trusted-keys", severity: "info", title: "the kernel has no trusted keys (CONFIG_TRUSTED_KEYS)", hint: "the seed flow `keyctl add trusted` needs it" });

  // ---------------------------------------------------------------- secure boot
  let sb: DoctorReport["secureBoot"] = { state: "unknown", how: "no UEFI variables (not UEFI, or efivarfs not mounted); on i.MX check HAB/AHAB closed state" };
  const efivar = (name: string): number | undefined => {
    try {
      const b = readFileSync(p(`sys/firmware/efi/efivars/${name}-${EFI_GLOBAL}`));
      return b.length >= 5 ? b[4] : undefined;
    } catch {
      return undefined;
    }
  };
  const sbv = efivar("SecureBoot");
  if (sbv !== undefined) {
    const setup = efivar("SetupMode");
    sb = { state: sbv === 1 ? "enabled" : "disabled", how: "UEFI SecureBoot variable", ...(setup !== undefined ? { setupMode: setup === 1 } : {}) };
  } else if (exists("sys/firmware/efi")) sb = { state: "unknown", how: "UEFI system, but the SecureBoot variable is not readable (mount efivarfs)" };
  const sealing = ts.tpm || ts.tee || ts.caam || ts.dcp;
  if (sb.state === "disabled" && sealing)
    add({ id: "secureboot.off", severity: "critical", title: "Secure Boot is off: keys sealed to this device are not really protected", detail: "anyone who can boot their own kernel can ask the TPM / TEE / CAAM to unseal them (seed 000: secure boot and chain of trust)", hint: "enable Secure Boot (UEFI) or HAB/AHAB (i.MX) and seal to PCR 7" });
  else if (sb.state === "unknown" && sealing)
    add({ id: "secureboot.unknown", severity: "warning", title: "Secure Boot state unknown", detail: sb.how, hint: "without a verified boot chain, sealed keys protect against a stolen disk only, not a stolen device" });
  if (sb.setupMode) add({ id: "secureboot.setup-mode", severity: "warning", title: "UEFI is in Setup Mode: anyone can enroll keys", hint: "enroll a PK to leave setup mode" });
  if (ts.tpm?.pcr7 && /^0+$/.test(ts.tpm.pcr7)) add({ id: "tpm.pcr7-zero", severity: "warning", title: "TPM PCR 7 is all zeros: the firmware measured no Secure Boot policy", hint: "a policy on PCR 7 then binds to nothing; check the firmware measures Secure Boot state" });

  // ---------------------------------------------------------------- OP-TEE HUK (seed 000)
  if (ts.tee) {
    add({ id: "tee.huk", severity: "warning", title: "OP-TEE present: check its Hardware Unique Key source", detail: "many platforms run OP-TEE with the default hard-coded HUK; trusted keys sealed with it open on every board with the same OP-TEE build", hint: "confirm the platform's HUK comes from fuses/OTP (CFG_* HUK driver) — trustvol cannot read the HUK to check" });
    if (sb.state !== "enabled") add({ id: "tee.no-secure-boot", severity: sb.state === "disabled" ? "critical" : "warning", title: "OP-TEE without verified Secure Boot: replaced firmware can obtain the HUK-derived keys", hint: "sign the boot chain (HAB/AHAB, TF-A trusted boot) before relying on TEE-sealed keys" });
  }

  // ---------------------------------------------------------------- block devices, dm mappings
  const mappings: DoctorReport["mappings"] = [];
  const dmName = new Map<string, { name: string; uuid: string }>();
  for (const b of ls("sys/class/block")) {
    if (!b.startsWith("dm-")) continue;
    const name = read(`sys/class/block/${b}/dm/name`)?.trim() ?? b;
    const uuid = read(`sys/class/block/${b}/dm/uuid`)?.trim() ?? "";
    dmName.set(b, { name, uuid });
    if (uuid.startsWith("CRYPT-")) mappings.push({ name, uuid });
  }
  const mapperName = new Map([...dmName.entries()].map(([k, v]) => [v.name, k]));
  /** Is block device /dev/X (or /dev/mapper/Y) dm-crypt, or stacked on dm-crypt? */
  const encryptedDev = (dev: string): boolean | "unknown" => {
    let b = dev.replace(/^\/dev\//, "");
    if (b.startsWith("mapper/")) b = mapperName.get(b.slice(7)) ?? b;
    else {
      try {
        const l = readlinkSync(p("dev", b));
        b = l.split("/").pop()!;
      } catch {
        /* not a link */
      }
    }
    const seen = new Set<string>();
    const walk = (x: string): boolean | "unknown" => {
      if (seen.has(x)) return false;
      seen.add(x);
      const info = dmName.get(x);
      if (info?.uuid.startsWith("CRYPT-")) return true;
      if (!exists(`sys/class/block/${x}`)) return "unknown";
      const slaves = ls(`sys/class/block/${x}/slaves`);
      if (!slaves.length) return false;
      const r = slaves.map(walk);
      return r.every((v) => v === true) ? true : r.includes("unknown") ? "unknown" : false;
    };
    return walk(b);
  };
  const mounts = (read("proc/self/mounts") ?? read("proc/mounts") ?? "").split("\n").filter(Boolean).map((l) => {
    const [source, target, fstype] = l.split(" ");
    return { source: source!, target: (target ?? "").replace(/\\040/g, " "), fstype: fstype ?? "" };
  });
  const mountOf = (path: string) => mounts.filter((m) => path === m.target || path.startsWith(m.target.endsWith("/") ? m.target : m.target + "/")).sort((a, b) => b.target.length - a.target.length)[0];
  const volatileFs = new Set(["tmpfs", "ramfs", "proc", "sysfs", "devtmpfs", "overlay", "9p", "squashfs", "zram"]);

  // ---------------------------------------------------------------- swap
  const swap: DoctorReport["swap"] = [];
  for (const line of (read("proc/swaps") ?? "").split("\n").slice(1)) {
    const [device, type] = line.trim().split(/\s+/);
    if (!device) continue;
    let encrypted: boolean | "unknown";
    if (/^\/dev\/zram/.test(device)) encrypted = true; // RAM only
    else if (type === "file") {
      const m = mountOf(device);
      encrypted = m ? (m.source.startsWith("/dev/") ? encryptedDev(m.source) : "unknown") : "unknown";
    } else encrypted = encryptedDev(device);
    swap.push({ device, type: type ?? "", encrypted });
    if (encrypted === false)
      add({ id: "swap.plaintext", severity: "critical", title: `swap on plaintext storage (${device})`, detail: "keys, passphrases and decrypted data paged out of memory land unencrypted on disk", hint: "put swap on dm-crypt (random key per boot), use zram, or turn swap off" });
    else if (encrypted === "unknown") add({ id: "swap.unknown", severity: "warning", title: `cannot tell whether swap ${device} is encrypted` });
  }

  // ---------------------------------------------------------------- /tmp
  const tm = mountOf("/tmp");
  let tmp: DoctorReport["tmp"];
  if (tm) {
    const enc = volatileFs.has(tm.fstype) ? true : tm.source.startsWith("/dev/") ? encryptedDev(tm.source) : "unknown";
    tmp = { fstype: tm.fstype, source: tm.source, encrypted: volatileFs.has(tm.fstype) && tm.fstype !== "tmpfs" && tm.fstype !== "ramfs" ? "unknown" : enc };
    if (tmp.encrypted === false) add({ id: "tmp.plaintext", severity: "warning", title: `/tmp is on plaintext storage (${tm.source}, ${tm.fstype})`, hint: "mount /tmp as tmpfs or put it on an encrypted volume" });
  }

  // ---------------------------------------------------------------- LUKS volumes
  const volumes: DoctorReport["volumes"] = [];
  if (!o.skipVolumeScan) {
    for (const b of ls("sys/class/block")) {
      if (b.startsWith("dm-") || b.startsWith("ram") || b.startsWith("zram")) continue;
      if (read(`sys/class/block/${b}/size`)?.trim() === "0") continue;
      const v = probeLuks(p("dev", b));
      if (v) volumes.push({ device: `/dev/${b}`, ...v });
    }
    for (const v of volumes) {
      if (v.version === 1) add({ id: "luks.v1", severity: "warning", title: `${v.device} is LUKS1`, hint: "convert to LUKS2 (cryptsetup convert) to use tokens" });
      else if (!v.tokens.length) add({ id: "luks.no-token", severity: "info", title: `${v.device} has no token: it unlocks by passphrase only` });
    }
  }

  const critical = findings.some((f) => f.severity === "critical");
  return { root, kernel, trustSources: ts, secureBoot: sb, swap, tmp, volumes, mappings, findings, critical };
}

/** Read a LUKS header from a device or file: version, uuid, token types, keyslot count. */
export function probeLuks(path: string): { version: 1 | 2; uuid?: string; tokens: string[]; keyslots: number } | undefined {
  let fd: number;
  try {
    if (!statSync(path).isBlockDevice() && !statSync(path).isFile()) return undefined;
    fd = openSync(path, "r");
  } catch {
    return undefined;
  }
  try {
    const h = Buffer.alloc(4096);
    if (readSync(fd, h, 0, 4096, 0) < 512) return undefined;
    if (!h.subarray(0, 6).equals(Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]))) return undefined;
    const version = h.readUInt16BE(6);
    if (version === 1) {
      let slots = 0;
      for (let i = 0; i < 8; i++) if (h.readUInt32BE(208 + i * 48) === 0x00ac71f3) slots++;
      return { version: 1, uuid: h.subarray(168, 208).toString("latin1").replace(/\0.*$/s, ""), tokens: [], keyslots: slots };
    }
    if (version !== 2) return undefined;
    const hdrSize = Number(h.readBigUInt64BE(8));
    const uuid = h.subarray(168, 208).toString("latin1").replace(/\0.*$/s, "");
    if (hdrSize < 16384 || hdrSize > 4 * 1024 * 1024) return { version: 2, uuid, tokens: [], keyslots: 0 };
    const j = Buffer.alloc(hdrSize - 4096);
    readSync(fd, j, 0, j.length, 4096);
    const z = j.indexOf(0);
    try {
      const meta = JSON.parse(j.subarray(0, z < 0 ? j.length : z).toString("utf8"));
      const tokens = Object.values((meta.tokens ?? {}) as Record<string, { type?: string }>).map((t) => String(t.type));
      return { version: 2, uuid, tokens, keyslots: Object.keys(meta.keyslots ?? {}).length };
    } catch {
      return { version: 2, uuid, tokens: [], keyslots: 0 };
    }
  } finally {
    closeSync(fd);
  }
}

/** The human table. */
export function formatDoctor(r: DoctorReport): string {
  const lines: string[] = [];
  const row = (k: string, v: string) => lines.push(`  ${k.padEnd(24)} ${v}`);
  lines.push("Trust sources");
  row("TPM", r.trustSources.tpm ? `${r.trustSources.tpm.device}${r.trustSources.tpm.version ? ` (TPM ${r.trustSources.tpm.version}.0)` : ""}${r.trustSources.tpm.pcr7 ? `, PCR7 ${r.trustSources.tpm.pcr7.slice(0, 16)}…` : ""}` : "none");
  row("OP-TEE", r.trustSources.tee ? `${r.trustSources.tee.device}${r.trustSources.tee.trustedKeysTa ? ", trusted-keys TA" : ""}` : "none");
  row("CAAM", r.trustSources.caam ? `${r.trustSources.caam.jobRings} job ring(s)${r.trustSources.caam.keygen ? ", /dev/caam-keygen" : ""}${r.trustSources.caam.taggedKeyCiphers.length ? `, ${r.trustSources.caam.taggedKeyCiphers.join(" ")}` : ""}` : "none");
  row("DCP", r.trustSources.dcp ? "present" : "none");
  row("PKCS#11 modules", r.trustSources.pkcs11Modules.length ? r.trustSources.pkcs11Modules.map((m) => m.name).join(", ") : "none");
  row("trusted.source", r.trustSources.trustedKeySource ?? "(kernel default)");
  lines.push("Kernel" + (r.kernel.release ? ` ${r.kernel.release}` : "") + (r.kernel.config === "missing" ? " (no config found)" : ""));
  row("dm-crypt", r.kernel.dmCrypt);
  row("dm-verity", r.kernel.dmVerity);
  row("dm-integrity", r.kernel.dmIntegrity);
  row("loop", r.kernel.loop);
  row("trusted keys", `${r.kernel.trustedKeys} (tpm ${r.kernel.trustedSources.tpm}, tee ${r.kernel.trustedSources.tee}, caam ${r.kernel.trustedSources.caam}, dcp ${r.kernel.trustedSources.dcp})`);
  row("encrypted keys", r.kernel.encryptedKeys);
  row("CAAM tagged keys", r.kernel.caamTaggedKeys);
  lines.push("Platform");
  row("Secure Boot", `${r.secureBoot.state}${r.secureBoot.state === "unknown" ? "" : ` (${r.secureBoot.how})`}`);
  row("swap", r.swap.length ? r.swap.map((s) => `${s.device} ${s.encrypted === true ? "encrypted" : s.encrypted === false ? "PLAINTEXT" : "?"}`).join(", ") : "none");
  row("/tmp", r.tmp ? `${r.tmp.fstype} on ${r.tmp.source}${r.tmp.encrypted === false ? " PLAINTEXT" : ""}` : "?");
  lines.push("Volumes");
  if (!r.volumes.length) row("(none found)", "");
  for (const v of r.volumes) row(v.device, `LUKS${v.version} ${v.uuid ?? ""} ${v.keyslots} keyslot(s), tokens: ${v.tokens.length ? v.tokens.join(", ") : "none"}`);
  for (const m of r.mappings) row(`/dev/mapper/${m.name}`, m.uuid);
  lines.push("Findings");
  if (!r.findings.length) lines.push("  none");
  for (const f of r.findings) {
    lines.push(`  [${f.severity.toUpperCase()}] ${f.title}`);
    if (f.detail) lines.push(`      ${f.detail}`);
    if (f.hint) lines.push(`      → ${f.hint}`);
  }
  return lines.join("\n") + "\n";
}
