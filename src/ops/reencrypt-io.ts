// The data path of offline re-encryption (src/ops/reencrypt.ts): the hotzone loop, pipelined.
//
// Crash safety is the write order of reencrypt.ts, unchanged: per hotzone, the old data's checksums (+ our parity) or
// journal reach the area and are flushed → metadata commit "hotzone in re-encryption" → the re-encrypted data is
// written and flushed → metadata commit "hotzone done" (checksum mode offline: in the same commit as the next hotzone's
// "in re-encryption", after that one's checksums are flushed — `combine` below). With the parity (torn-write protection,
// `parityLayout`), the data goes in chunks, each flushed before the next is written. What the pipeline overlaps with
// that order is only work that writes nothing to disk:
//   - the read of the next hotzone starts as soon as the current one is in memory: it reads a range no write of the
//     current hotzone touches (forward: after it; backward / data shift: before it, and a data-shift write
//     [x+shift, x+2·shift) never meets a source [x', x'+shift) with x' < x);
//   - checksum mode: the next hotzone's checksums are hashed and its parity folded (thread pool, native addon, split
//     over the cores; one pass, each block folded right after it is hashed, while in cache) as soon as its read
//     ahead is in, i.e. while the current hotzone's data is written and committed;
//   - the journal is written while the checksums are hashed;
//   - the data is decrypted/re-encrypted (thread pool, 4 MiB slices, decrypt then encrypt per slice, one lane per
//     core) while the area is flushed and the "in re-encryption" metadata committed — each slice's new data is
//     written as soon as it is re-encrypted (with the parity: each chunk once the one before is flushed), but never
//     before that commit;
//   - large reads go in concurrent 4 MiB+ pieces (the page-cache copies then use every core), and so do writes to a
//     block device; to a regular file, one write at a time (its inode lock serialises writers; a waiting one spins);
//   - data shift (runShifted): after each "in re-encryption" commit, the hotzone is read → encrypted → written in one
//     fused native call (L2-sized slices, one run per core; O_DIRECT on a block device, one per pool thread), or by
//     lanes of 4 MiB pieces without the addon.
// Memory: two hotzone buffers (the current one and the one being read ahead), whatever the device size; data shift:
// 256 KiB per core (fused), or up to (cores + 1) × 4 MiB pieces of the engine's buffer.
import * as crypto from "node:crypto";
import { createHash } from "node:crypto";
import { availableParallelism } from "node:os";
import { uvThreadPoolSize } from "../util/threads.js";
import type { BlockDevice } from "../blockdev/types.js";
import { FileBlockDevice } from "../blockdev/file.js";
import { alignedBuffer } from "../blockdev/aligned.js";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { canRecryptCopy, nativeRecryptCopy, type SectorCipher } from "../dmcrypt/sector-cipher.js";
import { loadNative, type NativeAddon, type NativeHasher } from "../dmcrypt/native.js";
import type { Luks2Volume } from "../luks2/volume.js";
import { opensslHash } from "../luks2/kdf.js";
import type { Luks2Metadata } from "../luks2/metadata.js";
import { dataSegments } from "../luks2/segment.js";
import { mark } from "../util/timing.js";
import { hotMetadata, nextHotzone, postMetadata, shiftCopyLength, shiftSource, type ReencryptState } from "../luks2/reencrypt-metadata.js";
import { isDecryptShift } from "../luks2/reencrypt-shift-decrypt.js";

/** What the data path needs of reencrypt.ts's engine. */
export interface HotzoneEngine {
  v: Luks2Volume;
  dev: BlockDevice;
  hdrDev: BlockDevice;
  st: ReencryptState;
  dataOffset: number;
  dataSize: number;
  oldC: SectorCipher | null;
  newC: SectorCipher | null;
  hotzone: number;
  block: number;
  hashLen: number;
  /** Checksum mode with the torn-write protection (the old data's parity in the area, data written chunk by chunk). */
  withParity: boolean;
  /** The hotzone buffer (bufSize bytes), allocated on first use. */
  readonly buf: Buffer;
  bufSize: number;
}

/** Bytes per thread-pool crypto job (decrypt then re-encrypt): each job clones the cipher contexts, so not too small. */
const SLICE = 4 << 20;

/** Lanes of parallel thread-pool work (crypto, hashing): the cores libuv's pool can use. */
function lanes(): number {
  return Math.max(1, Math.min(availableParallelism(), uvThreadPoolSize()));
}

/** Where the old data of the hotzone at off is read from, given metadata with that hotzone in-reencryption. */
export function sourceOf(e: HotzoneEngine, hot: Luks2Metadata, off: number): number {
  if (!e.st.movedSeg) return e.dataOffset + off;
  const r = dataSegments(hot).findIndex((s) => s.flags.includes("in-reencryption"));
  const src = shiftSource(e.st, off, r);
  if (src < 0) throw new TrustvolError("ECORRUPT", "the data-shift hotzone has no source");
  return src;
}

/** How much of the data-shift hotzone at `len` in `hot` is copied (shiftCopyLength). */
export function copyLengthOf(e: HotzoneEngine, hot: Luks2Metadata, len: number): number {
  if (!e.st.movedSeg) return len;
  return shiftCopyLength(e.st, dataSegments(hot).findIndex((s) => s.flags.includes("in-reencryption")), len);
}

