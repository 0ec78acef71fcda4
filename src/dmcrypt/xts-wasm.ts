// The XTS tweak-XOR kernel of the fallback sector engine (js-backend.ts) as a WebAssembly SIMD module, emitted here
// byte by byte: no toolchain at build or install time, and this file is the module's source.
//
// One exported function, xor_tweaks(data, t0s, sectors, blocksPerSector): for each of `sectors` sectors laid out one
// after the other from `data`, with the sector's initial tweak T_0 (16 bytes) at t0s + 16·s, every 16-byte block j
// becomes block ⊕ T_j where T_{j+1} = T_j·α in GF(2^128) (IEEE 1619: the 128-bit little-endian value shifted left by
// one, the bit shifted out folded back as 0x87). blocksPerSector must be even (two blocks per loop iteration; dm-crypt
// sectors have 32 to 256). On two i64 lanes (lane 0 = bytes 0..7, the low half):
//   T·α = i64x2.add(T, T) ⊕ (i32x4 lanes [3, 3, 1, 1] of i32x4.shr_s(T, 31) ∧ [0x87, 1] as i64 lanes)
// — each half's top bit (bit 31 of i32 lanes 1 and 3), smeared to a mask by the arithmetic shift, goes to the other
// half: the low half's carry is bit 0 of the high half, the high half's carry is the reduction 0x87 into the low half.
// (i32x4.shr_s and a 32-bit-lane shuffle, not i64x2.shr_s: x86 has no 64-bit arithmetic shift before AVX-512, and
// V8's emulation of it made the kernel 1.4× slower.) Wasm memory is little-endian on every host, so this kernel does
// not depend on the host's byte order.
//
// The module exports its own memory (fixed size, `pages` × 64 KiB); the caller copies the data and the tweaks in and
// the result out. Key-derived material (the sectors' initial tweaks) and data pass through that memory: the engine
// that owns an instance wipes the tweaks after each batch and the whole memory in dispose() (js-backend.ts).

/** Unsigned LEB128. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 (i32.const immediates). */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

const utf8 = (s: string): number[] => [...uleb(s.length), ...Buffer.from(s, "latin1")];
const vec = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];

// Value types, block type and the opcodes used (WebAssembly core spec 2.0 §5.3-5.4, SIMD prefix 0xfd).
const I32 = 0x7f;
const V128 = 0x7b;
const VOID = 0x40;
const simd = (code: number): number[] => [0xfd, ...uleb(code)];
const op = {
  block: [0x02, VOID],
  loop: [0x03, VOID],
  end: [0x0b],
  br: (depth: number) => [0x0c, ...uleb(depth)],
  br_if: (depth: number) => [0x0d, ...uleb(depth)],
  get: (i: number) => [0x20, ...uleb(i)],
  set: (i: number) => [0x21, ...uleb(i)],
  tee: (i: number) => [0x22, ...uleb(i)],
  i32const: (n: number) => [0x41, ...sleb(n)],
  i32eqz: [0x45],
  i32ltu: [0x49],
  i32add: [0x6a],
  i32sub: [0x6b],
  i32shl: [0x74],
  /** v128.load / v128.store with alignment 2^4 and a constant offset. */
  v128load: (offset: number) => [...simd(0x00), 4, ...uleb(offset)],
  v128store: (offset: number) => [...simd(0x0b), 4, ...uleb(offset)],
  v128const: (bytes: number[]) => [...simd(0x0c), ...bytes],
  i8x16shuffle: (lanes: number[]) => [...simd(0x0d), ...lanes],
  v128and: simd(0x4e),
  v128xor: simd(0x51),
  i32x4shrs: simd(0xac),
  i64x2add: simd(0xce),
};

// xor_tweaks's locals: parameters 0-3, then declared ones (P2: the second sector of a pair, SB: bytes per sector).
const DATA = 0, T0S = 1, SECTORS = 2, BLOCKS = 3, END = 4, P2 = 5, SB = 6, T = 7, U = 8, M = 9;

