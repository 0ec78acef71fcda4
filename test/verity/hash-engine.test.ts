// The native verity engines against the JavaScript ones and node:crypto: hashBlocks and hashBlocksAsync (with and
// without its own pread) for hash types 0 and 1, several algorithms, salt lengths, block sizes, odd block counts, reads
// in slices; SHA-256 on AVX-512 and SHA-NI against EVP at every salt/chunk boundary; the HashPool on every engine (calling thread,
// native thread pool, worker threads of the JS fallback); and the FEC round encoder rsParity against RsColumnEncoder.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync, openSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadNative, type NativeHasher } from "../../src/dmcrypt/native.js";
import { HashPool, hashBlocksSync, type HashSpec } from "../../src/verity/pool.js";
import { RsColumnEncoder } from "../../src/verity/fec.js";

function reference(spec: HashSpec, inp: Uint8Array, count: number, bs: number): Buffer {
  const out = Buffer.alloc(count * spec.digestSize);
  for (let i = 0; i < count; i++) {
    const h = createHash(spec.algorithm);
    if (spec.hashType === 1) h.update(spec.salt);
    h.update(inp.subarray(i * bs, (i + 1) * bs));
    if (spec.hashType === 0) h.update(spec.salt);
    h.digest().copy(out, i * spec.digestSize);
  }
  return out;
}

const SPECS: HashSpec[] = [];
for (const [algorithm, digestSize] of [
  ["sha256", 32],
  ["sha1", 20],
  ["sha512", 64],
] as const) {
  for (const hashType of [0, 1] as const) {
    for (const saltLen of [0, 32, 256]) SPECS.push({ algorithm, digestSize, hashType, salt: randomBytes(saltLen) });
  }
}

