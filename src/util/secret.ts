// Key material lives in Buffers we own and wipe; these helpers make that the easy path.
import { randomFillSync, timingSafeEqual } from "node:crypto";

/** Overwrite key material in place (best effort: V8 may have copied it, but we never leave our own copies). */
export function wipe(...bufs: (Uint8Array | undefined | null)[]): void {
  for (const b of bufs) if (b) b.fill(0);
}

/** Run fn with a secret and wipe it afterwards, whatever happens. */
export async function withSecret<T>(secret: Uint8Array, fn: (s: Uint8Array) => Promise<T> | T): Promise<T> {
  try {
    return await fn(secret);
  } finally {
    wipe(secret);
  }
}

export function randomBytesBuf(n: number): Buffer {
  const b = Buffer.allocUnsafeSlow(n); // slow = not from the shared pool, so wiping it wipes the only copy
  randomFillSync(b);
  return b;
}

export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