/** Decrypt with the old key and encrypt with the new one, in place, on this thread. */
export function recrypt(e: HotzoneEngine, data: Buffer, off: number): void {
  if (e.oldC) e.oldC.decrypt(data, off / e.oldC.sectorSize);
  if (e.newC) e.newC.encrypt(data, off / e.newC.sectorSize);
}

/**
 * The same on the thread pool, `lanes()` slices of `slice` bytes at a time; `data` must not be touched until it
 * settles. `sliceDone` (not awaited) is told of each slice as soon as it is re-encrypted (its offset in the data area).
 */
export async function recryptAsync(e: HotzoneEngine, data: Buffer, off: number, sliceDone?: (slice: Buffer, at: number) => void, slice = SLICE): Promise<void> {
  const { oldC, newC } = e;
  if (!(oldC?.decryptAsync ?? true) || !(newC?.encryptAsync ?? true)) {
    recrypt(e, data, off);
    return sliceDone?.(data, off);
  }
  const n = Math.ceil(data.length / slice);
  let next = 0;
  const lane = async (): Promise<void> => {
    for (let i = next++; i < n; i = next++) {
      const s = data.subarray(i * slice, Math.min(data.length, (i + 1) * slice));
      const at = off + i * slice;
      if (oldC) await oldC.decryptAsync!(s, at / oldC.sectorSize, 1);
      if (newC) await newC.encryptAsync!(s, at / newC.sectorSize, 1);
      sliceDone?.(s, at);
    }
  };
  await settleAll(Array.from({ length: Math.min(n, lanes()) }, lane));
}

const oneShot = (crypto as unknown as { hash?: (alg: string, data: Uint8Array, enc: "buffer") => Buffer }).hash;
/** Checksum of one block (cryptsetup's reencrypt checksum: the area's hash over the block). */
export function hashBlock(e: HotzoneEngine, b: Uint8Array): Buffer {
  const alg = opensslHash(e.st.keyslot.area.hash!);
  return oneShot ? oneShot(alg, b, "buffer") : createHash(alg).update(b).digest();
}

/** Checksums of every block of data, on this thread. */
export function checksums(e: HotzoneEngine, data: Buffer): Buffer {
  const n = Math.ceil(data.length / e.block);
  const out = Buffer.alloc(n * e.hashLen);
  for (let i = 0; i < n; i++) hashBlock(e, data.subarray(i * e.block, (i + 1) * e.block)).copy(out, i * e.hashLen);
  return out;
}

/** Wait for every promise (so no thread-pool job still uses a buffer), then throw the first failure. */
async function settleAll(ps: Promise<unknown>[]): Promise<void> {
  const r = await Promise.allSettled(ps);
  const bad = r.find((x): x is PromiseRejectedResult => x.status === "rejected");
  if (bad) throw bad.reason;
}

/** Native block hasher for the checksums (H(block): hash type 1 with no salt), or null (pure TypeScript). */
function nativeHasher(e: HotzoneEngine): { a: NativeAddon; h: NativeHasher } | null {
  if (e.st.resilience !== "checksum") return null;
  const a = loadNative();
  if (!a?.hasherCreate || !a.hashBlocksAsync || !a.hasherDigestSize) return null;
  try {
    const h = a.hasherCreate(opensslHash(e.st.keyslot.area.hash!), new Uint8Array(0), 1);
    return a.hasherDigestSize(h) === e.hashLen ? { a, h } : null;
  } catch {
    return null; // an algorithm the addon's OpenSSL lacks: hash in TypeScript
  }
}

export interface HotzoneRun {
  signal?: AbortSignal;
  onProgress?: (p: { done: number; total: number }) => void;
  interrupted: (done: number, total: number) => Error;
  /** Online re-encryption (reencrypt-online.ts): quiesce/remap around each hotzone; no read-ahead then (the fs writes). */
  hooks?: { before(hot: Luks2Metadata, keys: Map<number, Buffer>): Promise<void> | void; after(post: Luks2Metadata): Promise<void> | void };
  keys?: Map<number, Buffer>;
}

