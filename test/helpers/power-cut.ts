// Power-cut simulation for write paths: a BlockDevice that loses power at its Nth write.
// Model (what a disk with a volatile write cache may do): writes made durable by flush() survive; of the writes since
// the last flush, any subset may have landed (chosen by a seeded PRNG); the write in flight when power goes lands
// torn (a byte prefix of it, so the sector it stops in holds old and new bytes). The writer sees PowerCut thrown.
import type { BlockDevice } from "../../src/blockdev/types.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";

export class PowerCut extends Error {
  constructor(readonly atWrite: number) {
    super(`simulated power cut at write ${atWrite}`);
  }
}

/** What survives of the writes since the last flush. */
export type UnsyncedPolicy = "drop" | "keep" | "random";

export interface PowerCutOptions {
  /** Lose power during this write (1-based); undefined = never (use it to count writes). */
  cutAtWrite?: number;
  unsynced?: UnsyncedPolicy;
  /** PRNG seed: which unsynced writes land and where the torn write stops. */
  seed?: number;
  /**
   * A power supply shared with other devices (a disk and a header file on the same machine): its options replace
   * these, cutAtWrite counts the writes to all of them, and the cut hits them all at once.
   */
  rail?: PowerRail;
}

/** Small deterministic PRNG (mulberry32) so a failing cut point can be replayed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One power supply for several PowerCutDevices: one write counter, one cut (the in-flight write torn, every device's unsynced writes judged by the policy). */
export class PowerRail {
  /** Writes to all devices on the rail so far (including the torn one). */
  writes = 0;
  cut = false;
  readonly devices: PowerCutDevice[] = [];
  /** One PRNG for the rail, so a cut replays whatever the devices' order. */
  readonly rnd: () => number;
  constructor(readonly opts: Omit<PowerCutOptions, "rail"> = {}) {
    this.rnd = prng(opts.seed ?? 1);
  }
}

export class PowerCutDevice implements BlockDevice {
  readonly readOnly = false;
  readonly name = "power-cut";
  /** Number of write() calls so far (including the torn one). */
  writes = 0;
  flushes = 0;
  cut = false;
  /** The write in flight when power went: where, how long, and how many of its bytes landed. */
  torn?: { offset: number; length: number; landed: number };
  private durable: Buffer;
  private view: MemoryBlockDevice; // durable + pending, as the writer sees it (page cache)
  private pending: { off: number; data: Buffer }[] = [];
  private readonly rnd: () => number;

  private readonly opts: Omit<PowerCutOptions, "rail">;
  private readonly rail?: PowerRail;

  constructor(image: Uint8Array, opts: PowerCutOptions = {}) {
    this.durable = Buffer.from(image);
    this.view = new MemoryBlockDevice(this.durable);
    this.rail = opts.rail;
    this.opts = opts.rail ? opts.rail.opts : opts;
    this.rnd = opts.rail ? opts.rail.rnd : prng(opts.seed ?? 1);
    opts.rail?.devices.push(this);
  }
  get size(): number {
    return this.view.size;
  }
  async read(buf: Uint8Array, offset: number): Promise<void> {
    if (this.cut) throw new PowerCut(this.writes);
    await this.view.read(buf, offset);
  }
  async write(buf: Uint8Array, offset: number): Promise<void> {
    if (this.cut) throw new PowerCut(this.writes);
    this.writes++;
    const n = this.rail ? ++this.rail.writes : this.writes;
    if (this.opts.cutAtWrite === n) {
      this.powerFail(Buffer.from(buf), offset);
      if (this.rail) {
        this.rail.cut = true;
        for (const d of this.rail.devices) if (d !== this) d.powerFail(undefined, 0);
      }
      throw new PowerCut(n);
    }
    this.pending.push({ off: offset, data: Buffer.from(buf) });
    await this.view.write(buf, offset);
  }
  async flush(): Promise<void> {
    if (this.cut) throw new PowerCut(this.writes);
    this.flushes++;
    // Make the pending writes durable in place (cost: the bytes written since the last flush, not the image size).
    for (const w of this.pending) this.durable = putAt(this.durable, w.off, w.data);
    this.pending = [];
  }
  async close(): Promise<void> {}

  /** What the disk holds after the cut (or now, if power never went): durable state plus what survived. */
  image(): Buffer {
    return Buffer.from(this.cut ? this.durable : this.view.data);
  }

  /** inFlight undefined: power went during another device's write on the same rail. */
  private powerFail(inFlight: Buffer | undefined, offset: number): void {
    const policy = this.opts.unsynced ?? "random";
    let img = this.durable;
    const put = (off: number, data: Buffer) => void (img = putAt(img, off, data));
    for (const w of this.pending) if (policy === "keep" || (policy === "random" && this.rnd() < 0.5)) put(w.off, w.data);
    // The in-flight write stops at a random byte: whole sectors before it, one torn sector, nothing after.
    if (inFlight) {
      const landed = Math.floor(this.rnd() * inFlight.length);
      this.torn = { offset, length: inFlight.length, landed };
      if (landed > 0) put(offset, inFlight.subarray(0, landed));
    }
    this.durable = img;
    this.pending = [];
    this.cut = true;
  }
}

/** Write data into img at off (growing it like a file would); returns the buffer that now holds the result. */
function putAt(img: Buffer, off: number, data: Buffer): Buffer {
  if (off + data.length > img.length) {
    const n = Buffer.alloc(off + data.length);
    img.copy(n);
    img = n;
  }
  data.copy(img, off);
  return img;
}

/** A PowerCutDevice that also remembers each write's place and length (to aim cuts at chosen writes). */
export class RecordingCutDevice extends PowerCutDevice {
  log: { offset: number; length: number }[] = [];
  get offsets(): number[] {
    return this.log.map((w) => w.offset);
  }
  override async write(buf: Uint8Array, offset: number): Promise<void> {
    this.log.push({ offset, length: buf.length });
    return super.write(buf, offset);
  }
}

/** Run `op` once on a fresh device without a cut and return how many writes it makes. */
export async function countWrites(image: Uint8Array, op: (dev: PowerCutDevice) => Promise<unknown>): Promise<number> {
  const dev = new PowerCutDevice(image);
  await op(dev);
  return dev.writes;
}
