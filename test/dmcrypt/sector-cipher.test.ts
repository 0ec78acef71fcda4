// The sector engine against IEEE 1619-2007 XTS-AES vectors and against OpenSSL (through node:crypto) sector by
// sector, for every IV mode, both backends; the JS backend's XTS with each XOR kernel (WebAssembly SIMD, TypeScript).
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { createSectorCipher, nativeAvailable, type SectorCipher } from "../../src/dmcrypt/index.js";
import { TrustvolError } from "../../src/util/errors.js";

type Backend = "native" | "js";
/** Each backend, and the JS backend once per XTS XOR kernel (TRUSTVOL_JS_XTS, read when an engine is created). */
const VARIANTS = [
  ["native", undefined],
  ["js", "wasm"],
  ["js", "js"],
] as const;
const variantName = (b: Backend, xts: string | undefined) => (xts ? `${b}, ${xts === "js" ? "TypeScript" : xts} XOR kernel` : b);

/** TRUSTVOL_JS_XTS for the rest of test t. */
function useXts(t: TestContext, xts: string | undefined): void {
  if (!xts) return;
  const before = process.env.TRUSTVOL_JS_XTS;
  process.env.TRUSTVOL_JS_XTS = xts;
  t.after(() => {
    if (before === undefined) delete process.env.TRUSTVOL_JS_XTS;
    else process.env.TRUSTVOL_JS_XTS = before;
  });
}

/** Skip native cases when the addon is not built (the fallback JS engine is always tested). */
function haveBackend(t: TestContext, b: Backend): boolean {
  if (b === "native" && !nativeAvailable()) {
    t.skip("native addon not built (npm run build:native)");
    return false;
  }
  return true;
}

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ""), "hex");

// IEEE Std 1619-2007 Annex B: (key1 ‖ key2, data unit sequence number, plaintext, ciphertext)
const PATTERN = Buffer.concat([Buffer.from(Array.from({ length: 256 }, (_, i) => i)), Buffer.from(Array.from({ length: 256 }, (_, i) => i))]);
const IEEE: { name: string; key: Buffer; seq: bigint; ptx: Buffer; ctx: Buffer }[] = [
  {
    name: "vector 1",
    key: Buffer.alloc(32),
    seq: 0n,
    ptx: Buffer.alloc(32),
    ctx: hex("917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e"),
  },
  {
    name: "vector 2",
    key: hex("11111111111111111111111111111111 22222222222222222222222222222222"),
    seq: 0x3333333333n,
    ptx: Buffer.alloc(32, 0x44),
    ctx: hex("c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0"),
  },
  {
    name: "vector 3",
    key: hex("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0 22222222222222222222222222222222"),
    seq: 0x3333333333n,
    ptx: Buffer.alloc(32, 0x44),
    ctx: hex("af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89"),
  },
  {
    name: "vector 4",
    key: hex("27182818284590452353602874713526 31415926535897932384626433832795"),
    seq: 0n,
    ptx: PATTERN,
    ctx: hex(`27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c c78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412
      328063fd2aab53e5ea1e0a9f332500a5df9487d07a5c92cc512c8866c7e860ce 93fdf166a24912b422976146ae20ce846bb7dc9ba94a767aaef20c0d61ad0265
      5ea92dc4c4e41a8952c651d33174be51a10c421110e6d81588ede82103a252d8 a750e8768defffed9122810aaeb99f9172af82b604dc4b8e51bcb08235a6f434
      1332e4ca60482a4ba1a03b3e65008fc5da76b70bf1690db4eae29c5f1badd03c 5ccf2a55d705ddcd86d449511ceb7ec30bf12b1fa35b913f9f747a8afd1b130e
      94bff94effd01a91735ca1726acd0b197c4e5b03393697e126826fb6bbde8ecc 1e08298516e2c9ed03ff3c1b7860f6de76d4cecd94c8119855ef5297ca67e9f3
      e7ff72b1e99785ca0a7e7720c5b36dc6d72cac9574c8cbbc2f801e23e56fd344 b07f22154beba0f08ce8891e643ed995c94d9a69c9f1b5f499027a78572aeebd
      74d20cc39881c213ee770b1010e4bea718846977ae119f7a023ab58cca0ad752 afe656bb3c17256a9f6e9bf19fdd5a38fc82bbe872c5539edb609ef4f79c203e
      bb140f2e583cb2ad15b4aa5b655016a8449277dbd477ef2c8d6c017db738b18d eb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568`),
  },
  {
    name: "vector 10 (XTS-AES-256)",
    key: hex(`27182818284590452353602874713526 62497757247093699959574966967627
      31415926535897932384626433832795 02884197169399375105820974944592`),
    seq: 0xffn,
    ptx: PATTERN,
    ctx: hex(`1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b 5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd
      5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0 c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca
      2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0 b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f
      93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec 583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a
      84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1 505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae
      9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29 a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac
      6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f 645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385
      1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa 773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151`),
  },
];