/** Re-encrypt every hotzone left (after any crash recovery); returns the bytes processed. */
export async function runHotzones(e: HotzoneEngine, run: HotzoneRun): Promise<number> {
  const { v, dev, hdrDev, st } = e;
  // (a decryption with a data shift does its moved segment, at offset 0, last: cryptsetup counts it so too)
  const moved = isDecryptShift(st) ? st.movedSeg!.size! : 0;
  const doneBytes = (hz: { off: number; len: number } | null) => (!hz ? e.dataSize : moved ? (hz.off === 0 ? e.dataSize - moved : hz.off - moved) : st.direction === "forward" ? hz.off : e.dataSize - hz.off - hz.len);
  // A data shift has its own loop (lanes in the engine's buffer): none of the read-ahead/hashing set-up below.
  if (st.resilience === "datashift") {
    if (run.hooks) throw new TrustvolError("EUNSUPPORTED", "online re-encryption with a data shift is not supported");
    return runShifted(e, run, doneBytes);
  }
  const area = st.keyslot.area;
  const hasher = nativeHasher(e);
  const lanesN = lanes();
  let cur: Buffer = e.buf;
  let other: Buffer = alignedBuffer(e.buf.length);
  // The parity of each (checksum mode with parity), kept with its buffer: no 4 MiB garbage per hotzone.
  const parityMax = e.withParity ? parityLayout(e.buf.length, e.block, e.hashLen).chunk : 0;
  let pCur = Buffer.alloc(parityMax), pOther = Buffer.alloc(parityMax);
  /** The read ahead into `other`: source offset, length, completion, and (checksum mode) its checksums, hashed then. */
  let ahead: Ahead | null = null;
  const pending = new Set<Promise<unknown>>();
  const track = <T>(p: Promise<T>): Promise<T> => {
    const q: Promise<unknown> = p.then(() => pending.delete(q), () => pending.delete(q));
    pending.add(q);
    return p;
  };
  const readAhead = (src: number, n: number) => {
    const b = other.subarray(0, n);
    const done = track(readPar(dev, b, src, lanesN));
    // The next hotzone's checksums are hashed as soon as its data is in, while this one is written and committed
    // (it writes nothing; the range is one no write of this hotzone touches, so the sums are those of its old data).
    const chunk = e.withParity ? parityLayout(n, e.block, e.hashLen).chunk : 0;
    ahead = { src, n, done, old: hasher ? oldDataSums(done, b, chunk, pOther) : undefined };
  };
  /** The old data at [src, src+n) in `cur`: the read ahead when it is that range, else read now. */
  const take = async (src: number, n: number): Promise<{ data: Buffer; old?: OldSums }> => {
    const a = ahead as Ahead | null;
    ahead = null;
    if (a) {
      const hit = a.src === src && a.n === n;
      await (hit ? a.done : a.done.catch(() => {}));
      if (hit) {
        [cur, other] = [other, cur];
        [pCur, pOther] = [pOther, pCur];
        return { data: cur.subarray(0, n), old: a.old };
      }
      // still hashing `other`: let it finish before that buffer is read into again
      await Promise.allSettled([a.old?.sums, a.old?.parity]);
    }
    const b = cur.subarray(0, n);
    await readPar(dev, b, src, lanesN);
    return { data: b };
  };
  const checksumsAsync = async (data: Buffer): Promise<Buffer> => {
    if (!hasher) return checksums(e, data);
    const count = Math.ceil(data.length / e.block);
    const out = Buffer.alloc(count * e.hashLen);
    // Jobs of at most POOL_JOB bytes: the pool runs jobs in order, and the data writes queued behind them wait less.
    const per = Math.min(Math.ceil(count / lanesN), Math.max(1, Math.floor(POOL_JOB / e.block)));
    const jobs: Promise<void>[] = [];
    for (let first = 0; first < count; first += per) {
      const k = Math.min(per, count - first);
      jobs.push(hasher.a.hashBlocksAsync!(hasher.h, -1, 0, data.subarray(first * e.block, (first + k) * e.block), k, e.block, out.subarray(first * e.hashLen, (first + k) * e.hashLen)));
    }
    await settleAll(jobs);
    return out;
  };
  /**
   * The checksums of the old data (and its parity into parityOut, when chunk > 0) once `ready` settles: in one pass
   * when the addon folds and hashes together (each block hashed, then folded while in cache), else two.
   */
  const oldDataSums = (ready: Promise<void>, data: Buffer, chunk: number, parityOut: Buffer): OldSums => {
    const fold = hasher?.a.xorFoldAsync;
    if (chunk && fold && data.length % e.block === 0 && chunk % e.block === 0) {
      const out = parityOut.subarray(0, chunk);
      const sums = Buffer.alloc((data.length / e.block) * e.hashLen);
      // parity ranges of whole blocks, each job hashing at most POOL_JOB bytes, at least one job per lane
      const chunks = Math.ceil(data.length / chunk);
      const per = e.block * Math.max(1, Math.min(Math.ceil(chunk / lanesN / e.block), Math.floor(POOL_JOB / chunks / e.block)));
      const both = track(
        ready.then(async () => {
          const jobs: Promise<void>[] = [];
          for (let f = 0; f < chunk; f += per) jobs.push(fold(data, chunk, out, f, Math.min(chunk, f + per), hasher!.h, e.block, sums));
          await settleAll(jobs);
        }),
      );
      const r = { sums: both.then(() => sums), parity: both.then(() => out) };
      r.sums.catch(() => {}); // awaited when the hotzone is taken (or settled on a miss)
      r.parity.catch(() => {});
      return r;
    }
    const sums = track(ready.then(() => checksumsAsync(data)));
    sums.catch(() => {});
    const parity = chunk ? track(ready.then(() => parityAsync(data, chunk, lanesN * 4, parityOut.subarray(0, chunk)))) : undefined;
    parity?.catch(() => {});
    return { sums, parity };
  };

  // Checksum mode offline: a hotzone's "done" reaches the disk in the next one's "in re-encryption" commit (as the data
  // shift's do): one commit and two flushes less per hotzone. The next checksums are written only once this hotzone's
  // data is flushed, so a cut before that commit leaves "this hotzone in re-encryption" over new data only, which
  // matches none of the checksums then in the area: recovery, cryptsetup's and ours, keeps every block.
  const combine = st.resilience === "checksum" && !run.hooks;
  /** The metadata the next hotzone starts from: the last commit, or a "done" that goes with the next "hot" commit. */
  let meta = v.metadata;
  let doneOwed = false;
  let bytes = 0;
  try {
    let hz = nextHotzone(v.metadata, st, e.dataSize, e.hotzone);
    run.onProgress?.({ done: doneBytes(hz), total: e.dataSize });
    while (hz) {
      const { off, len } = hz;
      if (run.signal?.aborted) {
        if (doneOwed) await v.commit(meta);
        doneOwed = false;
        throw run.interrupted(doneBytes(hz), e.dataSize);
      }
      const hot = hotMetadata(meta, st, off, len, e.dataSize);
      const src = sourceOf(e, hot, off);
      // What the next hotzone will be once this one is committed done (pure functions of the metadata committed).
      const post = postMetadata(st.resilience === "none" ? meta : hot, st, off, len, e.dataSize);
      const nz = nextHotzone(post, st, e.dataSize, e.hotzone);
      // (the next hotzone's metadata only for a data shift's moved source; otherwise its source is its offset)
      const nextSrc = !nz ? -1 : e.st.movedSeg ? sourceOf(e, hotMetadata(post, st, nz.off, nz.len, e.dataSize), nz.off) : e.dataOffset + nz.off;
      // The "hot" commit is validated and encoded now, while the data is read and hashed; written after the flush.
      const hotCommit = st.resilience !== "none" ? v.prepareCommit(hot) : null;
      // Online: the hotzone is stable only once the hook has suspended and remapped it, so read after it, never ahead.
      await run.hooks?.before(hot, run.keys ?? new Map());
      const { data, old: hashedAhead } = await take(src, len);
      mark(`hotzone ${off}+${len}: read`);
      if (nz && !run.hooks) readAhead(nextSrc, nz.len);
      // The journal is written while the checksums are hashed: both only read data.
      const copying = st.resilience === "journal" ? writePar(hdrDev, data, area.offset, writeParts(hdrDev, lanesN)) : null;
      copying?.catch(() => {}); // awaited below; a failure must not count as unhandled while the hashing runs
      const lay = e.withParity ? parityLayout(len, e.block, e.hashLen) : null;
      let sums: Buffer | null = null, parity: Buffer | null = null;
      try {
        if (st.resilience === "checksum") {
          const old = hashedAhead ?? oldDataSums(Promise.resolve(), data, lay?.chunk ?? 0, pCur);
          sums = await old.sums;
          parity = old.parity ? await old.parity : null;
        }
      } finally {
        if (copying) await copying;
      }
      // (the tag, with the parity: which hotzone these checksums are of — a cut between this flush and the "hot" commit
      // leaves the previous hotzone named in the header, its data all new, and the area this one's)
      const tag = parity ? parityTag(off, len, sums!.subarray(0, Math.floor(len / e.block) * e.hashLen)) : null;
      if (sums) await Promise.all([hdrDev.write(sums, area.offset), parity && hdrDev.write(parity, area.offset + lay!.parity), tag && hdrDev.write(tag, area.offset + lay!.tag)]);
      mark("hotzone: sums + parity written");
      // From here data's old content is on disk (journal / parity) or not needed (checksums taken): re-encrypt it
      // while the area is flushed and the metadata commit point is written. Each re-encrypted slice is written as soon
      // as that commit is on disk (without the parity, one hotzone's data writes have no order among themselves).
      const hotOnDisk = deferred<void>();
      const writes: Promise<void>[] = [];
      // With the parity, chunk k is written once it is re-encrypted and chunk k-1 is on disk (flushed): a cut can tear
      // only one chunk, which the parity rebuilds (recovery in reencrypt.ts).
      const parts = writeParts(dev, lanesN);
      const chunks = lay ? chunkWriter(dev, data, e.dataOffset + off, lay.chunk, hotOnDisk.promise, parts) : null;
      if (chunks) writes.push(track(chunks.written));
      const serial = parts === 1; // one write at a time on a regular file (see writeParts)
      let lastWrite = hotOnDisk.promise;
      const recrypting = track(
        recryptAsync(e, data, off, (slice, at) => {
          if (chunks) return chunks.ready(at - off, slice.length);
          const w = track((serial ? lastWrite : hotOnDisk.promise).then(() => dev.write(slice, e.dataOffset + at)));
          w.catch(() => {}); // settled below (or by the pending set when the run fails first)
          writes.push(w);
          if (serial) lastWrite = w;
        }, lay?.chunk),
      );
      recrypting.catch((err) => chunks?.fail(err));
      try {
        if (st.resilience !== "none") {
          await hdrDev.flush();
          // Metadata commit point: from here the header says the hotzone may hold old or new data.
          await hotCommit!.write();
          doneOwed = false;
          mark("hotzone: hot committed");
        }
        hotOnDisk.resolve();
      } catch (err) {
        hotOnDisk.reject(err); // no slice is written
        throw err;
      } finally {
        await recrypting.catch(() => {});
      }
      await recrypting;
      // The "done" commit is validated and encoded while the slices' writes run on the pool; written after the flush
      // (combined: with the next hotzone's "hot", unless this is the last).
      const done = combine && nz ? null : v.prepareCommit(post);
      await settleAll(writes);
      mark("hotzone: data written");
      if (!chunks) await dev.flush(); // the chunk writer flushed its last chunk
      mark("hotzone: flushed");
      meta = post;
      if (done) await done.write();
      doneOwed = !done;
      mark(done ? "hotzone: done committed" : "hotzone: done (with the next commit)");
      await run.hooks?.after(v.metadata);
      bytes += len;
      hz = nz;
      run.onProgress?.({ done: doneBytes(hz), total: e.dataSize });
    }
    return bytes;
  } finally {
    await Promise.allSettled([...pending]);
    wipe(other);
    wipe(pCur);
    wipe(pOther);
    // e.buf (one of the two) is wiped by the engine's dispose(); `cur` may be the spare: wipe both to be sure.
    wipe(cur);
  }
}

