// `trustvol provision`: first-boot provisioning as an idempotent state machine (docs/provisioning.md).
// Each step reads the state from the device (src/provision/state.ts), does one thing whose every write is safe to cut
// (the engines it calls are power-cut tested), and loops; a run after a power cut at any instant continues from what
// the device holds. Inputs (config, PINs, factory key, TPM / token presence, posture, room for the data shift) are
// all checked before the first write: a refusal leaves the device as it was.
import { existsSync, mkdirSync, readFileSync, statSync, truncateSync } from "node:fs";
import { dirname, join } from "node:path";
import { spawnSync } from "node:child_process";
import type { KeyObject } from "node:crypto";
import type { BlockDevice } from "../blockdev/types.js";
import { FileBlockDevice } from "../blockdev/file.js";
import { TrustvolError, ExitCode, fsErrorCode, fsReason } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { Luks2Volume } from "../luks2/volume.js";
import { readHeaderBackupImage } from "../luks2/backup.js";
import { atomicWriteFileSync } from "../util/atomic.js";
import { waitForFstabMount, type MountWait } from "../provision/mounts.js";
import type { PbkdfOptions } from "../luks2/kdf.js";
import type { ProvisionConfig, VolumeConfig, PinSourceConfig } from "../provision/config.js";
import { readVolumeState, TRUST_TOKEN_TYPE, MARKER_TOKEN_TYPE, type VolumeState, type ProvisionStateName } from "../provision/state.js";
import { LuksHandle } from "./volume.js";
import { reencrypt, tokenKeyslotPassphrases, withReencryptionLock } from "./reencrypt.js";
import type { TokenUnlockContext } from "./tokens.js";
import type { DoctorOptions, DoctorReport } from "./doctor.js";

/**
 * Passphrase of the keyslot an on-device encryption creates when no factory key is configured. It is public (this
 * documentation prints it): while a plain device is being encrypted its data is readable anyway; the keyslot is wiped
 * when the trust token is enrolled, and `rotate_key` replaces the volume key the transitional keyslot guarded.
 */
export const TRANSITIONAL_PASSPHRASE = "trustvol-provision-transitional";

/** Fast KDF for the factory / transitional keyslot and the re-encryption digest (the secrets are public or random). */
const FAST_PBKDF: PbkdfOptions = { type: "pbkdf2", hash: "sha256", forceIterations: 1000 };

/** Exit status of `trustvol provision` when a volume was left unencrypted because its config says on_failure: continue-unencrypted. */
export const EXIT_CONTINUE_UNENCRYPTED = ExitCode.UNENCRYPTED;

export type ProvisionStage = "initramfs" | "system";

export interface ProvisionOptions {
  config: ProvisionConfig;
  stage: ProvisionStage;
  /** Only this volume (by name). */
  volume?: string;
  /** Read the state and report what would be done; write nothing. */
  dryRun?: boolean;
  /** Open /dev/mapper/NAME at the end of the initramfs stage (default true; false for image files / the host tier). */
  open?: boolean;
  /** Use these instead of resolving `device` (image mode: a BlockDevice is never opened with device-mapper). */
  devices?: Record<string, BlockDevice | string>;
  /** Posture check source (default: runDoctor on "/"); false skips it (tests on image files). */
  doctor?: DoctorOptions | false;
  /** The CAAM for "caam" volumes (default: the config's keygen_device; tests pass the simulator). */
  caamKeygen?: import("../trust/caam/keygen.js").CaamKeygen;
  /** Step messages for the console. */
  log?: (line: string) => void;
  onProgress?: (p: { volume: string; step: "encrypt" | "rotate"; done: number; total: number }) => void;
  /** show-once: print the new recovery key (called before it is enrolled). */
  showRecoveryKey?: (volume: string, key: Buffer) => void;
  /** on_failure recovery-prompt: ask for the recovery key (or a passphrase) when no token unlocks. */
  askRecoveryKey?: (volume: string) => Promise<Uint8Array> | Uint8Array;
  /** A PIN whose source is "prompt". */
  promptPin?: (what: string) => Buffer;
  /** Re-encryption hotzone (tests). */
  hotzoneSize?: number;
  signal?: AbortSignal;
  /** System stage: where fstab and mountinfo are read, and how long the header backup waits for its mount (tests). */
  mounts?: MountWait;
  /**
   * System stage: where a trusted-key / CAAM data volume's NAME.conf goes (DEVICE=, OPTIONS=), which trustvol-generator
   * turns into trustvol-volume@NAME.service at every later boot. The CLI passes `volumes/` beside the config
   * (/etc/trustvol/volumes); unset (the library's default): none is written.
   */
  volumesDir?: string;
}

export interface VolumeReport {
  name: string;
  device: string;
  stateBefore: ProvisionStateName | "trusted-volume" | "new";
  state: ProvisionStateName | "trusted-volume" | "new";
  steps: string[];
  mapped?: string;
  headerBackup?: string;
  recoveryEscrow?: string;
  /** Left as a plain device (on_failure: continue-unencrypted); the reason. */
  unencrypted?: string;
}

export interface ProvisionReport {
  stage: ProvisionStage;
  dryRun: boolean;
  volumes: VolumeReport[];
  /** 0, or EXIT_CONTINUE_UNENCRYPTED when a volume was left unencrypted by its config. */
  exitCode: number;
}

// ------------------------------------------------------------------ device resolution

const TAGS: Record<string, string> = { PARTUUID: "by-partuuid", PARTLABEL: "by-partlabel", LABEL: "by-label", UUID: "by-uuid" };

