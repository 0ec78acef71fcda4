// The batched XTS paths against each other and against OpenSSL's own XTS (node:crypto, one call per sector):
// the native addon's default path (VAES where the CPU has it), its tweak-masked ECB path and its per-sector EVP XTS
// path (both forced through create() flags), the public API on both backends, every sector size 512..4096, batch
// lengths that are odd and cross the internal chunk boundaries, iv_offset and iv_large_sectors, every IV mode, 256-
// and 512-bit keys, 64-bit wrap-around.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { createSectorCipher, nativeAvailable } from "../../src/dmcrypt/index.js";
import { loadNative, NativeFlags, NativeIv } from "../../src/dmcrypt/native.js";
import { sectorEngineVariants, withJsXts } from "../helpers/sector-engines.js";

const U64 = (1n << 64n) - 1n;
const SIZES = [512, 1024, 2048, 4096];
// 16 KiB chunks inside the native ECB path, 32 KiB batches inside the JS engine: cover 1, odd counts, the 4-sector
// interleave remainder, exact chunk multiples and one past them.
const COUNTS = (ss: number) => [1, 3, 5, 16384 / ss, 16384 / ss + 1, 32768 / ss + 3, 77];
const IV_MODES = ["plain64", "plain", "plain64be", "essiv:sha256", "null"] as const;
type IvMode = (typeof IV_MODES)[number];

function xtsKey(bytes: number): Buffer {
  for (;;) {
    const k = randomBytes(bytes);
    if (!k.subarray(0, bytes / 2).equals(k.subarray(bytes / 2))) return k;
  }
}

function ivBlock(mode: IvMode, ivSector: bigint, key: Buffer): Buffer {
  const iv = Buffer.alloc(16);
  const n = ivSector & U64;
  if (mode === "plain64" || mode === "essiv:sha256") iv.writeBigUInt64LE(n, 0);
  else if (mode === "plain") iv.writeUInt32LE(Number(n & 0xffffffffn), 0);
  else if (mode === "plain64be") iv.writeBigUInt64BE(n, 8);
  if (mode === "essiv:sha256") return createCipheriv("aes-256-ecb", createHash("sha256").update(key).digest(), null).setAutoPadding(false).update(iv);
  return iv;
}

/** OpenSSL XTS, one data unit per sector, IV sector numbers firstIv, firstIv + step, … (mod 2^64). */
function reference(key: Buffer, mode: IvMode, data: Buffer, ss: number, firstIv: bigint, step: number, enc: boolean): Buffer {
  const out = Buffer.alloc(data.length);
  const alg = `aes-${key.length * 4}-xts`;
  for (let i = 0; i * ss < data.length; i++) {
    const iv = ivBlock(mode, firstIv + BigInt(i * step), key);
    const c = (enc ? createCipheriv(alg, key, iv) : createDecipheriv(alg, key, iv)).setAutoPadding(false);
    c.update(data.subarray(i * ss, (i + 1) * ss)).copy(out, i * ss);
  }
  return out;
}

const NATIVE_IV: Record<IvMode, number> = { plain64: NativeIv.plain64, plain: NativeIv.plain, plain64be: NativeIv.plain64be, "essiv:sha256": NativeIv.essiv, null: NativeIv.null };

test("native XTS: VAES path = tweak-masked ECB path = per-sector EVP path = OpenSSL, all sector sizes, odd batches, IV modes", (t) => {
  const a = loadNative();
  if (!a) return t.skip("native addon not built (npm run build:native)");
  const probe = a.create("AES-256-XTS", xtsKey(64), null, NativeIv.plain64, 1, 512);
  t.diagnostic(`default XTS engine here: ${a.cipherEngine?.(probe)}`);
  a.destroy(probe);
  for (const keyLen of [32, 64]) {
    const key = xtsKey(keyLen);
    const essiv = createHash("sha256").update(key).digest();
    for (const ss of SIZES) {
      for (const mode of IV_MODES) {
        for (const count of COUNTS(ss)) {
          for (const [step, first] of [
            [ss / 512, 0n],
            [ss / 512, 0xffff_fff0n], // crosses 2^32: plain truncates, plain64 carries
            [1, 12345n], // iv_large_sectors
            [ss / 512, U64 - 3n], // u64 wrap inside the batch
          ] as const) {
            const label = `key=${keyLen * 8} ss=${ss} ${mode} n=${count} step=${step} first=${first}`;
            const plain = randomBytes(count * ss);
            const want = reference(key, mode, plain, ss, first, step, true);
            for (const flags of [0, NativeFlags.xtsEcb, NativeFlags.xtsEvp]) {
              const h = a.create(`AES-${keyLen * 4}-XTS`, key, mode === "essiv:sha256" ? essiv : null, NATIVE_IV[mode], step, ss, flags);
              const buf = Buffer.from(plain);
              a.crypt(h, buf, true, first);
              assert.ok(buf.equals(want), `encrypt flags=${flags} ${label}`);
              a.crypt(h, buf, false, first);
              assert.ok(buf.equals(plain), `decrypt flags=${flags} ${label}`);
              a.destroy(h);
            }
          }
        }
      }
    }
  }
});

