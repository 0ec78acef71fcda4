// The AF splitter's diffusion step, native and TypeScript, against the spec's definition written out plainly here.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { afDiffuser, afMerge, afSplit, afStripeLoop } from "../../src/luks2/af.js";
import { loadNative } from "../../src/dmcrypt/native.js";

/** LUKS1 spec §2.4: H(i ‖ chunk i) per digest-sized chunk, i big-endian u32, a short tail keeps a truncated digest. */
function reference(buf: Buffer, hash: string): void {
  const ds = createHash(hash).digest().length;
  for (let i = 0; i * ds < buf.length; i++) {
    const iv = Buffer.alloc(4);
    iv.writeUInt32BE(i);
    const len = Math.min(ds, buf.length - i * ds);
    createHash(hash).update(iv).update(buf.subarray(i * ds, i * ds + len)).digest().copy(buf, i * ds, 0, len);
  }
}

test("AF diffusion: native and TypeScript equal the spec for every hash and key size (tails included)", (t) => {
  const native = !!loadNative()?.hasherCreate;
  if (!native) t.diagnostic("native addon absent: only the TypeScript diffuser is compared");
  for (const hash of ["sha1", "sha256", "sha512", "sha384"]) {
    for (const len of [16, 20, 32, 48, 64, 65, 100]) {
      const input = randomBytes(len);
      const want = Buffer.from(input);
      reference(want, hash);
      for (const impl of ["js", "native"] as const) {
        const d = afDiffuser(hash, len, impl);
        if (!d) {
          assert.equal(impl, "native");
          assert.equal(native, false, `${hash}: the native diffuser refused a hash OpenSSL has`);
          continue;
        }
        const got = Buffer.from(input);
        d(got);
        const again = Buffer.from(input); // a second call reuses the hashers
        d(again);
        assert.ok(got.equals(want), `${impl} ${hash} len ${len}`);
        assert.ok(again.equals(want), `${impl} ${hash} len ${len} (reused)`);
      }
    }
  }
});

test("AF split then merge gives the key back (4000 stripes; word-wise and byte-wise XOR; unaligned material)", () => {
  for (const hash of ["sha1", "sha256", "sha512"]) {
    for (const len of [16, 32, 33, 64]) {
      const key = randomBytes(len);
      const m = afSplit(key, 4000, hash);
      assert.ok(afMerge(m, len, 4000, hash).equals(key), `${hash} ${len}`);
      const odd = Buffer.concat([Buffer.alloc(3), m]).subarray(3); // material at an odd byte offset
      assert.ok(afMerge(odd, len, 4000, hash).equals(key), `${hash} ${len} unaligned`);
    }
  }
});

test("AF stripe loop: the native one-call loop equals the TypeScript one (every hash, tails, unaligned material); bad arguments are refused", (t) => {
  const a = loadNative();
  if (!a?.afStripes) return t.skip("native addon without afStripes");
  for (const hash of ["sha1", "sha256", "sha512", "sha384"]) {
    for (const len of [16, 20, 32, 33, 48, 64, 65, 100]) {
      const material = Buffer.concat([Buffer.alloc(1), randomBytes(len * 37)]).subarray(1); // at an odd offset
      const [js, native] = [afStripeLoop(hash, len, "js")!, afStripeLoop(hash, len, "native")!];
      const want = Buffer.alloc(len), got = Buffer.alloc(len);
      js(want, material, 37);
      native(got, material, 37);
      assert.ok(got.equals(want), `${hash} len ${len}`);
    }
  }
  // more chunks than the addon takes (sha1: 20-byte digests, 1300 bytes = 65 chunks): split and merge still agree
  const long = randomBytes(1300);
  assert.equal(afStripeLoop("sha1", 1300, "native"), undefined);
  assert.ok(afMerge(afSplit(long, 40, "sha1"), 1300, 40, "sha1").equals(long));
  const h = a.hasherCreate!("sha256", Buffer.from([0, 0, 0, 0]), 1);
  assert.throws(() => a.afStripes!([h], Buffer.alloc(64), Buffer.alloc(64), 1), /one hasher per digest-sized chunk/, "64 bytes need two sha256 hashers");
  assert.throws(() => a.afStripes!([h], Buffer.alloc(32), Buffer.alloc(32), 2), /whole stripes of material/, "material shorter than count stripes");
  assert.throws(() => a.afStripes!([h, a.hasherCreate!("sha256", Buffer.alloc(0), 0)], Buffer.alloc(64), Buffer.alloc(64), 1), /hash type 1/);
});