/** A path, or PARTUUID= / PARTLABEL= / LABEL= / UUID= through /dev/disk/by-*, else blkid. */
export function resolveDevice(spec: string, field = "device", root = "/dev/disk"): string {
  if (spec.startsWith("/")) {
    if (!existsSync(spec)) throw new TrustvolError("ENOENT", `${field}: ${spec} does not exist`, "check the device path (nothing was changed)");
    return spec;
  }
  const eq = spec.indexOf("=");
  const tag = spec.slice(0, eq), value = spec.slice(eq + 1);
  for (const v of tag === "PARTUUID" || tag === "UUID" ? [value, value.toLowerCase()] : [value]) {
    const p = `${root}/${TAGS[tag]}/${v.replace(/\//g, "\\x2f")}`;
    if (existsSync(p)) return p;
  }
  const r = spawnSync("blkid", ["-l", "-o", "device", "-t", spec], { encoding: "utf8" });
  const dev = r.status === 0 ? r.stdout.trim().split("\n")[0] : undefined;
  if (dev) return dev;
  throw new TrustvolError("ENOENT", `${field}: no device with ${spec}`, "check the partition table / label (udev may not have settled yet); nothing was changed");
}

// ------------------------------------------------------------------ file-system shrink / grow (ext2/3/4)

interface ExtInfo {
  blockSize: number;
  blocks: number;
  label: string;
}

/** ext2/3/4 superblock: size and label (undefined for anything else). */
export async function readExtSuperblock(dev: BlockDevice): Promise<ExtInfo | undefined> {
  if (dev.size < 2048) return undefined;
  const sb = Buffer.alloc(1024);
  await dev.read(sb, 1024);
  if (sb.readUInt16LE(0x38) !== 0xef53) return undefined;
  const log = sb.readUInt32LE(0x18);
  if (log > 6) return undefined;
  const is64 = (sb.readUInt32LE(0x60) & 0x80) !== 0;
  const blocks = sb.readUInt32LE(0x4) + (is64 ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
  return { blockSize: 1024 << log, blocks, label: sb.toString("latin1", 0x78, 0x88).replace(/\0.*$/s, "") };
}

function runTool(cmd: string, args: string[], okStatus: number[] = [0]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  if (r.error) throw new TrustvolError("ENOENT", `${cmd} is not installed`, `install it (e2fsprogs) in the initramfs`);
  if (!okStatus.includes(r.status ?? -1)) throw new TrustvolError("EIO", `${cmd} ${args.join(" ")} failed (status ${r.status}): ${(r.stderr || r.stdout).trim().split("\n").pop() ?? ""}`);
  return r.stdout;
}

/** Smallest size resize2fs can shrink the file system to (its -P estimate), in bytes. */
function ext4MinimumBytes(path: string, blockSize: number): number {
  const out = runTool("resize2fs", ["-P", path]);
  const m = /minimum size[^:]*:\s*([0-9]+)/i.exec(out);
  if (!m) throw new TrustvolError("EIO", `resize2fs -P ${path}: no estimate in its output`);
  return Number(m[1]) * blockSize;
}

/** e2fsck -f -p, then resize2fs to `bytes` (a multiple of the block size). Not itself power-cut safe (resize2fs). */
export function resizeExt4(path: string, bytes: number): void {
  // resize2fs also truncates an image file it shrinks: the device (file) keeps its size, only the fs shrinks.
  const st = statSync(path);
  runTool("e2fsck", ["-f", "-p", path], [0, 1]);
  runTool("resize2fs", [path, `${Math.floor(bytes / 1024)}K`]);
  if (st.isFile() && statSync(path).size < st.size) truncateSync(path, st.size);
}

// ------------------------------------------------------------------ inputs

function readSecretFile(path: string, what: string): Buffer {
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new Error("not a file");
    return readFileSync(path);
  } catch {
    throw new TrustvolError("ENOENT", `${what}: ${path} cannot be read`, "install it there or fix the config; nothing was changed");
  }
}

function readPinSource(src: PinSourceConfig, what: string, o: ProvisionOptions): Buffer | undefined {
  if (src === "none") return undefined;
  if (src === "prompt") {
    if (!o.promptPin) throw new TrustvolError("EUSAGE", `${what}: "prompt" needs a console`, "give the PIN in a file instead; nothing was changed");
    return o.promptPin(what);
  }
  const b = readSecretFile(src.file, what);
  let end = b.length;
  if (end && b[end - 1] === 0x0a) end--;
  if (end && b[end - 1] === 0x0d) end--;
  const pin = Buffer.from(b.subarray(0, end));
  wipe(b);
  if (!pin.length) throw new TrustvolError("EUSAGE", `${what}: ${src.file} is empty`, "write the PIN into it; nothing was changed");
  return pin;
}

interface Inputs {
  pin?: Buffer;
  factory?: Buffer;
  escrowKey?: KeyObject;
  pkcs11Uri?: string;
  ctx: TokenUnlockContext;
}

function wipeInputs(i: Inputs): void {
  wipe(i.pin, i.factory);
}

// ------------------------------------------------------------------ posture

async function checkPosture(vol: VolumeConfig, i: number, o: ProvisionOptions, log: (s: string) => void, cache: { r?: DoctorReport }): Promise<void> {
  if (o.doctor === false) return;
  const p = vol.posture;
  if (p.secure_boot === "ignore" && p.setup_mode === "ignore" && p.huk === "ignore") return;
  if (!cache.r) {
    const { runDoctor } = await import("./doctor.js");
    cache.r = runDoctor({ skipVolumeScan: true, ...(o.doctor ?? {}) });
  }
  const r = cache.r;
  const issues: [typeof p.secure_boot, string, string][] = [];
  if (r.secureBoot.state !== "enabled") issues.push([p.secure_boot, "secure_boot", `Secure Boot is ${r.secureBoot.state}`]);
  if (r.secureBoot.setupMode) issues.push([p.setup_mode, "setup_mode", "UEFI is in Setup Mode"]);
  const huk = r.findings.find((f) => f.id === "tee.huk");
  if (huk && vol.trust.type !== "tpm2") issues.push([p.huk, "huk", "the OP-TEE HUK source is unverified (it may be the default hard-coded one)"]);
  for (const [lvl, field, what] of issues) {
    if (lvl === "require") throw new TrustvolError("EPOLICY", `volumes[${i}].posture.${field}: ${what}`, "fix the platform, or set the posture to \"warn\"; nothing was changed");
    if (lvl === "warn") log(`warning: ${vol.name}: ${what} (posture.${field}: warn)`);
  }
}

