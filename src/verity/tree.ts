// dm-verity hash tree: format, verify, dump — byte-compatible with veritysetup 2.6.1.
// The tree is built level by level like cryptsetup's lib/verity/verity_hash.c: level 0 hashes the data blocks, level i
// hashes the hash blocks of level i-1, the top level is one block whose digest is the root hash. Levels are stored top
// first after the superblock. Verification walks the same order and reports the first mismatch the way veritysetup
// does ("Verification failed at position N" = byte offset of the block whose digest differs, in the device it was read
// from; "Spare area is not zeroed at position N" = hash device offset of non-zero padding).
import { TrustvolError, usage } from "../util/errors.js";
import type { BlockDevice } from "../blockdev/types.js";
import { readAt } from "../blockdev/types.js";
import { FileBlockDevice } from "../blockdev/file.js";
import { HashPool, defaultThreads, hashBlock, type HashSpec } from "./pool.js";
import {
  VERITY_SB_SIZE,
  encodeVeritySuperblock,
  parseVeritySuperblock,
  resolveVerityParams,
  verityGeometry,
  type VerityGeometry,
  type VerityParams,
} from "./superblock.js";

const CHUNK_BYTES = 4 << 20; // read/hash unit; large sequential reads
const BATCH_BYTES = 1 << 20; // hash-area write/read unit
const INLINE_BELOW = 16 << 20; // smaller inputs are hashed on the calling thread (no worker start-up)

export type ProgressFn = (done: number, total: number) => void;

export interface VerityRunOptions {
  /** Worker threads for level 0 (default: all cores; 0 = hash on the calling thread). */
  threads?: number;
  onProgress?: ProgressFn;
}

export interface VerityFormatResult {
  rootHash: Buffer;
  params: VerityParams;
  geometry: VerityGeometry;
}

/** Where verification found the first difference, in veritysetup's terms. */
export interface VerityCorruption {
  kind: "digest" | "spare" | "root";
  /** "data" when the position is in the data device, "hash" when in the hash device. */
  device: "data" | "hash";
  /** Byte offset in that device (veritysetup's "position"); -1 for a root hash mismatch. */
  position: number;
  /** Tree level whose stored digests disagreed (0 = data block digests). */
  level: number;
}

export class VerityVerifyError extends TrustvolError {
  constructor(message: string, hint: string, readonly corruption: VerityCorruption) {
    super("ECORRUPT", message, hint);
    this.name = "VerityVerifyError";
  }
}

function toSafe(n: bigint, what: string): number {
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw usage(`verity: ${what} too large`);
  return Number(n);
}

interface Ctx {
  p: VerityParams;
  g: VerityGeometry;
  spec: HashSpec;
  pool: HashPool;
  data: BlockDevice;
  hash: BlockDevice;
  onProgress?: ProgressFn;
}

function makeSpec(p: VerityParams, g: VerityGeometry): HashSpec {
  return { algorithm: p.hashAlgorithm, salt: p.salt, hashType: p.hashType, digestSize: g.digestSize };
}

/**
 * File-backed devices let the workers pread their chunks themselves (threads share the fd table): it saves a hand-off
 * per chunk and hashes bytes while they are still in the core's cache. Uses FileBlockDevice's descriptor; any other
 * BlockDevice goes through read(). Sizes were checked before, so worker reads stay inside the device.
 */
function fileDescriptor(dev: BlockDevice): number | undefined {
  if (dev instanceof FileBlockDevice) return dev.fd;
  return undefined;
}