test("public API: native and JS backends agree with OpenSSL for every sector size, odd batch lengths, iv_offset, iv_large_sectors", (t) => {
  const variants = sectorEngineVariants();
  if (!nativeAvailable()) t.diagnostic("native addon not built: JS backend only");
  const key = xtsKey(64);
  for (const ss of SIZES) {
    for (const large of [false, true]) {
      for (const count of COUNTS(ss)) {
        const ivOffset = large ? 77n : 8n * 1000003n;
        const sector = 0x1_0000_0001n;
        const step = large ? 1 : ss / 512;
        const plain = randomBytes(count * ss);
        const want = reference(key, "plain64", plain, ss, sector * BigInt(step) + ivOffset, step, true);
        const outs: Buffer[] = [];
        for (const v of variants) {
          const backend = v.name;
          const c = withJsXts(v, () => createSectorCipher({ cipher: "aes-xts-plain64", key, sectorSize: ss, ivOffset, ivLargeSectors: large, backend: v.backend }));
          const buf = Buffer.from(plain);
          c.encrypt(buf, sector);
          assert.ok(buf.equals(want), `${backend} encrypt ss=${ss} large=${large} n=${count}`);
          outs.push(Buffer.from(buf));
          c.decrypt(buf, sector);
          assert.ok(buf.equals(plain), `${backend} decrypt ss=${ss} large=${large} n=${count}`);
          // a batch split at an odd sector boundary gives the same bytes as one call
          const split = Math.floor(count / 2) | 1;
          if (split < count) {
            const b2 = Buffer.from(plain);
            c.encrypt(b2.subarray(0, split * ss), sector);
            c.encrypt(b2.subarray(split * ss), sector + BigInt(split));
            assert.ok(b2.equals(want), `${backend} split encrypt ss=${ss} n=${count}`);
          }
          c.dispose();
        }
        for (const o of outs) assert.ok(o.equals(outs[0]!));
      }
    }
  }
});

test("encryptAsync/decryptAsync (split across the thread pool) = encrypt/decrypt for every chain mode, odd sizes, thread counts", async () => {
  const backends = nativeAvailable() ? (["native", "js"] as const) : (["js"] as const);
  const xkey = xtsKey(64);
  for (const backend of backends) {
    for (const [cipher, key, ss] of [
      ["aes-xts-plain64", xkey, 512],
      ["aes-xts-plain64", xkey, 4096],
      ["aes-xts-plain64", xkey.subarray(0, 32), 1024],
      ["aes-cbc-essiv:sha256", xkey.subarray(0, 32), 4096],
      ["aes-cbc-plain64", xkey.subarray(0, 16), 512],
      ["aes-ecb", xkey.subarray(0, 32), 2048],
    ] as const) {
      for (const sectors of [1, 7, Math.floor((3 << 20) / ss) + 5]) {
        const plain = randomBytes(sectors * ss);
        const c = createSectorCipher({ cipher, key, sectorSize: ss, ivOffset: 24n, backend });
        const want = Buffer.from(plain);
        c.encrypt(want, 0x1234_5678_9an);
        for (const threads of [undefined, 1, 2, 3, 7]) {
          const label = `${backend} ${cipher} ss=${ss} sectors=${sectors} threads=${threads}`;
          const buf = Buffer.from(plain);
          await c.encryptAsync!(buf, 0x1234_5678_9an, threads);
          assert.ok(buf.equals(want), `encryptAsync ${label}`);
          await c.decryptAsync!(buf, 0x1234_5678_9an, threads);
          assert.ok(buf.equals(plain), `decryptAsync ${label}`);
        }
        await assert.rejects(c.encryptAsync!(Buffer.alloc(ss + 16), 0), /multiple/);
        c.dispose();
        await assert.rejects(c.encryptAsync!(Buffer.alloc(ss), 0), /dispose/);
      }
    }
  }
});
