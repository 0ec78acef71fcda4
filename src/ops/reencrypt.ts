// Offline LUKS2 re-encryption, on-disk compatible with cryptsetup 2.6.1 `reencrypt --force-offline-reencrypt`
// (lib/luks2/luks2_reencrypt.c): key rotation, encrypt/decrypt with a detached header, resilience checksum/journal/none,
// --init-only, --resume-only, crash recovery of an interrupted hotzone (what `cryptsetup repair` does).
//
// Write order per hotzone (cryptsetup reencrypt_step): read old data → store its checksums (+ our parity) / a journal
// copy in the reencrypt keyslot area, flush → commit metadata marking the hotzone in-reencryption → write the
// re-encrypted data (with the parity: chunk by chunk, each flushed), flush → commit metadata with the hotzone done
// (checksum mode: in the next hotzone's hot commit, see reencrypt-io.ts). A power cut at any write leaves a header (old
// or new copy) whose state is recoverable: before the hot commit the area is unused; after it the area describes the
// old data, or (checksum mode, once the hotzone is flushed) the next hotzone's, which no new block matches.
import * as crypto from "node:crypto";
import { existsSync } from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import type { BlockDevice } from "../blockdev/types.js";
import { FileBlockDevice } from "../blockdev/file.js";
import { alignedBuffer } from "../blockdev/aligned.js";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { createSectorCipher, type SectorCipher } from "../dmcrypt/sector-cipher.js";
import { parseCipherSpec } from "../dmcrypt/cipher-spec.js";
import { Luks2Volume } from "../luks2/volume.js";
import { probeLuksVersion, encodeHeaderCopies } from "../luks2/header.js";
import { afSectorsBytes } from "../luks2/af.js";
import { openKeyslotCandidate, buildKeyslot, wipeArea, findAreaGap } from "../luks2/keyslot.js";
import { LUKS2_DEFAULT_HDR_SIZE } from "../luks2/constants.js";
import { verifyDigest, createDigest } from "../luks2/digest.js";
import { newVolumeKey, planFormat } from "../luks2/format.js";
import { opensslHash, type PbkdfOptions } from "../luks2/kdf.js";
import { chooseEncryptionSectorSize, FS_PROBE_BYTES, probeFilesystem } from "../fs/probe.js";
import type { Json, Luks2Metadata } from "../luks2/metadata.js";
import { dataSegments, segmentJson, type Segment } from "../luks2/segment.js";
import { assignReencryptDigest, reencryptKeyslotId, reencryptRequirementVersion, verifyReencryptDigest } from "../luks2/reencrypt-digest.js";
import { resilienceSwitch } from "../luks2/reencrypt-resilience.js";
import { HEAD_MOVE_RECORD_SIZE, HEAD_MOVE_RECORD_SLOTS, moveHead, readHeadMarkState } from "./reencrypt-headmove.js";
import { copyLengthOf, parityLayout, parityTagMatches, PARITY_TAG_SIZE, hashBlock, recrypt, runHotzones, sourceOf, xorInto, type HotzoneEngine } from "./reencrypt-io.js";
import { lockReencryption, type HeldLock } from "../dm/lock.js";
import { backupSize } from "../luks2/backup.js";
import { exportDecryptHeader, isExportOf } from "./reencrypt-export.js";
import { checkDecryptShiftDevice, decryptShiftDataSize, decryptShiftInitSegments, isDecryptShift } from "../luks2/reencrypt-shift-decrypt.js";
import { mark } from "../util/timing.js";
export { parityLayout };
import {
  REQUIREMENT_V2,
  REQUIREMENT_V3,
  finalMetadata,
  nextHotzone,
  shiftSource,
  hotMetadata,
  checkSegmentsOnDevice,
  loadReencryptState,
  maxAreaGap,
  postMetadata,
  reencryptKeyslotJson,
  reencryptStatus,
  type ReencryptState,
  type ResilienceType,
} from "../luks2/reencrypt-metadata.js";

export interface ReencryptOptions {
  mode?: "reencrypt" | "encrypt" | "decrypt";
  /** Unlocks the volume (reencrypt/decrypt); the new keyslot's passphrase (encrypt). */
  passphrase?: Uint8Array;
  /** Only this keyslot is unlocked and carried over to the new key (cryptsetup --key-slot). */
  keyslot?: number;
  /** Passphrases of other keyslots (e.g. obtained through their tokens), so they are re-created for the new key. */
  keyslotPassphrases?: Map<number, Uint8Array>;
  header?: BlockDevice;
  /**
   * --decrypt of a device whose LUKS2 header is on it (cryptsetup `--decrypt --header NEW_FILE`): the header is
   * exported to this new file (0600), the data is decrypted and moved to the device's start (a data shift), and the
   * run goes on with the file as its header. The file must not exist.
   */
  exportHeader?: string;
  /** datashift-checksum / datashift-journal name the moved segment's protection of a decryption with a data shift. */
  resilience?: ResilienceType | "datashift-checksum" | "datashift-journal";
  hash?: string;
  hotzoneSize?: number;
  reduceDeviceSize?: number;
  cipher?: string;
  keySize?: number;
  sectorSize?: number;
  pbkdf?: PbkdfOptions;
  initOnly?: boolean;
  resumeOnly?: boolean;
  /** --encrypt: the new header's label, subsystem, UUID (cryptsetup --label, --subsystem, --uuid). */
  label?: string;
  subsystem?: string;
  uuid?: string;
  /** --encrypt: the new header's metadata copy and keyslots area sizes (cryptsetup --luks2-metadata-size/--luks2-keyslots-size). */
  metadataSize?: number;
  keyslotsSize?: number;
  /**
   * --encrypt: put the plain file system's label (ext2/3/4, xfs, btrfs, vfat) on the LUKS2 header, so the partition
   * stays findable by LABEL= (LmP's `cryptsetup config --label otaroot` after its reencrypt --encrypt). Its UUID is
   * not copied: the opened mapping still shows it, and a second device with the same UUID would confuse blkid/udev.
   */
  labelFromFs?: boolean;
  /**
   * Checksum resilience only: also keep, after the checksums cryptsetup reads, the parity of the old hotzone's chunks
   * and write the chunks one flush apart, so a write torn inside a block is recoverable too (default true; false =
   * cryptsetup's I/O, one block per torn write at risk).
   */
  tornWriteSafe?: boolean;
  onProgress?: (p: { done: number; total: number }) => void;
  signal?: AbortSignal;
  /**
   * Online re-encryption (reencrypt-online.ts) maps the device around each hotzone: `before` gets the metadata about
   * to be committed with the hotzone in-reencryption (and the unlocked keys, by digest), before its data is read;
   * `after` runs once the hotzone is committed as done.
   */
  hotzoneHooks?: { before(hot: Luks2Metadata, keys: Map<number, Buffer>): Promise<void> | void; after(post: Luks2Metadata): Promise<void> | void };
  /** The caller already holds cryptsetup's re-encryption lock for this device (online re-encryption takes it itself). */
  reencryptionLockHeld?: boolean;
}

export interface ReencryptResult {
  mode: "reencrypt" | "encrypt" | "decrypt";
  /** finished = the device is in its final state; initialized = metadata only (--init-only). */
  state: "finished" | "initialized";
  /** A crashed hotzone was recovered first. */
  recovered: boolean;
  /** Bytes of data (re-)encrypted in this run. */
  bytes: number;
  /** Keyslots that hold the new volume key (reencrypt/encrypt). */
  keyslots: number[];
}

const MiB = 1 << 20;
/**
 * Our default hotzone: large sequential I/O inside the 128 MiB RSS budget. The loop holds two buffers (one read ahead),
 * checksum mode their parity too (~2.25× this beside Node's ~65 MiB: 118 MiB peak; 32 MiB would be 135). Resilience
 * none too (cryptsetup's LUKS2_DEFAULT_NONE_REENCRYPTION_LENGTH is 8 MiB).
 */
const DEFAULT_HOTZONE = 24 * MiB;
/** The buffer a data shift's hotzone (the shift itself) is copied through. */
const SHIFT_BUFFER = 16 * MiB;

/** Encryption sector size for --encrypt: never larger than the file system's block size (the kernel could not mount it). */
export async function defaultEncryptSectorSize(dev: BlockDevice, sectorSize?: number, headAt = 0): Promise<number> {
  const head = Buffer.alloc(Math.min(FS_PROBE_BYTES, dev.size - headAt));
  await dev.read(head, headAt); // the head, or its copy (a head move that was cut: the mark is over the head's start)
  const fs = probeFilesystem(head);
  // Nothing recognised: 512 as cryptsetup 2.6.1's reencrypt --encrypt picks (safe under any file system).
  if (!fs && sectorSize === undefined) return 512;
  return chooseEncryptionSectorSize({ fsBlockSize: fs?.blockSize, fsType: fs?.type, requested: sectorSize });
}

const usage = (msg: string, hint?: string) => new TrustvolError("EUSAGE", msg, hint);

/** The LUKS2 label for --encrypt: --label, or the plain file system's own label with --label-from-fs. */
async function encryptLabel(dev: BlockDevice, opts: ReencryptOptions, headAt = 0): Promise<string | undefined> {
  if (!opts.labelFromFs) return opts.label;
  if (opts.label !== undefined) throw usage("--label and --label-from-fs exclude each other");
  const head = Buffer.alloc(Math.min(FS_PROBE_BYTES, dev.size - headAt));
  await dev.read(head, headAt); // the head, or its copy (a head move that was cut)
  const fs = probeFilesystem(head);
  if (!fs?.label) throw usage(`--label-from-fs: ${dev.name} holds ${fs ? `a ${fs.type} file system without a label` : "no file system trustvol recognises"}`, "give --label LABEL, or drop --label-from-fs");
  return fs.label;
}

/**
 * Re-encrypt, encrypt or decrypt `dev` in place (resumable). Holds cryptsetup's re-encryption lock
 * (/run/cryptsetup/LN_LUKS2-reencryption-<uuid>) from before the first write to the end, as cryptsetup does offline
 * too, so a cryptsetup or trustvol run on the same device (online or offline) is refused with EBUSY, nothing written.
 */
export async function reencrypt(dev: BlockDevice, opts: ReencryptOptions = {}): Promise<ReencryptResult> {
  let lock: HeldLock | undefined;
  try {
    return await reencryptLocked(dev, opts, async (uuid) => {
      if (opts.reencryptionLockHeld || lock) return false;
      lock = await lockReencryption(uuid, { optional: true });
      return true;
    });
  } finally {
    await lock?.release();
  }
}