/** Stream blocks of rd through the pool in order; consume(digests, count, firstBlock) sees each chunk in order. */
async function streamDigests(
  ctx: Ctx,
  rd: BlockDevice,
  rdOff: number,
  bs: number,
  blocks: number,
  consume: (digests: Uint8Array, count: number, first: number) => Promise<void>,
  progress?: ProgressFn,
): Promise<void> {
  const ds = ctx.g.digestSize;
  const chunkBlocks = Math.max(1, Math.floor(CHUNK_BYTES / bs));
  const nChunks = Math.ceil(blocks / chunkBlocks);
  const nSlots = Math.min(nChunks, Math.max(2, ctx.pool.threads * 2 + 2));
  const fd = ctx.pool.threads ? fileDescriptor(rd) : undefined;
  const slots = Array.from({ length: nSlots }, () => ({
    inp: fd === undefined ? new Uint8Array(new SharedArrayBuffer(chunkBlocks * bs)) : new Uint8Array(0),
    out: new Uint8Array(new SharedArrayBuffer(chunkBlocks * ds)),
  }));
  type Slot = (typeof slots)[number];
  const start = async (c: number, s: Slot): Promise<Slot> => {
    const first = c * chunkBlocks;
    const n = Math.min(chunkBlocks, blocks - first);
    if (fd !== undefined) {
      await ctx.pool.hashFromFd(fd, rdOff + first * bs, n, bs, s.out);
    } else {
      await rd.read(s.inp.subarray(0, n * bs), rdOff + first * bs);
      await ctx.pool.hash(s.inp, n, bs, s.out);
    }
    return s;
  };
  const inflight: Promise<Slot>[] = [];
  const launch = (c: number, s: Slot) => {
    const pr = start(c, s);
    pr.catch(() => undefined); // awaited in order below; avoid unhandled rejections for chunks after a failure
    inflight.push(pr);
  };
  for (let c = 0; c < nSlots; c++) launch(c, slots[c]!);
  for (let c = 0; c < nChunks; c++) {
    const s = await inflight.shift()!;
    const first = c * chunkBlocks;
    const n = Math.min(chunkBlocks, blocks - first);
    await consume(s.out, n, first);
    progress?.(first + n, blocks);
    if (c + nSlots < nChunks) launch(c + nSlots, s);
  }
}

/** Lays digests out into hash blocks (entry padding, block padding) and writes them in batches. */
class LevelWriter {
  private readonly buf: Buffer;
  private readonly batchBlocks: number;
  private blk = 0; // block within the batch
  private entry = 0; // entry within the block
  private written = 0; // blocks already written
  constructor(private readonly ctx: Ctx, private readonly wrOff: number) {
    const hbs = ctx.p.hashBlockSize;
    this.batchBlocks = Math.max(1, Math.floor(BATCH_BYTES / hbs));
    this.buf = Buffer.alloc(this.batchBlocks * hbs);
  }
  async add(digests: Uint8Array, count: number): Promise<void> {
    const { digestSize: ds, entrySize: es, hashPerBlock: hpb } = this.ctx.g;
    const hbs = this.ctx.p.hashBlockSize;
    let i = 0;
    while (i < count) {
      // Contiguous run of entries in the current block; when entries are unpadded it is one copy.
      const run = Math.min(count - i, hpb - this.entry);
      const dst = this.blk * hbs + this.entry * es;
      if (es === ds) this.buf.set(digests.subarray(i * ds, (i + run) * ds), dst);
      else for (let k = 0; k < run; k++) this.buf.set(digests.subarray((i + k) * ds, (i + k + 1) * ds), dst + k * es);
      i += run;
      this.entry += run;
      if (this.entry === hpb) {
        this.entry = 0;
        this.blk++;
        if (this.blk === this.batchBlocks) await this.flush();
      }
    }
  }
  private async flush(): Promise<void> {
    if (!this.blk) return;
    const hbs = this.ctx.p.hashBlockSize;
    await this.ctx.hash.write(this.buf.subarray(0, this.blk * hbs), this.wrOff + this.written * hbs);
    this.written += this.blk;
    this.blk = 0;
    this.buf.fill(0);
  }
  async finish(): Promise<void> {
    if (this.entry) {
      this.entry = 0;
      this.blk++;
    }
    await this.flush();
  }
}

function isZero(b: Uint8Array, from: number, to: number): number {
  for (let i = from; i < to; i++) if (b[i] !== 0) return i;
  return -1;
}