for (const [backend, xts] of VARIANTS) {
  test(`IEEE 1619-2007 XTS-AES vectors as aes-xts-plain64 512-byte sectors (${variantName(backend, xts)})`, (t) => {
    if (!haveBackend(t, backend)) return;
    useXts(t, xts);
    for (const v of IEEE) {
      if (v.key.subarray(0, v.key.length / 2).equals(v.key.subarray(v.key.length / 2))) {
        // Vector 1's all-zero key has equal halves, which OpenSSL 3 (hence cryptsetup) refuses: so do we.
        assert.throws(() => createSectorCipher({ cipher: "aes-xts-plain64", key: v.key, sectorSize: 512, backend }), /halves are identical/);
        continue;
      }
      const c = createSectorCipher({ cipher: "aes-xts-plain64", key: v.key, sectorSize: 512, backend });
      assert.equal(c.backend, backend);
      // The 32-byte vectors are the first two blocks of a sector: XTS blocks depend only on their index.
      const sec = Buffer.alloc(512, 0xa5);
      v.ptx.copy(sec);
      c.encrypt(sec, v.seq);
      assert.equal(sec.subarray(0, v.ctx.length).toString("hex"), v.ctx.toString("hex"), `${v.name} encrypt`);
      const back = Buffer.alloc(512, 0x5a);
      v.ctx.copy(back);
      c.decrypt(back, v.seq);
      assert.equal(back.subarray(0, v.ptx.length).toString("hex"), v.ptx.toString("hex"), `${v.name} decrypt`);
      c.dispose();
    }
  });
}

// ---- reference: one node:crypto (OpenSSL) call per sector with an independently computed dm-crypt IV ----
const IV_MODES = ["plain64", "plain", "plain64be", "essiv:sha256", "null"] as const;
type IvMode = (typeof IV_MODES)[number];

function refIv(mode: IvMode, ivSector: bigint, key: Buffer): Buffer {
  const iv = Buffer.alloc(16);
  const n = BigInt.asUintN(64, ivSector);
  if (mode === "plain64" || mode === "essiv:sha256") iv.writeBigUInt64LE(n, 0);
  else if (mode === "plain") iv.writeUInt32LE(Number(n & 0xffffffffn), 0);
  else if (mode === "plain64be") iv.writeBigUInt64BE(n, 8);
  if (mode === "essiv:sha256") {
    const e = createCipheriv("aes-256-ecb", createHash("sha256").update(key).digest(), null).setAutoPadding(false);
    return e.update(iv);
  }
  return iv;
}

function refCrypt(
  chain: "xts" | "cbc" | "ecb",
  mode: IvMode,
  key: Buffer,
  data: Buffer,
  sectorSize: number,
  firstSector: bigint,
  ivOffset: bigint,
  large: boolean,
  enc: boolean,
): Buffer {
  const bits = (chain === "xts" ? key.length / 2 : key.length) * 8;
  const out: Buffer[] = [];
  for (let i = 0; i * sectorSize < data.length; i++) {
    const sector = firstSector + BigInt(i);
    const ivSector = (large ? sector : sector * BigInt(sectorSize / 512)) + ivOffset;
    const iv = chain === "ecb" ? null : refIv(mode, ivSector, key);
    const f = enc ? createCipheriv : (createDecipheriv as unknown as typeof createCipheriv);
    const c = f(`aes-${bits}-${chain}`, key, iv).setAutoPadding(false);
    out.push(c.update(data.subarray(i * sectorSize, (i + 1) * sectorSize)), c.final());
  }
  return Buffer.concat(out);
}

function xtsKey(bytes: number): Buffer {
  for (;;) {
    const k = randomBytes(bytes);
    if (!k.subarray(0, bytes / 2).equals(k.subarray(bytes / 2))) return k;
  }
}

interface Case {
  chain: "xts" | "cbc" | "ecb";
  keyLen: number;
  mode: IvMode;
  sectorSize: number;
  sector: bigint;
  ivOffset: bigint;
  large: boolean;
  sectors: number;
}

