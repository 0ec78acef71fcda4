// dm-crypt IV generators, batched: fill one 16-byte IV block per sector for a run of consecutive sectors.
// The IV sector number is 64-bit and wraps like the kernel's u64 (dm-crypt.rst, REFERENCE.md "dm-crypt sector format").
import type { IvMode } from "./cipher-spec.js";

export const U64 = (1n << 64n) - 1n;

/**
 * Write the pre-encryption IV blocks for `count` sectors starting at IV sector `first`, stepping by `step`.
 * essiv:sha256 gets its plain64 block here; the caller encrypts the blocks with the ESSIV salt key afterwards.
 */
export function fillIvBlocks(out: Uint8Array, mode: IvMode, first: bigint, step: number, count: number): void {
  out.fill(0, 0, count * 16);
  if (mode === "null") return;
  // Split into 32-bit halves and step in numbers: a BigInt per sector would dominate small-sector batches.
  let lo = Number(first & 0xffffffffn);
  let hi = Number((first >> 32n) & 0xffffffffn);
  for (let i = 0, o = 0; i < count; i++, o += 16) {
    switch (mode) {
      case "plain":
        put32le(out, o, lo);
        break;
      case "plain64be":
        put32be(out, o + 8, hi);
        put32be(out, o + 12, lo);
        break;
      default: // plain64, essiv:sha256
        put32le(out, o, lo);
        put32le(out, o + 4, hi);
    }
    lo += step;
    if (lo > 0xffffffff) {
      hi = (hi + Math.floor(lo / 0x100000000)) >>> 0;
      lo = lo % 0x100000000;
    }
  }
}

function put32le(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

function put32be(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 24) & 0xff;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}
