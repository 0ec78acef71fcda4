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

const B64 = Buffer.from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", "latin1");
const HEX = Buffer.from("0123456789abcdef", "latin1");

/** base64 of a secret straight into a wipeable Buffer (no JS string, no pooled copy). */
export function base64Bytes(secret: Uint8Array): Buffer {
  const out = Buffer.allocUnsafeSlow(Math.ceil(secret.length / 3) * 4);
  let o = 0;
  for (let i = 0; i < secret.length; i += 3) {
    const a = secret[i]!;
    const b = i + 1 < secret.length ? secret[i + 1]! : 0;
    const c = i + 2 < secret.length ? secret[i + 2]! : 0;
    out[o++] = B64[a >> 2]!;
    out[o++] = B64[((a & 3) << 4) | (b >> 4)]!;
    out[o++] = i + 1 < secret.length ? B64[((b & 15) << 2) | (c >> 6)]! : 0x3d;
    out[o++] = i + 2 < secret.length ? B64[c & 63]! : 0x3d;
  }
  return out;
}

/** Lower-case hex of a secret straight into a wipeable Buffer. */
export function hexBytes(secret: Uint8Array): Buffer {
  const out = Buffer.allocUnsafeSlow(secret.length * 2);
  for (let i = 0; i < secret.length; i++) {
    out[2 * i] = HEX[secret[i]! >> 4]!;
    out[2 * i + 1] = HEX[secret[i]! & 15]!;
  }
  return out;
}