// ------------------------------------------------------------------ the state machine

/** Run the provisioning of every configured volume (or o.volume) for one stage. */
export async function provision(o: ProvisionOptions): Promise<ProvisionReport> {
  const vols = o.volume ? o.config.volumes.filter((v) => v.name === o.volume) : o.config.volumes;
  if (o.volume && !vols.length) throw new TrustvolError("EUSAGE", `--volume ${o.volume}: no such volume in the config`, `configured: ${o.config.volumes.map((v) => v.name).join(", ")}`);
  const out: ProvisionReport = { stage: o.stage, dryRun: !!o.dryRun, volumes: [], exitCode: 0 };
  const cache: { r?: DoctorReport } = {};
  for (const vol of vols) {
    const i = o.config.volumes.indexOf(vol);
    const r = await provisionVolume(vol, i, o, cache);
    out.volumes.push(r);
    if (r.unencrypted) out.exitCode = EXIT_CONTINUE_UNENCRYPTED;
  }
  return out;
}

async function provisionVolume(vol: VolumeConfig, i: number, o: ProvisionOptions, cache: { r?: DoctorReport }): Promise<VolumeReport> {
  const log = o.log ?? (() => {});
  const given = o.devices?.[vol.name];
  const path = typeof given === "string" ? given : given ? undefined : resolveDevice(vol.device, `volumes[${i}].device`);
  const report: VolumeReport = { name: vol.name, device: path ?? (given as BlockDevice).name, stateBefore: "new", state: "plain", steps: [] };
  if (vol.trust.type === "trusted-key" || vol.trust.type === "caam") return trustedKeyVolume(vol, i, path, o, report, log);

  const dev: BlockDevice = given && typeof given !== "string" ? given : await FileBlockDevice.open(path!, { readOnly: !!o.dryRun });
  const inputs: Inputs = { ctx: {} };
  let wrote = false;
  try {
    let st = await readVolumeState(dev, vol);
    report.stateBefore = st.state;
    try {
      if (o.dryRun) {
        report.steps = plan(st, vol, o.stage, o.open !== false);
        report.state = st.state;
        return report;
      }
      if (o.stage === "system" && ["plain", "encrypting", "factory", "enrolled"].includes(st.state))
        throw new TrustvolError("EBUSY", `volumes[${i}] (${vol.name}) is not provisioned yet (${st.state})`, "the initramfs stage (`trustvol provision --stage initramfs`) does that first");
      // Everything the remaining steps need, before the first write.
      await checkPosture(vol, i, o, log, cache);
      await gatherInputs(vol, i, st, o, inputs, dev, path);
    } catch (e) {
      // Nothing was written: a plain device may stay plain if the config says so.
      if (st.state === "plain" && vol.on_failure === "continue-unencrypted" && e instanceof TrustvolError) {
        report.unencrypted = e.oneLine();
        report.state = "plain";
        log(`${vol.name}: left unencrypted: ${e.oneLine()}`);
        return report;
      }
      throw e;
    }

    if (st.luks === 2) {
      // A cut inside a header commit leaves one copy torn or stale: both copies from the valid one first (cryptsetup
      // repair), so every later step (and the header backup) starts from a whole header.
      if (await withReencryptionLock(dev, async () => (await Luks2Volume.open(dev)).repair())) {
        wrote = true;
        report.steps.push("repair-header");
      }
    }
    for (let guard = 0; guard < 16; guard++) {
      st = await readVolumeState(dev, vol);
      report.state = st.state;
      const step = await nextStep(st, vol, i, o, inputs, dev, path, log);
      if (!step) break;
      wrote = true;
      report.steps.push(step);
    }
    st = await readVolumeState(dev, vol);
    report.state = st.state;

    const deferred = st.state === "needs-recovery" && vol.recovery.mode === "show-once" && o.stage === "system";
    if (deferred) log(`${vol.name}: the recovery key is shown on the console by the next boot's initramfs stage`);
    if (o.stage === "system" && (st.state === "provisioned" || deferred) && vol.header_backup) {
      if (await backupIfChanged(dev, vol.header_backup, o.mounts)) report.steps.push("header-backup");
      report.headerBackup = vol.header_backup;
    }
    if (vol.recovery.mode === "escrow") report.recoveryEscrow = escrowPath(vol, st.uuid ?? "");
    if (o.stage === "initramfs" && o.open !== false && path) {
      report.mapped = await openVolume(vol, path, inputs, o, log);
      report.steps.push("open");
    }
    return report;
  } catch (e) {
    if (wrote && e instanceof TrustvolError) throw new TrustvolError(e.code, `${vol.name}: ${e.message}`, `${e.hint ? `${e.hint}; ` : ""}the device is in a resumable state: the next run continues it`);
    throw e;
  } finally {
    wipeInputs(inputs);
    if (!(given && typeof given !== "string")) await dev.close();
  }
}

function plan(st: VolumeState, vol: VolumeConfig, stage: ProvisionStage, open: boolean): string[] {
  const s: string[] = [];
  const all: Record<ProvisionStateName, string[]> = {
    plain: vol.encrypt_plain ? ["shrink-fs", "encrypt", "enroll", "wipe-factory"] : ["none: encrypt_plain is false"],
    encrypting: ["encrypt (resume)", "enroll", "wipe-factory"],
    factory: [...(vol.rotate_key ? ["mark-rotation"] : []), "enroll", "wipe-factory"],
    enrolled: ["wipe-factory"],
    "rotate-pending": [],
    rotating: [],
    "needs-recovery": [],
    provisioned: [],
  };
  s.push(...all[st.state]);
  if (vol.rotate_key && ["plain", "encrypting", "factory", "enrolled", "rotate-pending"].includes(st.state)) s.push("rotate-init");
  if (vol.rotate_key || st.state === "rotating") s.push(stage === "system" ? "rotate (online when mapped)" : open ? "rotate (online, by the system stage)" : "rotate (offline)");
  if (vol.recovery.mode !== "none" && st.state !== "provisioned") s.push("enroll-recovery");
  if (stage === "system" && vol.header_backup) s.push("header-backup");
  if (stage === "initramfs" && open) s.push("open");
  return [...new Set(s)];
}

