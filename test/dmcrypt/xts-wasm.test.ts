// The fallback engine's XTS XOR kernel in WebAssembly SIMD (src/dmcrypt/xts-wasm.ts) against the TypeScript kernel
// and OpenSSL; the choice (auto, TRUSTVOL_JS_XTS) and the fallback where the runtime has no WebAssembly; the wipe of
// the kernel's memory. The IEEE 1619 vectors and the sector-by-sector OpenSSL/cryptsetup comparisons run with both
// kernels in sector-cipher.test.ts, batch-paths.test.ts and cryptsetup-kat.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createCipheriv, createHash, randomBytes } from "node:crypto";
import { createSectorCipher } from "../../src/dmcrypt/index.js";
import { parseCipherSpec } from "../../src/dmcrypt/cipher-spec.js";
import { JsSectorEngine } from "../../src/dmcrypt/js-backend.js";
import { createXtsWasmKernel, xtsWasmAvailable, xtsWasmBytes } from "../../src/dmcrypt/xts-wasm.js";
import { TrustvolError } from "../../src/util/errors.js";

const xtsKey = (n: number) => {
  const k = randomBytes(n);
  k[0] = k[n / 2]! ^ 1; // halves differ
  return k;
};

/** OpenSSL's aes-xts encryption, one createCipheriv per sector, plain64 IVs from `first` in steps of ss/512. */
function reference(key: Buffer, data: Buffer, ss: number, first: bigint): Buffer {
  const out = Buffer.alloc(data.length);
  for (let s = 0; s < data.length / ss; s++) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE((first + BigInt((s * ss) / 512)) & 0xffffffffffffffffn);
    const c = createCipheriv(`aes-${key.length * 4}-xts`, key, iv);
    c.update(data.subarray(s * ss, (s + 1) * ss)).copy(out, s * ss);
  }
  return out;
}

/** The part of the WebAssembly JS API used here (the project compiles without the DOM lib, which declares it). */
const Wasm = (globalThis as unknown as {
  WebAssembly: { validate(b: Uint8Array): boolean; Module: { new (b: Uint8Array): object; exports(m: object): { kind: string; name: string }[] } };
}).WebAssembly;

test("the emitted module validates, exports memory and xor_tweaks, and its bytes are the reviewed ones", () => {
  assert.ok(xtsWasmAvailable(), "Node ≥ 20 on x86-64/arm64 has WebAssembly SIMD");
  const bytes = xtsWasmBytes(2);
  assert.ok(Wasm.validate(bytes));
  const mod = new Wasm.Module(bytes);
  assert.deepEqual(
    Wasm.Module.exports(mod).map((e) => `${e.kind}:${e.name}`),
    ["memory:memory", "function:xor_tweaks"],
  );
  // A change to the emitter shows up here: update the digest together with a run of the dm-crypt tests.
  assert.equal(createHash("sha256").update(bytes).digest("hex"), "f65a3e665b6f64c04e0c03473cffa580a6c9f0d4b6a71b146d3e83a5f39aec0d");
});

test("xor_tweaks: T_j = T_0·α^j for every block, any sector count and size (against a BigInt model)", () => {
  const k = createXtsWasmKernel(2)!;
  const mask = (1n << 128n) - 1n;
  const le = (b: Uint8Array) => BigInt("0x" + Buffer.from(b).reverse().toString("hex"));
  for (const [sectors, blocks] of [[1, 32], [3, 32], [16, 256], [2, 64], [5, 128], [128, 32]] as const) {
    const t0s = randomBytes(16 * sectors);
    t0s[15] |= 0x80; // the reduction path from the first doubling on
    const data = randomBytes(sectors * blocks * 16);
    k.mem.set(data, 0);
    k.mem.set(t0s, 65536);
    k.xorTweaks(0, 65536, sectors, blocks);
    for (let s = 0; s < sectors; s++) {
      let t = le(t0s.subarray(16 * s, 16 * s + 16));
      for (let j = 0; j < blocks; j++) {
        const off = (s * blocks + j) * 16;
        const want = le(data.subarray(off, off + 16)) ^ t;
        assert.equal(le(k.mem.subarray(off, off + 16)), want, `sectors=${sectors} blocks=${blocks} s=${s} j=${j}`);
        t = ((t << 1n) & mask) ^ (t >> 127n ? 0x87n : 0n);
      }
    }
  }
});

