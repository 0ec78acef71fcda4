// The AF splitter's diffusion step, native and TypeScript, against the spec's definition written out plainly here.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { afDiffuser, afMerge, afSplit } from "../../src/luks2/af.js";
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