async function gatherInputs(vol: VolumeConfig, i: number, st: VolumeState, o: ProvisionOptions, inp: Inputs, dev: BlockDevice, path: string | undefined): Promise<void> {
  const f = `volumes[${i}]`;
  const t = vol.trust;
  const early = ["plain", "encrypting", "factory"].includes(st.state);
  if (st.state === "plain" && !vol.encrypt_plain) throw new TrustvolError("ENOTLUKS", `${f}: ${vol.device} is not encrypted and encrypt_plain is false`, "set encrypt_plain: true to encrypt it in place");
  if (t.type === "tpm2" || t.type === "pkcs11") {
    inp.pin = readPinSource(t.pin, `${f}.trust.pin`, o);
    if (inp.pin) inp.ctx.pin = inp.pin;
  }
  if (early) {
    // No factory key: a device this provisioning encrypted itself (the transitional secret).
    inp.factory = vol.factory ? readSecretFile(vol.factory.key_file, `${f}.factory.key_file`) : Buffer.from(TRANSITIONAL_PASSPHRASE);
    if (st.state === "factory") {
      // The secret must open the volume before the first write (the rotation marker precedes the enrolment).
      const h = await LuksHandle.fromDevices(dev);
      try {
        wipe((await h.unlock(inp.factory)).volumeKey);
      } catch (e) {
        if (!(e instanceof TrustvolError) || (e.code !== "EBADPASS" && e.code !== "ENOKEY")) throw e;
        if (vol.factory) throw new TrustvolError("EBADPASS", `${f}.factory.key_file: ${vol.factory.key_file} opens no keyslot of ${vol.device}`, "give the key file the image was made with; nothing was changed");
        throw new TrustvolError("EUSAGE", `${f}.factory: ${vol.device} is a LUKS2 volume with a passphrase keyslot but no factory key is configured`, 'give factory: {"key_file": "/path"}; nothing was changed');
      }
    }
  }
  if (vol.recovery.mode === "escrow") {
    const { loadEscrowPublicKey } = await import("../provision/escrow.js");
    inp.escrowKey = loadEscrowPublicKey(vol.recovery.public_key, `${f}.recovery.escrow.public_key`);
  }
  if (st.state === "plain") await checkShift(vol, f, dev, path);
  if (t.type === "tpm2") {
    inp.ctx.tpm2Device = t.device;
    if (early || st.state === "rotate-pending" || st.state === "rotating" || st.state === "needs-recovery") {
      const { withTpm } = await import("./handlers.js");
      try {
        await withTpm({ tpm2Device: t.device }, (tpm) => tpm.getRandom(8));
      } catch (e) {
        const why = e instanceof TrustvolError ? e.message : String(e);
        throw new TrustvolError("EDEVICE", `${f}.trust: no TPM (${t.device}): ${why}`, "check the TPM (/dev/tpmrm0, TRUSTVOL_TPM2_DEVICE); nothing was changed");
      }
    }
  } else if (t.type === "pkcs11") {
    if (t.module) inp.ctx.pkcs11Module = t.module;
    inp.pkcs11Uri = await ensurePkcs11Key(t, f, inp.pin!, o, early);
  }
}

/** Room for the shift: the shrunk file system must fit in device - reduce_device_size. */
async function checkShift(vol: VolumeConfig, f: string, dev: BlockDevice, path: string | undefined): Promise<void> {
  const target = dev.size - vol.reduce_device_size;
  const fs = await readExtSuperblock(dev);
  const fsBytes = fs ? fs.blocks * fs.blockSize : undefined;
  if (target < 4 * 1024 * 1024) throw new TrustvolError("ENOSPC", `${f}: the partition is too small for the shift: ${dev.name} has ${dev.size} bytes, reduce_device_size is ${vol.reduce_device_size}`, "use a larger partition or a smaller reduce_device_size; nothing was changed");
  if (fsBytes === undefined) {
    // Not ext*: it must already leave the room (the shrink is the file system's job).
    return;
  }
  if (fsBytes <= target) return;
  if (!path) throw new TrustvolError("EUSAGE", `${f}: the file system fills ${dev.name}; shrinking it needs a device path (resize2fs)`, "shrink it first, or give a path");
  const min = ext4MinimumBytes(path, fs!.blockSize);
  if (min > target) throw new TrustvolError("ENOSPC", `${f}: the partition is too small for the shift: the file system needs ${min} bytes, ${target} are left after reduce_device_size ${vol.reduce_device_size}`, "free space in the file system or use a larger partition; nothing was changed");
}

