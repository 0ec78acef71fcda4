// `trustvol open` / `close`: activate dm-crypt mappings whose key lives only in the kernel keyring.
//
// LUKS2 (and LUKS1): unlock in user space (passphrase or token) → the volume key goes into the kernel keyring as a
// `logon` key (unreadable from user space; payload on keyctl's stdin) → the table references it
// (`:64:logon:trustvol:<uuid>-<random>`) → once dm-crypt has copied the key at table load, the keyring key is
// unlinked. A later table reload (resize) therefore needs the volume unlocked again, as with cryptsetup.
// Plain dm-crypt (seed flows): the table references a key already in the keyring (trusted, encrypted, user, logon),
// optionally loaded first from a trusted-key blob, or a CAAM black key loaded as a logon key.
// Image files get a loop device with autoclear; the dm UUID follows cryptsetup (CRYPT-LUKS2-<uuid>-<name>,
// CRYPT-PLAIN-<name>) so cryptsetup, systemd and lsblk recognise the mappings.
import { existsSync, readFileSync, statSync, openSync, closeSync, ftruncateSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { TrustvolError, usage } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { atomicWriteFileSync } from "../util/atomic.js";
import { FileBlockDevice } from "../blockdev/file.js";
import { LuksHandle } from "./volume.js";
import { paddKey, searchKey, tableKeyring, unlinkKey, type KeyRef, type KeyctlOptions } from "../trust/kernel/keyring.js";
import { createTrustedKey, detectTrustedSource, exportTrustedKey, loadTrustedKey, parseTrustedBlob, type TrustedKeyOptions, type TrustedKeySource, type TpmHash } from "../trust/kernel/trusted.js";
import { checkMappingName, cryptTable, type CryptTableSpec, type KeyringKeyRef, type KeyringKeyType } from "../dm/table.js";
import { dmCreate } from "../dm/dmsetup.js";
import { isBlockDevice, loopAttach, loopBackingFile, type LoopHandle } from "../dm/loop.js";
import { closeMapping, rememberMapping } from "../dm/state.js";
import { reencryptStatus } from "../luks2/reencrypt-metadata.js";
import { activateReencrypting, luks2DmUuid } from "./reencrypt-online.js";

export interface OpenResult {
  name: string;
  device: string;
  /** The dm table line (keyring reference only). */
  table: string;
  uuid: string;
  /** Loop device attached for an image file. */
  loop?: string;
  loopAutoclear?: boolean;
  kind: "luks2" | "luks1" | "plain" | "trusted-volume" | "caam-volume";
  keyslot?: number;
  tokenId?: number;
  /** Whether the keyring key trustvol loaded was unlinked after activation. */
  keyUnlinked?: boolean;
  dryRun?: boolean;
  /** LUKS2 mid-re-encryption: mapped with cryptsetup's multi-segment table (old key, new key, linear parts). */
  reencrypting?: boolean;
  /** A hotzone a crash interrupted was recovered before mapping. */
  recovered?: boolean;
}

export interface ActivateOptions {
  readOnly?: boolean;
  allowDiscards?: boolean;
  /** Keyring that briefly holds keys trustvol loads (default @u: dm-crypt, run from dmsetup, searches it). */
  keyring?: KeyRef;
  keyctl?: KeyctlOptions;
  /** Build and return the table; load no key and activate nothing. */
  dryRun?: boolean;
}

// ------------------------------------------------------------------ underlying device
interface Underlying {
  device: string;
  sectors: bigint;
  loop?: LoopHandle;
}

async function deviceSectors(path: string): Promise<bigint> {
  const d = await FileBlockDevice.open(path, { readOnly: true });
  try {
    return BigInt(Math.floor(d.size / 512));
  } finally {
    await d.close();
  }
}

async function underlying(path: string, readOnly: boolean, dryRun: boolean): Promise<Underlying> {
  if (!existsSync(path)) throw new TrustvolError("ENOENT", `${path} does not exist`);
  const sectors = await deviceSectors(path);
  if (isBlockDevice(path) || dryRun) return { device: path, sectors };
  if (!statSync(path).isFile()) throw usage(`${path} is neither a block device nor an image file`);
  const loop = loopAttach(path, { readOnly });
  return { device: loop.device, sectors, loop };
}

function remember(name: string, r: OpenResult): void {
  if (!r.loop) return;
  try {
    rememberMapping({ name, dmUuid: r.uuid, loops: [{ device: r.loop, backing: loopBackingFile(r.loop) }] });
  } catch {
    /* the mapping is up; without the record close detaches only what autoclear does */
  }
}

/** Load `payload` as a logon key, run `fn` (the activation), unlink the key whatever happens. */
function withLogonKey<T>(description: string, payload: Uint8Array, o: ActivateOptions, fn: () => T): { value: T; unlinked: boolean } {
  const ring = o.keyring ?? tableKeyring(o.keyctl);
  const id = paddKey("logon", description, payload, ring, o.keyctl);
  let unlinked = false;
  try {
    return { value: fn(), get unlinked() { return unlinked; } };
  } finally {
    try {
      unlinkKey(id, ring, o.keyctl);
      unlinked = true;
    } catch {
      /* already gone */
    }
  }
}

function activate(name: string, spec: CryptTableSpec, dmUuid: string, under: Underlying, o: ActivateOptions, keyType: string): string {
  const table = cryptTable(spec);
  if (o.dryRun) return table;
  try {
    dmCreate(name, table, { uuid: dmUuid, readOnly: o.readOnly }, { cipher: spec.cipher, keyType });
  } catch (e) {
    under.loop?.detach();
    throw e;
  }
  under.loop?.release();
  return table;
}

// ------------------------------------------------------------------ LUKS
export type LuksUnlocker = (h: LuksHandle) => Promise<{ volumeKey: Buffer; keyslot: number; tokenId?: number }>;

/** Open a LUKS2/LUKS1 volume: unlock with `unlock`, then map it with the volume key as a logon key. */
export async function openLuks(path: string, name: string, unlock: LuksUnlocker, o: ActivateOptions & { header?: string } = {}): Promise<OpenResult> {
  checkMappingName(name);
  const h = await LuksHandle.open(path, { header: o.header, readOnly: true });
  let volumeKey: Buffer | undefined;
  try {
    if (h.luks2 && reencryptStatus(h.luks2.metadata) !== "none") return await openReencryptingLuks(h, path, name, unlock, o);
    if (h.luks2) {
      h.luks2.checkRequirements("activate");
      const seg = (h.luks2.metadata.segments as Record<string, { integrity?: unknown }>)[Object.keys(h.luks2.metadata.segments)[0]!];
      if (seg?.integrity) throw new TrustvolError("EUNSUPPORTED", "this volume uses dm-integrity (authenticated encryption)", "open it with cryptsetup");
    }
    const area = h.dataArea();
    const r = await unlock(h);
    volumeKey = r.volumeKey;
    const flags = new Set(h.luks2 ? ((h.luks2.metadata.config.flags as string[] | undefined) ?? []) : []);
    const under = await underlying(path, !!o.readOnly, !!o.dryRun);
    const headerOnSameDevice = !o.header;
    const offsetBytes = headerOnSameDevice || h.luks2 ? area.offset : 0;
    const sectors = BigInt(Math.floor(area.length / 512));
    const desc = `trustvol:${h.uuid}-${randomBytes(4).toString("hex")}`;
    const key: KeyringKeyRef = { size: volumeKey.length, type: "logon", description: desc };
    const spec: CryptTableSpec = {
      sectors,
      cipher: area.cipher,
      key,
      ivOffset: area.ivTweak,
      device: under.device,
      offset: BigInt(offsetBytes / 512),
      sectorSize: area.sectorSize,
      allowDiscards: !!o.allowDiscards || flags.has("allow-discards"),
      sameCpuCrypt: flags.has("same-cpu-crypt"),
      submitFromCryptCpus: flags.has("submit-from-crypt-cpus"),
      noReadWorkqueue: flags.has("no-read-workqueue"),
      noWriteWorkqueue: flags.has("no-write-workqueue"),
    };
    const dmUuid = `CRYPT-${h.luks2 ? "LUKS2" : "LUKS1"}-${h.uuid.replace(/-/g, "")}-${name}`;
    const base = { name, device: `/dev/mapper/${name}`, uuid: dmUuid, kind: h.luks2 ? ("luks2" as const) : ("luks1" as const), keyslot: r.keyslot, ...(r.tokenId !== undefined ? { tokenId: r.tokenId } : {}) };
    if (o.dryRun) return { ...base, table: activate(name, spec, dmUuid, under, o, "logon"), dryRun: true };
    let activated = false;
    let table: string, unlinked: boolean;
    try {
      ({ value: table, unlinked } = withLogonKey(desc, volumeKey, o, () => {
        wipe(volumeKey);
        const t = activate(name, spec, dmUuid, under, o, "logon");
        activated = true;
        return t;
      }));
    } catch (e) {
      if (!activated) try { under.loop?.detach(); } catch { /* activate() may have detached it already */ }
      throw e;
    }
    const res: OpenResult = { ...base, table, keyUnlinked: unlinked, ...(under.loop ? { loop: under.loop.device, loopAutoclear: under.loop.autoclear } : {}) };
    remember(name, res);
    return res;
  } finally {
    wipe(volumeKey);
    await h.close();
  }
}

/**
 * A LUKS2 volume mid-re-encryption (src/ops/reencrypt-online.ts): the unlocker's passphrase (typed or from a token)
 * opens the old and the new volume key, as cryptsetup's activation does; a crashed hotzone is recovered first; the
 * device is mapped with cryptsetup's multi-segment table and key descriptions. A recovery that finished the run
 * leaves an ordinary volume, opened the ordinary way.
 */
async function openReencryptingLuks(h: LuksHandle, path: string, name: string, unlock: LuksUnlocker, o: ActivateOptions & { header?: string }): Promise<OpenResult> {
  const v = h.luks2!;
  const passes: Buffer[] = [];
  const orig = v.unlock.bind(v);
  (v as { unlock: typeof orig }).unlock = async (pass, opts) => {
    const r = await orig(pass, opts);
    passes.push(Buffer.from(pass));
    return r;
  };
  try {
    const r = await unlock(h);
    wipe(r.volumeKey);
    const pass = passes[passes.length - 1];
    if (!pass) throw new TrustvolError("EUNSUPPORTED", "this volume is mid-re-encryption and the unlock gave a volume key but no passphrase", "open it with a passphrase or a token");
    const dmUuid = luks2DmUuid(h.uuid, name);
    const under = await underlying(path, !!o.readOnly, !!o.dryRun);
    let act;
    try {
      act = await activateReencrypting(path, under.device, name, dmUuid, pass, { readOnly: o.readOnly, allowDiscards: o.allowDiscards, dryRun: o.dryRun, header: o.header, keyring: o.keyring });
    } catch (e) {
      try { under.loop?.detach(); } catch { /* already gone */ }
      throw e;
    }
    if (act.table === "") {
      // the recovered hotzone was the last one: an ordinary LUKS2 volume now
      try { under.loop?.detach(); } catch { /* already gone */ }
      return await openLuks(path, name, (h2) => h2.unlock(pass), o);
    }
    under.loop?.release();
    const base = { name, device: `/dev/mapper/${name}`, uuid: dmUuid, kind: "luks2" as const, keyslot: r.keyslot, ...(r.tokenId !== undefined ? { tokenId: r.tokenId } : {}) };
    if (o.dryRun) return { ...base, table: act.table, dryRun: true };
    const res: OpenResult = { ...base, table: act.table, keyUnlinked: true, reencrypting: true, ...(act.recovered ? { recovered: true } : {}), ...(under.loop ? { loop: under.loop.device, loopAutoclear: under.loop.autoclear } : {}) };
    remember(name, res);
    return res;
  } finally {
    for (const p of passes) wipe(p);
  }
}

// ------------------------------------------------------------------ plain dm-crypt
export interface PlainKeySpec {
  /** An existing key in the keyring (or one loaded here from trustedBlob / blackKeyFile / keyFile). */
  type: KeyringKeyType;
  description?: string;
  /** Key size in bytes (required unless it follows from a file). */
  size?: number;
  /** Load this trusted-key blob (a file holding keyctl pipe output, or that text itself) first; unlinked after activation. */
  trustedBlob?: string | { data: string };
  trustedOptions?: TrustedKeyOptions;
  trustedSource?: TrustedKeySource;
  /** Load this CAAM black key (tagged, as caam-keygen writes it) as a logon key; unlinked after activation. */
  blackKeyFile?: string;
  /** Load these raw key bytes as a logon key (wiped by the caller); unlinked after activation. */
  keyBytes?: Uint8Array;
}

export interface PlainSpec extends ActivateOptions {
  cipher: string;
  key: PlainKeySpec;
  /** Data start on the device, 512-byte sectors (cryptsetup --offset). */
  offset?: bigint | number;
  /** IV offset, 512-byte sectors (cryptsetup --skip). */
  skip?: bigint | number;
  /** Mapping size, 512-byte sectors (default: the rest of the device). */
  size?: bigint | number;
  sectorSize?: number;
  ivLargeSectors?: boolean;
}

/** Open a plain dm-crypt mapping keyed by a kernel keyring key. */
export async function openPlain(path: string, name: string, p: PlainSpec): Promise<OpenResult> {
  checkMappingName(name);
  const k = p.key;
  const ring = p.keyring ?? (p.dryRun ? "@u" : tableKeyring(p.keyctl));
  const loadsOwn = !!(k.trustedBlob || k.blackKeyFile || k.keyBytes);
  if ([k.trustedBlob, k.blackKeyFile, k.keyBytes].filter(Boolean).length > 1) throw usage("give only one of a trusted-key blob, a black key file or a key file");
  let type = k.type;
  let description = k.description;
  let size = k.size;
  let blackKey: Buffer | undefined;
  if (k.blackKeyFile) {
    type = "logon";
    blackKey = readFileSync(k.blackKeyFile);
    size = blackKey.length;
    description ??= `trustvol-caam:${name}`;
  } else if (k.keyBytes) {
    type = "logon";
    size = k.keyBytes.length;
    description ??= `trustvol:plain-${name}-${randomBytes(4).toString("hex")}`;
  } else if (k.trustedBlob) {
    type = "trusted";
    description ??= `trustvol-${name}-${randomBytes(4).toString("hex")}`;
  }
  if (!description) throw usage("which key? give --key-desc (and --key-type), or a blob / key file to load");
  if (size === undefined) throw usage("--key-size (bytes) is needed for a key that is already in the keyring");
  const offset = BigInt(p.offset ?? 0);
  try {
    if (!loadsOwn && !p.dryRun) {
      const found = searchKey("@s", type, description, undefined, p.keyctl) ?? searchKey("@u", type, description, undefined, p.keyctl);
      if (found === undefined)
        throw new TrustvolError("ENOKEY", `no ${type} key "${description}" in the keyrings`, type === "trusted" ? `load it first: trustvol trusted load ${description} --blob FILE` : "load it first (keyctl / trustvol)");
    }
    const under = await underlying(path, !!p.readOnly, !!p.dryRun);
    const avail = under.sectors - offset;
    if (avail <= 0n) {
      under.loop?.detach();
      throw usage(`the offset (${offset} sectors) is beyond the end of ${path}`);
    }
    let sectors = p.size !== undefined ? BigInt(p.size) : avail;
    if (sectors > avail) {
      under.loop?.detach();
      throw usage(`--size ${sectors} sectors does not fit: only ${avail} after the offset`);
    }
    const per = BigInt((p.sectorSize ?? 512) / 512);
    if (p.size === undefined) sectors -= sectors % per;
    const spec: CryptTableSpec = { sectors, cipher: p.cipher, key: { type, description, size }, ivOffset: p.skip ?? 0, device: under.device, offset, sectorSize: p.sectorSize, ivLargeSectors: p.ivLargeSectors, allowDiscards: p.allowDiscards };
    const dmUuid = `CRYPT-PLAIN-${name}`;
    const base = { name, device: `/dev/mapper/${name}`, uuid: dmUuid, kind: "plain" as const };
    if (p.dryRun) return { ...base, table: activate(name, spec, dmUuid, under, p, type), dryRun: true };
    let table: string;
    let unlinked: boolean | undefined;
    if (blackKey || k.keyBytes) {
      const r = withLogonKey(description, blackKey ?? k.keyBytes!, p, () => activate(name, spec, dmUuid, under, p, "logon"));
      table = r.value;
      unlinked = r.unlinked;
    } else if (k.trustedBlob) {
      const id = (() => {
        try {
          const blob = typeof k.trustedBlob === "string" ? readFileSync(k.trustedBlob) : k.trustedBlob!.data;
          return loadTrustedKey(description, blob, k.trustedOptions ?? {}, ring, { source: k.trustedSource, keyctl: p.keyctl });
        } catch (e) {
          under.loop?.detach();
          throw e;
        }
      })();
      try {
        table = activate(name, spec, dmUuid, under, p, "trusted");
      } finally {
        try {
          unlinkKey(id, ring, p.keyctl);
          unlinked = true;
        } catch {
          unlinked = false;
        }
      }
    } else table = activate(name, spec, dmUuid, under, p, type);
    const res: OpenResult = { ...base, table, ...(unlinked !== undefined ? { keyUnlinked: unlinked } : {}), ...(under.loop ? { loop: under.loop.device, loopAutoclear: under.loop.autoclear } : {}) };
    remember(name, res);
    return res;
  } finally {
    wipe(blackKey);
  }
}

// ------------------------------------------------------------------ close
export interface CloseResult {
  name: string;
  /** Loop device trustvol detached (or the kernel auto-cleared). */
  loop?: string;
  loopDetached?: boolean;
}

export function closeVolume(name: string, opts: { deferred?: boolean } = {}): CloseResult {
  const r = closeMapping(name, opts);
  const loop = r.loops[0];
  return { name, ...(loop ? { loop, loopDetached: r.detached.includes(loop) } : {}) };
}

// ------------------------------------------------------------------ trusted-key volumes (seed 000 convenience)
/** A plain dm-crypt volume keyed by a kernel trusted key; this descriptor (with the sealed blob) sits beside it. */
export interface TrustedVolumeDescriptor {
  type: "trustvol-trusted-volume";
  version: 1;
  source: TrustedKeySource;
  cipher: string;
  key_size: number;
  sector_size: number;
  offset: string;
  iv_offset: string;
  keyhandle?: string;
  hash?: TpmHash;
  /** The sealed blob (hex text from keyctl pipe): useless without this device's trust source. */
  blob: string;
}

export function defaultDescriptorPath(image: string): string {
  return `${image}.tvkey`;
}

export interface CreateTrustedVolumeOptions {
  descriptor?: string;
  cipher?: string;
  keySize?: number;
  sectorSize?: number;
  keyOptions?: TrustedKeyOptions;
  source?: TrustedKeySource;
  /** Create the image file with this many bytes when it does not exist. */
  createSize?: number;
  force?: boolean;
  keyctl?: KeyctlOptions;
}

/** New trusted key (sealed by the kernel's trust source) → descriptor file (0600, atomic) beside the image. */
export function createTrustedVolume(image: string, o: CreateTrustedVolumeOptions = {}): { descriptor: string; desc: TrustedVolumeDescriptor } {
  const cipher = o.cipher ?? "aes-xts-plain64";
  const keySize = o.keySize ?? (cipher.includes("xts") ? 64 : 32);
  const sectorSize = o.sectorSize ?? 4096;
  const path = o.descriptor ?? (isBlockDevice(image) ? undefined : defaultDescriptorPath(image));
  if (!path) throw usage(`${image} is a block device: say where the key descriptor goes (--blob FILE)`);
  if (existsSync(path) && !o.force) throw new TrustvolError("EBUSY", `${path} already exists`, "it seals the key of an existing volume; use --force to replace it (the old data becomes unreadable)");
  cryptTable({ sectors: sectorSize / 512, cipher, key: { type: "trusted", description: "check", size: keySize }, device: "check", sectorSize }); // validate early
  const source = o.source ?? detectTrustedSource().source; // before creating anything: a failed run changes nothing
  if (!source) throw new TrustvolError("EDEVICE", "no trust source for kernel trusted keys", "boot with trusted.source=tpm|tee|caam|dcp on a kernel with CONFIG_TRUSTED_KEYS");
  if (!existsSync(image)) {
    if (!o.createSize) throw new TrustvolError("ENOENT", `${image} does not exist`, "give --size to create the image file");
    const fd = openSync(image, "wx", 0o600);
    try {
      ftruncateSync(fd, o.createSize);
    } finally {
      closeSync(fd);
    }
  }
  const descName = `trustvol-new-${randomBytes(6).toString("hex")}`;
  // In a keyring this process possesses: `keyctl pipe` of a trusted key needs possession, and a systemd service's
  // private session keyring does not reach @u.
  const ring = tableKeyring(o.keyctl);
  const id = createTrustedKey(descName, keySize, o.keyOptions ?? {}, ring, { source, keyctl: o.keyctl });
  try {
    const blob = exportTrustedKey(id, o.keyctl);
    const d: TrustedVolumeDescriptor = {
      type: "trustvol-trusted-volume",
      version: 1,
      source,
      cipher,
      key_size: keySize,
      sector_size: sectorSize,
      offset: "0",
      iv_offset: "0",
      ...(o.keyOptions?.keyhandle !== undefined ? { keyhandle: `0x${o.keyOptions.keyhandle.toString(16)}` } : {}),
      ...(o.keyOptions?.hash ? { hash: o.keyOptions.hash } : {}),
      blob: parseTrustedBlob(blob),
    };
    atomicWriteFileSync(path, Buffer.from(JSON.stringify(d, null, 2) + "\n"), 0o600);
    return { descriptor: path, desc: d };
  } finally {
    unlinkKey(id, ring, o.keyctl);
  }
}

export function readTrustedVolumeDescriptor(path: string): TrustedVolumeDescriptor {
  let d: TrustedVolumeDescriptor;
  try {
    d = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    const missing = (e as NodeJS.ErrnoException).code === "ENOENT";
    const why = missing ? "does not exist" : e instanceof SyntaxError ? "is not valid JSON" : "cannot be read";
    throw new TrustvolError(missing ? "ENOENT" : "ECORRUPT", `the key descriptor ${path} ${why}`, "restore it from backup; without it the volume cannot be opened");
  }
  if (d?.type !== "trustvol-trusted-volume" || d.version !== 1 || typeof d.blob !== "string" || !Number.isInteger(d.key_size))
    throw new TrustvolError("ECORRUPT", `${path} is not a trustvol trusted-volume descriptor`);
  parseTrustedBlob(d.blob);
  return d;
}

/** Open a trusted-key volume: load the sealed key from its descriptor, map, unlink the key. */
export async function openTrustedVolume(image: string, name: string, o: ActivateOptions & { descriptor?: string; keyOptions?: TrustedKeyOptions } = {}): Promise<OpenResult> {
  const path = o.descriptor ?? defaultDescriptorPath(image);
  const d = readTrustedVolumeDescriptor(path);
  const keyOptions: TrustedKeyOptions = d.source === "tpm" ? { ...(d.keyhandle ? { keyhandle: Number(d.keyhandle) } : {}), ...(o.keyOptions ?? {}) } : {};
  const r = await openPlain(image, name, {
    ...o,
    cipher: d.cipher,
    key: { type: "trusted", size: d.key_size, trustedBlob: { data: d.blob }, trustedOptions: keyOptions, trustedSource: d.source },
    offset: BigInt(d.offset),
    skip: BigInt(d.iv_offset),
    sectorSize: d.sector_size,
  });
  return { ...r, kind: "trusted-volume" };
}

/** What `trustvol open` should do with a path: LUKS header present, a trusted-volume descriptor beside it, or nothing. */
export async function detectVolumeKind(path: string, o: { header?: string; descriptor?: string } = {}): Promise<"luks" | "trusted-volume" | "unknown"> {
  try {
    const h = await LuksHandle.open(path, { header: o.header, readOnly: true });
    await h.close();
    return "luks";
  } catch (e) {
    if (e instanceof TrustvolError && e.code === "ENOENT") throw e;
  }
  if (existsSync(o.descriptor ?? defaultDescriptorPath(path))) return "trusted-volume";
  return "unknown";
}
