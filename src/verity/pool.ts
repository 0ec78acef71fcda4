// Block hashing for the verity tree: one digest per block, salted as the hash type says, spread over worker threads.
// Workers get blocks through SharedArrayBuffers (no copies) and write digests back the same way.
// The worker is inline JavaScript (eval) so it runs the same from src/ under tsx and from dist/ after a build.
// Hashing engine: the native addon's hashBlocks (a whole chunk of blocks per call, digests straight into the output
// buffer, salted prefix context copied per block in C) when it is built, else node:crypto per block. The same engine
// serves format, verify, the root hash and the calling-thread path for small inputs. With the addon, the parallel
// path needs no worker isolates at all: each chunk is one hashBlocksAsync job on libuv's thread pool (pread + hash in
// C), at most `threads` at a time; worker threads remain the engine of the pure-JavaScript fallback.
import { Worker } from "node:worker_threads";
import { createHash } from "node:crypto";
import { availableParallelism } from "node:os";
import { TrustvolError } from "../util/errors.js";
import { loadNative, nativeAddonPath, type NativeAddon, type NativeHasher } from "../dmcrypt/native.js";

export interface HashSpec {
  algorithm: string;
  salt: Uint8Array;
  hashType: 0 | 1;
  digestSize: number;
}

const WORKER_SOURCE = `
const { parentPort } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { readSync } = require("node:fs");
let alg, salt, type, ds, base, local = null, nat = null, nh = null;
parentPort.on("message", (m) => {
  if (m.op === "init") {
    alg = m.algorithm; salt = Buffer.from(m.salt); type = m.hashType; ds = m.digestSize;
    base = createHash(alg); if (type === 1) base.update(salt);
    if (m.addon) {
      try {
        const a = require(m.addon);
        const h = a.hasherCreate(alg, salt, type);
        if (a.hasherDigestSize(h) === ds) { nat = a; nh = h; }
      } catch { nat = null; nh = null; }
    }
    return;
  }
  try {
    let inp;
    if (m.fd !== undefined) {
      // Read the chunk on this thread: no hand-off, and the bytes are still in this core's cache when hashed.
      const len = m.count * m.bs;
      if (!local || local.length < len) local = Buffer.allocUnsafeSlow(len);
      let done = 0;
      while (done < len) {
        const n = readSync(m.fd, local, done, len - done, m.pos + done);
        if (n === 0) throw new Error("unexpected end of data at " + (m.pos + done));
        done += n;
      }
      inp = local;
    } else inp = new Uint8Array(m.inp, 0, m.count * m.bs);
    if (nat) {
      nat.hashBlocks(nh, inp, m.count, m.bs, new Uint8Array(m.out));
      parentPort.postMessage({ id: m.id });
      return;
    }
    const out = Buffer.from(m.out);
    // latin1 digests are plain V8 strings: cheaper per block than allocating a Buffer for each digest.
    for (let i = 0; i < m.count; i++) {
      const blk = inp.subarray(i * m.bs, (i + 1) * m.bs);
      const d = type === 1 ? base.copy().update(blk).digest("latin1") : createHash(alg).update(blk).update(salt).digest("latin1");
      out.latin1Write(d, i * ds, ds);
    }
    parentPort.postMessage({ id: m.id });
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: String(e && e.message || e) });
  }
});
`;

const nativeHashers = new WeakMap<HashSpec, { a: NativeAddon; h: NativeHasher } | null>();

/** The native hasher for spec (cached per spec object), or null when the addon is missing or lacks the algorithm. */
function nativeHasher(spec: HashSpec): { a: NativeAddon; h: NativeHasher } | null {
  let n = nativeHashers.get(spec);
  if (n !== undefined) return n;
  n = null;
  const a = loadNative();
  if (a?.hasherCreate && a.hashBlocks && a.hasherDigestSize) {
    try {
      const h = a.hasherCreate(spec.algorithm, spec.salt, spec.hashType);
      if (a.hasherDigestSize(h) === spec.digestSize) n = { a, h };
    } catch {
      n = null; // e.g. an algorithm node's OpenSSL lacks under that name: node:crypto decides below
    }
  }
  nativeHashers.set(spec, n);
  return n;
}

/** Hash `count` blocks of `bs` bytes from inp into out (digestSize bytes each) on the calling thread. */
export function hashBlocksSync(spec: HashSpec, inp: Uint8Array, count: number, bs: number, out: Uint8Array): void {
  const n = nativeHasher(spec);
  if (n && count > 0) {
    n.a.hashBlocks!(n.h, inp, count, bs, out);
    return;
  }
  const base = createHash(spec.algorithm);
  if (spec.hashType === 1) base.update(spec.salt);
  for (let i = 0; i < count; i++) {
    const blk = inp.subarray(i * bs, (i + 1) * bs);
    const d = spec.hashType === 1 ? base.copy().update(blk).digest() : createHash(spec.algorithm).update(blk).update(spec.salt).digest();
    out.set(d, i * spec.digestSize);
  }
}

/** Digest of one block (root hash, single-block trees). */
export function hashBlock(spec: HashSpec, blk: Uint8Array): Buffer {
  const h = createHash(spec.algorithm);
  if (spec.hashType === 1) h.update(spec.salt);
  h.update(blk);
  if (spec.hashType === 0) h.update(spec.salt);
  return h.digest();
}

export function defaultThreads(): number {
  return Math.max(1, Math.min(availableParallelism(), 16));
}

interface Job {
  resolve: () => void;
  reject: (e: Error) => void;
}

/** TV_HASH_SLICE in native/src/trustvol_native.c */
const NATIVE_SLICE = 256 * 1024;