async function ensurePkcs11Key(t: Extract<VolumeConfig["trust"], { type: "pkcs11" }>, f: string, pin: Buffer, o: ProvisionOptions, mayCreate: boolean): Promise<string> {
  const { formatPkcs11Uri } = await import("../trust/pkcs11/uri.js");
  const { listTokens, openToken } = await import("../trust/pkcs11/token.js");
  const { pkcs11js } = await import("../trust/pkcs11/pkcs11js.js");
  const uri = formatPkcs11Uri({ token: t.token_label, object: t.key_label });
  const mod = t.module ? { modulePath: t.module } : {};
  let tokens;
  try {
    tokens = listTokens({ ...mod, includeUninitialized: true });
  } catch (e) {
    throw new TrustvolError("EDEVICE", `${f}.trust: no PKCS#11 module: ${e instanceof TrustvolError ? e.message : String(e)}`, "give trust.module or register the module with p11-kit; nothing was changed");
  }
  const has = tokens.some((x) => x.label === t.token_label);
  if (!has) {
    if (!t.create || !mayCreate) throw new TrustvolError("EDEVICE", `${f}.trust: no PKCS#11 token labelled "${t.token_label}"`, t.create ? "the token was lost after the volume was provisioned: unlock with the recovery key" : 'set trust.create: true to initialise it; nothing was changed');
    const { initToken } = await import("../trust/pkcs11/setup.js");
    const so = readPinSource(t.so_pin!, `${f}.trust.so_pin`, o)!;
    try {
      initToken({ modulePath: t.module ?? defaultModule(tokens), label: t.token_label, soPin: { kind: "buffer", pin: so }, userPin: { kind: "buffer", pin }, ...(t.slot !== undefined ? { slotId: t.slot } : {}) });
    } finally {
      wipe(so);
    }
  }
  const s = openToken({ uri: { token: t.token_label }, readWrite: false, ...mod });
  let found = false;
  try {
    s.login({ kind: "buffer", pin });
    found = s.findObjects([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: Buffer.from(t.key_label, "utf8") }], 1).length > 0;
  } finally {
    s.close();
  }
  if (!found) {
    if (!t.create || !mayCreate) throw new TrustvolError("EDEVICE", `${f}.trust: token "${t.token_label}" has no key labelled "${t.key_label}"`, t.create ? "the key was lost after provisioning: unlock with the recovery key" : "set trust.create: true to generate it; nothing was changed");
    const { provisionKey } = await import("../trust/pkcs11/setup.js");
    provisionKey({ uri: formatPkcs11Uri({ token: t.token_label }), ...(t.module ? { modulePath: t.module } : {}), pin: { kind: "buffer", pin }, algorithm: "rsa-2048", label: t.key_label, subject: "CN=LmP" });
  }
  o.log?.(`${t.token_label}: PKCS#11 key "${t.key_label}" ready`);
  return uri;
}

function defaultModule(tokens: { modulePath?: string }[]): string {
  const m = tokens.find((x) => x.modulePath)?.modulePath;
  if (!m) throw new TrustvolError("EUSAGE", "trust.module: needed to initialise a new token", "give the PKCS#11 module path");
  return m;
}

/** One step from the current state; returns its name, or undefined when nothing is left for this stage. */
async function nextStep(st: VolumeState, vol: VolumeConfig, i: number, o: ProvisionOptions, inp: Inputs, dev: BlockDevice, path: string | undefined, log: (s: string) => void): Promise<string | undefined> {
  const progress = (step: "encrypt" | "rotate") => (p: { done: number; total: number }) => o.onProgress?.({ volume: vol.name, step, ...p });
  switch (st.state) {
    case "plain": {
      const fs = await readExtSuperblock(dev);
      const target = dev.size - vol.reduce_device_size;
      if (fs && fs.blocks * fs.blockSize > target) {
        log(`${vol.name}: shrinking the file system by ${vol.reduce_device_size / 2 ** 20} MiB for the LUKS2 header`);
        resizeExt4(path!, Math.floor(target / fs.blockSize) * fs.blockSize);
        return "shrink-fs";
      }
      log(`${vol.name}: ${vol.device} not yet encrypted, encrypting with LUKS2`);
      await reencrypt(dev, { mode: "encrypt", passphrase: inp.factory!, reduceDeviceSize: vol.reduce_device_size, pbkdf: FAST_PBKDF, ...(fs?.label ? { label: fs.label } : {}), onProgress: progress("encrypt"), ...(o.hotzoneSize ? { hotzoneSize: o.hotzoneSize } : {}), ...(o.signal ? { signal: o.signal } : {}) });
      return "encrypt";
    }
    case "encrypting":
      log(`${vol.name}: resuming the interrupted encryption`);
      await reencrypt(dev, { mode: "encrypt", resumeOnly: true, passphrase: inp.factory!, onProgress: progress("encrypt"), ...(o.signal ? { signal: o.signal } : {}) });
      return "encrypt";
    case "factory": {
      if (vol.rotate_key && st.markerToken === undefined) {
        const v = await Luks2Volume.open(dev);
        await v.addToken({ type: MARKER_TOKEN_TYPE, keyslots: [], rotate_key: "pending" });
        return "mark-rotation";
      }
      await enrollTrust(vol, inp, dev);
      log(`${vol.name}: ${vol.trust.type} key enrolled, factory secret wiped`);
      return "enroll";
    }
    case "enrolled": {
      // A trust token beside a passphrase keyslot: check the token unlocks, then remove the passphrase keyslots.
      if (vol.rotate_key && st.markerToken === undefined) {
        await (await Luks2Volume.open(dev)).addToken({ type: MARKER_TOKEN_TYPE, keyslots: [], rotate_key: "pending" });
        return "mark-rotation";
      }
      const h = await LuksHandle.fromDevices(dev);
      const { unlockWithTokens } = await import("./tokens.js");
      const r = await unlockWithTokens(h, inp.ctx, { tokenType: TRUST_TOKEN_TYPE[vol.trust.type as "tpm2" | "pkcs11"] });
      wipe(r.volumeKey);
      const v = h.requireLuks2("provision");
      for (const k of st.passwordSlots) await v.removeKeyslot(k);
      return "wipe-factory";
    }
    case "rotate-pending": {
      const pass = await tokenPassphrases(dev, inp, vol);
      try {
        await reencrypt(dev, { initOnly: true, keyslotPassphrases: pass, pbkdf: { type: "pbkdf2", hash: "sha512", forceIterations: 1000 } });
      } finally {
        for (const p of pass.values()) wipe(p);
      }
      log(`${vol.name}: volume key rotation started`);
      return "rotate-init";
    }
    case "rotating": {
      if (st.markerToken !== undefined) {
        // The rotation is recorded by the re-encryption metadata now: the marker must go before it can finish.
        const v = await Luks2Volume.open(dev);
        await v.removeToken(st.markerToken);
        return "unmark-rotation";
      }
      // The initramfs stage that opens the volume leaves the data to the system stage: it maps the volume
      // mid-re-encryption (openVolume) and the boot goes on; trustvol-provision.service continues online.
      if (o.stage === "initramfs" && o.open !== false && path) return undefined;
      // Mapped (by the initramfs stage, by systemd-cryptsetup, whatever --no-open says): continued online on the
      // mapping, never rewritten offline under it. Not mapped (image files, a closed data volume): offline.
      const mapping = path !== undefined && st.uuid ? await activeMappingOf(st.uuid) : undefined;
      const pass = await tokenPassphrases(dev, inp, vol);
      try {
        if (mapping) {
          log(`${vol.name}: rotating the volume key online (/dev/mapper/${mapping} stays in use)`);
          const { reencryptOnline } = await import("./reencrypt-online.js");
          await reencryptOnline(mapping, { resumeOnly: true, keyslotPassphrases: pass, onProgress: progress("rotate"), ...(o.hotzoneSize ? { hotzoneSize: o.hotzoneSize } : {}), ...(o.signal ? { signal: o.signal } : {}) });
        } else {
          log(`${vol.name}: rotating the volume key${o.stage === "initramfs" ? " (blocking)" : ""}`);
          await reencrypt(dev, { resumeOnly: true, keyslotPassphrases: pass, onProgress: progress("rotate"), ...(o.hotzoneSize ? { hotzoneSize: o.hotzoneSize } : {}), ...(o.signal ? { signal: o.signal } : {}) });
        }
      } finally {
        for (const p of pass.values()) wipe(p);
      }
      return "rotate";
    }
    case "needs-recovery": {
      // A key shown once belongs on the initramfs console, never in the system stage's journal: the next boot shows it.
      if (vol.recovery.mode === "show-once" && o.stage === "system") return undefined;
      await enrollRecoveryKey(vol, inp, dev, o);
      return "enroll-recovery";
    }
    case "provisioned":
      return undefined;
  }
}