/** Compares digests with the stored hash blocks in veritysetup's order: digest, its padding, then the block's tail. */
class LevelVerifier {
  private readonly batchBlocks: number;
  private buf: Buffer;
  private bufFirst = -1; // first hash block (within the level) held in buf
  private bufBlocks = 0;
  private entryIndex = 0; // entries consumed so far in the level
  constructor(
    private readonly ctx: Ctx,
    private readonly wrOff: number,
    private readonly levelBlocks: number,
    private readonly level: number,
    private readonly rdDevice: "data" | "hash",
    private readonly rdName: string,
    private readonly rdOff: number,
    private readonly rdBs: number,
  ) {
    const hbs = ctx.p.hashBlockSize;
    this.batchBlocks = Math.max(1, Math.floor(BATCH_BYTES / hbs));
    this.buf = Buffer.alloc(this.batchBlocks * hbs);
  }
  private async load(block: number): Promise<void> {
    const hbs = this.ctx.p.hashBlockSize;
    const n = Math.min(this.batchBlocks, this.levelBlocks - block);
    await this.ctx.hash.read(this.buf.subarray(0, n * hbs), this.wrOff + block * hbs);
    this.bufFirst = block;
    this.bufBlocks = n;
  }
  private spare(pos: number): never {
    const hashName = this.ctx.hash.name;
    throw new VerityVerifyError(
      `verity: spare area is not zeroed at position ${pos} of hash device ${hashName}`,
      "the hash device is damaged or was modified; re-create it with verity format",
      { kind: "spare", device: "hash", position: pos, level: this.level },
    );
  }
  async check(digests: Uint8Array, count: number): Promise<void> {
    const { digestSize: ds, entrySize: es, hashPerBlock: hpb } = this.ctx.g;
    const hbs = this.ctx.p.hashBlockSize;
    const dg = Buffer.from(digests.buffer, digests.byteOffset, digests.byteLength);
    for (let i = 0; i < count; i++) {
      const e = this.entryIndex++;
      const block = Math.floor(e / hpb);
      const slot = e % hpb;
      if (block < this.bufFirst || block >= this.bufFirst + this.bufBlocks) await this.load(block);
      const off = (block - this.bufFirst) * hbs + slot * es;
      if (dg.compare(this.buf, off, off + ds, i * ds, (i + 1) * ds) !== 0) {
        const pos = this.rdOff + e * this.rdBs;
        const what = this.rdDevice === "data" ? `data device ${this.rdName} (data block ${e})` : `hash device ${this.rdName} (level ${this.level - 1} hash block ${e})`;
        throw new VerityVerifyError(
          `verity: verification failed at position ${pos} of ${what}`,
          this.level === 0 ? "the data or its hash tree was modified; restore the image" : "the hash tree was modified; re-create it with verity format",
          { kind: "digest", device: this.rdDevice, position: pos, level: this.level },
        );
      }
      if (this.ctx.p.hashType === 1 && es > ds && isZero(this.buf, off + ds, off + es) >= 0) this.spare(this.wrOff + block * hbs + slot * es + ds);
      if (slot === hpb - 1) this.tail(block, hpb);
    }
  }
  /** The unused rest of a hash block must be zero. */
  private tail(block: number, entries: number): void {
    const { digestSize: ds, entrySize: es } = this.ctx.g;
    const hbs = this.ctx.p.hashBlockSize;
    const used = entries * (this.ctx.p.hashType === 1 ? es : ds);
    const base = (block - this.bufFirst) * hbs;
    if (used < hbs && isZero(this.buf, base + used, base + hbs) >= 0) this.spare(this.wrOff + block * hbs + used);
  }
  finish(): void {
    const hpb = this.ctx.g.hashPerBlock;
    const rest = this.entryIndex % hpb;
    if (rest) this.tail(Math.floor(this.entryIndex / hpb), rest);
  }
}

