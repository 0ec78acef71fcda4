// The kernel side of LUKS2 re-encryption, as cryptsetup 2.6 does it (lib/luks2/luks2_reencrypt.c, luks2_json_metadata.c):
//
// * Opening a volume mid-re-encryption (`openReencrypting`): under cryptsetup's re-encryption lock, a crashed hotzone is
//   recovered first (what cryptsetup's activation does), then the device is mapped with one dm target per data segment
//   — crypt with the old key, crypt with the new key, linear for plain parts — each key a `logon` key described
//   `cryptsetup:<uuid>-d<digest>` (so `dmsetup table` is what cryptsetup's own open loads), unlinked once loaded.
// * Online re-encryption of an active mapping (`reencryptOnline`): the top device <name> is switched to
//   `0 <size> linear <name>-overlay 0`; <name>-overlay carries the segment table; <name>-hotzone-<direction> is a 1:1
//   linear map of the data area. Per hotzone: the overlay gets the hot table (the hotzone's range through the hotzone
//   device with the new key), overlay and hotzone device are suspended without flushing or freezing the file system
//   (noflush, nolockfs), the overlay resumed — so I/O to the hotzone waits in the suspended hotzone device while the
//   offline engine re-encrypts it on the data device — and once the hotzone is committed, the hotzone device resumes.
//   At the end (or at a safe point after SIGTERM) the top device gets the segment table again and the helpers go.
import { readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { FileBlockDevice } from "../blockdev/file.js";
import { Luks2Volume } from "../luks2/volume.js";
import type { Luks2Metadata } from "../luks2/metadata.js";
import { dataSegments, digestOfSegment } from "../luks2/segment.js";
import { loadReencryptState, reencryptStatus } from "../luks2/reencrypt-metadata.js";
import { isDecryptShift } from "../luks2/reencrypt-shift-decrypt.js";
import { cryptTable, checkMappingName } from "../dm/table.js";
import { dmCreate, dmInfo, dmList, dmLoad, dmRemove, dmResume, dmSuspend, dmTable, type DmsetupOptions } from "../dm/dmsetup.js";
import { lockReencryption, type HeldLock } from "../dm/lock.js";
import { errnoName, ioctlAvailable, ioctlRaw, lockFileMappings } from "../dm/ioctl.js";
import { paddKey, tableKeyring, unlinkKey, type KeyRef } from "../trust/kernel/keyring.js";
import { mark } from "../util/timing.js";
import { checkMovedCiphertext, reencrypt, unlockForState, type ReencryptOptions, type ReencryptResult } from "./reencrypt.js";

/** The online run's table switches never wait for udev (see DmsetupOptions.noUdevSync: a probe of the overlay blocks on the suspended hotzone device). */
const NOSYNC: DmsetupOptions = { noUdevSync: true };

/** cryptsetup's keyring description of a LUKS2 volume key (lib/luks2/luks2_digest.c). */
export function cryptsetupKeyDescription(uuid: string, digest: number): string {
  return `cryptsetup:${uuid}-d${digest}`;
}

export function luks2DmUuid(uuid: string, name: string): string {
  return `CRYPT-LUKS2-${uuid.replace(/-/g, "")}-${name}`;
}

export interface SegmentTableOptions {
  /** Data device in the table (path or major:minor). */
  device: string;
  /** Size of the data device in bytes. */
  deviceSize: number;
  /** Key size in bytes by digest id. */
  keySize: (digest: number) => number;
  uuid: string;
  /** dm-crypt optional flags (allow_discards, ...). */
  flags?: { allowDiscards?: boolean; sameCpuCrypt?: boolean; submitFromCryptCpus?: boolean; noReadWorkqueue?: boolean; noWriteWorkqueue?: boolean };
  /** Overlay table: the segment in re-encryption goes through this device (1:1 map of the data area), new key. */
  hotzoneDevice?: string;
}

/** Data area length in 512-byte sectors that a mapping of this metadata covers (cryptsetup: device size − data offset). */
export function mappedSectors(m: Luks2Metadata, deviceSize: number): bigint {
  const st = loadReencryptState(m);
  // (a decryption with a data shift maps the plain data, which ends one shift before the device does)
  const off = isDecryptShift(st) ? st.keyslot.area.shiftSize! : st.newSeg.offset;
  const align = Math.max(st.oldSeg.sectorSize, st.newSeg.sectorSize);
  const len = deviceSize - off;
  if (len <= 0) throw new TrustvolError("ETRUNCATED", `the device (${deviceSize} bytes) ends before the data offset ${off}`);
  return BigInt(Math.floor((len - (len % align)) / 512));
}

/** The multi-segment table cryptsetup loads for a LUKS2 device in re-encryption (LUKS2_assembly_multisegment_dmd / reencrypt_make_targets). */
export function segmentTable(m: Luks2Metadata, o: SegmentTableOptions): string {
  const st = loadReencryptState(m);
  const total = mappedSectors(m, o.deviceSize);
  const dataOffset = BigInt(st.newSeg.offset / 512);
  const segs = dataSegments(m);
  const lines: string[] = [];
  let start = 0n;
  segs.forEach((s, i) => {
    const last = i === segs.length - 1;
    const len = s.size !== null ? BigInt(s.size / 512) : last ? total - start : 0n;
    if (len <= 0n) throw new TrustvolError("ECORRUPT", `LUKS2 metadata: segment ${i} has no usable size`);
    const hot = !!o.hotzoneDevice && s.flags.includes("in-reencryption");
    const dev = hot ? o.hotzoneDevice! : o.device;
    const offset = BigInt(s.offset / 512) - (hot ? dataOffset : 0n);
    if (s.type === "linear") lines.push(`${start} ${len} linear ${dev} ${offset}`);
    else {
      const digest = hot ? st.digestNew : digestOfSegment(m, i);
      if (digest === undefined || digest < 0) throw new TrustvolError("ECORRUPT", `LUKS2 metadata: no digest covers crypt segment ${i}`);
      lines.push(
        cryptTable({
          start,
          sectors: len,
          cipher: s.encryption!,
          key: { size: o.keySize(digest), type: "logon", description: cryptsetupKeyDescription(o.uuid, digest) },
          ivOffset: s.ivTweak,
          device: dev,
          offset,
          sectorSize: s.sectorSize,
          ...o.flags,
        }),
      );
    }
    start += len;
  });
  if (start !== total) throw new TrustvolError("ECORRUPT", `LUKS2 metadata: the data segments cover ${start} of ${total} sectors`);
  return lines.join("\n");
}

export function configFlags(m: Luks2Metadata, allowDiscards = false): SegmentTableOptions["flags"] {
  const f = new Set((m.config.flags as string[] | undefined) ?? []);
  return {
    allowDiscards: allowDiscards || f.has("allow-discards"),
    sameCpuCrypt: f.has("same-cpu-crypt"),
    submitFromCryptCpus: f.has("submit-from-crypt-cpus"),
    noReadWorkqueue: f.has("no-read-workqueue"),
    noWriteWorkqueue: f.has("no-write-workqueue"),
  };
}

/** Volume keys as logon keys with cryptsetup's descriptions; returns the unlinker. */
export function loadLogonKeys(uuid: string, keys: Map<number, Uint8Array>, ring: KeyRef = tableKeyring()): () => void {
  const ids: number[] = [];
  try {
    for (const [d, k] of keys) ids.push(paddKey("logon", cryptsetupKeyDescription(uuid, d), k, ring));
  } catch (e) {
    for (const id of ids) try { unlinkKey(id, ring); } catch { /* gone */ }
    throw e;
  }
  return () => {
    for (const id of ids.splice(0)) {
      try {
        unlinkKey(id, ring);
      } catch {
        /* already gone */
      }
    }
  };
}

// ------------------------------------------------------------------ online
export interface OnlineReencryptOptions extends Pick<ReencryptOptions, "passphrase" | "keyslot" | "keyslotPassphrases" | "resilience" | "hash" | "hotzoneSize" | "cipher" | "keySize" | "sectorSize" | "pbkdf" | "resumeOnly" | "onProgress" | "signal"> {}

export interface OnlineReencryptResult extends ReencryptResult {
  name: string;
  device: string;
  /** The live table afterwards (keyring references only). */
  table: string;
}

/** The data device under a mapping, as a path (first target's device; every target of a LUKS2 mapping uses it). */
function dataDeviceOf(name: string): { majmin: string; path: string } {
  const first = dmTable(name).split("\n")[0]!.trim().split(/\s+/);
  const majmin = first[2] === "crypt" ? first[6] : first[2] === "linear" ? first[3] : undefined;
  if (!majmin || !/^\d+:\d+$/.test(majmin)) throw new TrustvolError("EUNSUPPORTED", `${name} is not a dm-crypt mapping trustvol can re-encrypt (target ${first[2] ?? "none"})`);
  let devname: string | undefined;
  try {
    devname = /^DEVNAME=(.+)$/m.exec(readFileSync(`/sys/dev/block/${majmin}/uevent`, "utf8"))?.[1];
  } catch {
    /* no sysfs */
  }
  if (!devname) throw new TrustvolError("ENOENT", `cannot find the block device ${majmin} under ${name}`, "is /sys mounted?");
  return { majmin, path: `/dev/${devname}` };
}

/** The active mapping of the LUKS2 device with this UUID (cryptsetup's auto-detection: dm UUID CRYPT-LUKS2-<uuid>-*). */
export function findActiveMapping(uuid: string): string | undefined {
  const prefix = `CRYPT-LUKS2-${uuid.replace(/-/g, "")}-`;
  return dmList().find((d) => d.uuid.startsWith(prefix) && d.uuid === prefix + d.name)?.name;
}

/**
 * Drop the raw device's page cache (BLKFLSBUF): the mapping's I/O bypasses it, our reads must not see stale pages.
 * Through the native ioctl when it is there (no process per hotzone), else blockdev --flushbufs.
 */
function dropCache(path: string, fd: number): void {
  if (ioctlAvailable()) {
    try {
      if (ioctlRaw(fd, BLKFLSBUF, new Uint8Array(8)) === 0) return;
    } catch {
      /* fall back */
    }
  }
  const r = spawnSync("blockdev", ["--flushbufs", path], { stdio: "ignore", timeout: 60_000 });
  if (r.status !== 0) throw new TrustvolError("EIO", `cannot drop the page cache of ${path} (blockdev --flushbufs failed)`, "is util-linux installed?");
}
const BLKFLSBUF = 0x1261; // _IO(0x12, 97)

/**
 * Re-encrypt (rotate the volume key of) an active LUKS2 mapping `name` — given as the name, /dev/mapper/NAME, or the
 * LUKS2 device itself (its active mapping is found by UUID) — while it stays in use. Resumable (`resumeOnly`); an
 * aborted `signal` stops at the next safe point (EINTR, exit 7) with the mapping intact.
 */
export async function reencryptOnline(target: string, opts: OnlineReencryptOptions = {}): Promise<OnlineReencryptResult> {
  let name = target.startsWith("/dev/mapper/") ? target.slice("/dev/mapper/".length) : target;
  if (name.includes("/")) {
    // a LUKS2 device: find its mapping
    const dev = await FileBlockDevice.open(target, { readOnly: true });
    try {
      const v = await Luks2Volume.open(dev);
      const found = findActiveMapping(v.uuid);
      if (!found) throw new TrustvolError("ENOENT", `${target} has no active mapping`, "open it first, or re-encrypt it offline");
      name = found;
    } finally {
      await dev.close();
    }
  }
  mark("online: start");
  checkMappingName(name);
  const info = dmInfo(name);
  if (!info) throw new TrustvolError("ENOENT", `no mapping named ${name}`, "open the volume first");
  const m = /^CRYPT-LUKS2-([0-9a-f]{32})-(.+)$/.exec(info.uuid);
  if (!m || m[2] !== name) throw new TrustvolError("EUNSUPPORTED", `${name} is not a LUKS2 mapping (dm UUID "${info.uuid}")`, "only LUKS2 volumes can be re-encrypted online");
  const overlay = `${name}-overlay`;
  if (dmInfo(overlay)) throw new TrustvolError("EBUSY", `${overlay} exists: an online re-encryption of ${name} is running or was killed without a reboot`, `if no re-encryption runs, close ${name} and open it again (that recovers the hotzone), then resume`);
  const under = dataDeviceOf(name);
  const topTable = dmTable(name);
  const discards = /\ballow_discards\b/.test(topTable);
  const dev = await FileBlockDevice.open(under.path);
  let lock: HeldLock | undefined;
  let unlinkKeys: (() => void) | undefined;
  let stack: { hotzone: string; majmin: string; created: boolean; swapped: boolean; hzSuspended: boolean } | undefined;
  let uuid = "";
  let failed = true;
  let result!: ReencryptResult;
  try {
    const v0 = await Luks2Volume.open(dev);
    uuid = v0.uuid;
    if (uuid.replace(/-/g, "") !== m[1]) throw new TrustvolError("EUNSUPPORTED", `${name} does not map ${under.path} (UUIDs differ)`);
    lock = await lockReencryption(uuid);
    mark("online: locked");
    const v = await Luks2Volume.open(dev); // re-read under the lock
    const status = reencryptStatus(v.metadata);
    if (status === "crash") throw new TrustvolError("EBUSY", "the re-encryption of this device was interrupted in the middle of a hotzone", `close ${name} and open it again (that recovers the hotzone), then resume`);
    if (status !== "none") {
      const st = loadReencryptState(v.metadata);
      if (st.mode !== "reencrypt") throw new TrustvolError("EUNSUPPORTED", `online ${st.mode} is not supported by trustvol`, "resume it offline (close the device), or with cryptsetup");
    }
    const deviceSize = dev.size;
    const flags = { ...configFlags(v.metadata, discards) };
    const hooks: ReencryptOptions["hotzoneHooks"] = {
      before: async (hot, keys) => {
        const st = loadReencryptState(hot);
        const keySize = (d: number) => keys.get(d)?.length ?? 64;
        mark("hook before");
        if (!stack) {
          unlinkKeys = loadLogonKeys(uuid, keys);
          mark("keys loaded");
          const hotzone = `${name}-hotzone-${st.direction}`;
          stack = { hotzone, majmin: "", created: false, swapped: false, hzSuspended: false };
          if (dmInfo(hotzone)) throw new TrustvolError("EBUSY", `${hotzone} already exists`, "remove the leftover helper (dmsetup remove) if no re-encryption runs");
          const total = mappedSectors(hot, deviceSize);
          const sub = (n: string) => `CRYPT-SUBDEV-${m[1]}-${n}`;
          dmCreate(hotzone, `0 ${total} linear ${under.majmin} ${st.newSeg.offset / 512}`, { uuid: sub(hotzone), node: false }, {}, NOSYNC);
          stack.created = true;
          const hz = dmInfo(hotzone)!;
          stack.majmin = `${hz.major}:${hz.minor}`;
          // the overlay starts with what the top device maps now: the metadata before this hotzone (re-encryption
          // is initialised by now, so the old key is referenced by cryptsetup's description, loaded above)
          const curTable = segmentTable((await Luks2Volume.open(dev)).metadata, { device: under.majmin, deviceSize, keySize, uuid, flags });
          dmCreate(overlay, curTable, { uuid: sub(overlay), node: false }, {}, NOSYNC);
          const ov = dmInfo(overlay)!;
          dmLoad(name, `0 ${total} linear ${ov.major}:${ov.minor} 0`, NOSYNC);
          dmSuspend(name, { noflush: true, nolockfs: true }, NOSYNC);
          dmResume(name, NOSYNC);
          stack.swapped = true;
          mark("stack built");
        }
        dmLoad(overlay, segmentTable(hot, { device: under.majmin, deviceSize, keySize, uuid, flags, hotzoneDevice: stack.majmin }), NOSYNC);
        // top to bottom: the overlay first, then the hotzone device, then the overlay's new table goes live
        dmSuspend(overlay, { noflush: true, nolockfs: true }, NOSYNC);
        dmSuspend(stack.hotzone, { noflush: true, nolockfs: true }, NOSYNC);
        stack.hzSuspended = true;
        dmResume(overlay, NOSYNC);
        dropCache(under.path, dev.fd);
        mark("hook before done");
      },
      after: () => {
        if (!stack) return;
        dmResume(stack.hotzone, NOSYNC);
        stack.hzSuspended = false;
        mark("hook after done");
      },
    };
    // This process may run from the device it re-encrypts (the root at first boot): its code (node, libraries) is
    // locked in memory so that no page fault waits on a hotzone only this process resumes (cryptsetup mlockall()s).
    const locked = lockFileMappings(true, `${info.major}:${info.minor}`);
    mark(`mappings locked (${locked?.bytes ?? 0} bytes)`);
    if (locked?.error !== undefined) process.emitWarning(`cannot lock trustvol's code in memory (${errnoName(-locked.error)}): if ${name} holds trustvol itself, a page fault into a suspended hotzone could stall the re-encryption`, { code: "TRUSTVOL_MEMLOCK" });
    try {
      result = await reencrypt(dev, { ...opts, mode: "reencrypt", hotzoneHooks: hooks, reencryptionLockHeld: true });
    } finally {
      if (locked) lockFileMappings(false, `${info.major}:${info.minor}`);
    }
    failed = false;
    mark("engine done");
  } finally {
    try {
      if (stack) await teardown(name, overlay, stack, dev, under, uuid, failed);
    } finally {
      unlinkKeys?.();
      await dev.close().catch(() => {});
      await lock?.release();
      mark("online: torn down");
    }
  }
  return { ...result, name, device: under.path, table: dmTable(name) };
}

/**
 * Put the top device back on the data device with the table the on-disk metadata describes, remove the helpers
 * (cryptsetup reencrypt_teardown_ok). When the metadata says a hotzone is half done (a failure after its commit), the
 * suspended hotzone device is replaced by dm-error instead, as cryptsetup does: nothing may reach half-written data.
 */
async function teardown(name: string, overlay: string, stack: { hotzone: string; created: boolean; swapped: boolean; hzSuspended: boolean }, dev: FileBlockDevice, under: { majmin: string }, uuid: string, failed: boolean): Promise<void> {
  const m = (await Luks2Volume.open(dev)).metadata;
  const crashed = reencryptStatus(m) === "crash";
  if (failed && stack.hzSuspended) {
    // I/O queued in the hotzone device was encrypted for the hot table: it must never reach the disk now.
    dmLoad(stack.hotzone, `0 ${dmInfoSectors(stack.hotzone)} error`, NOSYNC);
    dmResume(stack.hotzone, NOSYNC);
    stack.hzSuspended = false;
  }
  if (crashed)
    throw new TrustvolError("EIO", `online re-encryption of ${name} failed in the middle of a hotzone; that range now returns I/O errors`, `unmount, close ${name} and open it again (that recovers the hotzone), or reboot`);
  if (stack.swapped) {
    const keySize = (d: number) => {
      const slot = m.digests[String(d)]?.keyslots.find((k) => m.keyslots[k]?.type === "luks2");
      return slot ? m.keyslots[slot]!.key_size : 64;
    };
    const flags = configFlags(m, /\ballow_discards\b/.test(dmTable(overlay)));
    const table =
      reencryptStatus(m) === "none"
        ? (() => {
            const s = dataSegments(m)[0]!;
            const d = digestOfSegment(m, 0)!;
            return cryptTable({ sectors: BigInt(Math.floor((dev.size - s.offset) / s.sectorSize) * s.sectorSize) / 512n, cipher: s.encryption!, key: { size: keySize(d), type: "logon", description: cryptsetupKeyDescription(uuid, d) }, ivOffset: s.ivTweak, device: under.majmin, offset: BigInt(s.offset / 512), sectorSize: s.sectorSize, ...flags });
          })()
        : segmentTable(m, { device: under.majmin, deviceSize: dev.size, keySize, uuid, flags });
    dmLoad(name, table, NOSYNC);
    dmSuspend(name, { noflush: true, nolockfs: true }, NOSYNC);
    dmResume(name, NOSYNC);
  }
  if (stack.hzSuspended) dmResume(stack.hotzone, NOSYNC);
  try { dmRemove(overlay, {}, NOSYNC); } catch { /* best effort, like cryptsetup */ }
  if (stack.created) try { dmRemove(stack.hotzone, {}, NOSYNC); } catch { /* best effort */ }
}

function dmInfoSectors(name: string): string {
  return dmTable(name).split("\n")[0]!.trim().split(/\s+/)[1] ?? "0";
}

// ------------------------------------------------------------------ open mid-re-encryption
export interface OpenReencryptingOptions {
  readOnly?: boolean;
  allowDiscards?: boolean;
  dryRun?: boolean;
  header?: string;
  keyring?: KeyRef;
}

/**
 * Map a LUKS2 device that is mid-re-encryption. `passphrases` open its keyslots (the one that unlocked, or those its
 * tokens gave). `device` is the path the table names (the loop device for an image). Returns the table loaded.
 */
export async function activateReencrypting(path: string, device: string, name: string, dmUuid: string, passphrase: Uint8Array, o: OpenReencryptingOptions = {}): Promise<{ table: string; recovered: boolean; keyslots: number[] }> {
  const data = await FileBlockDevice.open(path, { readOnly: !!o.dryRun || !!o.readOnly });
  const hdr = o.header ? await FileBlockDevice.open(o.header, { readOnly: !!o.dryRun || !!o.readOnly }) : data;
  let lock: HeldLock | undefined;
  let keys: Map<number, Buffer> | undefined;
  try {
    let v = await Luks2Volume.open(hdr);
    lock = o.dryRun ? undefined : await lockReencryption(v.uuid);
    v = await Luks2Volume.open(hdr);
    let recovered = false;
    if (reencryptStatus(v.metadata) === "crash") {
      if (o.dryRun || o.readOnly) throw new TrustvolError("EBUSY", "the re-encryption was interrupted in the middle of a hotzone, which must be recovered (written) first", "open it read-write once (or run `trustvol reencrypt --resume-only`)");
      const { repairReencryption } = await import("./reencrypt.js");
      await repairReencryption(data, { passphrase, reencryptionLockHeld: true, ...(hdr !== data ? { header: hdr } : {}) });
      recovered = true;
      v = await Luks2Volume.open(hdr);
    }
    if (reencryptStatus(v.metadata) === "none") return { table: "", recovered, keyslots: [] };
    v.checkRequirements("write"); // unknown requirements besides online-reencrypt-v2 refuse
    const st = loadReencryptState(v.metadata);
    await checkMovedCiphertext(v.metadata, st, data, hdr.name);
    keys = await unlockForState(v, hdr, st, { passphrase });
    const table = segmentTable(v.metadata, { device, deviceSize: data.size, keySize: (d) => keys!.get(d)!.length, uuid: v.uuid, flags: configFlags(v.metadata, o.allowDiscards) });
    if (!o.dryRun) {
      const unlink = loadLogonKeys(v.uuid, keys, o.keyring ?? tableKeyring());
      try {
        dmCreate(name, table, { uuid: dmUuid, readOnly: o.readOnly }, { keyType: "logon" });
      } finally {
        unlink();
      }
    }
    const slots = [st.digestOld, st.digestNew].filter((d) => d >= 0).flatMap((d) => v.metadata.digests[String(d)]!.keyslots.map(Number));
    return { table, recovered, keyslots: [...new Set(slots)].sort((a, b) => a - b) };
  } finally {
    if (keys) for (const k of keys.values()) wipe(k);
    await lock?.release();
    await data.close().catch(() => {});
    if (hdr !== data) await hdr.close().catch(() => {});
  }
}