/** The device-mapper name of the active mapping of the LUKS2 device with this UUID (dm UUID CRYPT-LUKS2-<uuid>-<name>), if any. */
async function activeMappingOf(uuid: string): Promise<string | undefined> {
  const { findActiveMapping } = await import("./reencrypt-online.js");
  try {
    return findActiveMapping(uuid);
  } catch {
    return undefined; // no device-mapper (dmsetup missing, no /dev/mapper/control): nothing is mapped
  }
}

async function tokenPassphrases(dev: BlockDevice, inp: Inputs, vol: VolumeConfig): Promise<Map<number, Uint8Array>> {
  const v = await Luks2Volume.open(dev);
  const { passphrases, failures } = await tokenKeyslotPassphrases(v.metadata, inp.ctx, { tokenType: TRUST_TOKEN_TYPE[vol.trust.type as "tpm2" | "pkcs11"] });
  if (!passphrases.size) {
    for (const p of passphrases.values()) wipe(p);
    throw failures[0] ?? new TrustvolError("ENOKEY", `${vol.name}: no ${vol.trust.type} token unlocks the volume`);
  }
  return passphrases;
}

async function enrollTrust(vol: VolumeConfig, inp: Inputs, dev: BlockDevice): Promise<void> {
  const h = await LuksHandle.fromDevices(dev);
  const unlock = { passphrase: inp.factory! };
  const t = vol.trust;
  if (t.type === "tpm2") {
    const { enrollTpm2 } = await import("./enroll.js");
    await enrollTpm2(h, { unlock, wipeSlots: "password", pcrs: t.pcrs, bank: t.bank, tpm2Device: t.device, ...(inp.pin ? { pin: inp.pin } : {}) });
  } else if (t.type === "pkcs11") {
    const { enrollPkcs11 } = await import("./enroll.js");
    await enrollPkcs11(h, { unlock, wipeSlots: "password", uri: inp.pkcs11Uri!, ...(inp.pin ? { pin: inp.pin } : {}), ...(t.module ? { pkcs11Module: t.module } : {}) });
  }
}

function escrowPath(vol: VolumeConfig, uuid: string): string {
  if (vol.recovery.mode !== "escrow") return "";
  return vol.recovery.output.replaceAll("{name}", vol.name).replaceAll("{uuid}", uuid);
}

async function enrollRecoveryKey(vol: VolumeConfig, inp: Inputs, dev: BlockDevice, o: ProvisionOptions): Promise<void> {
  const { enrollRecovery } = await import("./enroll.js");
  const h = await LuksHandle.fromDevices(dev);
  const r = await enrollRecovery(h, {
    unlock: { tokens: { ...inp.ctx, tokenType: TRUST_TOKEN_TYPE[vol.trust.type as "tpm2" | "pkcs11"] } },
    save: async (key) => {
      if (vol.recovery.mode === "escrow") {
        const { writeEscrow } = await import("../provision/escrow.js");
        writeEscrow(escrowPath(vol, h.uuid), inp.escrowKey!, key, { volumeUuid: h.uuid, volume: vol.name });
      } else if (vol.recovery.mode === "show-once") {
        if (!o.showRecoveryKey) throw new TrustvolError("EUSAGE", `${vol.name}: recovery "show-once" needs a console to show the key on`, "use escrow, or run with a console");
        o.showRecoveryKey(vol.name, key);
      }
    },
  });
  wipe(r.recoveryKey);
}

/**
 * Write the header backup (0600, atomic) unless the file already holds exactly this header — on the file system fstab
 * puts it on: a late (`nofail`) mount such as /boot is waited for, never written underneath.
 */
