// Block hashing for the verity tree: one digest per block, salted as the hash type says, spread over worker threads.
// Workers get blocks through SharedArrayBuffers (no copies) and write digests back the same way.
// The worker is inline JavaScript (eval) so it runs the same from src/ under tsx and from dist/ after a build.
import { Worker } from "node:worker_threads";
import { createHash } from "node:crypto";
import { availableParallelism } from "node:os";
import { TrustvolError } from "../util/errors.js";

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
let alg, salt, type, ds, base, local = null;
parentPort.on("message", (m) => {
  if (m.op === "init") {
    alg = m.algorithm; salt = Buffer.from(m.salt); type = m.hashType; ds = m.digestSize;
    base = createHash(alg); if (type === 1) base.update(salt);
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

/** Hash `count` blocks of `bs` bytes from inp into out (digestSize bytes each) on the calling thread. */
export function hashBlocksSync(spec: HashSpec, inp: Uint8Array, count: number, bs: number, out: Uint8Array): void {
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

export class HashPool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly waiting: Array<(w: Worker) => void> = [];
  private readonly jobs = new Map<number, Job>();
  private nextId = 1;
  private failed: Error | undefined;

  /** threads = 0 hashes on the calling thread (small inputs: no worker start-up cost). */
  constructor(private readonly spec: HashSpec, threads: number) {
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
      w.postMessage({ op: "init", algorithm: spec.algorithm, salt: Buffer.from(spec.salt), hashType: spec.hashType, digestSize: spec.digestSize });
      this.workers.push(w);
      this.idle.push(w);
    }
  }

  get threads(): number {
    return this.workers.length;
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
    if (!this.workers.length || count === 0) {
      hashBlocksSync(this.spec, inp, count, bs, out);
      return;
    }
    await this.post({ inp: inp.buffer, out: out.buffer, count, bs });
  }

  /** Let a worker read count blocks at pos from an open file descriptor itself, then hash them into out. */
  async hashFromFd(fd: number, pos: number, count: number, bs: number, out: Uint8Array): Promise<void> {
    if (this.failed) throw this.failed;
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
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers.length = 0;
    this.idle.length = 0;
  }
}