/** A hotzone's old-data checksums and (checksum mode with parity) its parity, as they are computed. */
interface OldSums {
  sums: Promise<Buffer>;
  parity?: Promise<Buffer>;
}

interface Ahead {
  src: number;
  n: number;
  done: Promise<void>;
  /** Checksum mode with the addon's hasher: hashed (and folded) once the read is in. */
  old?: OldSums;
}

/**
 * Writes a hotzone's chunks in order, each once it is wholly re-encrypted (`ready`) and the one before is written and
 * flushed; the first not before `start`. `written` settles when the last chunk is flushed (or on the first failure).
 */
function chunkWriter(dev: BlockDevice, data: Buffer, at: number, chunk: number, start: Promise<void>, parts: number) {
  const n = Math.ceil(data.length / chunk);
  const piece = (k: number) => data.subarray(k * chunk, Math.min(data.length, (k + 1) * chunk));
  const left = Array.from({ length: n }, (_, k) => piece(k).length);
  const whole = Array.from({ length: n }, () => deferred<void>());
  const written = (async () => {
    await start;
    for (let k = 0; k < n; k++) {
      await whole[k]!.promise;
      await ioPar((b, o) => dev.write(b, o), piece(k), at + k * chunk, parts, CHUNK_PIECE);
      await dev.flush();
    }
  })();
  written.catch(() => {}); // awaited by the caller
  return {
    written,
    /** Bytes [rel, rel+len) of data are re-encrypted. */
    ready(rel: number, len: number): void {
      for (let k = Math.floor(rel / chunk); k < n && k * chunk < rel + len; k++) {
        left[k]! -= Math.min(rel + len, (k + 1) * chunk) - Math.max(rel, k * chunk);
        if (left[k] === 0) whole[k]!.resolve();
      }
    },
    fail(err: unknown): void {
      for (const w of whole) w.reject(err);
    },
  };
}