async function backupIfChanged(dev: BlockDevice, path: string, mounts?: MountWait): Promise<boolean> {
  try {
    await waitForFstabMount(dirname(path), mounts);
  } catch (e) {
    throw new TrustvolError("EIO", `cannot write the header backup ${path}: ${(e as Error).message}`, "check that file system (or point header_backup elsewhere); the volume itself is provisioned, the next boot tries again");
  }
  const img = await readHeaderBackupImage(dev);
  try {
    if (existsSync(path) && readFileSync(path).equals(img)) return false;
  } catch {
    /* unreadable: rewrite it */
  }
  try {
    atomicWriteFileSync(path, img, 0o600);
  } catch (e) {
    throw new TrustvolError(fsErrorCode(e), `cannot write the header backup ${path}: ${fsReason(e)}`, "free space there or point header_backup elsewhere; the volume itself is provisioned, the next boot tries again");
  }
  return true;
}

// ------------------------------------------------------------------ open (kernel paths: tested in the QEMU tier)

async function openVolume(vol: VolumeConfig, path: string, inp: Inputs, o: ProvisionOptions, log: (s: string) => void): Promise<string> {
  const mapper = `/dev/mapper/${vol.name}`;
  if (existsSync(mapper)) return mapper;
  const { openLuks } = await import("./open.js");
  const { unlockWithTokens } = await import("./tokens.js");
  const tokenType = TRUST_TOKEN_TYPE[vol.trust.type as "tpm2" | "pkcs11"];
  const opened = await openLuks(path, vol.name, async (h) => {
    try {
      return await unlockWithTokens(h, inp.ctx, { tokenType });
    } catch (e) {
      if (vol.on_failure !== "recovery-prompt" || !o.askRecoveryKey || !(e instanceof TrustvolError)) throw e;
      log(`${vol.name}: ${e.oneLine()}: asking for the recovery key`);
      const key = await o.askRecoveryKey(vol.name);
      try {
        return await h.unlock(key);
      } finally {
        wipe(key);
      }
    }
  });
  // Mid-re-encryption (a rotation this boot started, or one a power cut interrupted): mapped with cryptsetup's
  // multi-segment table (a crashed hotzone recovered first); the system stage continues it online.
  if (opened.reencrypting) log(`${vol.name}: opened mid-re-encryption${opened.recovered ? " (interrupted hotzone recovered)" : ""}; the key rotation continues in the background`);
  await growFilesystem(mapper, log, vol.name);
  return mapper;
}

/** After the shift the mapped device is larger than the shrunk file system: grow it back (offline, before mount). */
async function growFilesystem(mapper: string, log: (s: string) => void, name: string): Promise<void> {
  const d = await FileBlockDevice.open(mapper, { readOnly: true });
  let fs: ExtInfo | undefined;
  let size = 0;
  try {
    fs = await readExtSuperblock(d);
    size = d.size;
  } finally {
    await d.close();
  }
  if (!fs || size - fs.blocks * fs.blockSize < fs.blockSize) return;
  log(`${name}: growing the file system to fill ${mapper}`);
  resizeExt4(mapper, Math.floor(size / fs.blockSize) * fs.blockSize);
}

// ------------------------------------------------------------------ kernel trusted-key / CAAM data volumes

async function trustedKeyVolume(vol: VolumeConfig, i: number, path: string | undefined, o: ProvisionOptions, report: VolumeReport, log: (s: string) => void): Promise<VolumeReport> {
  const t = vol.trust;
  if (t.type !== "trusted-key" && t.type !== "caam") throw new TrustvolError("EINTERNAL", "not a trusted-key / CAAM volume");
  const what = t.type === "caam" ? "CAAM black-key" : "trusted-key";
  if (!path) throw new TrustvolError("EUSAGE", `volumes[${i}]: ${what} volumes need a device path (the kernel holds the key)`);
  const exists = existsSync(t.descriptor);
  report.stateBefore = exists ? "trusted-volume" : "new";
  report.state = "trusted-volume";
  // The later boots' unit (system stage: the initramfs's /etc is lost at switch-root).
  const needConf = o.stage === "system" && !!o.volumesDir && !existsSync(join(o.volumesDir, `${vol.name}.conf`));
  const conf = needConf ? volumeConf(vol, i, t.descriptor, o.volumesDir!) : undefined; // refused before any write
  if (o.dryRun) {
    const open = o.open !== false ? ["open"] : [];
    report.steps = o.stage === "system" ? [...(exists ? [] : ["create-trusted-key"]), ...(conf ? ["volume-conf"] : []), ...open] : exists ? open : [];
    return report;
  }
  if (!exists && o.stage === "initramfs") {
    // /etc in an initramfs is a RAM copy: a descriptor written there would be lost. The system stage creates it.
    log(`${vol.name}: no ${what} descriptor yet (${t.descriptor}): the system stage creates the volume`);
    report.state = "new";
    return report;
  }
  const key = await dataVolumeKey(vol, o, log);
  try {
    if (!exists) {
      // A new, empty data volume: refuse a device that holds a file system or a LUKS header (its data would be lost).
      const d = await FileBlockDevice.open(path, { readOnly: true });
      try {
        const head = Buffer.alloc(Math.min(d.size, 65536 + 4096));
        await d.read(head, 0);
        const { probeFilesystem } = await import("../fs/probe.js");
        const { probeLuksVersion } = await import("../luks2/header.js");
        if (probeFilesystem(head) || (await probeLuksVersion(d)) !== null) throw new TrustvolError("EBUSY", `volumes[${i}]: ${path} holds data and ${t.descriptor} (its ${what} descriptor) does not exist`, `a ${what} volume is created empty: wipe the partition first if it is really free; nothing was changed`);
      } finally {
        await d.close();
      }
      await key.create(path);
      report.steps.push("create-trusted-key");
    }
    // After the descriptor (a conf never names a volume that does not exist), before the open (a failed open today
    // still leaves the next boot's unit). Written once, atomically: a hand-edited one (e.g. --allow-discards) is kept.
    if (conf) {
      mkdirSync(o.volumesDir!, { recursive: true, mode: 0o755 });
      atomicWriteFileSync(conf.path, Buffer.from(conf.content), 0o644);
      report.steps.push("volume-conf");
      log(`${vol.name}: ${conf.path} written: trustvol-volume@${vol.name}.service opens it at every boot`);
    }
    if (o.open !== false) {
      const mapper = `/dev/mapper/${vol.name}`;
      if (!existsSync(mapper)) await key.open(path);
      report.mapped = mapper;
      report.steps.push("open");
    }
  } finally {
    await key.close();
  }
  return report;
}