async function runTree(ctx: Ctx, mode: "create" | "verify"): Promise<Buffer> {
  const { p, g } = ctx;
  const hbs = p.hashBlockSize;
  const dataBlocks = toSafe(p.dataBlocks, "data block count");
  for (let i = 0; i < g.levels; i++) {
    const rd = i === 0 ? ctx.data : ctx.hash;
    const rdOff = i === 0 ? 0 : toSafe(g.levelStart[i - 1]! * BigInt(hbs), "hash offset");
    const rdBs = i === 0 ? p.dataBlockSize : hbs;
    const blocks = i === 0 ? dataBlocks : toSafe(g.levelBlocks[i - 1]!, "level size");
    const wrOff = toSafe(g.levelStart[i]! * BigInt(hbs), "hash offset");
    const progress = i === 0 ? ctx.onProgress : undefined;
    if (mode === "create") {
      const w = new LevelWriter(ctx, wrOff);
      await streamDigests(ctx, rd, rdOff, rdBs, blocks, (d, n) => w.add(d, n), progress);
      await w.finish();
    } else {
      const v = new LevelVerifier(ctx, wrOff, toSafe(g.levelBlocks[i]!, "level size"), i, i === 0 ? "data" : "hash", rd.name, rdOff, rdBs);
      await streamDigests(ctx, rd, rdOff, rdBs, blocks, (d, n) => v.check(d, n), progress);
      v.finish();
    }
  }
  if (g.levels === 0) {
    ctx.onProgress?.(0, dataBlocks);
    const root = hashBlock(ctx.spec, await readAt(ctx.data, 0, p.dataBlockSize));
    ctx.onProgress?.(dataBlocks, dataBlocks);
    return root;
  }
  const top = toSafe(g.levelStart[g.levels - 1]! * BigInt(hbs), "hash offset");
  return hashBlock(ctx.spec, await readAt(ctx.hash, top, hbs));
}

function checkDataSize(data: BlockDevice, p: VerityParams): void {
  const need = p.dataBlocks * BigInt(p.dataBlockSize);
  if (BigInt(data.size) < need)
    throw new TrustvolError("ETRUNCATED", `verity: data device ${data.name} has ${data.size} bytes, ${p.dataBlocks} blocks of ${p.dataBlockSize} need ${need}`, "the data image is truncated or --data-blocks is wrong");
}

function poolFor(p: VerityParams, g: VerityGeometry, threads: number | undefined): HashPool {
  const bytes = Number(p.dataBlocks) * p.dataBlockSize;
  const n = threads ?? (bytes < INLINE_BELOW ? 0 : defaultThreads());
  return new HashPool(makeSpec(p, g), Math.max(0, Math.floor(n)));
}

export type VerityFormatInput = Partial<Omit<VerityParams, "dataBlocks" | "salt">> & { dataBlocks?: bigint | number; salt?: Uint8Array };

/**
 * Build the hash tree of `data` into `hash` (and the superblock unless noSuperblock), like `veritysetup format`.
 * data and hash may be the same device (hash area appended after the data: give hashOffset >= data size).
 * Only the superblock and the tree blocks are written; a hash file shorter than the tree is extended.
 */
export async function verityFormat(data: BlockDevice, hash: BlockDevice, input: VerityFormatInput = {}, opts: VerityRunOptions = {}): Promise<VerityFormatResult> {
  const p = resolveVerityParams(input, data.size);
  const g = verityGeometry(p);
  checkDataSize(data, p);
  if (hash.readOnly) throw new TrustvolError("EDEVICE", `verity: hash device ${hash.name} is read-only`);
  const dataEnd = p.dataBlocks * BigInt(p.dataBlockSize);
  const hashStart = p.noSuperblock ? g.treeStartBlock * BigInt(p.hashBlockSize) : BigInt(p.hashOffset);
  if (data === hash && hashStart < dataEnd && g.hashDeviceSize > hashStart)
    throw usage(`verity: the hash area at offset ${hashStart} overlaps the data (${dataEnd} bytes)`, `use a hash offset of at least ${dataEnd}`);
  const need = toSafe(g.hashDeviceSize, "hash device size");
  if (hash.size < need) {
    const t = (hash as BlockDevice & { truncate?: (n: number) => Promise<void>; isBlockDevice?: boolean });
    if (t.isBlockDevice) throw new TrustvolError("ENOSPC", `verity: hash device ${hash.name} has ${hash.size} bytes, the hash tree needs ${need}`, "use a larger device or a file");
    if (typeof t.truncate === "function") await t.truncate(need);
  }
  const pool = poolFor(p, g, opts.threads);
  const ctx: Ctx = { p, g, spec: makeSpec(p, g), pool, data, hash, onProgress: opts.onProgress };
  try {
    const rootHash = await runTree(ctx, "create");
    if (!p.noSuperblock) await hash.write(encodeVeritySuperblock(p), p.hashOffset);
    if (hash.size < need) await hash.write(Buffer.alloc(1), need - 1); // devices without truncate (memory)
    await hash.flush();
    return { rootHash, params: p, geometry: g };
  } finally {
    await pool.close();
  }
}