/** libuv's thread pool size (fixed at start-up): more concurrent native jobs than this would only queue. */
function uvPoolSize(): number {
  const n = Number(process.env.UV_THREADPOOL_SIZE);
  return Number.isInteger(n) && n > 0 ? n : 4;
}

export class HashPool {
  private readonly workers: Worker[] = [];
  /** Native thread-pool engine (no workers); null when the addon is missing or lacks the algorithm. */
  private readonly nat: { a: NativeAddon; h: NativeHasher } | null = null;
  private readonly natThreads: number = 0;
  private natBusy = 0;
  private readonly natWaiting: Array<() => void> = [];
  private readonly scratch: Uint8Array[] = [];
  private readonly natJobs = new Set<Promise<void>>();
  private readonly idle: Worker[] = [];
  private readonly waiting: Array<(w: Worker) => void> = [];
  private readonly jobs = new Map<number, Job>();
  private nextId = 1;
  private failed: Error | undefined;

  /** threads = 0 hashes on the calling thread (small inputs: no worker start-up cost). */
  constructor(private readonly spec: HashSpec, threads: number) {
    const n = threads > 0 ? nativeHasher(spec) : null;
    if (n && n.a.hashBlocksAsync && threads <= uvPoolSize()) {
      this.nat = n;
      this.natThreads = threads;
      return;
    }
    const addon = n ? nativeAddonPath() : null;
    for (let i = 0; i < threads; i++) {
      // execArgv: [] keeps loaders such as tsx out of the worker: it is plain JavaScript and starts faster without them.
      const w = new Worker(WORKER_SOURCE, { eval: true, execArgv: [] });
      w.on("message", (m: { id: number; error?: string }) => {
        const job = this.jobs.get(m.id);
        this.jobs.delete(m.id);
        this.release(w);
        if (!job) return;
        if (m.error) job.reject(new TrustvolError("EINTERNAL", `verity: hashing worker failed: ${m.error}`));
        else job.resolve();
      });
      w.on("error", (e: Error) => this.fail(new TrustvolError("EINTERNAL", `verity: hashing worker died: ${e.message}`, undefined, { cause: e })));
      w.postMessage({ op: "init", algorithm: spec.algorithm, salt: Buffer.from(spec.salt), hashType: spec.hashType, digestSize: spec.digestSize, addon });
      this.workers.push(w);
      this.idle.push(w);
    }
  }

  get threads(): number {
    return this.nat ? this.natThreads : this.workers.length;
  }

  /** Run one native job when fewer than `threads` are in flight; scratch is a read buffer of at least `bytes`. */
  private async natRun(bytes: number, job: (scratch: Uint8Array) => Promise<void>): Promise<void> {
    if (this.natBusy >= this.natThreads) await new Promise<void>((res) => this.natWaiting.push(res));
    this.natBusy++;
    let buf = this.scratch.pop();
    if (!buf || buf.length < bytes) buf = new Uint8Array(bytes);
    const p = job(buf);
    this.natJobs.add(p);
    try {
      await p;
    } finally {
      this.natJobs.delete(p);
      this.scratch.push(buf);
      this.natBusy--;
      this.natWaiting.shift()?.();
    }
  }

  private fail(e: Error): void {
    this.failed ??= e;
    for (const j of this.jobs.values()) j.reject(e);
    this.jobs.clear();
  }

  private release(w: Worker): void {
    const next = this.waiting.shift();
    if (next) next(w);
    else this.idle.push(w);
  }

  private acquire(): Promise<Worker> {
    const w = this.idle.pop();
    if (w) return Promise.resolve(w);
    return new Promise((res) => this.waiting.push(res));
  }

  /** Hash count blocks from inp (SharedArrayBuffer-backed, starting at byte 0) into out (SharedArrayBuffer-backed). */
  async hash(inp: Uint8Array, count: number, bs: number, out: Uint8Array): Promise<void> {
    if (this.failed) throw this.failed;
    if (this.nat && count > 0) {
      const { a, h } = this.nat;
      return this.natRun(0, () => a.hashBlocksAsync!(h, -1, 0, inp, count, bs, out));
    }
    if (!this.workers.length || count === 0) {
      hashBlocksSync(this.spec, inp, count, bs, out);
      return;
    }
    await this.post({ inp: inp.buffer, out: out.buffer, count, bs });
  }

  /** Let a worker read count blocks at pos from an open file descriptor itself, then hash them into out. */
  async hashFromFd(fd: number, pos: number, count: number, bs: number, out: Uint8Array): Promise<void> {
    if (this.failed) throw this.failed;
    if (this.nat) {
      if (count === 0) return;
      const { a, h } = this.nat;
      // The addon reads and hashes in 256 KiB slices: the scratch buffer needs only one slice.
      const slice = Math.min(count, Math.max(1, Math.floor(NATIVE_SLICE / bs))) * bs;
      return this.natRun(slice, (scratch) =>
        a.hashBlocksAsync!(h, fd, pos, scratch, count, bs, out).catch((e: Error) => {
          throw new TrustvolError("EIO", `verity: ${e.message}`, undefined, { cause: e });
        }),
      );
    }
    if (!this.workers.length) throw new TrustvolError("EINTERNAL", "verity: hashFromFd needs worker threads");
    await this.post({ fd, pos, out: out.buffer, count, bs });
  }

  private async post(job: Record<string, unknown>): Promise<void> {
    const w = await this.acquire();
    if (this.failed) throw this.failed;
    const id = this.nextId++;
    await new Promise<void>((resolve, reject) => {
      this.jobs.set(id, { resolve, reject });
      w.postMessage({ op: "hash", id, ...job });
    });
  }

  async close(): Promise<void> {
    // Native jobs may still pread from a descriptor the caller closes next: let them finish first.
    await Promise.allSettled([...this.natJobs]);
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers.length = 0;
    this.idle.length = 0;
  }
}
