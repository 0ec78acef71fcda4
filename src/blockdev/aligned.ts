// Buffers at a known memory alignment, so that FileBlockDevice can read and write them with O_DIRECT: Node cannot tell
// a Buffer's address, so the addon allocates them (posix_memalign) and this module remembers which ones it made.
import { loadNative } from "../dmcrypt/native.js";

/** Alignment of address, offset and length for O_DIRECT: the page size, a multiple of any logical block size ≤ 4 KiB. */
export const DIRECT_ALIGN = 4096;

/** The ArrayBuffers alignedBuffer() made (their first byte is at a multiple of DIRECT_ALIGN). */
const aligned = new WeakSet<ArrayBufferLike>();

/**
 * A zeroed Buffer of `size` bytes starting at a multiple of DIRECT_ALIGN, outside V8's heap (the addon's
 * `alignedAlloc`; its memory is cleansed when collected). Without the addon, an ordinary unpooled Buffer (not
 * zeroed) that FileBlockDevice simply reads and writes through the page cache.
 */
export function alignedBuffer(size: number): Buffer {
  const alloc = loadNative()?.alignedAlloc;
  if (alloc) {
    try {
      const ab = alloc(size, DIRECT_ALIGN);
      aligned.add(ab);
      return Buffer.from(ab);
    } catch {
      /* out of memory in posix_memalign: the ordinary allocator decides */
    }
  }
  return Buffer.allocUnsafeSlow(size);
}

/** Whether buf's first byte sits at a multiple of `align` (a divisor of DIRECT_ALIGN): known only for alignedBuffer()'s. */
export function isAlignedBuffer(buf: Uint8Array, align = DIRECT_ALIGN): boolean {
  return aligned.has(buf.buffer) && buf.byteOffset % align === 0 && DIRECT_ALIGN % align === 0;
}