function cases(): Case[] {
  const out: Case[] = [];
  const starts = [0n, 7n, 0x1_0000_0003n /* beyond 2^32 */];
  for (const sectorSize of [512, 1024, 4096]) {
    for (const mode of IV_MODES) {
      for (const [chain, keyLen] of [
        ["xts", 32],
        ["xts", 64],
        ["cbc", 16],
        ["cbc", 24],
        ["cbc", 32],
      ] as const) {
        for (const sector of starts) {
          out.push({ chain, keyLen, mode, sectorSize, sector, ivOffset: sector === 7n ? 12345n : 0n, large: sector === 7n && sectorSize > 512, sectors: 19 });
        }
      }
    }
    out.push({ chain: "ecb", keyLen: 32, mode: "null", sectorSize, sector: 3n, ivOffset: 0n, large: false, sectors: 5 });
    out.push({ chain: "ecb", keyLen: 16, mode: "null", sectorSize, sector: 0n, ivOffset: 0n, large: false, sectors: 5 });
  }
  return out;
}

for (const [backend, xts] of VARIANTS) {
  test(`matches OpenSSL sector by sector: every chain/IV mode, sector size, offset (${variantName(backend, xts)})`, (t) => {
    if (!haveBackend(t, backend)) return;
    useXts(t, xts);
    for (const k of cases()) {
      const cipher = k.chain === "ecb" ? "aes-ecb" : `aes-${k.chain}-${k.mode}`;
      const key = k.chain === "xts" ? xtsKey(k.keyLen) : randomBytes(k.keyLen);
      const label = `${cipher} key=${k.keyLen * 8} ss=${k.sectorSize} sector=${k.sector} off=${k.ivOffset} large=${k.large}`;
      const plain = randomBytes(k.sectors * k.sectorSize);
      const want = refCrypt(k.chain, k.mode, key, plain, k.sectorSize, k.sector, k.ivOffset, k.large, true);
      const c = createSectorCipher({ cipher, key, sectorSize: k.sectorSize, ivOffset: k.ivOffset, ivLargeSectors: k.large, backend });
      const buf = Buffer.from(plain);
      // number and bigint sector arguments must agree
      c.encrypt(buf, k.sector <= BigInt(Number.MAX_SAFE_INTEGER) && k.sector % 2n === 1n ? Number(k.sector) : k.sector);
      assert.ok(buf.equals(want), `encrypt ${label}`);
      c.decrypt(buf, k.sector);
      assert.ok(buf.equals(plain), `decrypt ${label}`);
      // decryption of OpenSSL's ciphertext, one sector at a time at its own index
      const ct = Buffer.from(want);
      for (let i = 0; i < k.sectors; i++) c.decrypt(ct.subarray(i * k.sectorSize, (i + 1) * k.sectorSize), k.sector + BigInt(i));
      assert.ok(ct.equals(plain), `per-sector decrypt ${label}`);
      c.dispose();
    }
  });

  test(`large batches, unaligned views and 64-bit IV wrap-around (${variantName(backend, xts)})`, (t) => {
    if (!haveBackend(t, backend)) return;
    useXts(t, xts);
    const key = xtsKey(64);
    // 600 KiB crosses the JS engine's internal batch boundaries; an odd byteOffset forces the copy path
    const backing = randomBytes(600 * 1024 + 1);
    const view = backing.subarray(1);
    const plain = Buffer.from(view);
    for (const [ss, cipher] of [
      [4096, "aes-xts-plain64"],
      [512, "aes-xts-plain64"],
      [4096, "aes-cbc-essiv:sha256"],
      [512, "aes-cbc-plain64"],
    ] as const) {
      const k = cipher.startsWith("aes-cbc") ? key.subarray(0, 32) : key;
      const c = createSectorCipher({ cipher, key: k, sectorSize: ss, backend });
      const start = 0xffff_ffff_fn; // IV numbers cross 2^32 inside the batch at 512 B, and near 2^36 at 4 KiB
      c.encrypt(view, start);
      const want = refCrypt(cipher.includes("xts") ? "xts" : "cbc", cipher.endsWith("essiv:sha256") ? "essiv:sha256" : "plain64", k, plain, ss, start, 0n, false, true);
      assert.ok(view.equals(want), `${cipher} ss=${ss}`);
      c.decrypt(view, start);
      assert.ok(view.equals(plain));
      c.dispose();
    }
    // The IV sector number is a u64 in the kernel: it wraps.
    const c = createSectorCipher({ cipher: "aes-xts-plain64", key, sectorSize: 4096, ivOffset: (1n << 64n) - 16n, backend });
    const data = randomBytes(4 * 4096);
    const ref = refCrypt("xts", "plain64", key, data, 4096, 0n, (1n << 64n) - 16n, false, true);
    const buf = Buffer.from(data);
    c.encrypt(buf, 0);
    assert.ok(buf.equals(ref));
    c.dispose();
  });

  test(`rejects bad keys, sizes, lengths and use after dispose (${variantName(backend, xts)})`, (t) => {
    if (!haveBackend(t, backend)) return;
    useXts(t, xts);
    const isErr = (code: string, re?: RegExp) => (e: unknown) => e instanceof TrustvolError && e.code === code && (!re || re.test(e.message));
    const same = Buffer.concat([Buffer.alloc(32, 7), Buffer.alloc(32, 7)]);
    assert.throws(() => createSectorCipher({ cipher: "aes-xts-plain64", key: same, sectorSize: 512, backend }), isErr("EUNSUPPORTED", /halves are identical/));
    assert.throws(() => createSectorCipher({ cipher: "aes-xts-plain64", key: randomBytes(48), sectorSize: 512, backend }), isErr("EUNSUPPORTED", /384-bit key/));
    assert.throws(() => createSectorCipher({ cipher: "aes-cbc-essiv:sha256", key: randomBytes(64), sectorSize: 512, backend }), isErr("EUNSUPPORTED"));
    assert.throws(() => createSectorCipher({ cipher: "aes-xts-plain64", key: xtsKey(64), sectorSize: 768, backend }), isErr("EUNSUPPORTED", /sector size/));
    assert.throws(() => createSectorCipher({ cipher: "aes-xts-plain64", key: xtsKey(64), sectorSize: 8192, backend }), isErr("EUNSUPPORTED", /sector size/));
    assert.throws(() => createSectorCipher({ cipher: "serpent-xts-plain64", key: xtsKey(64), sectorSize: 512, backend }), isErr("EUNSUPPORTED"));
    const c: SectorCipher = createSectorCipher({ cipher: "aes-xts-plain64", key: xtsKey(64), sectorSize: 4096, backend });
    assert.equal(c.sectorSize, 4096);
    assert.throws(() => c.encrypt(Buffer.alloc(512), 0), isErr("EINTERNAL", /multiple/));
    assert.throws(() => c.encrypt(Buffer.alloc(4096), -1), isErr("EINTERNAL"));
    assert.throws(() => c.encrypt(Buffer.alloc(4096), 1.5), isErr("EINTERNAL"));
    assert.throws(() => c.encrypt(Buffer.alloc(4096), 1n << 64n), isErr("EINTERNAL"));
    c.encrypt(Buffer.alloc(0), 0); // empty is a no-op
    c.dispose();
    c.dispose(); // idempotent
    assert.throws(() => c.encrypt(Buffer.alloc(4096), 0), isErr("EINTERNAL", /dispose/));
  });
}