/** Concurrent pieces of one write: one on a regular file (the inode lock serialises its writers, a waiting one spins). */
const writeParts = (dev: BlockDevice, n: number) => (dev instanceof FileBlockDevice && !dev.isBlockDevice ? 1 : n);

/** Smallest piece a parity-protected data chunk is written in (two or more pieces, so both cores copy). */
const CHUNK_PIECE = 1 << 20;

/** Largest hashing job (bytes hashed) of a hotzone's checksums. */
const POOL_JOB = 2 << 20;

/** Smallest piece a large read or write is split into (so the kernel's page-cache copies run on every core). */
const IO_PIECE = 4 << 20;

/** Split [off, off+buf.length) into up to `parts` pieces of `min` multiples and run `op` on them at once. */
async function ioPar(op: (b: Buffer, at: number) => Promise<void>, buf: Buffer, off: number, parts: number, min = IO_PIECE): Promise<void> {
  const per = Math.max(min, Math.ceil(buf.length / parts / min) * min);
  if (buf.length <= per) return op(buf, off);
  const jobs: Promise<void>[] = [];
  for (let p = 0; p < buf.length; p += per) jobs.push(op(buf.subarray(p, Math.min(buf.length, p + per)), off + p));
  await settleAll(jobs);
}
/** Read buf at off, in up to `parts` concurrent pieces. */
export const readPar = (dev: BlockDevice, buf: Buffer, off: number, parts: number) => ioPar((b, at) => dev.read(b, at), buf, off, parts);
/** Write buf at off, in up to `parts` concurrent pieces (one write's pieces have no order anyway: a power cut may
 * keep any of them). */
export const writePar = (dev: BlockDevice, buf: Buffer, off: number, parts: number) => ioPar((b, at) => dev.write(b, at), buf, off, parts);

/** Piece of a data-shift hotzone one lane reads, re-encrypts and writes when the fused native path cannot run. */
const SHIFT_PIECE = 4 << 20;

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
}
function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((a, b) => ((resolve = a), (reject = b)));
  promise.catch(() => {}); // awaited later (or never, once the run has failed): not an unhandled rejection
  return { promise, resolve, reject };
}

/**
 * The fused copy on a file or block device: [src, src+len) read, decrypted with `from`, encrypted with `to` (either
 * may be null) and written at dst (ranges inside the device, not overlapping) by the native addon on the device's
 * O_DIRECT descriptor when it has one (a block device, 4 KiB-aligned ranges), else its buffered one; null when it
 * cannot run (another device, no addon): the caller copies piece by piece. Failures are one-line errors naming the
 * device.
 */