test("JS engine: wasm and TypeScript kernels and OpenSSL agree (sector sizes, key sizes, batch-crossing runs)", () => {
  const spec = parseCipherSpec("aes-xts-plain64");
  for (const keyLen of [32, 64]) {
    const key = xtsKey(keyLen);
    for (const ss of [512, 1024, 2048, 4096]) {
      const wasm = new JsSectorEngine(spec, key, ss, ss / 512, null, "wasm");
      const ts = new JsSectorEngine(spec, key, ss, ss / 512, null, "js");
      assert.equal(wasm.xtsKernel, "wasm");
      assert.equal(ts.xtsKernel, "js");
      for (const sectors of [1, 3, Math.ceil((200 * 1024) / ss) + 1]) {
        const plain = randomBytes(sectors * ss);
        const first = 0xffff_fff0n * BigInt(ss / 512);
        const want = reference(key, plain, ss, first);
        const a = Buffer.from(plain);
        const b = Buffer.from(plain);
        wasm.crypt(a, first, true);
        ts.crypt(b, first, true);
        const label = `key=${keyLen * 8} ss=${ss} sectors=${sectors}`;
        assert.ok(a.equals(want), `wasm encrypt ${label}`);
        assert.ok(b.equals(want), `js encrypt ${label}`);
        wasm.crypt(a, first, false);
        assert.ok(a.equals(plain), `wasm decrypt ${label}`);
        // an unaligned view of the caller's memory
        const backing = Buffer.alloc(plain.length + 3);
        const view = backing.subarray(3);
        want.copy(view);
        wasm.crypt(view, first, false);
        assert.ok(view.equals(plain), `wasm decrypt unaligned ${label}`);
      }
      wasm.dispose();
      ts.dispose();
    }
  }
});

test("dispose() wipes the wasm kernel's memory (tweaks and the last batch)", () => {
  const eng = new JsSectorEngine(parseCipherSpec("aes-xts-plain64"), xtsKey(64), 4096, 8, null, "wasm");
  eng.crypt(randomBytes(64 * 1024), 0n, true);
  const mem = (eng as unknown as { wasm: { mem: Uint8Array } }).wasm.mem;
  assert.ok(mem.some((b) => b !== 0));
  eng.dispose();
  assert.ok(mem.every((b) => b === 0));
});

