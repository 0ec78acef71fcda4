// Anti-forensic splitter (LUKS1 spec §2.4 "AF-Splitter", used unchanged by LUKS2 keyslots of af.type "luks1").
import * as crypto from "node:crypto";
import { createHash, randomFillSync } from "node:crypto";
import { wipe } from "../util/secret.js";

const lengths = new Map<string, number>();
function hashLen(hash: string): number {
  let n = lengths.get(hash);
  if (n === undefined) lengths.set(hash, (n = createHash(hash).digest().length));
  return n;
}

// One-shot hashing (Node >= 20.12) spares a Hash object per chunk: thousands per keyslot (4000 stripes).
const oneShot = (crypto as unknown as { hash?: (alg: string, data: Uint8Array, enc: "buffer") => Buffer }).hash;

/** H(i ‖ block) over each digest-sized chunk, i as big-endian u32; a short tail uses a truncated digest. */
function diffuse(buf: Buffer, hash: string, scratch: Buffer): void {
  const ds = hashLen(hash);
  const blocks = Math.floor(buf.length / ds);
  const pad = buf.length % ds;
  for (let i = 0; i < blocks + (pad ? 1 : 0); i++) {
    const start = i * ds;
    const len = i < blocks ? ds : pad;
    scratch.writeUInt32BE(i, 0);
    buf.copy(scratch, 4, start, start + len);
    const input = scratch.subarray(0, 4 + len);
    const d = oneShot ? oneShot(hash, input, "buffer") : createHash(hash).update(input).digest();
    d.copy(buf, start, 0, len);
    wipe(d);
  }
}

function xorInto(dst: Buffer, a: Uint8Array, b: Uint8Array): void {
  for (let i = 0; i < dst.length; i++) dst[i] = a[i]! ^ b[i]!;
}

/** Split `key` into `stripes` blocks of key.length bytes each. */
export function afSplit(key: Uint8Array, stripes: number, hash: string): Buffer {
  const n = key.length;
  const out = Buffer.allocUnsafeSlow(n * stripes);
  const block = Buffer.alloc(n);
  const scratch = Buffer.alloc(4 + hashLen(hash));
  randomFillSync(out, 0, n * (stripes - 1));
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(block, block, out.subarray(i * n, (i + 1) * n));
    diffuse(block, hash, scratch);
  }
  xorInto(out.subarray((stripes - 1) * n), block, key);
  wipe(block, scratch);
  return out;
}

/** Merge split material back into the key (keyLen bytes). */
export function afMerge(material: Uint8Array, keyLen: number, stripes: number, hash: string): Buffer {
  if (material.length < keyLen * stripes) throw new RangeError("AF material too short");
  const block = Buffer.alloc(keyLen);
  const scratch = Buffer.alloc(4 + hashLen(hash));
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(block, block, material.subarray(i * keyLen, (i + 1) * keyLen));
    diffuse(block, hash, scratch);
  }
  const key = Buffer.allocUnsafeSlow(keyLen);
  xorInto(key, block, material.subarray((stripes - 1) * keyLen, stripes * keyLen));
  wipe(block, scratch);
  return key;
}

/** Bytes of AF material for a key, rounded up to whole 512-byte sectors (cryptsetup AF_split_sectors). */
export function afSectorsBytes(keyLen: number, stripes: number): number {
  return Math.ceil((keyLen * stripes) / 512) * 512;
}