export function fusedCopy(dev: BlockDevice, src: number, dst: number, len: number, at: number, from: SectorCipher | null, to: SectorCipher | null): Promise<void> | null {
  if (!(dev instanceof FileBlockDevice) || dev.readOnly || src + len > dev.size || dst + len > dev.size) return null;
  // Overlapping ranges: the caller's pieces, one at a time in order, move them correctly; the addon's parallel slices
  // would not.
  if (Math.abs(dst - src) < len) return null;
  if (!canRecryptCopy(from, to)) return null;
  const copyOn = (fd: number, parts: number) => nativeRecryptCopy(fd, src, dst, len, at, from, to, parts)!;
  return (async () => {
    // A block device goes O_DIRECT (its page cache made every hotzone's flush a slow writeback): the addon's slices
    // are 4 KiB-aligned buffers; a device that refuses the transfer (EINVAL) gets the same copy again, buffered (the
    // source is untouched by it).
    const direct = src % 4096 === 0 && dst % 4096 === 0 ? await dev.directFdFor(src, len) : null;
    if (direct !== null) {
      // Every pool thread: a job waits on the device for most of each slice, so more in flight than cores keeps the
      // device busy (loop device with direct I/O: a 1 GiB hotzone loop 0.65 → 0.52 s with 4 jobs instead of 2).
      const r = await copyOn(direct, Math.max(lanes(), uvThreadPoolSize())).then(() => true, (err: NodeJS.ErrnoException) => {
        if (err.code !== "EINVAL") throw err;
        dev.directRefused();
        return false;
      });
      if (r) return;
    }
    await copyOn(dev.fd, lanes());
  })().catch((err: NodeJS.ErrnoException) => {
    if (err instanceof TrustvolError) throw err;
    if (err.code === "ETRUNCATED") throw new TrustvolError("ETRUNCATED", `${dev.name}: ${err.message}`, "the image is truncated or the wrong device");
    const code = ["ENOSPC", "EDQUOT", "EFBIG"].includes(err.code!) ? "ENOSPC" : ["EROFS", "EACCES", "EPERM", "EBADF"].includes(err.code!) ? "EDEVICE" : "EIO";
    throw new TrustvolError(code, `${dev.name}: ${err.message}`, "fix the device, then run the same command again: the header records how far it got (--resume-only)");
  });
}

/**
 * Encryption in place with a data shift (datashift resilience), hotzone by hotzone in the write order of the loop
 * above: commit the hotzone in re-encryption → copy its data, re-encrypted, from its source to its place → flush →
 * commit it done, in the same commit as the next hotzone in re-encryption. On a file or block device with the native
 * engine the copy is one fused call (fusedCopy: read → crypt → write in L2-sized slices, one run per core or, O_DIRECT,
 * per pool thread), else lanes of 4 MiB pieces. Nothing is read ahead of a commit any more: the next commit is encoded
 * during the copy, and the fused copy saves more than the overlap did.
 */