/** `takeLock` takes cryptsetup's lock for this UUID; true when it was taken now (the header is then read again). */
async function reencryptLocked(dev: BlockDevice, opts: ReencryptOptions, takeLock: (uuid: string) => Promise<boolean>): Promise<ReencryptResult> {
  mark("reencrypt: start");
  const mode = opts.mode ?? "reencrypt";
  let hdrDev = opts.header ?? dev;
  if (opts.initOnly && opts.resumeOnly) throw usage("--init-only and --resume-only exclude each other");
  if (mode !== "encrypt" && (opts.label !== undefined || opts.subsystem !== undefined || opts.uuid !== undefined || opts.labelFromFs)) throw usage("--label, --subsystem, --uuid and --label-from-fs are for --encrypt", "set them on an existing volume with `cryptsetup config`");
  if (opts.resilience && !["checksum", "journal", "none", "datashift", "datashift-checksum", "datashift-journal"].includes(opts.resilience)) throw usage(`unknown resilience mode "${opts.resilience}"`, "use checksum, journal or none");
  // (a resume's --resilience is judged against the run on disk: resilienceSwitch)
  if (opts.resilience?.startsWith("datashift-") && mode !== "decrypt" && !opts.resumeOnly) throw usage(`resilience ${opts.resilience} is for decrypting a device that holds its header (\`--decrypt --header NEW_FILE\`)`, "use checksum, journal or none");
  if (opts.resilience === "datashift" && !(mode === "encrypt" && !opts.header) && !opts.resumeOnly) throw usage("resilience datashift is for encrypting in place with --reduce-device-size", "use checksum, journal or none");
  // (cryptsetup 2.6.1 also moves a LUKS2 volume's data offset in a rotation with it; trustvol does not: refused, not
  // ignored. A resume takes the shift from the header.)
  if (opts.reduceDeviceSize !== undefined && mode !== "encrypt" && !opts.resumeOnly)
    throw usage(`--reduce-device-size is for an in-place --encrypt, not for ${mode === "decrypt" ? "--decrypt" : "a key rotation"}`, "leave it out; to move a LUKS2 volume's data offset, use `cryptsetup reencrypt --reduce-device-size`");
  if (opts.exportHeader !== undefined && (mode !== "decrypt" || opts.header || opts.resumeOnly)) throw usage("exporting the header is for starting --decrypt of a device that holds its header (without --header or --resume-only)");
  refuseHeaderSizes(opts);
  if (opts.uuid !== undefined && !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(opts.uuid)) throw usage(`--uuid ${JSON.stringify(opts.uuid.slice(0, 40))} is not a UUID`, "give one in the form 123e4567-e89b-12d3-a456-426614174000, or leave it out for a random one");
  if (opts.hash) opensslHash(opts.hash);
  if (opts.sectorSize !== undefined && ![512, 1024, 2048, 4096].includes(opts.sectorSize)) throw usage(`sector size ${opts.sectorSize} is not one of 512, 1024, 2048, 4096`);
  if (opts.keySize !== undefined && opts.keySize % 8) throw usage(`key size ${opts.keySize} is not a whole number of bytes`, "give the key size in bits, a multiple of 8 (e.g. 256 or 512)");
  if (opts.hotzoneSize !== undefined && (!Number.isSafeInteger(opts.hotzoneSize) || opts.hotzoneSize < 4096)) throw usage(`hotzone size ${opts.hotzoneSize} is too small`, "give at least 4096 bytes (e.g. 4M)");
  // cryptsetup 2.6.1 aligns hotzones to 4096 bytes whatever the sector size ("multiple of calculated zone alignment")
  if (opts.hotzoneSize !== undefined && opts.hotzoneSize % 4096) throw usage(`hotzone size ${opts.hotzoneSize} is not a multiple of 4096 bytes`, "give a multiple of 4096 (e.g. 4M)");
  // (cryptsetup: "Encryption without detached header (--header) is not possible without data device size reduction")
  await refuseHeaderIsDevice(dev, opts.header, mode === "encrypt" ? "give --header a new file, or encrypt in place with --reduce-device-size" : "give the volume's header file, or leave out --header when the header is on the device");
  const version = await reencryptLuksVersion(hdrDev);
  if (version === 1) throw new TrustvolError("EUNSUPPORTED", `${hdrDev.name} is LUKS1`, "convert it to LUKS2 first (`cryptsetup convert --type luks2`)");

  let volume: Luks2Volume;
  let recovered = false;
  /** the reencrypt keyslot's new area when this resume changes the resilience (written after any crash recovery) */
  let switchArea: Record<string, Json> | null = null;
  let initKeys: Map<number, Buffer> | undefined;
  let exported: FileBlockDevice | undefined;
  let headZeroed = false;
  try {
    if (opts.exportHeader !== undefined) {
      ({ volume, hdr: exported, keys: initKeys } = await initDecryptExport(dev, opts.exportHeader, opts, takeLock));
      hdrDev = exported;
    } else if (version === null) {
      if (mode === "decrypt" && hdrDev !== dev && (await isCutExport(dev, hdrDev)))
        throw moveAsideAndRerun(hdrDev.name, `holds no LUKS2 header, only the start of ${dev.name}'s own (a \`--decrypt --header\` cut in its export leaves it so)`, dev.name);
      if (mode !== "encrypt")
        throw new TrustvolError("ENOTLUKS", `${hdrDev.name} is not a LUKS device`, mode === "decrypt" && hdrDev !== dev && !opts.resumeOnly ? `give the volume's detached header; to decrypt a device that holds its header, give --header a file that does not exist yet (${hdrDev.name} does)` : opts.resumeOnly || mode === "decrypt" || opts.header ? "give the header file of its re-encryption with --header (a decryption in place keeps it in the file it exported)" : "use --encrypt to encrypt a plain device, or give its detached header with --header");
      if (opts.resumeOnly) throw usage(`${dev.name} is not in re-encryption`, "nothing to resume");
      // (cryptsetup: "Device is already LUKS device"; encrypting it would bury its header and data under a new key)
      if (hdrDev !== dev) {
        const onDev = await probeLuksVersion(dev);
        if (onDev !== null) throw usage(`${dev.name} is already a LUKS${onDev} device`, onDev === 1 ? "convert it to LUKS2 (`cryptsetup convert --type luks2`) to rotate its key; to encrypt it anew, wipe its header first" : "rotate its key with `trustvol reencrypt` (no --encrypt); to encrypt it anew, wipe its header first");
      }
      // the UUID is chosen here so that the lock is held before the first write (lower case: the header's, whose
      // lock name every other reader of the header takes)
      const uuid = (opts.uuid ?? crypto.randomUUID()).toLowerCase();
      await takeLock(uuid);
      ({ volume, keys: initKeys } = await initEncrypt(dev, hdrDev, { ...opts, uuid }));
      headZeroed = true; // (init zeroed the old head and flushed: the finish has no duplicates of it to look for)
    } else {
      volume = await Luks2Volume.open(hdrDev).catch(async (e: unknown) => {
        if (e instanceof TrustvolError && mode === "encrypt" && hdrDev !== dev && (await probeLuksVersion(dev)) === null && !(await holdsKeyslotJson(hdrDev)))
          throw moveAsideAndRerun(hdrDev.name, "holds no valid LUKS2 header and no keyslot (a `--encrypt --header` cut before its first commit leaves it so)", dev.name);
        throw e;
      });
      if (await takeLock(volume.uuid)) volume = await Luks2Volume.open(hdrDev); // re-read under the lock: another run may have just finished a step
      volume.checkRequirements("write");
      if (hdrDev !== dev) await checkDetachedDataDevice(volume.metadata, dev, hdrDev.name);
      else checkSegmentsPastMetadata(volume);
      const status = reencryptStatus(volume.metadata);
      if (status === "none") {
        refuseIntegrity(volume.metadata, hdrDev.name);
        // (a header file of an in-place decryption cut before its first commit: the same command without --resume-only goes on)
        const exportCut = mode === "decrypt" && hdrDev !== dev && dataSegments(volume.metadata).some((sg) => sg.type === "crypt" && sg.offset > 0);
        if (opts.resumeOnly) throw usage(`${dev.name} is not in re-encryption`, exportCut ? "if an in-place decryption exported this header file and was cut, run the same command without --resume-only" : "nothing to resume");
        if (mode === "encrypt" && hdrDev !== dev && (await probeLuksVersion(dev)) === null) {
          // (cryptsetup's detached --encrypt commits a header with no keyslot before its first: no key, nothing to lose)
          if (!Object.keys(volume.metadata.keyslots).length)
            throw moveAsideAndRerun(hdrDev.name, "is a LUKS2 header with no keyslot (a `--encrypt --header` cut before its keyslot leaves it so)", dev.name);
          // (…and then the volume with its keyslot, before the re-encryption metadata: a header over data never encrypted)
          const plainFs = await plainFilesystem(volume, dev);
          if (plainFs) throw moveAsideAndRerun(hdrDev.name, `is a LUKS2 volume's header and ${dev.name} holds a plain ${plainFs} file system (a \`--encrypt --header\` cut before its re-encryption metadata leaves it so, or the header belongs to another device)`, dev.name);
        }
        if (mode === "encrypt") throw usage(`${hdrDev.name} is already a LUKS2 volume`, "use reencrypt (key rotation) instead of --encrypt");
        if (mode === "decrypt") initKeys = await initDecrypt(volume, dev, hdrDev, opts);
        else initKeys = await initRotation(volume, dev, opts);
      } else {
        if (opts.initOnly) throw new TrustvolError("EBUSY", "LUKS2 re-encryption is already initialized in the metadata", "resume it with --resume-only");
        const started = loadReencryptState(volume.metadata);
        // (cryptsetup: "Device is not in LUKS2 decryption. Conflicting option --decrypt.")
        if (mode !== "reencrypt" && started.mode !== mode) throw usage(`${hdrDev.name} is in ${started.mode === "reencrypt" ? "key rotation" : `${started.mode}ion`}, not ${mode}ion: --${mode} conflicts with it`, "resume it without --encrypt/--decrypt (trustvol reencrypt --resume-only)");
        // (an --encrypt run going on with the header it wrote: other sizes than that header's would be ignored)
        if ((opts.metadataSize !== undefined && opts.metadataSize !== volume.header.hdrSize) || (opts.keyslotsSize !== undefined && String(opts.keyslotsSize) !== String(volume.metadata.config.keyslots_size)))
          throw usage(`${hdrDev.name} is already in re-encryption with ${volume.header.hdrSize}-byte metadata copies and a ${volume.metadata.config.keyslots_size}-byte keyslots area`, "leave out --luks2-metadata-size/--luks2-keyslots-size to go on with it");
        switchArea = resilienceSwitch(started.keyslot, { resilience: opts.resilience, hash: opts.hash }, {
          block: checksumBlock(dataAreaSize(started, dev.size), [started.oldSeg.sectorSize, started.newSeg.sectorSize]),
          hashLen: (alg) => createHash(opensslHash(alg)).digest().length,
          movedSize: started.movedSeg?.size ?? undefined,
        });
      }
    }
    const st = loadReencryptState(volume.metadata);
    if (opts.initOnly) return { mode: st.mode, state: "initialized", recovered, bytes: 0, keyslots: newKeyslots(volume.metadata, st) };
    if (dataAllDone(volume.metadata, st, dev)) {
      const keyslots = newKeyslots(finalMetadata(volume.metadata, st).metadata, st);
      await finishMetadataOnly(volume, dev, hdrDev, st, opts);
      return { mode: st.mode, state: "finished", recovered, bytes: 0, keyslots };
    }

    const keys = initKeys ?? (await unlockForState(volume, hdrDev, st, opts));
    initKeys = undefined;
    mark("keys unlocked");
    try {
      const run = await runEngine(volume, dev, hdrDev, keys, opts, switchArea, headZeroed);
      recovered = run.recovered;
      return { mode: st.mode, state: "finished", recovered, bytes: run.bytes, keyslots: newKeyslots(volume.metadata, st) };
    } finally {
      for (const k of keys.values()) wipe(k);
    }
  } finally {
    if (initKeys) for (const k of initKeys.values()) wipe(k);
    await exported?.close();
  }
}

/** The old digest's passphrase keyslots still in the metadata. */
function oldKeyslotsLeft(m: Luks2Metadata, st: ReencryptState): number[] {
  if (st.digestOld < 0) return [];
  return (m.digests[String(st.digestOld)]?.keyslots ?? []).filter((k) => m.keyslots[k]?.type === "luks2").map(Number).sort((a, b) => a - b);
}

/**
 * A decryption whose data is all done with old keyslots still listed: where cryptsetup stops when it is killed in its
 * finalisation (crypt_keyslot_destroy wipes a keyslot's area, then commits the JSON without it), or a run stopped
 * before its last commit. Such a keyslot may open with no passphrase at all; `repair` can drop it on confirmation.
 */
export function strandedDecrypt(m: Luks2Metadata, dev: BlockDevice, st?: ReencryptState): boolean {
  if (reencryptStatus(m) !== "clean") return false;
  st ??= loadReencryptState(m);
  return st.mode === "decrypt" && oldKeyslotsLeft(m, st).length > 0 && dataAllDone(m, st, dev);
}

/** A stranded decryption (strandedDecrypt) whose old keyslots the passphrase does not open. */
function strandedRefusal(m: Luks2Metadata, st: ReencryptState): TrustvolError {
  return new TrustvolError("EBADPASS", `the passphrase opens no old keyslot (${oldKeyslotsLeft(m, st).join(", ")}) of this decryption, whose data is all done`, "check the passphrase; if cryptsetup was killed while finishing it (it wipes a keyslot's area before it drops the keyslot), no passphrase opens that keyslot any more: `trustvol repair --drop-old-keyslots` drops them and finishes");
}

/**
 * Recover a crashed hotzone (cryptsetup `repair` of a device in re-encryption); the run stays resumable. A decryption
 * stranded in its finalisation (strandedDecrypt) whose old keyslots the passphrase does not open is finished here,
 * dropping them, once `confirmDrop` (told the keyslots) returns; it throws to refuse. Without it: EBADPASS, unchanged.
 */
export async function repairReencryption(dev: BlockDevice, opts: { passphrase?: Uint8Array; keyslot?: number; header?: BlockDevice; keyslotPassphrases?: Map<number, Uint8Array>; confirmDrop?: (keyslots: number[]) => Promise<void>; reencryptionLockHeld?: boolean } = {}): Promise<{ recovered: boolean; finished?: boolean }> {
  await refuseHeaderIsDevice(dev, opts.header, "give the volume's header file, or leave out --header when the header is on the device");
  const hdrDev = opts.header ?? dev;
  let volume = await Luks2Volume.open(hdrDev);
  volume.checkRequirements("write");
  // Under cryptsetup's re-encryption lock (LUKS2_reencrypt_locked_recovery_by_passphrase): a running re-encryption shows
  // "crash" during every hotzone, and recovering that hotzone under it would replay a stale journal or checksums.
  if (!strandedDecrypt(volume.metadata, dev) && reencryptStatus(volume.metadata) !== "crash") return { recovered: false };
  const lock = opts.reencryptionLockHeld ? undefined : await lockReencryption(volume.uuid, { optional: true });
  try {
    volume = await Luks2Volume.open(hdrDev); // re-read under the lock
    volume.checkRequirements("write");
    if (hdrDev !== dev) await checkDetachedDataDevice(volume.metadata, dev, hdrDev.name);
    else checkSegmentsPastMetadata(volume);
    if (strandedDecrypt(volume.metadata, dev)) {
      const st = loadReencryptState(volume.metadata);
      try {
        const keys = await unlockForState(volume, hdrDev, st, opts);
        for (const k of keys.values()) wipe(k);
        return { recovered: false }; // the passphrase opens it: --resume-only finishes it the ordinary way
      } catch (e) {
        if (!(e instanceof TrustvolError && e.code === "EBADPASS")) throw e;
        if (!opts.confirmDrop) throw strandedRefusal(volume.metadata, st);
      }
      await opts.confirmDrop(oldKeyslotsLeft(volume.metadata, st));
      await finishMetadataOnly(volume, dev, hdrDev, st, {}, true);
      return { recovered: false, finished: true };
    }
    if (reencryptStatus(volume.metadata) !== "crash") return { recovered: false };
    const st = loadReencryptState(volume.metadata);
    const keys = await unlockForState(volume, hdrDev, st, opts);
    try {
      const eng = await prepare(volume, dev, hdrDev, keys, {});
      try {
        await recoverHotzone(eng);
      } finally {
        eng.dispose();
      }
      return { recovered: true };
    } finally {
      for (const k of keys.values()) wipe(k);
    }
  } finally {
    await lock?.release();
  }
}

/** A detached `header` that is the device itself (another path, a symlink, a loop device over it): refused. */
export async function refuseHeaderIsDevice(dev: BlockDevice, header: BlockDevice | undefined, hint: string): Promise<void> {
  if (header && header !== dev && dev instanceof FileBlockDevice && (await dev.sameStorage(header)))
    throw usage(`--header ${header.name} is ${dev.name} itself: a detached header is kept in another file`, hint);
}

/**
 * Run `fn` (a header repair, say) under the re-encryption lock of the LUKS2 volume whose header is on `hdrDev`: a running
 * re-encryption commits one header copy after the other, and a repair in between would rewrite the copy it is about to
 * write from the stale one. Busy → EBUSY, nothing done; no writable /run → no lock, as for the run itself.
 */