test("TRUSTVOL_JS_XTS: an unknown value is a one-line usage error", () => {
  process.env.TRUSTVOL_JS_XTS = "fast";
  try {
    assert.throws(
      () => createSectorCipher({ cipher: "aes-xts-plain64", key: xtsKey(64), sectorSize: 512, backend: "js" }),
      (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE" && /TRUSTVOL_JS_XTS=fast/.test(e.message) && !e.message.includes("\n"),
    );
  } finally {
    delete process.env.TRUSTVOL_JS_XTS;
  }
});

test("without WebAssembly (node --jitless) the TypeScript kernel is chosen; TRUSTVOL_JS_XTS=wasm is refused", () => {
  const url = new URL("../../src/dmcrypt/js-backend.ts", import.meta.url).href;
  const specUrl = new URL("../../src/dmcrypt/cipher-spec.ts", import.meta.url).href;
  const script = `
    const { JsSectorEngine } = await import(${JSON.stringify(url)});
    const { parseCipherSpec } = await import(${JSON.stringify(specUrl)});
    const key = new Uint8Array(64).map((_, i) => i);
    try {
      const e = new JsSectorEngine(parseCipherSpec("aes-xts-plain64"), key, 512, 1, null);
      const d = new Uint8Array(1024);
      e.crypt(d, 5n, true);
      process.stdout.write(typeof WebAssembly + " " + e.xtsKernel + " " + Buffer.from(d).toString("hex"));
    } catch (err) { process.stdout.write(typeof WebAssembly + " " + err.code + " " + err.message); }`;
  const run = (env: Record<string, string>) =>
    spawnSync(process.execPath, ["--jitless", "--import", "tsx", "--input-type=module", "-e", script], {
      env: { ...process.env, ...env },
      encoding: "utf8",
    });
  const key = Buffer.from(new Uint8Array(64).map((_, i) => i));
  const want = reference(key, Buffer.alloc(1024), 512, 5n).toString("hex");
  const auto = run({});
  assert.equal(auto.status, 0, auto.stderr);
  assert.equal(auto.stdout, `undefined js ${want}`);
  const forced = run({ TRUSTVOL_JS_XTS: "wasm" });
  assert.equal(forced.status, 0, forced.stderr);
  assert.match(forced.stdout, /^undefined EUNSUPPORTED .*no WebAssembly SIMD/);
});

test("output buffers freed at once through ArrayBuffer.prototype.transfer (Node ≥ 21; Node 20 with a flag): same bytes", () => {
  // Every chain mode of the JS engine, each XTS kernel, against OpenSSL one sector at a time, in a child that has
  // ArrayBuffer.prototype.transfer (the path js-backend.ts's release() takes on Node ≥ 21).
  const idx = new URL("../../src/dmcrypt/index.ts", import.meta.url).href;
  const script = `
    const { createSectorCipher } = await import(${JSON.stringify(idx)});
    const { createCipheriv, createDecipheriv, createHash, randomBytes } = await import("node:crypto");
    const out = [typeof ArrayBuffer.prototype.transfer];
    for (const [cipher, keyLen, ss] of [["aes-xts-plain64", 64, 4096], ["aes-xts-plain64", 32, 512], ["aes-cbc-essiv:sha256", 32, 4096], ["aes-cbc-plain64", 16, 512], ["aes-ecb", 32, 1024]]) {
      const key = randomBytes(keyLen); key[0] = key[keyLen / 2] ^ 1;
      const plain = randomBytes(40 * ss);
      const want = Buffer.alloc(plain.length);
      const mode = cipher.split("-")[1];
      const bits = (mode === "xts" ? keyLen / 2 : keyLen) * 8;
      for (let s = 0; s < 40; s++) {
        let iv = Buffer.alloc(16); iv.writeBigUInt64LE(BigInt(s * (ss / 512)));
        if (cipher.endsWith("essiv:sha256")) iv = createCipheriv("aes-256-ecb", createHash("sha256").update(key).digest(), null).setAutoPadding(false).update(iv);
        const c = createCipheriv("aes-" + bits + "-" + mode, key, mode === "ecb" ? null : iv).setAutoPadding(false);
        c.update(plain.subarray(s * ss, (s + 1) * ss)).copy(want, s * ss);
      }
      for (const xts of ["wasm", "js"]) {
        process.env.TRUSTVOL_JS_XTS = xts;
        const e = createSectorCipher({ cipher, key, sectorSize: ss, backend: "js" });
        const b = Buffer.from(plain);
        e.encrypt(b, 0);
        const enc = b.equals(want);
        e.decrypt(b, 0);
        out.push(cipher + "/" + xts + ":" + (enc && b.equals(plain)));
        e.dispose();
      }
    }
    process.stdout.write(out.join(" "));`;
  const r = spawnSync(process.execPath, ["--harmony-rab-gsab-transfer", "--import", "tsx", "--input-type=module", "-e", script], {
    env: { ...process.env },
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  const [kind, ...results] = r.stdout.split(" ");
  assert.equal(kind, "function", "the child has ArrayBuffer.prototype.transfer");
  assert.equal(results.length, 10);
  for (const x of results) assert.match(x, /:true$/);
});