/** Read and check the superblock at hashOffset of the hash device. */
export async function verityDump(hash: BlockDevice, hashOffset = 0): Promise<{ params: VerityParams; geometry: VerityGeometry }> {
  if (hashOffset % 512 !== 0) throw usage(`verity: hash offset ${hashOffset} is invalid`, "use a multiple of 512 bytes");
  if (hash.size < hashOffset + VERITY_SB_SIZE)
    throw new TrustvolError("ETRUNCATED", `verity: hash device ${hash.name} has ${hash.size} bytes, too short for a superblock at offset ${hashOffset}`, "check the device and --hash-offset");
  const params = parseVeritySuperblock(await readAt(hash, hashOffset, VERITY_SB_SIZE), hashOffset, hash.name);
  return { params, geometry: verityGeometry(params) };
}

/** veritysetup dump's text, for the CLI (it leaves out the device size when the superblock is not at offset 0). */
export function formatVerityDump(hashName: string, params: VerityParams, g: VerityGeometry): string {
  const lines = [
    `VERITY header information for ${hashName}`,
    `UUID:            \t${params.uuid ?? ""}`,
    `Hash type:       \t${params.hashType}`,
    `Data blocks:     \t${params.dataBlocks}`,
    `Data block size: \t${params.dataBlockSize}`,
    `Hash blocks:     \t${g.hashBlocks}`,
    `Hash block size: \t${params.hashBlockSize}`,
    `Hash algorithm:  \t${params.hashAlgorithm}`,
    `Salt:            \t${params.salt.length ? params.salt.toString("hex") : "-"}`,
  ];
  if (params.hashOffset === 0) lines.push(`Hash device size: \t${g.hashDeviceSize} [bytes]`);
  return lines.join("\n");
}

export interface VerityVerifyOptions extends VerityRunOptions {
  /** Superblock position in the hash device (default 0). */
  hashOffset?: number;
  /** Explicit parameters: required with noSuperblock; otherwise the superblock is read and these are ignored. */
  params?: VerityFormatInput & { noSuperblock?: boolean };
}

export function parseRootHash(rootHash: Uint8Array | string, digestSize: number): Buffer {
  let b: Buffer;
  if (typeof rootHash === "string") {
    const s = rootHash.trim();
    if (!/^[0-9a-fA-F]*$/.test(s) || s.length !== digestSize * 2)
      throw usage(`verity: invalid root hash "${s.length > 140 ? s.slice(0, 140) + "…" : s}"`, `give ${digestSize * 2} hex digits`);
    b = Buffer.from(s, "hex");
  } else b = Buffer.from(rootHash);
  if (b.length !== digestSize) throw usage(`verity: root hash has ${b.length} bytes, the hash algorithm makes ${digestSize}`);
  return b;
}

/**
 * Full check of data against the hash tree and root hash, like `veritysetup verify`: throws VerityVerifyError
 * (ECORRUPT) naming the first corrupted position, ETRUNCATED when a device is too short; inputs are only read.
 */