export async function withReencryptionLock<T>(hdrDev: BlockDevice, fn: () => Promise<T>): Promise<T> {
  const lock = await lockReencryption((await Luks2Volume.open(hdrDev)).uuid, { optional: true });
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

function newKeyslots(m: Luks2Metadata, st: ReencryptState): number[] {
  if (st.digestNew < 0) return [];
  return (m.digests[String(st.digestNew)]?.keyslots ?? []).map(Number).sort((a, b) => a - b);
}

/**
 * Every data segment already holds its final form: a run stopped, or cryptsetup was killed, in its finalisation
 * (cryptsetup wipes the old keyslots one commit at a time before it drops the reencrypt keyslot). Only metadata is left.
 */
/** Bytes of data the segments map on a device of devSize bytes (a decryption with a data shift ends one shift short). */
function dataAreaSize(st: ReencryptState, devSize: number): number {
  return isDecryptShift(st) ? decryptShiftDataSize(st, devSize) : devSize - st.newSeg.offset;
}

function dataAllDone(m: Luks2Metadata, st: ReencryptState, dev: BlockDevice): boolean {
  if (st.status !== "clean") return false;
  try {
    return nextHotzone(m, st, dataAreaSize(st, dev.size), Number.MAX_SAFE_INTEGER) === null;
  } catch {
    return false; // segments the engine would refuse: let the normal path report them
  }
}

/**
 * Finish a re-encryption whose data is all done: no data is (re-)encrypted, so no old key is needed. The key of the
 * final data segment (encrypt/reencrypt) must unlock and verify against its digest; the old key is used, when a
 * keyslot of it still opens, to verify the re-encryption digest too. Decrypt's final segment is plain (no key vouches
 * for it): there the old key is required while any old keyslot is left, as on the normal path. A power cut before the
 * final commit leaves the same state (run it again); after it, the volume is finished.
 */
async function finishMetadataOnly(v: Luks2Volume, dev: BlockDevice, hdrDev: BlockDevice, st: ReencryptState, opts: ReencryptOptions, dropUnopened = false): Promise<void> {
  const m = v.metadata;
  const optional = new Set<number>();
  // decrypt with every old keyslot already wiped: no key is left to check or to lose, and no data is written.
  if (st.digestOld >= 0 && st.digestOld !== st.digestNew && (st.digestNew >= 0 || !oldKeyslotsLeft(m, st).length || dropUnopened)) optional.add(st.digestOld);
  let keys: Map<number, Buffer>;
  try {
    keys = await unlockForState(v, hdrDev, st, opts, optional);
  } catch (e) {
    if (e instanceof TrustvolError && e.code === "EBADPASS" && strandedDecrypt(m, dev, st)) throw strandedRefusal(m, st);
    throw e;
  }
  try {
    const buf = st.movedSeg ? Buffer.allocUnsafeSlow(Math.min(Math.max(st.movedSeg.size!, MiB), 8 * MiB)) : Buffer.alloc(0);
    // Of the moved copy, only the sectors that are the head now encrypted in place (or a torn wipe of one) are wiped: a
    // header can claim "done" over a device never shifted, where the copy is the head's only copy, and other bytes
    // are there after cryptsetup's own finish (its random wipe, maybe torn) or where a shift longer than the data
    // wrote the last hotzone over part of the copy.
    if (st.movedSeg && st.mode === "encrypt") {
      if (hdrDev === dev) await zeroHeadDuplicates(dev, st, finalMetadata(m, st).metadata, v.header.hdrSize);
      await wipeMovedHead(dev, st, keys.get(st.digestNew), buf);
    }
    // a decryption's stale tail needs the old key (with every old keyslot gone, cryptsetup had wiped it already)
    const old = isDecryptShift(st) && keys.has(st.digestOld) ? createSectorCipher({ cipher: st.oldSeg.encryption!, key: keys.get(st.digestOld)!, sectorSize: st.oldSeg.sectorSize, ivOffset: st.oldSeg.ivTweak }) : null;
    try {
      await finishRun(v, dev, hdrDev, st, buf, { wipeMoved: false, tailCipher: old });
    } finally {
      old?.dispose();
    }
  } finally {
    for (const k of keys.values()) wipe(k);
  }
}

/**
 * A decryption with a data shift leaves the device's last shift [T, T + shift) holding stale ciphertext (cryptsetup
 * wipes it with random: reencrypt_wipe_unused_device_area) and, when the data is shorter than the shift, the old
 * header's keyslot material in [T, shift). Zeroed here per old-key sector, and only where it is provably stale: from
 * the shift on, where it is the old key's encryption of the plaintext now one shift lower; below it, where it equals
 * the header file's bytes at the same offset (the file is the device's head as exported: the same keyslot areas),
 * and that only on a device shown to be the one decrypted: a whole sector of [shift, end) is that stale ciphertext (a
 * header forged to say "done", or the file's run resumed on a backup of the device, keeps it). A sector a cut tore
 * (512-byte pieces zeroed or not, a piece torn after leading zeros) counts as stale, so the next run finishes the
 * wipe; [T, shift) is wiped and flushed first, while its evidence is still there.
 */
async function wipeStaleTail(dev: BlockDevice, hdrDev: BlockDevice, st: ReencryptState, c: SectorCipher, buf: Buffer): Promise<void> {
  const shift = st.keyslot.area.shiftSize!, ss = c.sectorSize, T = dev.size - shift;
  if (T < 0 || T % ss || shift % ss) return;
  const step = Math.max(ss, buf.length - (buf.length % ss));
  const tail = Buffer.allocUnsafeSlow(step), expect = Buffer.allocUnsafeSlow(step), zeros = Buffer.alloc(step);
  /** Over [d, d+n) of the tail: for each sector, stale (true, "exact" when whole), zero (null) or anything else (false). */
  const judge = async (d: number, n: number): Promise<(boolean | null | "exact")[]> => {
    const t = tail.subarray(0, n);
    await dev.read(t, d);
    // [d, below): the old header's area, compared with the header file; [below, d+n): old ciphertext, re-made
    const below = Math.min(d + n, Math.max(d, shift));
    const inFile = Math.min(below, Math.max(d, hdrDev !== dev ? hdrDev.size - (hdrDev.size % ss) : d));
    if (inFile > d) await hdrDev.read(expect.subarray(0, inFile - d), d);
    if (below < d + n) {
      const e = expect.subarray(below - d, n);
      await dev.read(e, below - shift);
      c.encrypt(e, (below - shift) / ss);
    }
    const out: (boolean | null | "exact")[] = [];
    for (let o = 0; o < n; o += ss) {
      const [a, b] = [t.subarray(o, o + ss), expect.subarray(o, o + ss)];
      out.push(!(d + o < inFile || d + o >= below) ? false : a.equals(b) ? "exact" : staleOrTorn(a, b));
    }
    return out;
  };
  try {
    // [T, shift) only on evidence that this device is the one decrypted: a whole sector of [shift, end) is the old
    // key's encryption of the plaintext one shift lower (the rest may have been written since, or zeroed by a cut run)
    let headerArea = false;
    for (let d = shift; T < shift && d < dev.size && !headerArea; d += step) headerArea = (await judge(d, Math.min(step, dev.size - d))).includes("exact");
    // the header area first and flushed: the ciphertext it is judged by stays until it is gone
    for (const [from, to] of [[T, headerArea ? Math.min(shift, dev.size) : T], [Math.max(T, shift), dev.size]] as const) {
      for (let d = from; d < to; d += step) {
        const n = Math.min(step, to - d);
        const v = await judge(d, n);
        await zeroWhere(dev, d, n, ss, (o) => v[o / ss] === true || v[o / ss] === "exact", zeros);
      }
      await dev.flush();
    }
  } finally {
    wipe(tail, expect);
  }
}

/**
 * The sector is stale, or a zeroing of it that a cut tore: each 512-byte piece zero or stale (a piece torn mid-write:
 * leading zeros, then the rest of the stale piece); true when some piece is not zero yet, null when all are.
 */
function staleOrTorn(sector: Buffer, stale: Buffer): boolean | null {
  let left = false;
  for (let o = 0; o < sector.length; o += 512) {
    const r = pieceLeft(sector, stale, o);
    if (r === false) return false;
    left ||= r === true;
  }
  return left ? true : null;
}

/** The 512-byte piece at o of `got`: null when all zeros, true when leading zeros (maybe none) then `want`'s rest. */
function pieceLeft(got: Buffer, want: Buffer, o: number): boolean | null {
  if (got.subarray(o, o + 512).equals(ZERO_SECTOR)) return null; // (one native compare: the common case, a finished wipe)
  let z = o;
  while (got[z] === 0) z++;
  return got.subarray(z, o + 512).equals(want.subarray(z, o + 512));
}
const ZERO_SECTOR = Buffer.alloc(512);

/** Zero each 512-byte sector of the moved copy that is leading zeros (a wipe, maybe torn) then the final segment's plaintext. */
async function wipeMovedHead(dev: BlockDevice, st: ReencryptState, key: Buffer | undefined, buf: Buffer): Promise<void> {
  const moved = st.movedSeg!, seg = st.newSeg, size = moved.size!;
  const block = Math.max(4096, seg.sectorSize);
  if (!key || seg.type !== "crypt") throw new TrustvolError("EINTERNAL", "the final segment's key is not unlocked", "this is a bug in trustvol");
  if (st.keyslot.area.shiftSize! % block || size % seg.sectorSize || size > st.keyslot.area.shiftSize! || moved.offset + size > dev.size || seg.offset + size > dev.size)
    throw new TrustvolError("ECORRUPT", `${dev.name}: the data shift's moved copy (${size} bytes at ${moved.offset}) does not match the shift of ${st.keyslot.area.shiftSize} bytes, the sector size ${seg.sectorSize} or the device's size`, "this header does not describe this device: restore the header backup, or finish with the tool that started it");
  const step = buf.length - (buf.length % block) || buf.length;
  const plain = Buffer.allocUnsafeSlow(step);
  const zeros = Buffer.alloc(step);
  const c = createSectorCipher({ cipher: seg.encryption!, key, sectorSize: seg.sectorSize, ivOffset: seg.ivTweak });
  try {
    for (let p = 0; p < size; p += step) {
      const n = Math.min(step, size - p);
      const copy = buf.subarray(0, n), want = plain.subarray(0, n);
      await dev.read(copy, moved.offset + p);
      await dev.read(want, seg.offset + p);
      await (c.decryptAsync ? c.decryptAsync(want, p / seg.sectorSize) : c.decrypt(want, p / seg.sectorSize));
      // sectors to zero: the head's plaintext, whole or behind a torn wipe's zeros (all zeros: done already)
      await zeroWhere(dev, moved.offset + p, n, 512, (o) => pieceLeft(copy, want, o) === true, zeros);
    }
    await dev.flush(); // before the commit that forgets the copy
  } finally {
    c.dispose();
    wipe(buf, plain);
  }
}

/** Zero, in runs, each `unit`-byte sector o of [at, at+n) for which pick(o) holds (o relative to at); zeros ≥ n bytes. */
async function zeroWhere(dev: BlockDevice, at: number, n: number, unit: number, pick: (o: number) => boolean, zeros: Buffer): Promise<void> {
  let run = -1;
  for (let o = 0; o <= n; o += unit) {
    const z = o < n && pick(o);
    if (z && run < 0) run = o;
    if (!z && run >= 0) {
      await dev.write(zeros.subarray(0, o - run), at + run);
      run = -1;
    }
  }
}

/**
 * The end of every run: the moved plaintext copy wiped (encryption with a data shift), the stale tail of a decryption
 * with a data shift wiped where it is stale (needs `tailCipher`, the old segment's), the final metadata committed, the
 * old keyslots' areas wiped.
 */
async function finishRun(v: Luks2Volume, dev: BlockDevice, hdrDev: BlockDevice, st: ReencryptState, buf: Buffer, o: { wipeMoved?: boolean; tailCipher?: SectorCipher | null; headZeroed?: boolean } = {}): Promise<void> {
  const fin = finalMetadata(v.metadata, st);
  // The moved copy of the device's head is plaintext: gone before the metadata forgets where it was (and first, while
  // it is there to compare with, what init's zeroing of the old head left of it if a cut stopped that).
  if (st.movedSeg && st.mode === "encrypt" && o.wipeMoved !== false) {
    if (hdrDev === dev && !o.headZeroed) await zeroHeadDuplicates(dev, st, fin.metadata, v.header.hdrSize);
    await wipeZeros(dev, st.movedSeg.offset, st.movedSeg.size!, buf);
  }
  if (isDecryptShift(st) && o.tailCipher) await wipeStaleTail(dev, hdrDev, st, o.tailCipher, buf.length ? buf : Buffer.allocUnsafeSlow(MiB));
  // The reencrypt keyslot's area zeroed (cryptsetup wipes it too): its journal or parity may hold plaintext. Before
  // the commit (no recovery reads the area once no hotzone is in re-encryption), so no cut leaves it behind; after it
  // only while the moved segment's hotzone, a decryption's last, is still protected by the area.
  const area = st.keyslot.area;
  const zero = () => zeroUnused(hdrDev, fin.metadata, [area.offset, area.offset + area.size], buf.length >= MiB ? buf.subarray(0, MiB) : Buffer.allocUnsafeSlow(MiB));
  const hot = dataSegments(v.metadata).some((sg) => sg.flags.includes("in-reencryption"));
  if (!hot) await zero();
  await v.commit(fin.metadata);
  for (const a of fin.wipeAreas) await wipeArea(hdrDev, a.offset, a.size);
  if (hot) await zero();
}

/**
 * An in-place encryption's old head left in the metadata area (init zeroes it; a cut may stop that): each 512-byte
 * sector of [2·hdrSize, data offset) outside the final keyslots' bytes that is the moved copy's sector at the same
 * offset (behind a torn zeroing's leading zeros) is zeroed, then flushed. Only such duplicates: a forged header never
 * makes it zero data that exists nowhere else.
 */
async function zeroHeadDuplicates(dev: BlockDevice, st: ReencryptState, m: Luks2Metadata, hdrSize: number): Promise<void> {
  const moved = st.movedSeg!;
  const end = Math.min(st.newSeg.offset, moved.size!, dev.size - moved.offset);
  const used = Object.values(m.keyslots).map((ks) => [Number(ks.area.offset), keyslotUsedEnd(ks)] as const);
  const step = MiB;
  const got = Buffer.allocUnsafeSlow(step), copy = Buffer.allocUnsafeSlow(step), zeros = Buffer.alloc(step);
  try {
    for (let p = 2 * hdrSize; p < end; p += step) {
      const n = Math.min(step, end - p);
      await dev.read(got.subarray(0, n), p);
      if (got.subarray(0, n).equals(zeros.subarray(0, n))) continue; // zeroed whole by init, as it mostly is
      await dev.read(copy.subarray(0, n), moved.offset + p);
      const free = (o: number) => !used.some(([a, b]) => p + o < b && a < p + o + 512);
      await zeroWhere(dev, p, n - (n % 512), 512, (o) => free(o) && pieceLeft(got, copy, o) === true, zeros);
    }
    await dev.flush();
  } finally {
    wipe(got, copy);
  }
}

/** Where a keyslot's bytes end: a luks2 keyslot's AF material (its area's tail is never read), else the whole area. */
function keyslotUsedEnd(ks: Luks2Metadata["keyslots"][string]): number {
  const off = Number(ks.area.offset), size = Number(ks.area.size);
  const stripes = ks.type === "luks2" ? ks.af?.stripes : undefined;
  return off + (typeof stripes === "number" && Number.isSafeInteger(ks.key_size * stripes) ? Math.min(size, afSectorsBytes(ks.key_size, stripes)) : size);
}

/** Zero [from, to) of the metadata device except the keyslot bytes `m` uses; flushed. */
async function zeroUnused(dev: BlockDevice, m: Luks2Metadata, range: [number, number], buf: Buffer): Promise<void> {
  await zeroOutside(dev, Object.values(m.keyslots).map((ks) => [Number(ks.area.offset), keyslotUsedEnd(ks)]), range, buf);
}

/** Zero [from, to) of the device except the `used` ranges; flushed. */
async function zeroOutside(dev: BlockDevice, usedRanges: [number, number][], [from, to]: [number, number], buf: Buffer): Promise<void> {
  const used = [...usedRanges].sort((a, b) => a[0] - b[0]);
  buf.fill(0);
  let pos = from;
  for (const [a, b] of [...used, [to, to] as const]) {
    for (const end = Math.min(a, to); pos < end; pos += Math.min(buf.length, end - pos)) await dev.write(buf.subarray(0, Math.min(buf.length, end - pos)), pos);
    pos = Math.max(pos, b);
  }
  await dev.flush();
}

/**
 * Unlock the keys the state needs (old and/or new digest) and verify the re-encryption digest against them. A digest
 * in `optional` may stay locked (no keyslot of it opens, or none is left); then the re-encryption digest, which binds
 * both keys, cannot be checked and only the keys that did unlock are verified (against their own digests).
 */
export async function unlockForState(v: Luks2Volume, hdrDev: BlockDevice, st: ReencryptState, opts: Pick<ReencryptOptions, "passphrase" | "keyslot" | "keyslotPassphrases">, optional: ReadonlySet<number> = new Set()): Promise<Map<number, Buffer>> {
  const m = v.metadata;
  const keys = new Map<number, Buffer>();
  const need = [st.digestOld, st.digestNew].filter((d, i, a) => d >= 0 && a.indexOf(d) === i);
  try {
    for (const d of need) {
      const slots = m.digests[String(d)]!.keyslots.filter((k) => m.keyslots[k]?.type === "luks2").sort((a, b) => Number(a) - Number(b));
      if (opts.keyslot !== undefined && slots.includes(String(opts.keyslot))) slots.unshift(...slots.splice(slots.indexOf(String(opts.keyslot)), 1));
      for (const s of slots) {
        // A new keyslot has the passphrase of the old one it replaces (a token's covers both): try those too.
        const viaToken = Object.values(m.tokens).filter((t) => t.keyslots.includes(s)).flatMap((t) => t.keyslots.map((k) => opts.keyslotPassphrases?.get(Number(k))));
        const cands = [opts.keyslotPassphrases?.get(Number(s)), ...viaToken, opts.passphrase].filter((p, i, a): p is Uint8Array => !!p && a.indexOf(p) === i);
        for (const pass of cands) {
          let cand: Buffer;
          try {
            cand = await openKeyslotCandidate(hdrDev, m.keyslots[s]!, pass);
          } catch (e) {
            if (optional.has(d) && e instanceof TrustvolError) break; // an unusable keyslot of a key we can do without
            throw e;
          }
          if (verifyDigest(m.digests[String(d)]!, cand)) {
            keys.set(d, cand);
            break;
          }
          wipe(cand);
        }
        if (keys.has(d)) break;
      }
      if (!keys.has(d)) {
        if (optional.has(d)) continue;
        if (!opts.passphrase && !opts.keyslotPassphrases?.size) throw new TrustvolError("ENOKEY", "a passphrase is needed to unlock the volume keys", "give --key-file or a token");
        throw new TrustvolError("EBADPASS", `no key available with this passphrase for the ${d === st.digestNew ? "new" : "old"} volume key`, "check the passphrase (or key file) and try again");
      }
    }
    if (need.every((d) => keys.has(d)) && !verifyReencryptDigest(m, keys)) throw new TrustvolError("ECORRUPT", "re-encryption metadata is invalid (its digest does not match the keys and metadata)", "the header was tampered with or damaged; restore a header backup");
    return keys;
  } catch (e) {
    for (const k of keys.values()) wipe(k);
    throw e;
  }
}

function checkDataSize(dataSize: number, sectorSizes: number[]): void {
  if (dataSize <= 0) throw new TrustvolError("ENOSPC", "the device has no data area to re-encrypt", "check the device and header");
  for (const ss of sectorSizes)
    if (dataSize % ss) throw usage(`data area of ${dataSize} bytes is not a multiple of the ${ss}-byte encryption sector size`, dataSize % 512 ? "the device's size is not a whole number of 512-byte sectors: resize the image to a multiple of 512 (4096 for 4K sectors)" : "choose a smaller --sector-size");
}

/** Checksum block: the largest of 4096..max sector size that divides the data area (cryptsetup aligns to 4096 on files). */
function checksumBlock(dataSize: number, ss: number[]): number {
  const min = Math.max(512, ...ss);
  for (let b = 4096; b >= min; b /= 2) if (dataSize % b === 0) return b;
  return min;
}

function reencryptAreaKeyslot(m: Luks2Metadata, hdrSize: number, mode: "reencrypt" | "encrypt" | "decrypt", opts: ReencryptOptions, dataSize: number, ss: number[]): void {
  const resilience = opts.resilience ?? "checksum";
  if (resilience === "datashift") throw new TrustvolError("EUNSUPPORTED", "resilience datashift needs --encrypt --reduce-device-size, which this engine does not do yet", "use cryptsetup for the data-shift encryption, or a detached --header");
  const gap = maxAreaGap(m, hdrSize);
  let id = 0;
  while (String(id) in m.keyslots) id++;
  if (id >= 32) throw new TrustvolError("ENOSPC", "all 32 keyslots are in use", "remove one first");
  m.keyslots[String(id)] = reencryptKeyslotJson({ mode, direction: mode === "decrypt" ? "backward" : "forward", // cryptsetup 2.6.1 decrypts backward
    offset: gap.offset, size: gap.size, resilience, hash: opts.hash ?? "sha256", sectorSize: checksumBlock(dataSize, ss) });
  const req = (m.config.requirements ??= {});
  req.mandatory = [...(req.mandatory ?? []).filter((r) => r !== REQUIREMENT_V2), REQUIREMENT_V2];
}

const digestIterations = (opts: ReencryptOptions) => (opts.pbkdf?.forceIterations ? 1000 : undefined);

/**
 * Key rotation: new volume key, new keyslots with the same passphrases (tokens follow), backup segments, requirement.
 * Returns the old and the new volume key by digest for the run (the caller wipes them).
 */
async function initRotation(v: Luks2Volume, dev: BlockDevice, opts: ReencryptOptions): Promise<Map<number, Buffer>> {
  const m0 = v.metadata;
  const segs = dataSegments(m0);
  if (segs.length !== 1 || segs[0]!.type !== "crypt" || Object.keys(m0.segments).length !== 1) throw new TrustvolError("EUNSUPPORTED", "the volume does not have exactly one crypt data segment");
  const seg = segs[0]!;
  if (!opts.passphrase && !opts.keyslotPassphrases?.size) throw new TrustvolError("ENOKEY", "a passphrase is needed to unlock the volume", "give --key-file or a token");
  const dOld = Object.keys(m0.digests).find((d) => m0.digests[d]!.segments.includes(String(seg.id)));
  if (dOld === undefined) throw new TrustvolError("ECORRUPT", "no digest covers the data segment");
  const cipher = opts.cipher ?? seg.encryption!;
  const spec = parseCipherSpec(cipher);
  const oldKeySlots = m0.digests[dOld]!.keyslots.filter((k) => m0.keyslots[k]?.type === "luks2").sort((a, b) => Number(a) - Number(b));
  const oldKeyLen = m0.keyslots[oldKeySlots[0] ?? ""]?.key_size ?? 64;
  const keyBytes = opts.keySize ? opts.keySize / 8 : cipher === seg.encryption ? oldKeyLen : spec.chainMode === "xts" ? 64 : 32;
  const ss = opts.sectorSize ?? seg.sectorSize;
  const dataSize = dev.size - seg.offset;
  checkDataSize(dataSize, [seg.sectorSize, ss]);
  if (![512, 1024, 2048, 4096].includes(ss)) throw usage(`sector size ${ss} is not one of 512, 1024, 2048, 4096`);
  if (opts.keyslot !== undefined && !oldKeySlots.includes(String(opts.keyslot))) throw new TrustvolError("ENOENT", `keyslot ${opts.keyslot} is not a keyslot of this volume key`);

  // Which keyslots move to the new key: --key-slot names one; otherwise all of them (cryptsetup asks for each).
  const carry = opts.keyslot !== undefined ? [String(opts.keyslot)] : oldKeySlots;
  const passOf = new Map<string, Uint8Array>();
  let oldKey: Buffer | undefined;
  const newKey = newVolumeKey(keyBytes, spec.chainMode === "xts");
  const written: { offset: number; size: number }[] = [];
  try {
    for (const s of carry) {
      const cands = [opts.keyslotPassphrases?.get(Number(s)), opts.passphrase].filter((p): p is Uint8Array => !!p);
      for (const p of cands) {
        const k = await openKeyslotCandidate(v.dev, m0.keyslots[s]!, p);
        if (verifyDigest(m0.digests[dOld]!, k)) {
          passOf.set(s, p);
          if (!oldKey) oldKey = k;
          else wipe(k);
          break;
        }
        wipe(k);
      }
    }
    mark("init: old keyslots opened");
    const missing = carry.filter((s) => !passOf.has(s));
    if (!oldKey) throw new TrustvolError("EBADPASS", "no key available with this passphrase", "check the passphrase (or key file) and try again");
    if (missing.length)
      throw new TrustvolError("EBADPASS", `keyslot${missing.length > 1 ? "s" : ""} ${missing.join(", ")} do${missing.length > 1 ? "" : "es"} not open with this passphrase`, "give --key-slot N to keep only the keyslot you can unlock (the others are removed when re-encryption finishes), or unlock them through their tokens");

    const m = structuredClone(m0);
    const newSlots: string[] = [];
    for (const s of carry) {
      let id = 0;
      while (String(id) in m.keyslots) id++;
      if (id >= 32) throw new TrustvolError("ENOSPC", "all 32 keyslots are in use", "remove one first");
      const old = m0.keyslots[s]!;
      const { keyslot, areaOffset, areaData } = await buildKeyslot(m, v.header.hdrSize, newKey, passOf.get(s)!, { pbkdf: reuseTokenKdf(m0, s) ?? opts.pbkdf, priority: old.priority });
      try {
        await v.dev.write(areaData, areaOffset);
        written.push({ offset: areaOffset, size: Number(keyslot.area.size) });
      } finally {
        wipe(areaData);
      }
      m.keyslots[String(id)] = keyslot;
      newSlots.push(String(id));
      // The token that unlocked the old keyslot unlocks the new one too (same passphrase).
      for (const t of Object.values(m.tokens)) if (t.keyslots.includes(s)) t.keyslots = [...t.keyslots, String(id)].sort((a, b) => Number(a) - Number(b));
    }
    await v.dev.flush();
    mark("init: new keyslots written");
    let dNew = 0;
    while (String(dNew) in m.digests) dNew++;
    m.digests[String(dNew)] = createDigest(newKey, { keyslots: newSlots, segments: [], iterations: digestIterations(opts) });
    const bp = { ...seg, flags: ["backup-previous"] };
    const bf: Omit<Segment, "id"> = { type: "crypt", offset: seg.offset, size: null, ivTweak: 0n, encryption: cipher, sectorSize: ss, flags: ["backup-final"] };
    m.segments["1"] = segmentJson(bp);
    m.segments["2"] = segmentJson(bf);
    m.digests[dOld]!.segments = ["0", "1"];
    m.digests[String(dNew)]!.segments = ["2"];
    reencryptAreaKeyslot(m, v.header.hdrSize, "reencrypt", opts, dataSize, [seg.sectorSize, ss]);
    assignReencryptDigest(m, new Map([[Number(dOld), oldKey], [dNew, newKey]]), { iterations: digestIterations(opts) });
    await v.commit(m);
    mark("init: committed");
    // the run needs both keys: handing them on saves opening two keyslots again (PBKDF + AF merge each)
    return new Map([[Number(dOld), Buffer.from(oldKey)], [dNew, Buffer.from(newKey)]]);
  } catch (e) {
    // Nothing references the new keyslots' material: don't leave the new key behind.
    for (const a of written) await wipeArea(v.dev, a.offset, a.size).catch(() => {});
    throw e;
  } finally {
    wipe(oldKey, newKey);
  }
}

/** systemd token keyslots use pbkdf2/sha512/1000 (the secret is strong): keep that KDF shape for their new keyslot. */
function reuseTokenKdf(m: Luks2Metadata, slot: string): PbkdfOptions | undefined {
  const tok = Object.values(m.tokens).some((t) => t.keyslots.includes(slot) && t.type.startsWith("systemd-"));
  const k = m.keyslots[slot]!.kdf;
  if (!tok || !k || k.type !== "pbkdf2") return undefined;
  return { type: "pbkdf2", hash: k.hash, forceIterations: k.iterations }; // a fresh salt comes with the new keyslot
}

async function initDecrypt(v: Luks2Volume, dev: BlockDevice, hdrDev: BlockDevice, opts: ReencryptOptions): Promise<Map<number, Buffer> | undefined> {
  if (hdrDev === dev) throw new TrustvolError("EUNSUPPORTED", `${dev.name} holds its LUKS2 header: decrypting it in place moves the header to a file`, "give --header NEW_FILE (a file that does not exist yet; the header is exported there, as cryptsetup does)");
  const m = structuredClone(v.metadata);
  const segs = dataSegments(m);
  if (segs.length === 1 && segs[0]!.type === "linear" && Object.keys(m.segments).length === 1) throw usage(`${hdrDev.name} has no encrypted data segment: ${dev.name} is decrypted already`, "nothing to do");
  if (segs.length !== 1 || segs[0]!.type !== "crypt" || Object.keys(m.segments).length !== 1) throw new TrustvolError("EUNSUPPORTED", "the volume does not have exactly one crypt data segment");
  const seg = segs[0]!;
  // A detached header whose data starts past 0 is decrypted only as the file an in-place decryption exported, cut before
  // its metadata landed (its record says so): a header backup or a detached header with --offset would move data over
  // bytes LUKS never owned (cryptsetup refuses them all).
  if (seg.offset > 0) {
    if (!(await isExportOf(hdrDev, backupSize(v.header.hdrSize, Number(m.config.keyslots_size)), v.uuid, dev, seg.offset))) {
      // (a header backup or an export cut before the device changed: the device still holds the same header)
      const onDev = await exportOnDevice(dev, hdrDev, v.header.hdrSize, seg.offset);
      if (onDev === "magics zeroed" || onDev === "moved copy")
        throw usage(`${dev.name} holds ${hdrDev.name}'s LUKS2 header with its magics zeroed${onDev === "moved copy" ? " and its first bytes a copy of the data's first" : ""}, nothing else changed (a \`--decrypt --header\` cut before its first commit leaves it so)`, `put the header back with \`trustvol header restore --force --file ${hdrDev.name} ${dev.name}\`, then run the same command again`);
      if (onDev === "same" || (await Luks2Volume.open(dev).then((d) => d.uuid === v.uuid, () => false)))
        throw moveAsideAndRerun(hdrDev.name, `is a header of the volume ${dev.name} still holds (a backup, or the export of a \`--decrypt --header\` cut before it changed the device); to decrypt ${dev.name} in place, give --header a file that does not exist yet`, dev.name);
      throw new TrustvolError("EUNSUPPORTED", `${hdrDev.name} is a detached LUKS2 header whose data starts at ${seg.offset}: it is decrypted only from offset 0 (as cryptsetup does), or in place as the file \`reencrypt --decrypt --header\` exported from this device`, "to decrypt a device that holds its header, give --header a file that does not exist yet");
    }
    return initDecryptShift(v, dev, opts);
  }
  const dataSize = dev.size - seg.offset;
  checkDataSize(dataSize, [seg.sectorSize]);
  const dOld = Object.keys(m.digests).find((d) => m.digests[d]!.segments.includes("0"));
  if (dOld === undefined) throw new TrustvolError("ECORRUPT", "no digest covers the data segment");
  if (opts.resilience?.startsWith("datashift")) throw usage(`resilience ${opts.resilience} is for decrypting a device that holds its header`, "use checksum, journal or none with a detached header");
  const volumeKey = await unlockVolumeKey(v, opts);
  try {
    m.segments["1"] = segmentJson({ ...seg, flags: ["backup-previous"] });
    m.segments["2"] = segmentJson({ type: "linear", offset: seg.offset, size: null, ivTweak: 0n, sectorSize: 512, flags: ["backup-final"] });
    m.digests[dOld]!.segments = ["0", "1"];
    reencryptAreaKeyslot(m, v.header.hdrSize, "decrypt", opts, dataSize, [seg.sectorSize]);
    assignReencryptDigest(m, new Map([[Number(dOld), volumeKey]]), { iterations: digestIterations(opts) });
    await v.commit(m);
  } finally {
    wipe(volumeKey);
  }
  return undefined;
}

/**
 * The volume key of a volume not in re-encryption, from the passphrase (any keyslot, or --key-slot's) or from a
 * passphrase its tokens gave for their keyslots (so a TPM/PKCS#11-enrolled device decrypts unattended).
 */
async function unlockVolumeKey(v: Luks2Volume, opts: Pick<ReencryptOptions, "passphrase" | "keyslot" | "keyslotPassphrases">): Promise<Buffer> {
  const tries: [Uint8Array, number | undefined][] = [];
  if (opts.passphrase) tries.push([opts.passphrase, opts.keyslot]);
  for (const [slot, p] of opts.keyslotPassphrases ?? []) if (opts.keyslot === undefined || opts.keyslot === slot) tries.push([p, slot]);
  if (!tries.length) throw new TrustvolError("ENOKEY", "a passphrase is needed to unlock the volume", "give --key-file or a token");
  let err: unknown;
  for (const [p, slot] of tries) {
    try {
      return (await v.unlock(p, { slot })).volumeKey;
    } catch (e) {
      if (!(e instanceof TrustvolError)) throw e;
      err ??= e;
    }
  }
  throw err;
}

/** cryptsetup refuses to re-encrypt a volume with dm-integrity (its tags would not follow the data); so do we, in every mode. */
function refuseIntegrity(m: Luks2Metadata, name: string): void {
  if (Object.values(m.segments).some((sg) => (sg as { integrity?: unknown }).integrity !== undefined))
    throw new TrustvolError("EUNSUPPORTED", `${name} has an integrity profile (dm-integrity): its re-encryption is not supported, as in cryptsetup`, "copy the data to a new volume instead");
}

/**
 * A header on its device whose data (or encrypted backup) segment starts inside the header's own metadata and keyslots
 * (offset 0 is a detached header's layout): re-encrypting it would write over the keyslots. Only an in-place
 * encryption's plain backup-previous starts at 0.
 */
function checkSegmentsPastMetadata(v: Luks2Volume): void {
  const end = 2 * v.header.hdrSize + Number(v.metadata.config.keyslots_size);
  for (const [id, sg] of Object.entries(v.metadata.segments)) {
    if (Number(sg.offset) >= end || (sg.type === "linear" && sg.flags?.some((f) => f.startsWith("backup-")))) continue;
    throw new TrustvolError("ECORRUPT", `segment ${id} of ${v.dev.name} starts at ${sg.offset}, inside the header's own metadata and keyslots (which end at ${end})`, "a header whose data starts at 0 is a detached header: give it with --header FILE and the data device, or restore a header backup; nothing was written");
  }
}

/**
 * A detached header whose data starts at the device's start, where it is ciphertext: a LUKS header there means another
 * volume's device (cryptsetup 2.6.1 goes on and destroys it). A data shift's moved segment: checkMovedCiphertext.
 */
async function checkDetachedDataDevice(m: Luks2Metadata, dev: BlockDevice, hdrName: string): Promise<void> {
  if (Object.values(m.segments).some((sg) => sg.flags?.includes("backup-moved-segment"))) return;
  const first = dataSegments(m).find((sg) => sg.offset === 0);
  if (!first || first.type !== "crypt") return;
  // (an encryption's hotzone may still hold the plaintext, which may itself begin with a LUKS header; a rotation's is
  // old or new ciphertext either way)
  const previous = Object.values(m.segments).find((sg) => sg.flags?.includes("backup-previous"));
  if (first.flags.includes("in-reencryption") && previous?.type !== "crypt") return;
  const onDev = await probeLuksVersion(dev);
  if (onDev !== null) throw usage(`${dev.name} holds a LUKS${onDev} header at its start, where the volume of ${hdrName} has encrypted data: it is another volume's device`, "give the data device of this header file; nothing was written");
}

/**
 * The device's first bytes while the moved segment is still ciphertext (the first data segment: crypt at offset 0, not
 * yet in its hotzone). A LUKS header there means another device than the one the header file was exported from (a
 * clone, another volume) or a header restored since: decrypting "it" would destroy that device's data.
 */
export async function checkMovedCiphertext(m: Luks2Metadata, st: ReencryptState, dev: BlockDevice, hdrName: string): Promise<void> {
  if (!isDecryptShift(st)) return;
  const segs = dataSegments(m);
  const first = segs[0];
  if (!first || first.type !== "crypt" || first.offset !== 0 || first.flags.includes("in-reencryption")) return;
  if ((await probeLuksVersion(dev)) !== null)
    throw new TrustvolError("EUSAGE", `${dev.name} holds a LUKS header at offset 0, where the decryption in ${hdrName} keeps its moved ciphertext: it is not the device that header was exported from, or its header was restored since`, "give the device the header file was exported from; nothing was written");
  if (segs.some((sg) => sg.type === "linear" || sg.flags.includes("in-reencryption"))) return;
  // Nothing decrypted yet: the moved copy still equals its source, which the first hotzone overwrites. If not, another
  // run (from another copy of the header file, or another export) has decrypted or moved data since this one's init.
  if (!(await startIsCopy(dev, st.keyslot.area.shiftSize!, st.movedSeg!.size!)))
    throw new TrustvolError("EUSAGE", `${dev.name}'s start is not the moved ciphertext ${hdrName} expects at its first step: another run (another copy of this header file, or another export) has changed the device since; resuming would decrypt data twice`, "resume the run that went on, with its own header file; nothing was written");
}

/** Are the device's first `len` bytes (up to where the source ends) a copy of those at `shift`? */
async function startIsCopy(dev: BlockDevice, shift: number, len: number): Promise<boolean> {
  const a = Buffer.allocUnsafe(Math.min(len, 4 * MiB)), b = Buffer.allocUnsafe(a.length);
  for (let p = 0; p < len && p + shift < dev.size; p += a.length) {
    const n = Math.min(a.length, len - p, dev.size - shift - p);
    await dev.read(a.subarray(0, n), p);
    await dev.read(b.subarray(0, n), shift + p);
    if (!a.subarray(0, n).equals(b.subarray(0, n))) return false;
  }
  return true;
}

/** Bytes of the moved copy written last, after a flush of the rest: while they differ from their source, the copy is unfinished. */
const MOVE_LAST = 4096;

/** cryptsetup's moved segment when --hotzone-size is not given: the shift, at most 20 MiB (LUKS2_DEFAULT_NONE_REENCRYPTION_LENGTH). */
const DECRYPT_SHIFT_MOVED_MAX = 20 * MiB;

/**
 * `--decrypt --header NEW_FILE` of a device that holds its header (cryptsetup decrypt_luks2_datashift_init): the
 * passphrase is checked, the header exported to the new file (0600, atomically: a cut leaves no file or the whole
 * header, the device untouched), then initDecryptShift goes on with the file. Returns the file, its volume and key.
 */
async function initDecryptExport(dev: BlockDevice, path: string, opts: ReencryptOptions, takeLock: (uuid: string) => Promise<boolean>): Promise<{ volume: Luks2Volume; hdr: FileBlockDevice; keys: Map<number, Buffer> }> {
  if (existsSync(path)) throw usage(`header file ${path} exists`, "give a new file name: the header is exported there");
  if ((await probeLuksVersion(dev)) !== 2) throw new TrustvolError("ENOTLUKS", `${dev.name} does not hold a LUKS2 header to export`, "give the device's existing header file with --header");
  let dv = await Luks2Volume.open(dev);
  if (await takeLock(dv.uuid)) dv = await Luks2Volume.open(dev);
  dv.checkRequirements("write");
  if (reencryptStatus(dv.metadata) !== "none") throw usage(`${dev.name} is in re-encryption already`, "finish it first (trustvol reencrypt --resume-only)");
  refuseIntegrity(dv.metadata, dev.name);
  const segs = dataSegments(dv.metadata);
  if (segs.length !== 1 || segs[0]!.type !== "crypt" || segs[0]!.size !== null || segs[0]!.offset === 0) throw new TrustvolError("EUNSUPPORTED", `${dev.name}: decryption with a data shift needs one encrypted data segment after the header, to the device's end`);
  // the passphrase first: a wrong one leaves no file behind
  const volumeKey = await unlockVolumeKey(dv, opts);
  let hdr: FileBlockDevice | undefined;
  try {
    // everything the init checks (resilience, sizes, the area's room) before the file is written
    await initDecryptShift(dv, dev, opts, volumeKey, true);
    await exportDecryptHeader(dev, path, dv.uuid, segs[0]!.offset);
    hdr = await FileBlockDevice.open(path);
    const volume = await Luks2Volume.open(hdr);
    const keys = await initDecryptShift(volume, dev, opts, volumeKey);
    return { volume, hdr, keys };
  } catch (e) {
    await hdr?.close();
    throw e;
  } finally {
    wipe(volumeKey);
  }
}

/**
 * Decryption with a data shift, from the header in its (exported) file (cryptsetup reencrypt_decrypt_with_datashift_init):
 * the device's header copies are zeroed (so nothing opens the device with it while its start changes), the first
 * moved-segment bytes of ciphertext are copied to the device's start, and only then the metadata is written — to
 * the file. A cut before that commit leaves the file's header as exported and its data where it was: the same
 * command goes on from there. Returns the old volume key by digest for the run.
 */
async function initDecryptShift(v: Luks2Volume, dev: BlockDevice, opts: ReencryptOptions, knownKey?: Buffer, dryRun = false): Promise<Map<number, Buffer>> {
  const m = structuredClone(v.metadata);
  const seg = dataSegments(m)[0]!;
  const shift = seg.offset;
  if (seg.size !== null) throw new TrustvolError("EUNSUPPORTED", "fixed-size data segments are not supported");
  const T = dev.size - shift;
  checkDataSize(T, [seg.sectorSize]);
  const r = opts.resilience ?? "checksum";
  if (!["checksum", "journal", "datashift-checksum", "datashift-journal"].includes(r)) throw usage(`resilience ${r} cannot protect a decryption with a data shift`, "use checksum (the default) or journal");
  const journal = r.endsWith("journal");
  const block = checksumBlock(T, [seg.sectorSize]);
  if (opts.hotzoneSize !== undefined && opts.hotzoneSize > shift) throw usage(`--hotzone-size ${opts.hotzoneSize} is larger than the data shift (${shift} bytes, the header's size)`, "choose a hotzone size up to the data shift");
  const L = Math.min(opts.hotzoneSize ?? Math.min(shift, DECRYPT_SHIFT_MOVED_MAX), T);
  const unit = journal ? seg.sectorSize : block;
  if (L % unit) throw usage(`--hotzone-size ${L} is not a multiple of ${unit} bytes`);
  // the device: its own header as exported, or none at all (a run cut after zeroing it, maybe a copy torn at one end)
  const onDev = await probeLuksVersion(dev);
  if (onDev === 1) throw usage(`${dev.name} holds a LUKS1 header, not the one in ${v.dev.name}`);
  // (a zeroing torn inside the header copies may leave the magic over two damaged copies: no header then)
  const devMeta = onDev === 2 ? await Luks2Volume.open(dev).then((x) => x.metadata, (e) => { if (e instanceof TrustvolError && e.code === "ECORRUPT") return undefined; throw e; }) : undefined;
  if (devMeta && JSON.stringify(devMeta) !== JSON.stringify(v.metadata)) throw usage(`${dev.name} holds another LUKS2 header than ${v.dev.name} (another volume, or changed since the export)`, "give the header file exported from this device");
  // No header on the device: this export zeroed it and was cut before its commit — or another export of the same header
  // zeroed it and committed (to its own file), which leaves the same device. Ours writes its copy's first bytes last,
  // after a flush: while they are not the copy yet, the cut was ours; once they are, the two cannot be told apart.
  if (!devMeta && !dryRun && (await startIsCopy(dev, shift, Math.min(MOVE_LAST, L))))
    throw usage(`${dev.name} already starts with the moved ciphertext, but ${v.dev.name} was never committed: this export was cut in its last instant, or another \`--decrypt --header\` run on this device has committed since (resume that one with its own header file)`, `if no other run was started, put the header back with \`trustvol header restore --force --file ${v.dev.name} ${dev.name}\` (the data is untouched) and run this command again`);
  const dOld = Object.keys(m.digests).find((d) => m.digests[d]!.segments.includes(String(seg.id)));
  if (dOld === undefined) throw new TrustvolError("ECORRUPT", "no digest covers the data segment");
  const key: Buffer = knownKey ? Buffer.from(knownKey) : await unlockVolumeKey(v, opts);
  try {
    if (!verifyDigest(m.digests[dOld]!, key)) throw new TrustvolError("EBADPASS", "the volume key does not match the header file", "give the header file of this device");
    m.segments = {};
    decryptShiftInitSegments(seg, L, T).forEach((sg, i) => (m.segments[String(i)] = segmentJson(sg)));
    m.digests[dOld]!.segments = Object.keys(m.segments).filter((k) => m.segments[k]!.type === "crypt");
    const gap = maxAreaGap(m, v.header.hdrSize);
    const hashLen = createHash(opensslHash(opts.hash ?? "sha256")).digest().length;
    const room = journal ? gap.size : Math.floor(gap.size / hashLen) * block;
    if (L > room) throw usage(`the moved segment (${L} bytes) does not fit the re-encryption area (room for ${room})`, `give --hotzone-size ${room - (room % unit)} or less`);
    let id = 0;
    while (String(id) in m.keyslots) id++;
    if (id >= 32) throw new TrustvolError("ENOSPC", "all 32 keyslots are in use", "remove one first");
    m.keyslots[String(id)] = reencryptKeyslotJson({ mode: "decrypt", direction: "forward", offset: gap.offset, size: gap.size, resilience: journal ? "datashift-journal" : "datashift-checksum", hash: opts.hash ?? "sha256", sectorSize: block, shiftSize: shift });
    const req = (m.config.requirements ??= {});
    req.mandatory = [...(req.mandatory ?? []).filter((x) => x !== REQUIREMENT_V2 && x !== REQUIREMENT_V3), REQUIREMENT_V3];
    assignReencryptDigest(m, new Map([[Number(dOld), key]]), { version: 3, iterations: digestIterations(opts) });
    const commit = v.prepareCommit(m); // validated before the first write
    if (dryRun) return new Map();
    // 1. the device's header copies (cryptsetup wipes their signatures), 2. the moved segment, 3. the metadata
    // (again after a cut: a zeroing torn after the primary left the secondary; redoing it and the move is idempotent)
    await dev.write(Buffer.alloc(Math.min(2 * v.header.hdrSize, shift)), 0);
    await dev.flush();
    const buf = Buffer.allocUnsafeSlow(Math.min(L, 4 * MiB));
    const copy = async (from: number, to: number) => {
      for (let p = from; p < to; p += buf.length) {
        const b = buf.subarray(0, Math.min(buf.length, to - p));
        await dev.read(b, shift + p);
        await dev.write(b, p);
      }
      await dev.flush();
    };
    try {
      const last = Math.min(MOVE_LAST, L);
      await copy(last, L); // the first bytes last (see the continuation's check above)
      await copy(0, last);
    } finally {
      wipe(buf);
    }
    await commit.write();
    return new Map([[Number(dOld), Buffer.from(key)]]);
  } finally {
    wipe(key);
  }
}

/** A new volume's header as written, and its volume key by digest for the run (the caller wipes it). */
interface InitEncrypted {
  volume: Luks2Volume;
  keys: Map<number, Buffer>;
}

/** The volume just written and its key: the run needs no second unlock of the keyslot (PBKDF + AF merge). */
async function initEncrypted(hdrDev: BlockDevice, digest: string, volumeKey: Buffer): Promise<InitEncrypted> {
  const volume = await Luks2Volume.open(hdrDev);
  return { volume, keys: new Map([[Number(digest), Buffer.from(volumeKey)]]) };
}

/** --luks2-metadata-size / --luks2-keyslots-size size a new header: only --encrypt makes one (the CLI asks before going online). */
export function refuseHeaderSizes(opts: Pick<ReencryptOptions, "mode" | "resumeOnly" | "metadataSize" | "keyslotsSize">): void {
  if ((opts.metadataSize !== undefined || opts.keyslotsSize !== undefined) && (opts.mode !== "encrypt" || opts.resumeOnly))
    throw usage("--luks2-metadata-size and --luks2-keyslots-size are for --encrypt (a new header)", "an existing header keeps its sizes: leave them out");
}

/** Where the reencrypt keyslot's area goes in a new header: a keyslots area given too small is a usage error. */
function reencryptAreaRoom(m: Luks2Metadata, hdrSize: number): number {
  try {
    return findAreaGap(m, hdrSize, 4096);
  } catch (e) {
    if (!(e instanceof TrustvolError && e.code === "ENOSPC")) throw e;
    const used = Math.max(...Object.values(m.keyslots).map((ks) => Number(ks.area.offset) + Number(ks.area.size))) - 2 * hdrSize;
    throw usage(`--luks2-keyslots-size ${m.config.keyslots_size} leaves no room for the re-encryption area after the new keyslot (${used} bytes)`, `give at least ${used + 4096} bytes, or leave it out`);
  }
}

/** Encrypt a plain device with a detached header: the header is built whole in memory, then written once. */
async function initEncrypt(dev: BlockDevice, hdrDev: BlockDevice, opts: ReencryptOptions): Promise<InitEncrypted> {
  if (hdrDev === dev) return initEncryptShift(dev, opts);
  if (opts.reduceDeviceSize !== undefined) throw usage("--reduce-device-size is for in-place encryption without --header");
  if (!opts.passphrase) throw new TrustvolError("ENOKEY", "a passphrase for the new keyslot is needed", "give --key-file");
  // A data-shift encryption cut before its header was written left its mark: the head is not the data there.
  const head = await readHeadMarkState(dev);
  if (head.mark || head.tornMagic)
    throw usage(`${dev.name} holds an in-place encryption with --reduce-device-size cut before its header was written`, "finish it with the same command (--reduce-device-size, no --header): a detached header would encrypt what that run wrote over the device's head");
  const ss = await defaultEncryptSectorSize(dev, opts.sectorSize);
  const dataSize = dev.size;
  checkDataSize(dataSize, [ss]);
  const label = await encryptLabel(dev, opts);
  const plan = await planFormat(opts.passphrase, { cipher: opts.cipher, keySizeBits: opts.keySize, sectorSize: ss, pbkdf: opts.pbkdf, keyslot: opts.keyslot, dataOffset: 0, label, subsystem: opts.subsystem, uuid: opts.uuid, digestIterations: digestIterations(opts), metadataSize: opts.metadataSize, keyslotsSize: opts.keyslotsSize }, true);
  try {
    const m = plan.header.metadata;
    reencryptAreaRoom(m, plan.header.hdrSize);
    const crypt = m.segments["0"]!;
    m.segments = {
      "0": { type: "linear", offset: "0", size: "dynamic" },
      "1": { type: "linear", offset: "0", size: "dynamic", flags: ["backup-previous"] },
      "2": { ...crypt, flags: ["backup-final"] },
    };
    const dNew = Object.keys(m.digests)[0]!;
    m.digests[dNew]!.segments = ["2"];
    reencryptAreaKeyslot(m, plan.header.hdrSize, "encrypt", opts, dataSize, [ss]);
    assignReencryptDigest(m, new Map([[Number(dNew), plan.volumeKey]]), { iterations: digestIterations(opts) });
    const [p, s] = encodeHeaderCopies(plan.header);
    const zero = Buffer.alloc(MiB);
    for (let pos = 0; pos < plan.metadataAreaEnd; pos += zero.length) await hdrDev.write(zero.subarray(0, Math.min(zero.length, plan.metadataAreaEnd - pos)), pos);
    await hdrDev.write(plan.keyslotArea.data, plan.keyslotArea.offset);
    await hdrDev.flush();
    await hdrDev.write(p, 0);
    await hdrDev.write(s, plan.header.hdrSize);
    await hdrDev.flush();
    return await initEncrypted(hdrDev, dNew, plan.volumeKey);
  } finally {
    wipe(plan.volumeKey, plan.keyslotArea.data);
  }
}

/**
 * A header file that may be a cut export of the device's header: every byte of it the device's at the same offset (an
 * empty file too) while the device still holds its LUKS2 header.
 */
async function isCutExport(dev: BlockDevice, file: BlockDevice): Promise<boolean> {
  return (await probeLuksVersion(dev)) === 2 && (await exportOnDevice(dev, file)) === "same";
}

/** Header files larger than this are no export (LUKS2: 2 × 4 MiB of header, at most 128 MiB of keyslots). */
const MAX_EXPORT = 256 * MiB;

/**
 * The device's first bytes against a header file, 4 KiB blocks, stopping at the first that rules a match out: the same;
 * the same but for the two LUKS2 magics zeroed on the device (cryptsetup's in-place decryption wipes them right after
 * its export); or, given the data offset, its first L bytes also replaced by a copy of the data's first L (the moved
 * segment, copied before the init's commit) while the rest still matches the file — at least 64 KiB of it not
 * constant (keyslot material, the random fill: what ties this file to this device) and the copy not constant either.
 */
async function exportOnDevice(dev: BlockDevice, file: BlockDevice, hdrSize = 0, dataOffset = 0): Promise<"same" | "magics zeroed" | "moved copy" | "different"> {
  const B = 4096;
  if (file.size > dev.size || file.size > MAX_EXPORT || file.size % B) return "different";
  const magics = hdrSize ? [0, hdrSize] : [];
  const [a, b] = [Buffer.alloc(B), Buffer.alloc(B)];
  const constant = (x: Buffer) => x.every((y) => y === x[0]);
  let zeroed = false, L = 0, tying = 0, matched = false;
  for (let off = 0; off < file.size; off += B) {
    await file.read(a, off);
    await dev.read(b, off);
    for (const at of magics) if (at >= off && at + 6 <= off + B && b.subarray(at - off, at - off + 6).every((x) => x === 0) && !a.subarray(at - off, at - off + 6).equals(b.subarray(at - off, at - off + 6))) {
      zeroed = true;
      a.copy(b, at - off, at - off, at - off + 6);
    }
    if (a.equals(b)) {
      matched = true;
      if (!constant(a)) tying++;
      continue;
    }
    // a difference is allowed only in one prefix [0, L), and only when the moved copy may explain it
    if (matched || !dataOffset) return "different";
    L = off + B;
  }
  if (!L) return zeroed ? "magics zeroed" : "same";
  if (tying < 16 || dataOffset + L > dev.size) return "different";
  let varied = false;
  for (let off = 0; off < L; off += B) {
    await dev.read(a, dataOffset + off);
    await dev.read(b, off);
    if (!a.equals(b)) return "different";
    varied ||= !constant(b);
  }
  return varied ? "moved copy" : "different";
}

/**
 * cryptsetup's detached --encrypt commits an ordinary LUKS2 header (keyslot, crypt segment from 0) before its
 * re-encryption metadata: cut between the two, the header claims data that was never encrypted. What tells: the
 * device, read raw, holds a file system (ciphertext shows none). No key is derived for this (an argon2 keyslot would
 * cost a second and up to 1 GiB): the advice it words never deletes anything.
 */
async function plainFilesystem(v: Luks2Volume, dev: BlockDevice): Promise<string | undefined> {
  const segs = dataSegments(v.metadata);
  if (segs.length !== 1 || segs[0]!.type !== "crypt" || segs[0]!.offset !== 0 || dev.size < FS_PROBE_BYTES) return undefined;
  const head = Buffer.alloc(FS_PROBE_BYTES);
  await dev.read(head, 0);
  return probeFilesystem(head)?.type;
}

/**
 * The refusal of a header file that a cut run of the same command may have left (isCutExport, a cut detached
 * --encrypt): the way on moves it aside, never deletes it — the evidence says what is likely, not what is certain.
 */
const moveAsideAndRerun = (file: string, what: string, dev: string) =>
  usage(`${file} ${what}`, `if a cut run of this command left it, move ${file} aside (keep it until ${dev} is done) and run the same command again`);

/**
 * Does any JSON area of a damaged header mention a keyslot's KDF? Without one no key can be had from it (a detached
 * header cut before its first commit). Both copies' areas lie in the first 8 MiB.
 */
async function holdsKeyslotJson(hdr: BlockDevice): Promise<boolean> {
  const b = Buffer.alloc(Math.min(hdr.size, 8 * MiB));
  await hdr.read(b, 0);
  return b.includes('"kdf"');
}

/**
 * The LUKS version as re-encryption sees a device: the magic at offset 0, else 2 when a valid header copy is in
 * re-encryption — a primary whose magic did not land over a valid secondary (a cut as --encrypt writes it) is a run
 * to resume. A plain device that kept an old LUKS2 secondary (mkfs over LUKS) is plain.
 */
export async function reencryptLuksVersion(dev: BlockDevice): Promise<1 | 2 | null> {
  const v = await probeLuksVersion(dev);
  if (v !== null) return v;
  try {
    return reencryptStatus((await Luks2Volume.open(dev)).metadata) !== "none" ? 2 : null;
  } catch (e) {
    if (e instanceof TrustvolError) return null;
    throw e;
  }
}

/**
 * In-place encryption with a data shift (cryptsetup --encrypt --reduce-device-size R): the new data offset and the
 * shift are R/2; the first chunk of the device is copied to the free end first (backup-moved-segment), then the header
 * is written over the device's head, keyslot areas and secondary copy before the primary (a torn primary falls back to
 * a complete secondary). Unlike cryptsetup, a cut between the head's first overwrite and the first valid header copy
 * loses nothing: the completed copy's record says it is the source (moveHead).
 */
async function initEncryptShift(dev: BlockDevice, opts: ReencryptOptions): Promise<InitEncrypted> {
  const reduce = opts.reduceDeviceSize;
  if (reduce === undefined) throw usage("in-place --encrypt needs --reduce-device-size (e.g. 32M) or a detached --header", "shrink the file system by that much first");
  if (!opts.passphrase) throw new TrustvolError("ENOKEY", "a passphrase for the new keyslot is needed", "give --key-file");
  // A head move cut before its first header copy landed: the mark at offset 0 names it (reencrypt-headmove.ts)
  const { mark: prior, magicBytes } = await readHeadMarkState(dev);
  // (a torn mark too: its copy is where this --reduce-device-size puts it; moveHead decides whether it is one)
  const copyAt = prior ? prior.at : magicBytes > 0 && Number.isSafeInteger(reduce / 2) ? dev.size - reduce / 2 : 0;
  const headAt = copyAt > 0 && copyAt + FS_PROBE_BYTES <= dev.size ? copyAt : 0;
  const ss = await defaultEncryptSectorSize(dev, opts.sectorSize, headAt);
  const shift = reduce / 2;
  if (!Number.isSafeInteger(shift) || shift % Math.max(ss, 4096) || shift < MiB) throw usage(`--reduce-device-size ${reduce} must be at least 2 MiB and a multiple of ${2 * Math.max(ss, 4096)} bytes`);
  const total = dev.size;
  const devSize = total - shift; // bytes after the new data offset
  const dataSize = total - reduce; // the (shrunk) file system
  if (dataSize <= 0) throw new TrustvolError("ENOSPC", `${dev.name} (${total} bytes) is too small for --reduce-device-size ${reduce}`, "use a smaller reduction or a larger device");
  checkDataSize(dataSize, [ss]);
  const firstLen = Math.min(dataSize, shift);
  // the head move's record: free space past the data and the new header, below the copy (reencrypt-headmove.ts)
  const recordAt = Math.floor((devSize - HEAD_MOVE_RECORD_SIZE) / 512) * 512;
  if (recordAt - (HEAD_MOVE_RECORD_SLOTS - 1) * HEAD_MOVE_RECORD_SIZE < Math.max(dataSize, shift)) throw new TrustvolError("ENOSPC", `${dev.name}: a ${dataSize}-byte data area is too small to encrypt in place`, "use a larger device");
  // Only the same move may go on (its record is where this --reduce-device-size puts it, on a device of this size), and
  // the file system's label is read from the copy, since the head's start is the mark.
  if (prior && (prior.len !== firstLen || prior.at !== devSize)) {
    // The shift then: the device's end minus the copy's place, unless the image has been resized since; the copy's
    // length is the shift too (or, on a device smaller than twice the shift, the copy's place minus its length).
    const sinceEnd = total - prior.at;
    const shiftWas = sinceEnd === prior.len || sinceEnd === prior.at - prior.len ? sinceEnd : prior.len;
    const was = ((n) => (n % MiB ? String(n) : `${n / MiB}M`))(2 * shiftWas); // as it is typed
    const sizeThen = prior.at + shiftWas;
    if (sizeThen !== total) throw usage(`${dev.name} holds an in-place encryption cut before its header was written, started with --reduce-device-size ${was} when it had ${sizeThen} bytes (it has ${total} now)`, `restore its size to ${sizeThen} bytes, then run it again with --reduce-device-size ${was}`);
    throw usage(`${dev.name} holds an in-place encryption cut before its header was written, started with --reduce-device-size ${was}`, `run it again with --reduce-device-size ${was}: another size would lose what that run wrote over the device's head`);
  }
  const label = await encryptLabel(dev, opts, headAt);
  const metadataBytes = 2 * (opts.metadataSize ?? LUKS2_DEFAULT_HDR_SIZE) + (opts.keyslotsSize ?? 0);
  // (ending exactly at the data is the default layout; a keyslots area left to fill the rest needs some room)
  const fits = opts.keyslotsSize !== undefined ? metadataBytes <= shift : metadataBytes < shift;
  if ((opts.metadataSize !== undefined || opts.keyslotsSize !== undefined) && !fits)
    throw usage(`a header of ${metadataBytes} bytes (two metadata copies${opts.keyslotsSize !== undefined ? " and the keyslots area" : ""}) does not fit before the data, at half of --reduce-device-size (${shift} bytes)`, `use a larger --reduce-device-size (at least ${2 * metadataBytes} bytes) or smaller --luks2-metadata-size/--luks2-keyslots-size`);
  const plan = await planFormat(opts.passphrase, { cipher: opts.cipher, keySizeBits: opts.keySize, sectorSize: ss, pbkdf: opts.pbkdf, keyslot: opts.keyslot, dataOffset: shift, label, subsystem: opts.subsystem, uuid: opts.uuid, digestIterations: digestIterations(opts), metadataSize: opts.metadataSize, keyslotsSize: opts.keyslotsSize }, false);
  mark("init: header planned");
  try {
    const m = plan.header.metadata;
    const crypt = m.segments["0"]!;
    const lin = (offset: number, size: number, flags?: string[]) => segmentJson({ type: "linear", offset, size, ivTweak: 0n, sectorSize: 512, flags: flags ?? [] });
    m.segments = { "0": lin(devSize, firstLen) };
    if (dataSize > shift) m.segments["1"] = lin(shift, dataSize - shift);
    let id = Object.keys(m.segments).length;
    m.segments[String(id++)] = lin(devSize, firstLen, ["backup-moved-segment"]);
    m.segments[String(id++)] = lin(0, dataSize, ["backup-previous"]);
    m.segments[String(id)] = { ...crypt, flags: ["backup-final"] };
    const dNew = Object.keys(m.digests)[0]!;
    m.digests[dNew]!.segments = [String(id)];
    let rk = 0;
    while (String(rk) in m.keyslots) rk++;
    const gap = reencryptAreaRoom(m, plan.header.hdrSize);
    m.keyslots[String(rk)] = reencryptKeyslotJson({ mode: "encrypt", direction: "backward", offset: gap, size: 4096, resilience: "datashift", shiftSize: shift });
    m.config.requirements = { mandatory: [REQUIREMENT_V2] };
    assignReencryptDigest(m, new Map([[Number(dNew), plan.volumeKey]]), { iterations: digestIterations(opts) });
    const [p, sc] = encodeHeaderCopies(plan.header);
    // 1. the device's first chunk to the free end, unless an attempt cut before its first header copy landed did
    const touched = [plan.header.hdrSize, plan.keyslotArea.offset + plan.keyslotArea.data.length] as const;
    await moveHead(dev, { len: firstLen, at: devSize, recordAt, touched });
    mark("init: first chunk moved");
    // 2. keyslot material, the secondary copy, then the primary
    await dev.write(plan.keyslotArea.data, plan.keyslotArea.offset);
    await dev.flush();
    await dev.write(sc, plan.header.hdrSize);
    await dev.flush();
    await dev.write(p, 0);
    await dev.flush();
    mark("init: header written");
    // 3. no plaintext of the old head may stay in the unused metadata/keyslots area
    const used: [number, number][] = [[plan.keyslotArea.offset, plan.keyslotArea.offset + plan.keyslotArea.data.length], [gap, gap + 4096]];
    await zeroOutside(dev, used, [2 * plan.header.hdrSize, shift], Buffer.alloc(MiB));
    mark("init: head zeroed");
    return await initEncrypted(dev, dNew, plan.volumeKey);
  } finally {
    wipe(plan.volumeKey, plan.keyslotArea.data);
  }
}

/** The data path (reencrypt-io.ts) works on this; the buffer is one of its two. */
interface Engine extends HotzoneEngine {
  /** The engine's buffer when it is allocated, else a buffer of at most 1 MiB (the finish's wipes). */
  readonly scratch: Buffer;
  dispose(): void;
}

async function prepare(v: Luks2Volume, dev: BlockDevice, hdrDev: BlockDevice, keys: Map<number, Buffer>, opts: Pick<ReencryptOptions, "hotzoneSize" | "tornWriteSafe">): Promise<Engine> {
  const st = loadReencryptState(v.metadata);
  if (!st.movedSeg && st.oldSeg.offset !== st.newSeg.offset) throw new TrustvolError("EUNSUPPORTED", "old and new data offsets differ (data shift)");
  if ((!st.movedSeg && st.oldSeg.size !== null) || st.newSeg.size !== null) throw new TrustvolError("EUNSUPPORTED", "fixed-size re-encryption segments are not supported");
  const dataOffset = st.newSeg.offset;
  const ds = isDecryptShift(st);
  const dataSize = dataAreaSize(st, dev.size);
  checkSegmentsOnDevice(v.metadata, dev.size, dev.name);
  const ss = [st.oldSeg.sectorSize, st.newSeg.sectorSize];
  if (dataSize <= 0) throw new TrustvolError("ETRUNCATED", `${dev.name} ends before the data offset ${ds ? st.keyslot.area.shiftSize : dataOffset}`);
  if (ds) {
    checkDecryptShiftDevice(v.metadata, st, dev.size, dev.name);
    await checkMovedCiphertext(v.metadata, st, dev, hdrDev.name);
  }
  checkDataSize(dataSize, ss);
  const area = st.keyslot.area;
  const summed = st.resilience === "checksum" || st.movedResilience === "checksum";
  const block = summed ? area.sectorSize! : Math.max(4096, ...ss);
  const hashLen = summed ? createHash(opensslHash(area.hash!)).digest().length : 0;
  if (ds) {
    // the moved segment's hotzone must fit its protection (cryptsetup checks this at init; a header can lie)
    const L = st.movedSeg!.size!;
    const room = st.movedResilience === "journal" ? area.size : Math.floor(area.size / hashLen) * block;
    if (L > room || (summed && L % block)) throw new TrustvolError("ECORRUPT", `the moved segment (${L} bytes) does not fit its ${st.keyslot.area.type} area (${area.size} bytes, ${block}-byte blocks)`, "the header is damaged or was not written by cryptsetup; restore a header backup");
  }
  if (block % Math.max(...ss)) throw new TrustvolError("ECORRUPT", `checksum block ${block} is not a multiple of the encryption sector size`);
  // (init picks a block that divides the data area: only a device resized since leaves a ragged last block)
  if (st.resilience === "checksum" && dataSize % block) throw new TrustvolError("ECORRUPT", `${dev.name}: its data area (${dataSize} bytes) is not a multiple of the re-encryption's checksum block (${block}): the device was resized since the re-encryption started`, `restore its size (a multiple of ${block} bytes after the data offset ${dataOffset}), then resume`);
  let cap = st.resilience === "checksum" ? Math.floor(area.size / hashLen) * block : st.resilience === "journal" ? area.size : st.resilience === "datashift" ? area.shiftSize! : Infinity;
  // datashift: the hotzone is the shift (cryptsetup's rule); this is only the buffer it is processed through.
  const want = st.resilience === "datashift" ? Math.min(area.shiftSize!, SHIFT_BUFFER) : (opts.hotzoneSize ?? DEFAULT_HOTZONE);
  let hotzone = Math.min(cap, want);
  hotzone -= hotzone % block;
  let withParity = ds
    ? st.movedResilience === "checksum" && opts.tornWriteSafe !== false && parityLayout(st.movedSeg!.size!, block, hashLen).end <= area.size
    : st.resilience === "checksum" && opts.tornWriteSafe !== false;
  if (withParity && !ds) while (hotzone > block && parityLayout(hotzone, block, hashLen).end > area.size) hotzone -= Math.max(block, (Math.floor(hotzone / 8 / block) * block));
  // an area too small for even one block's parity and tag: checksums only (cryptsetup's), nothing written past it,
  // and the hotzone the checksums alone allow
  if (withParity && !ds && parityLayout(hotzone, block, hashLen).end > area.size) {
    withParity = false;
    hotzone = Math.min(cap, want);
    hotzone -= hotzone % block;
  }
  const need = hotzone;
  if (hotzone < Math.max(...ss)) throw new TrustvolError("ECORRUPT", "the re-encryption area is too small for one hotzone");
  cap = need;
  const mk = (seg: Segment, digest: number) => (seg.type === "crypt" ? createSectorCipher({ cipher: seg.encryption!, key: keys.get(digest)!, sectorSize: seg.sectorSize, ivOffset: seg.ivTweak }) : null);
  const oldC = mk(st.oldSeg, st.digestOld);
  let newC: SectorCipher | null = null;
  try {
    newC = mk(st.newSeg, st.digestNew);
  } catch (e) {
    oldC?.dispose();
    throw e;
  }
  // Allocated when first used: the fused data-shift copy never uses it, and wiping 16 MiB of pages never written
  // faulted them all in (10 ms of an --encrypt). Page-aligned: the hotzone loop's data goes to and from the device
  // with O_DIRECT (the data-shift lanes stay buffered).
  let buf: Buffer | null = null, small: Buffer | null = null;
  return {
    v, dev, hdrDev, st, dataOffset, dataSize, oldC, newC, hotzone, block, hashLen, withParity, bufSize: cap,
    get buf() {
      return (buf ??= st.resilience === "datashift" ? Buffer.allocUnsafeSlow(cap) : alignedBuffer(cap));
    },
    get scratch() {
      return buf ?? (small ??= Buffer.allocUnsafeSlow(Math.min(cap, MiB)));
    },
    dispose() {
      if (buf) wipe(buf);
      if (small) wipe(small);
      oldC?.dispose();
      newC?.dispose();
    },
  };
}

/**
 * Recover the hotzone marked in-reencryption (cryptsetup reencrypt_recover_segment), then commit it as done — except a
 * decryption with a data shift's last hotzone (its moved segment), whose "done" state is one cryptsetup 2.6.1/2.7.5
 * resume by decrypting the moved segment a second time: a run (`finish`) finishes instead (returns true); `repair` and
 * `open` leave it in re-encryption over the recovered data, which its table maps as it is (plain), and recovering it
 * again changes nothing.
 */
async function recoverHotzone(e: Engine, finish = false): Promise<boolean> {
  const m = e.v.metadata;
  const hot = dataSegments(m).find((s) => s.flags.includes("in-reencryption"));
  if (!hot || hot.size === null) throw new TrustvolError("ECORRUPT", "the segment in re-encryption has no fixed size");
  const off = hot.offset - e.dataOffset;
  const len = hot.size;
  if (off < 0 || len <= 0 || off + len > e.dataSize || len % Math.max(e.st.oldSeg.sectorSize, e.st.newSeg.sectorSize)) throw new TrustvolError("ECORRUPT", "the segment in re-encryption lies outside the data area");
  const area = e.st.keyslot.area;
  const count = Math.floor(len / e.block);
  // a decryption with a data shift decrypts its moved segment (offset 0) in place, under that segment's protection
  const res = isDecryptShift(e.st) && off === 0 ? e.st.movedResilience! : e.st.resilience;
  if (res === "checksum" && count * e.hashLen > area.size) throw new TrustvolError("ECORRUPT", "the hotzone in re-encryption is larger than its checksum area");
  if (res === "journal" && len > area.size) throw new TrustvolError("ECORRUPT", "the hotzone in re-encryption is larger than its journal");
  if (res === "datashift" && len > area.shiftSize!) throw new TrustvolError("ECORRUPT", "the hotzone in re-encryption is larger than the data shift");
  if (res === "none") throw new TrustvolError("ECORRUPT", `a hotzone interrupted with resilience "none" cannot be recovered`, "restore the data from a backup");
  const src = res === "datashift" ? sourceOf(e, m, off) : 0;
  const copyLen = res === "datashift" ? copyLengthOf(e, m, len) : len; // (the rest of the hotzone, if any, holds no data)
  if (res === "checksum") {
    await recoverChecksum(e, off, len, count);
    await e.dev.flush();
    return commitRecovered(e, m, off, len, finish);
  }
  // In pieces of the engine's buffer (a hotzone cryptsetup left may be far larger than our memory budget); every
  // piece is idempotent, so a cut during recovery is recovered again the same way.
  for (let p = 0; p < copyLen; p += e.hotzone) {
    const n = Math.min(e.hotzone, copyLen - p);
    const data = e.buf.subarray(0, n);
    // journal: the old data as it was; datashift: the source was never overwritten (moved copy or shift before)
    await (res === "journal" ? e.hdrDev.read(data, area.offset + p) : e.dev.read(data, src + p));
    recrypt(e, data, off + p);
    await e.dev.write(data, e.dataOffset + off + p);
  }
  await e.dev.flush();
  return commitRecovered(e, m, off, len, finish);
}

async function commitRecovered(e: Engine, m: Luks2Metadata, off: number, len: number, finish: boolean): Promise<boolean> {
  if (isDecryptShift(e.st) && off === 0) {
    if (!finish) return false;
    await finishRun(e.v, e.dev, e.hdrDev, e.st, e.buf, { tailCipher: e.oldC });
    return true;
  }
  await e.v.commit(postMetadata(m, e.st, off, len, e.dataSize));
  return false;
}

/**
 * Checksum mode's recovery, chunk by chunk (a hotzone cryptsetup left may be far larger than our memory budget). A block
 * whose checksum is the stored one still holds old data: it is re-encrypted; any other is new already (cryptsetup's
 * rule) — except in the one chunk our own write order may have left torn: the last chunk, in write order, that is not
 * all old. That chunk is rebuilt from the parity first (`parityLayout`) when the area's tag names these checksums
 * and this hotzone and the rebuild matches every checksum; without (a hotzone cryptsetup wrote, none in the area, or
 * the area already the next hotzone's), cryptsetup's rule alone. Every write is flushed chunk by chunk, in order, so
 * a cut during recovery leaves the same shape and is recovered the same way.
 */
async function recoverChecksum(e: Engine, off: number, len: number, count: number): Promise<void> {
  const area = e.st.keyslot.area;
  const sums = Buffer.alloc(count * e.hashLen);
  await e.hdrDev.read(sums, area.offset);
  const lay = parityLayout(len, e.block, e.hashLen);
  const C = lay.chunk, n = Math.ceil(len / C);
  const isOld = (b: Buffer, i: number) => hashBlock(e, b).equals(sums.subarray(i * e.hashLen, (i + 1) * e.hashLen));
  const piece = alignedBuffer(C);
  /** Chunk k of the hotzone, read into `piece`; its first block's index. */
  const readChunk = async (k: number): Promise<{ data: Buffer; first: number }> => {
    const data = piece.subarray(0, Math.min(C, len - k * C));
    await e.dev.read(data, e.dataOffset + off + k * C);
    return { data, first: (k * C) / e.block };
  };
  const blocksOf = (data: Buffer, first: number) => Array.from({ length: Math.min(count - first, Math.floor(data.length / e.block)) }, (_, i) => ({ b: data.subarray(i * e.block, (i + 1) * e.block), i: first + i }));
  try {
    // The parity only with the tag of these very checksums and this hotzone (`parityTag`): anything else — a hotzone
    // cryptsetup wrote, the next hotzone's area written before the header moved on, a torn write — cryptsetup's rule.
    const tag = Buffer.alloc(PARITY_TAG_SIZE);
    if (lay.end <= area.size) await e.hdrDev.read(tag, area.offset + lay.tag);
    if (lay.end <= area.size && parityTagMatches(tag, off, len, sums)) {
      let torn = -1;
      for (let k = n - 1; k >= 0 && torn < 0; k--) {
        const { data, first } = await readChunk(k);
        if (blocksOf(data, first).some(({ b, i }) => !isOld(b, i))) torn = k;
      }
      if (torn >= 0) {
        const acc = Buffer.alloc(C);
        await e.hdrDev.read(acc, area.offset + lay.parity);
        for (let k = 0; k < n; k++) {
          if (k === torn) continue;
          const { data, first } = await readChunk(k);
          // The chunks written before the torn one hold new data: back to the old (each block checked: old stays).
          if (k < torn) for (const { b, i } of blocksOf(data, first)) if (!isOld(b, i)) unrecrypt(e, b, off + i * e.block);
          xorInto(acc, data);
        }
        const mine = acc.subarray(0, Math.min(C, len - torn * C));
        const first = (torn * C) / e.block;
        if (blocksOf(mine, first).every(({ b, i }) => isOld(b, i))) {
          recrypt(e, mine, off + torn * C);
          await e.dev.write(mine, e.dataOffset + off + torn * C);
          await e.dev.flush();
        }
        wipe(acc);
      }
    }
    for (let k = 0; k < n; k++) {
      const { data, first } = await readChunk(k);
      let wrote = false;
      for (const { b, i } of blocksOf(data, first)) {
        if (!isOld(b, i)) continue;
        recrypt(e, b, off + i * e.block);
        await e.dev.write(b, e.dataOffset + off + i * e.block);
        wrote = true;
      }
      if (wrote) await e.dev.flush();
    }
  } finally {
    wipe(piece);
  }
}

/** The inverse of recrypt: new data back to the old (decrypt with the new key, encrypt with the old), in place. */
function unrecrypt(e: HotzoneEngine, data: Buffer, off: number): void {
  if (e.newC) e.newC.decrypt(data, off / e.newC.sectorSize);
  if (e.oldC) e.oldC.encrypt(data, off / e.oldC.sectorSize);
}

async function runEngine(v: Luks2Volume, dev: BlockDevice, hdrDev: BlockDevice, keys: Map<number, Buffer>, opts: ReencryptOptions, switchArea: Record<string, Json> | null = null, headZeroed = false): Promise<{ recovered: boolean; bytes: number }> {
  let e = await prepare(v, dev, hdrDev, keys, opts);
  mark(`engine: prepared, hotzone ${e.hotzone}`);
  let recovered = false;
  let bytes = 0;
  // Offline, the loop is all there is: its commits' small writes and flushes skip the thread pool (FileBlockDevice).
  const inline = opts.hotzoneHooks ? [] : [...new Set([dev, hdrDev])].filter((d): d is FileBlockDevice => d instanceof FileBlockDevice && !d.inlineSmallIo);
  for (const d of inline) d.inlineSmallIo = true;
  try {
    if (e.st.status === "crash") {
      recovered = true;
      if (await recoverHotzone(e, true)) return { recovered, bytes };
    }
    if (switchArea) {
      // after the recovery (the crashed hotzone is protected by the old area), before the next hotzone: one commit
      await switchResilience(v, keys, switchArea, opts);
      e.dispose();
      e = await prepare(v, dev, hdrDev, keys, opts);
      mark(`engine: resilience ${e.st.keyslot.area.type}, hotzone ${e.hotzone}`);
    }
    bytes = await runHotzones(e, { signal: opts.signal, onProgress: opts.onProgress, interrupted, hooks: opts.hotzoneHooks, keys });
    mark("engine: hotzones done");
    await finishRun(v, dev, hdrDev, e.st, e.scratch, { tailCipher: e.oldC, headZeroed });
    mark("engine: finished");
    return { recovered, bytes };
  } finally {
    for (const d of inline) d.inlineSmallIo = false;
    e.dispose();
  }
}

/**
 * The resilience change of a resume (cryptsetup LUKS2_keyslot_reencrypt_update): the reencrypt keyslot gets its new
 * area and the re-encryption digest is made again over it, in one commit. The area's old contents no longer matter:
 * no hotzone is in re-encryption here, and the next one writes its protection before its "hot" commit.
 */
async function switchResilience(v: Luks2Volume, keys: Map<number, Buffer>, area: Record<string, Json>, opts: ReencryptOptions): Promise<void> {
  const m = structuredClone(v.metadata); // (its digest was verified when the keys were unlocked: unlockForState)
  (m.keyslots[reencryptKeyslotId(m)!] as unknown as { area: Record<string, Json> }).area = area;
  assignReencryptDigest(m, keys, { version: reencryptRequirementVersion(m), iterations: digestIterations(opts) });
  await v.commit(m);
}

/** Zeros, not random: they erase plaintext as well, and a (partly) wiped copy stays recognisable (wipeMovedHead). */
async function wipeZeros(dev: BlockDevice, offset: number, size: number, buf: Buffer): Promise<void> {
  buf.fill(0);
  for (let p = 0; p < size; p += buf.length) await dev.write(buf.subarray(0, Math.min(buf.length, size - p)), offset + p);
  await dev.flush(); // before the commit that forgets the copy
}

function interrupted(done: number, total: number): TrustvolError {
  return new TrustvolError("EINTR", `re-encryption interrupted at a safe point (${done} of ${total} bytes done)`, "resume it with `trustvol reencrypt --resume-only` (or cryptsetup's)");
}

/**
 * Passphrases of token-backed keyslots (TPM2, PKCS#11, clevis...), asked from their tokens, so that key rotation can
 * re-create those keyslots for the new volume key with the same passphrase: the token keeps working. Tokens that fail
 * are reported in `failures` (the caller decides whether that is fatal). The caller wipes the passphrases.
 */
export async function tokenKeyslotPassphrases(
  m: Luks2Metadata,
  ctx: import("./tokens.js").TokenUnlockContext,
  opts: { tokenId?: number; tokenType?: string } = {},
): Promise<{ passphrases: Map<number, Buffer>; failures: TrustvolError[] }> {
  const { tokenHandler } = await import("./tokens.js");
  await import("./handlers.js");
  const passphrases = new Map<number, Buffer>();
  const failures: TrustvolError[] = [];
  for (const [id, t] of Object.entries(m.tokens).sort((a, b) => Number(a[0]) - Number(b[0]))) {
    if (opts.tokenId !== undefined && Number(id) !== opts.tokenId) continue;
    if (opts.tokenType && t.type !== opts.tokenType) continue;
    const h = tokenHandler(t.type);
    if (!h) continue;
    try {
      const p = await h.passphrase(t, ctx);
      for (const k of t.keyslots) if (!passphrases.has(Number(k))) passphrases.set(Number(k), Buffer.from(p));
      wipe(p);
    } catch (e) {
      if (!(e instanceof TrustvolError)) throw e;
      failures.push(e);
    }
  }
  return { passphrases, failures };
}