async function runShifted(e: HotzoneEngine, run: HotzoneRun, doneBytes: (hz: { off: number; len: number } | null) => number): Promise<number> {
  const { v, dev, st } = e;
  const piece = Math.max(e.block, Math.min(SHIFT_PIECE, e.hotzone) - (Math.min(SHIFT_PIECE, e.hotzone) % e.block));
  const nLanes = Math.max(1, Math.min(lanes() + 1, Math.floor(e.bufSize / piece)));
  let pool = null as Buffer | null; // the engine's buffer, or a spare when it holds less than one piece per lane
  const copyPieces = async (src: number, dst: number, len: number, at: number): Promise<void> => {
    let next = 0;
    const n = Math.ceil(len / piece);
    // Overlapping ranges must go one piece after another, each read before the write that may cover it (no copy of
    // the engine's does that now: shiftCopyLength): one lane, in the order that reads a source before it is covered.
    const overlap = Math.abs(dst - src) < len;
    const order = (i: number) => (overlap && dst > src ? n - 1 - i : i);
    // One write at a time: tmpfs and ext4 serialise writers on the inode lock, and a waiting writer spins on a core.
    let writing: Promise<unknown> = Promise.resolve();
    const lane = async (buf: Buffer): Promise<void> => {
      for (let k = next++; k < n; k = next++) {
        const p = order(k) * piece;
        const b = buf.subarray(0, Math.min(piece, len - p));
        await dev.read(b, src + p);
        await recryptAsync(e, b, at + p);
        const w = writing.then(() => dev.write(b, dst + p));
        writing = w.catch(() => {}); // the lane that wrote it reports a failure; the next write still waits for it
        await w;
      }
    };
    pool ??= e.bufSize >= nLanes * piece ? e.buf : Buffer.allocUnsafeSlow(nLanes * piece);
    const lanesPool = pool;
    await settleAll(Array.from({ length: overlap ? 1 : Math.min(n, nLanes) }, (_, l) => lane(lanesPool.subarray(l * piece, (l + 1) * piece))));
  };
  const copy = (src: number, dst: number, len: number, at: number): Promise<void> => fusedCopy(dev, src, dst, len, at, e.oldC, e.newC) ?? copyPieces(src, dst, len, at);
  let bytes = 0;
  // Decryption with a data shift ends with the moved segment, decrypted in place under checksum/journal protection.
  const inPlace = (z: { off: number } | null) => !!z && isDecryptShift(st) && z.off === 0;
  try {
    let hz = nextHotzone(v.metadata, st, e.dataSize, e.hotzone);
    run.onProgress?.({ done: doneBytes(hz), total: e.dataSize });
    if (!hz) return 0;
    if (run.signal?.aborted) throw run.interrupted(doneBytes(hz), e.dataSize);
    let hot = hotMetadata(v.metadata, st, hz.off, hz.len, e.dataSize);
    if (inPlace(hz)) await protectMoved(e, hz.len);
    // Metadata commit point: from here the header says the hotzone may hold old or new data (its source is intact).
    await v.commit(hot);
    for (;;) {
      const copying = inPlace(hz) ? decryptMovedInPlace(e, hz.len) : copy(sourceOf(e, hot, hz.off), e.dataOffset + hz.off, copyLengthOf(e, hot, hz.len), hz.off);
      copying.catch(() => {}); // awaited below, also when planning fails
      // While the pool copies: the next commit, planned (pure functions of the metadata) and encoded. One commit says
      // both "this hotzone is done" and "the next is in re-encryption" (cryptsetup commits the two states apart; the
      // one in between never needs to be on disk: after a cut either state is one cryptsetup writes itself).
      let post: Luks2Metadata, nz: { off: number; len: number } | null, nextHot: Luks2Metadata | null, prepared: { write(): Promise<void> };
      try {
        post = postMetadata(hot, st, hz.off, hz.len, e.dataSize);
        nz = nextHotzone(post, st, e.dataSize, e.hotzone);
        nextHot = nz ? hotMetadata(post, st, nz.off, nz.len, e.dataSize) : null;
        prepared = v.prepareCommit(nextHot ?? post);
      } finally {
        await copying;
      }
      await dev.flush();
      mark("shift: hotzone written");
      bytes += hz.len;
      if (!nz || !nextHot || run.signal?.aborted) {
        // (the moved segment, a decryption's last hotzone: its "done" goes straight to the final commit (finishRun),
        // never as a state of its own, which cryptsetup would resume by decrypting the moved segment again)
        if (!(inPlace(hz) && !nz)) await (nextHot ? v.commit(post) : prepared.write());
        run.onProgress?.({ done: doneBytes(nz), total: e.dataSize });
        if (nz) throw run.interrupted(doneBytes(nz), e.dataSize);
        return bytes;
      }
      // (the moved segment's old data is kept in the area before the commit that names it; no shifted hotzone's
      // recovery reads the area, so the header may still name the one just written)
      if (inPlace(nz)) await protectMoved(e, nz.len);
      await prepared.write();
      mark("shift: next hot committed");
      [hz, hot] = [nz, nextHot];
      run.onProgress?.({ done: doneBytes(hz), total: e.dataSize });
    }
  } finally {
    if (pool) wipe(pool.subarray(0, nLanes * piece));
  }
}

/**
 * The moved segment's old data, kept before its hotzone is committed in re-encryption (cryptsetup
 * reencrypt_hotzone_protect_final with the moved segment's resilience): datashift-checksum its checksums (and, as in
 * checksum mode, our parity and tag when they fit the area), datashift-journal a copy; then flushed. Read piece by
 * piece: the moved segment may be longer than the engine's buffer.
 */
async function protectMoved(e: HotzoneEngine, len: number): Promise<void> {
  const { dev, hdrDev, st } = e;
  const area = st.keyslot.area;
  const piece = e.buf.subarray(0, Math.min(e.buf.length, len));
  if (st.movedResilience === "journal") {
    for (let p = 0; p < len; p += piece.length) {
      const b = piece.subarray(0, Math.min(piece.length, len - p));
      await dev.read(b, e.dataOffset + p);
      await hdrDev.write(b, area.offset + p);
    }
  } else {
    const lay = parityLayout(len, e.block, e.hashLen);
    const sums = Buffer.alloc(Math.floor(len / e.block) * e.hashLen);
    const acc = e.withParity ? Buffer.alloc(lay.chunk) : null;
    const step = acc ? lay.chunk : piece.length - (piece.length % e.block);
    if (step > piece.length || step <= 0) throw new TrustvolError("EINTERNAL", "the engine's buffer is smaller than the moved segment's parity chunk", "this is a bug in trustvol");
    for (let p = 0; p < len; p += step) {
      const b = piece.subarray(0, Math.min(step, len - p));
      await dev.read(b, e.dataOffset + p);
      checksums(e, b).copy(sums, (p / e.block) * e.hashLen);
      if (acc) xorInto(acc, b);
    }
    await hdrDev.write(sums, area.offset);
    if (acc) {
      await hdrDev.write(acc, area.offset + lay.parity);
      await hdrDev.write(parityTag(0, len, sums), area.offset + lay.tag);
      wipe(acc);
    }
  }
  await hdrDev.flush();
  wipe(piece);
}

/**
 * The moved segment decrypted in place once its hotzone is committed: with the parity chunk by chunk, each flushed (a
 * cut tears at most one, which recovery rebuilds), else piece by piece; the caller flushes the last.
 */