export async function verityVerify(data: BlockDevice, hash: BlockDevice, rootHash: Uint8Array | string, opts: VerityVerifyOptions = {}): Promise<{ params: VerityParams; geometry: VerityGeometry }> {
  let p: VerityParams;
  if (opts.params?.noSuperblock) {
    p = resolveVerityParams({ ...opts.params, noSuperblock: true, hashOffset: opts.params.hashOffset ?? opts.hashOffset ?? 0, salt: opts.params.salt ?? Buffer.alloc(0) }, data.size);
  } else {
    p = (await verityDump(hash, opts.hashOffset ?? opts.params?.hashOffset ?? 0)).params;
  }
  const g = verityGeometry(p);
  const expected = parseRootHash(rootHash, g.digestSize);
  checkDataSize(data, p);
  const need = toSafe(g.hashDeviceSize, "hash device size");
  if (hash.size < need)
    throw new TrustvolError("ETRUNCATED", `verity: hash device ${hash.name} is truncated: ${hash.size} bytes, the hash tree needs ${need}`, "restore the complete hash device");
  const pool = poolFor(p, g, opts.threads);
  const ctx: Ctx = { p, g, spec: makeSpec(p, g), pool, data, hash, onProgress: opts.onProgress };
  try {
    const root = await runTree(ctx, "verify");
    if (!root.equals(expected))
      throw new VerityVerifyError(
        `verity: verification of root hash failed (the tree hashes to ${root.toString("hex")}, expected ${expected.toString("hex")})`,
        "wrong root hash, or the hash device belongs to another image",
        { kind: "root", device: "hash", position: -1, level: g.levels },
      );
    return { params: p, geometry: g };
  } finally {
    await pool.close();
  }
}

export interface VerityTableOptions {
  /** Kernel keyring description of a user key holding the PKCS#7 root hash signature (root_hash_sig_key_desc). */
  rootHashSigKeyDesc?: string;
  onCorruption?: "ignore" | "restart" | "panic";
  ignoreZeroBlocks?: boolean;
  checkAtMostOnce?: boolean;
  /** Forward error correction (see fec.ts): use_fec_from_device <device> fec_start <block> fec_blocks <n> fec_roots <n>. */
  fec?: { device: string; start: bigint | number; blocks: bigint | number; roots: number };
}

/**
 * Device-mapper table line for the kernel dm-verity target (Documentation/admin-guide/device-mapper/verity.rst):
 * `0 <sectors> verity <type> <data_dev> <hash_dev> <data_bs> <hash_bs> <data_blocks> <hash_start> <alg> <root> <salt|-> [opts]`.
 */
export function verityTable(dataDev: string, hashDev: string, p: VerityParams, rootHash: Uint8Array, o: VerityTableOptions = {}): string {
  const g = verityGeometry(p);
  const sectors = (p.dataBlocks * BigInt(p.dataBlockSize)) / 512n;
  const opt: string[] = [];
  if (o.onCorruption === "ignore") opt.push("ignore_corruption");
  if (o.onCorruption === "restart") opt.push("restart_on_corruption");
  if (o.onCorruption === "panic") opt.push("panic_on_corruption");
  if (o.ignoreZeroBlocks) opt.push("ignore_zero_blocks");
  if (o.checkAtMostOnce) opt.push("check_at_most_once");
  if (o.fec) opt.push("use_fec_from_device", o.fec.device, "fec_start", String(o.fec.start), "fec_blocks", String(o.fec.blocks), "fec_roots", String(o.fec.roots));
  if (o.rootHashSigKeyDesc) {
    if (/\s/.test(o.rootHashSigKeyDesc)) throw usage("verity: key description must not contain white space");
    opt.push("root_hash_sig_key_desc", o.rootHashSigKeyDesc);
  }
  const salt = p.salt.length ? p.salt.toString("hex") : "-";
  const base = `0 ${sectors} verity ${p.hashType} ${dataDev} ${hashDev} ${p.dataBlockSize} ${p.hashBlockSize} ${p.dataBlocks} ${g.treeStartBlock} ${p.hashAlgorithm} ${Buffer.from(rootHash).toString("hex")} ${salt}`;
  return opt.length ? `${base} ${opt.length} ${opt.join(" ")}` : base;
}