test("native and JS engines agree, and the key is not retained by the caller's buffer", (t) => {
  if (!haveBackend(t, "native")) return;
  const key = xtsKey(64);
  const keyCopy = Buffer.from(key);
  const a = createSectorCipher({ cipher: "aes-xts-plain64", key, sectorSize: 512, backend: "native" });
  const b = createSectorCipher({ cipher: "aes-xts-plain64", key, sectorSize: 512, backend: "js" });
  key.fill(0); // the engines took their own copies
  const data = randomBytes(64 * 512);
  const x = Buffer.from(data);
  const y = Buffer.from(data);
  a.encrypt(x, 1234567);
  b.encrypt(y, 1234567n);
  assert.ok(x.equals(y));
  const c = createSectorCipher({ cipher: "aes-xts-plain64", key: keyCopy, sectorSize: 512, backend: "js" });
  c.decrypt(x, 1234567);
  assert.ok(x.equals(data));
  for (const s of [a, b, c]) s.dispose();
});

test("backend 'auto' picks native when available; TRUSTVOL_NO_NATIVE is honoured by a fresh process", async () => {
  const c = createSectorCipher({ cipher: "aes-xts-plain64", key: xtsKey(32), sectorSize: 512 });
  assert.equal(c.backend, nativeAvailable() ? "native" : "js");
  c.dispose();
  const { spawnSync } = await import("node:child_process");
  const url = new URL("../../src/dmcrypt/index.ts", import.meta.url).href;
  const r = spawnSync(
    process.execPath,
    ["--import", "tsx", "--input-type=module", "-e", `const m = await import(${JSON.stringify(url)}); process.stdout.write(String(m.nativeAvailable()) + " " + m.createSectorCipher({ cipher: "aes-xts-plain64", key: new Uint8Array(32).map((_, i) => i), sectorSize: 512 }).backend);`],
    { env: { ...process.env, TRUSTVOL_NO_NATIVE: "1" }, encoding: "utf8" },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "false js");
  assert.throws(
    () => {
      process.env.TRUSTVOL_NO_NATIVE = "1";
      try {
        createSectorCipher({ cipher: "aes-xts-plain64", key: xtsKey(32), sectorSize: 512, backend: "native" });
      } finally {
        delete process.env.TRUSTVOL_NO_NATIVE;
      }
    },
    (e: unknown) => e instanceof TrustvolError && e.code === "EUNSUPPORTED",
  );
});