async function decryptMovedInPlace(e: HotzoneEngine, len: number): Promise<void> {
  const step0 = e.withParity && e.st.movedResilience === "checksum" ? parityLayout(len, e.block, e.hashLen).chunk : e.buf.length - (e.buf.length % e.block);
  const piece = e.buf.subarray(0, Math.min(step0, len));
  try {
    for (let p = 0; p < len; p += piece.length) {
      const b = piece.subarray(0, Math.min(piece.length, len - p));
      await e.dev.read(b, e.dataOffset + p);
      await recryptAsync(e, b, p);
      await e.dev.write(b, e.dataOffset + p);
      if (p + b.length < len) await e.dev.flush();
    }
  } finally {
    wipe(piece);
  }
}

/** Largest parity chunk: the default hotzone (24 MiB) goes in 8 chunks of 3 MiB, a 32 MiB one in 8 of 4 MiB. */
export const PARITY_CHUNK_MAX = 4 << 20;

/**
 * Area layout of checksum mode's torn-write protection (trustvol's; cryptsetup reads only the checksums) for a hotzone
 * of len bytes: [old checksums | 4K-aligned parity | 4K-aligned tag]. The parity is the XOR of the old data's chunks
 * of `chunk` bytes (the last one zero-padded). The data is written chunk by chunk, each flushed before the next, so a
 * power cut can tear at most one chunk: the XOR of the parity with every other chunk's old data (read back, or
 * re-encrypted back from its new data) is that chunk's old data, verified against its checksums. The tag
 * (`parityTag`) says which hotzone those checksums are of: offline, the next hotzone's checksums are written while
 * the header still names this one (`combine`), and a rebuild checked against another hotzone's checksums could pass.
 */
export function parityLayout(len: number, block: number, hashLen: number): { sums: number; parity: number; chunk: number; tag: number; end: number } {
  const n = Math.floor(len / block) * hashLen;
  const parity = Math.ceil(n / 4096) * 4096;
  const chunk = Math.max(block, Math.min(PARITY_CHUNK_MAX, Math.ceil(len / 8 / block) * block));
  const tag = Math.ceil((parity + chunk) / 4096) * 4096;
  return { sums: 0, parity, chunk, tag, end: tag + PARITY_TAG_SIZE };
}

/** Bytes the tag takes in the area (one 4 KiB block; the record is its first 112). */
export const PARITY_TAG_SIZE = 4096;
const PARITY_TAG_MAGIC = Buffer.from("trustvol-partag1", "latin1");

/**
 * The tag of a hotzone's checksums: magic(16) ‖ hotzone offset in the data area, length: u64 BE ‖ SHA-256 of its
 * checksums (the whole blocks' only, as recovery reads them) ‖ SHA-256 of the 64 bytes before; zero-padded.
 */
export function parityTag(off: number, len: number, sums: Uint8Array): Buffer {
  const b = Buffer.alloc(PARITY_TAG_SIZE);
  PARITY_TAG_MAGIC.copy(b, 0);
  b.writeBigUInt64BE(BigInt(off), 16);
  b.writeBigUInt64BE(BigInt(len), 24);
  createHash("sha256").update(sums).digest().copy(b, 32);
  createHash("sha256").update(b.subarray(0, 64)).digest().copy(b, 64);
  return b;
}

/** Whether tag (read from the area) is the tag of these checksums of the hotzone [off, off+len): else no rebuild. */
export function parityTagMatches(tag: Buffer, off: number, len: number, sums: Uint8Array): boolean {
  return tag.length >= 96 && tag.subarray(0, 96).equals(parityTag(off, len, sums).subarray(0, 96));
}

/** The XOR of data's chunks (the last zero-padded) into out (chunk bytes), on the thread pool in `parts` ranges when the addon has it. */
export async function parityAsync(data: Buffer, chunk: number, parts: number, out: Buffer = Buffer.alloc(chunk)): Promise<Buffer> {
  const a = loadNative();
  if (a?.xorFoldAsync) {
    const per = Math.ceil(chunk / parts / 64) * 64;
    const jobs: Promise<void>[] = [];
    for (let f = 0; f < chunk; f += per) jobs.push(a.xorFoldAsync(data, chunk, out, f, Math.min(chunk, f + per)));
    await settleAll(jobs);
    return out;
  }
  out.fill(0);
  xorInto(out, data, chunk);
  return out;
}

/** acc ^= each chunk of data in turn (pure TypeScript: the parity without the addon, and recovery's rebuild). */
export function xorInto(acc: Buffer, data: Buffer, chunk = data.length): void {
  for (let base = 0; base < data.length; base += chunk) {
    const n = Math.min(chunk, data.length - base, acc.length);
    let i = 0;
    if ((acc.byteOffset | (data.byteOffset + base)) % 4 === 0) {
      const a = new Int32Array(acc.buffer, acc.byteOffset, n >> 2), d = new Int32Array(data.buffer, data.byteOffset + base, n >> 2);
      for (; i < a.length; i++) a[i]! ^= d[i]!;
      i <<= 2;
    }
    for (; i < n; i++) acc[i]! ^= data[base + i]!;
  }
}