test("native hashBlocks / hashBlocksAsync = node:crypto (types 0/1, sha1/256/512, salts 0/32/256, 512..4096-byte blocks)", async (t) => {
  const a = loadNative();
  if (!a?.hasherCreate || !a.hashBlocks || !a.hashBlocksAsync) return t.skip("native addon not built (npm run build:native)");
  const dir = mkdtempSync(join(tmpdir(), "trustvol-hash-engine-"));
  try {
    for (const spec of SPECS) {
      for (const bs of [512, 1024, 4096]) {
        // 67 blocks of 4 KiB cross the addon's 256 KiB read slices
        const count = bs === 4096 ? 67 : 1027;
        const inp = randomBytes(count * bs);
        const want = reference(spec, inp, count, bs);
        const h: NativeHasher = a.hasherCreate!(spec.algorithm, spec.salt, spec.hashType);
        assert.equal(a.hasherDigestSize!(h), spec.digestSize);
        const label = `${spec.algorithm} type ${spec.hashType} salt ${spec.salt.length} bs ${bs}`;
        const out = Buffer.alloc(want.length);
        a.hashBlocks(h, inp, count, bs, out);
        assert.ok(out.equals(want), `hashBlocks ${label}`);
        const out2 = Buffer.alloc(want.length);
        await a.hashBlocksAsync(h, -1, 0, inp, count, bs, out2);
        assert.ok(out2.equals(want), `hashBlocksAsync ${label}`);
        // from a file, starting one block in, with a scratch buffer of one slice
        const f = join(dir, "d.img");
        writeFileSync(f, Buffer.concat([randomBytes(bs), inp]));
        const fd = openSync(f, "r");
        try {
          const out3 = Buffer.alloc(want.length);
          await a.hashBlocksAsync(h, fd, bs, Buffer.alloc(Math.min(count, Math.max(1, (256 * 1024) / bs)) * bs), count, bs, out3);
          assert.ok(out3.equals(want), `hashBlocksAsync from fd ${label}`);
          await assert.rejects(a.hashBlocksAsync(h, fd, bs * 2, Buffer.alloc(count * bs), count, bs, Buffer.alloc(want.length)), /end of data/);
        } finally {
          closeSync(fd);
        }
        assert.throws(() => a.hashBlocks!(h, inp, count + 1, bs, Buffer.alloc(want.length + 64)), RangeError);
        assert.throws(() => a.hashBlocks!(h, inp, count, bs, Buffer.alloc(want.length - 1)), RangeError);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("SHA-256 on AVX-512 (sixteen blocks at once) and on SHA-NI (two interleaved) = EVP = node:crypto at every salt/chunk boundary", (t) => {
  const a = loadNative();
  if (!a?.hasherCreate || !a.hashBlocks || !a.hasherEngine) return t.skip("native addon not built (npm run build:native)");
  // flags 0: the best engine this CPU has (AVX-512 for groups of 16, SHA-NI for the rest where it has both); 2: never
  // AVX-512 (SHA-NI alone); 4: never SHA-NI (AVX-512 alone: a rest of < 16 blocks in spare lanes)
  const engines = [0, 2, 4].map((flags) => ({ flags, engine: a.hasherEngine!(a.hasherCreate!("sha256", Buffer.alloc(32), 1, flags)) })).filter((e) => e.engine !== "evp");
  if (!engines.length) return t.skip("this CPU has neither AVX-512 nor SHA extensions: EVP per block (covered above)");
  const seen = new Set(engines.map((e) => e.engine));
  t.diagnostic(`engines here: ${[...seen].join(", ")}`);
  const evp: NativeHasher = a.hasherCreate("sha256", Buffer.alloc(32), 1, 1);
  assert.equal(a.hasherEngine(evp), "evp");
  // salts around the 64-byte chunk edges (the first chunk mixes salt and block, the last one block/salt and padding)
  for (const saltLen of [0, 1, 31, 32, 55, 56, 63, 64, 65, 100, 119, 120, 127, 128, 200, 256]) {
    const salt = randomBytes(saltLen);
    for (const hashType of [0, 1] as const) {
      const spec: HashSpec = { algorithm: "sha256", digestSize: 32, hashType, salt };
      const slow: NativeHasher = a.hasherCreate("sha256", salt, hashType, 1);
      for (const { flags, engine } of engines) {
        const fast: NativeHasher = a.hasherCreate("sha256", salt, hashType, flags);
        assert.equal(a.hasherEngine(fast), engine);
        // small blocks too: the LUKS AF diffuser hashes digest-sized chunks (and a short tail) in place; counts around
        // AVX-512's groups of 16 (a full group, a partial one, both)
        for (const bs of [1, 20, 32, 33, 55, 56, 64, 100, 512, 1024, 2048, 4096]) {
          for (const count of [1, 2, 3, 8, 15, 16, 17, 33]) {
            if (bs === 4096 && count > 17 && saltLen % 32 !== 0) continue; // enough: the big cases cost the most
            const inp = randomBytes(count * bs);
            const want = reference(spec, inp, count, bs);
            const got = Buffer.alloc(want.length);
            a.hashBlocks(fast, inp, count, bs, got);
            assert.ok(got.equals(want), `${engine} type ${hashType} salt ${saltLen} bs ${bs} count ${count}`);
            const inPlace = Buffer.from(inp);
            if (bs >= 32) {
              a.hashBlocks(fast, inPlace, count, bs, inPlace);
              for (let i = 0; i < count; i++) assert.ok(inPlace.subarray(i * 32, i * 32 + 32).equals(want.subarray(i * 32, i * 32 + 32)), `${engine} in place bs ${bs}`);
            }
            if (engine === engines[0]!.engine) {
              const viaEvp = Buffer.alloc(want.length);
              a.hashBlocks(slow, inp, count, bs, viaEvp);
              assert.ok(viaEvp.equals(want), `evp type ${hashType} salt ${saltLen} bs ${bs} count ${count}`);
            }
          }
        }
      }
    }
  }
  // sha1/sha512 keep EVP
  assert.equal(a.hasherEngine(a.hasherCreate("sha1", Buffer.alloc(32), 1)), "evp");
  assert.equal(a.hasherEngine(a.hasherCreate("sha512", Buffer.alloc(32), 1)), "evp");
});

test("HashPool: calling thread, native thread pool and worker threads agree", async () => {
  const spec: HashSpec = { algorithm: "sha256", digestSize: 32, hashType: 1, salt: randomBytes(32) };
  const count = 300;
  const bs = 4096;
  const inp = new Uint8Array(new SharedArrayBuffer(count * bs));
  inp.set(randomBytes(count * bs));
  const want = reference(spec, inp, count, bs);
  const sync = Buffer.alloc(want.length);
  hashBlocksSync(spec, inp, count, bs, sync);
  assert.ok(sync.equals(want));
  for (const threads of [1, 2]) {
    const pool = new HashPool(spec, threads);
    try {
      const out = new Uint8Array(new SharedArrayBuffer(want.length));
      await pool.hash(inp, count, bs, out);
      assert.ok(Buffer.from(out).equals(want), `pool threads=${threads}`);
    } finally {
      await pool.close();
    }
  }
});

test("native rsParity / rsParityAsync (FEC round) = RsColumnEncoder for roots 2..24, several block sizes", async (t) => {
  const a = loadNative();
  if (!a?.rsParity) return t.skip("native addon not built (npm run build:native)");
  for (const roots of [2, 3, 5, 8, 16, 24]) {
    for (const bs of [16, 100, 512, 4096]) {
      const rsn = 255 - roots;
      const inp = randomBytes(rsn * bs);
      if (bs === 512) inp.fill(0, 7 * bs); // trailing zero rows, as past the end of the input
      const enc = new RsColumnEncoder(roots, bs);
      for (let i = 0; i < rsn; i++) enc.push(inp.subarray(i * bs, (i + 1) * bs));
      const want = Buffer.alloc(bs * roots);
      enc.parity(want);
      const mul = new Uint8Array(roots * 256);
      enc.mul.forEach((m, j) => mul.set(m, j * 256));
      const got = Buffer.alloc(bs * roots);
      a.rsParity(mul, roots, inp, rsn, bs, got);
      assert.ok(got.equals(want), `roots=${roots} bs=${bs}`);
      if (a.rsParityAsync) {
        const got2 = Buffer.alloc(bs * roots);
        await a.rsParityAsync(mul, roots, inp, rsn, bs, got2);
        assert.ok(got2.equals(want), `async roots=${roots} bs=${bs}`);
      }
    }
  }
});