/** t ← t·α (see the header). */
const double = (t: number) => [
  ...op.get(t), ...op.get(t), ...op.i64x2add,
  ...op.get(t), ...op.i32const(31), ...op.i32x4shrs, ...op.tee(M), ...op.get(M),
  ...op.i8x16shuffle([12, 13, 14, 15, 12, 13, 14, 15, 4, 5, 6, 7, 4, 5, 6, 7]),
  ...op.v128const([0x87, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
  ...op.v128and, ...op.v128xor, ...op.set(t),
];

/** mem[p + offset] ^= t */
const xorBlock = (p: number, t: number, offset: number) => [
  ...op.get(p), ...op.get(p), ...op.v128load(offset), ...op.get(t), ...op.v128xor, ...op.v128store(offset),
];

/** p += n */
const advance = (p: number, n: number) => [...op.get(p), ...op.i32const(n), ...op.i32add, ...op.set(p)];

// Sectors go in pairs, block j of both at once: two independent tweak chains keep the CPU's SIMD units busy where
// one chain would wait on each doubling's latency. A last odd sector goes alone. Two blocks per iteration (a sector
// has at least 32).
// prettier-ignore
const body = [
  ...vec([[...uleb(3), I32], [...uleb(3), V128]]), // locals: end, p2, sb (i32); t, u, m (v128)
  ...op.get(BLOCKS), ...op.i32const(4), ...op.i32shl, ...op.set(SB),
  ...op.block, // $pairs_done
  ...op.loop, // per pair of sectors
  ...op.get(SECTORS), ...op.i32const(2), ...op.i32ltu, ...op.br_if(1),
  ...op.get(T0S), ...op.v128load(0), ...op.set(T),
  ...op.get(T0S), ...op.v128load(16), ...op.set(U),
  ...advance(T0S, 32),
  ...op.get(DATA), ...op.get(SB), ...op.i32add, ...op.tee(END), ...op.set(P2),
  ...op.loop,
  ...xorBlock(DATA, T, 0), ...xorBlock(P2, U, 0), ...double(T), ...double(U),
  ...xorBlock(DATA, T, 16), ...xorBlock(P2, U, 16), ...double(T), ...double(U),
  ...advance(P2, 32),
  ...op.get(DATA), ...op.i32const(32), ...op.i32add, ...op.tee(DATA), ...op.get(END), ...op.i32ltu, ...op.br_if(0),
  ...op.end,
  ...op.get(P2), ...op.set(DATA), // past the pair's second sector
  ...op.get(SECTORS), ...op.i32const(2), ...op.i32sub, ...op.set(SECTORS),
  ...op.br(0),
  ...op.end,
  ...op.end,
  ...op.block, // the odd sector
  ...op.get(SECTORS), ...op.i32eqz, ...op.br_if(0),
  ...op.get(T0S), ...op.v128load(0), ...op.set(T),
  ...op.get(DATA), ...op.get(SB), ...op.i32add, ...op.set(END),
  ...op.loop,
  ...xorBlock(DATA, T, 0), ...double(T),
  ...xorBlock(DATA, T, 16), ...double(T),
  ...op.get(DATA), ...op.i32const(32), ...op.i32add, ...op.tee(DATA), ...op.get(END), ...op.i32ltu, ...op.br_if(0),
  ...op.end,
  ...op.end,
  ...op.end, // function body
];

/** The module's bytes, with a fixed memory of `pages` 64 KiB pages exported as "memory". */
export function xtsWasmBytes(pages: number): Uint8Array {
  return Uint8Array.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // "\0asm", version 1
    ...section(1, vec([[0x60, ...vec([[I32], [I32], [I32], [I32]]), ...vec([])]])), // type 0: (i32 ×4) → ()
    ...section(3, vec([uleb(0)])), // function 0 has type 0
    ...section(5, vec([[0x01, ...uleb(pages), ...uleb(pages)]])), // memory 0: min = max = pages
    ...section(7, vec([[...utf8("memory"), 0x02, 0x00], [...utf8("xor_tweaks"), 0x00, 0x00]])),
    ...section(10, vec([[...uleb(body.length), ...body]])),
  ]);
}

export interface XtsWasmKernel {
  /** The instance's whole memory (a fresh view: the memory never grows). */
  readonly mem: Uint8Array;
  xorTweaks(data: number, t0s: number, sectors: number, blocksPerSector: number): void;
}

/** The part of the WebAssembly JS API used here (the project compiles without the DOM lib, which declares it). */
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
}

const modules = new Map<number, object | null>();

/** The compiled module for `pages`, or null when this runtime has no WebAssembly or no SIMD (checked once). */
function compiled(pages: number): object | null {
  let m = modules.get(pages);
  if (m === undefined) {
    m = null;
    try {
      const api = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;
      const bytes = xtsWasmBytes(pages);
      if (api && api.validate(bytes)) m = new api.Module(bytes);
    } catch {
      m = null; // e.g. node --jitless: WebAssembly absent or refusing to compile
    }
    modules.set(pages, m);
  }
  return m;
}

export function xtsWasmAvailable(): boolean {
  return compiled(1) !== null;
}

/** A new instance (own memory of `pages` × 64 KiB), or null without WebAssembly SIMD. */
export function createXtsWasmKernel(pages: number): XtsWasmKernel | null {
  const m = compiled(pages);
  if (!m) return null;
  const api = (globalThis as { WebAssembly?: WasmApi }).WebAssembly!;
  const inst = new api.Instance(m, {});
  const memory = inst.exports.memory as { buffer: ArrayBuffer };
  const fn = inst.exports.xor_tweaks as (d: number, t: number, s: number, b: number) => void;
  return { mem: new Uint8Array(memory.buffer), xorTweaks: fn };
}