/**
 * VOLUMES_DIR/NAME.conf for trustvol-volume@NAME.service (EnvironmentFile: DEVICE=, OPTIONS=). The device as a stable
 * /dev/disk/by-* path (the generator binds the unit to it); refused (nothing written) when a path would not survive
 * systemd's EnvironmentFile and the unit's word splitting.
 */
export function volumeConf(vol: VolumeConfig, i: number, descriptor: string, dir: string): { path: string; content: string } {
  const safe = /^[A-Za-z0-9_./:@,+=-]+$/;
  let device = vol.device;
  if (!device.startsWith("/")) {
    const eq = device.indexOf("=");
    const tag = TAGS[device.slice(0, eq)];
    if (tag && !device.slice(eq + 1).includes("/")) device = `/dev/disk/${tag}/${device.slice(eq + 1)}`;
  }
  if (!device.startsWith("/") || !safe.test(device)) throw new TrustvolError("EUSAGE", `volumes[${i}].device: ${JSON.stringify(vol.device.slice(0, 60))} cannot be named in ${dir}/${vol.name}.conf (spaces, quotes or '/' in a tag value)`, "use a /dev path or a PARTLABEL=/PARTUUID= of letters, digits and -_.:; nothing was changed");
  if (!safe.test(descriptor)) throw new TrustvolError("EUSAGE", `volumes[${i}].trust.descriptor: ${JSON.stringify(descriptor.slice(0, 60))} cannot be named in ${dir}/${vol.name}.conf (spaces or quotes)`, "use a path of letters, digits and -_./; nothing was changed");
  const content = `# Written by \`trustvol provision\` when it created the volume; read by trustvol-volume@${vol.name}.service, which\n# trustvol-generator starts at every boot. Kept as it is once it exists (add open options to OPTIONS by hand).\nDEVICE=${device}\nOPTIONS=--blob ${descriptor}\n`;
  return { path: join(dir, `${vol.name}.conf`), content };
}

/** How a data volume's key is made and mapped: a kernel trusted key, or a CAAM black key (its keygen opened on first use). */
async function dataVolumeKey(vol: VolumeConfig, o: ProvisionOptions, log: (s: string) => void): Promise<{ create(path: string): Promise<void>; open(path: string): Promise<void>; close(): Promise<void> }> {
  const t = vol.trust;
  if (t.type === "caam") {
    let kg: import("../trust/caam/keygen.js").CaamKeygen | undefined;
    const keygen = async () => (kg ??= o.caamKeygen ?? (await import("../trust/caam/index.js")).openCaamKeygen({ device: t.keygen_device }));
    return {
      async create() {
        const { createCaamVolume } = await import("./caam-volume.js");
        const k = await keygen();
        await createCaamVolume({ descriptor: t.descriptor, keygen: k, keySize: t.key_size, encryption: t.key_encryption, sectorSize: t.sector_size });
        log(`${vol.name}: new data volume keyed by a CAAM black key (${k.description})`);
      },
      async open(path) {
        await (await import("./caam-volume.js")).openCaamVolume(path, vol.name, { descriptor: t.descriptor, keygen: await keygen() });
      },
      async close() {
        if (kg && !o.caamKeygen) await kg.close();
      },
    };
  }
  if (t.type !== "trusted-key") throw new TrustvolError("EINTERNAL", "not a trusted-key / CAAM volume");
  // TPM 2.0 trusted keys need a persistent parent: systemd's SRK (0x81000001) unless the config names another.
  const { SYSTEMD_SRK_HANDLE } = await import("../trust/tpm2/srk.js");
  const keyhandle = t.keyhandle ?? (t.source === "tpm" ? SYSTEMD_SRK_HANDLE : undefined);
  const keyOptions = keyhandle !== undefined ? { keyhandle } : {};
  const { createTrustedVolume, openTrustedVolume } = await import("./open.js");
  return {
    async create(path) {
      if (t.source === "tpm" && keyhandle === SYSTEMD_SRK_HANDLE) await ensureSrk(vol.name, log);
      createTrustedVolume(path, { descriptor: t.descriptor, source: t.source, keyOptions });
      log(`${vol.name}: new data volume keyed by a ${t.source} trusted key`);
    },
    async open(path) {
      await openTrustedVolume(path, vol.name, { descriptor: t.descriptor, keyOptions });
    },
    async close() {},
  };
}

/**
 * systemd's SRK at 0x81000001, created (and made persistent) when missing, as systemd-tpm2-setup does on a measured-UKI
 * boot: a kernel trusted key on a TPM 2.0 seals under a persistent parent. Through TRUSTVOL_TPM2_DEVICE / /dev/tpmrm0.
 */
async function ensureSrk(name: string, log: (s: string) => void): Promise<void> {
  const { withTpm } = await import("./handlers.js");
  const { getOrCreateSrk } = await import("../trust/tpm2/srk.js");
  const created = await withTpm({}, async (src) => (await getOrCreateSrk(src.tpm)).created).catch((e: unknown) => {
    const why = e instanceof TrustvolError ? e.message : String(e);
    throw new TrustvolError("EDEVICE", `${name}: cannot find or create the TPM's SRK (0x81000001) for the trusted key: ${why}`, "check the TPM (/dev/tpmrm0), or give trust.keyhandle of an existing storage key; nothing was changed");
  });
  if (created) log(`${name}: created the TPM's storage root key at 0x81000001 (parent of the trusted key)`);
}
