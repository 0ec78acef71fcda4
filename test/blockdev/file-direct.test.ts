// FileBlockDevice's O_DIRECT path: large aligned transfers from alignedBuffer() bypass the page cache, everything else
// stays buffered, and the bytes are the same either way (also where O_DIRECT is refused: ramfs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileBlockDevice, DIRECT_MIN } from "../../src/blockdev/file.js";
import { alignedBuffer, isAlignedBuffer, DIRECT_ALIGN } from "../../src/blockdev/aligned.js";
import { loadNative } from "../../src/dmcrypt/native.js";

const MiB = 1 << 20;
const hasAligned = !!loadNative()?.alignedAlloc;

function image(dir: string, size: number): { path: string; model: Buffer } {
  const path = join(dir, "img");
  const model = randomBytes(size);
  writeFileSync(path, model);
  return { path, model };
}

test("alignedBuffer: zeroed, known aligned at DIRECT_ALIGN multiples only", { skip: !hasAligned && "native addon not built" }, () => {
  const b = alignedBuffer(2 * MiB);
  assert.equal(b.length, 2 * MiB);
  assert.ok(b.every((x) => x === 0));
  assert.ok(isAlignedBuffer(b));
  assert.ok(isAlignedBuffer(b.subarray(DIRECT_ALIGN)));
  assert.ok(!isAlignedBuffer(b.subarray(512)));
  assert.ok(isAlignedBuffer(b.subarray(512), 512));
  assert.ok(!isAlignedBuffer(Buffer.allocUnsafeSlow(2 * MiB)), "an ordinary Buffer's address is unknown");
  assert.equal(alignedBuffer(0).length, 0);
});

test("alignedBuffer: pages of their own from 1 MiB on (zeroed, unmapped when collected), heap memory below", { skip: !hasAligned && "native addon not built" }, () => {
  // In a child with --expose-gc: hundreds of buffers either side of the line, written, dropped and collected.
  const code = `
    const { alignedBuffer } = await import(${JSON.stringify(new URL("../../src/blockdev/aligned.ts", import.meta.url).href)});
    for (let round = 0; round < 3; round++) {
      for (const size of [${MiB - 4096}, ${MiB}, ${4 * MiB + 4096}]) {
        for (let i = 0; i < 64; i++) {
          const b = alignedBuffer(size);
          if (b.length !== size || b[0] !== 0 || b[size - 1] !== 0 || b[size >> 1] !== 0) throw new Error("not zeroed: " + size);
          b.fill(0xa5);
        }
      }
      globalThis.gc();
    }
    console.log("ok");`;
  const r = spawnSync(process.execPath, ["--expose-gc", "--import", "tsx", "--input-type=module", "-e", code], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), "ok");
});

test("O_DIRECT: aligned transfers go direct, unaligned ones buffered, the bytes identical to buffered I/O", { skip: !hasAligned && "native addon not built" }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "trustvol-direct-"));
  try {
    const size = 8 * MiB;
    const { path, model } = image(dir, size);
    const dev = await FileBlockDevice.open(path, { directIo: true }); // an image file's default is buffered (below)
    try {
      // aligned read: direct, sees what the buffered writer put there
      const a = alignedBuffer(2 * MiB);
      await dev.read(a, 1 * MiB);
      assert.equal(dev.directBytes, 2 * MiB);
      assert.ok(a.equals(model.subarray(MiB, 3 * MiB)));
      // a buffered (small) write, then a direct read over it: the dirty page is written back first
      const hdr = randomBytes(4096);
      await dev.write(hdr, 2 * MiB);
      hdr.copy(model, 2 * MiB);
      await dev.read(a, 1 * MiB);
      assert.equal(dev.directBytes, 4 * MiB);
      assert.ok(a.equals(model.subarray(MiB, 3 * MiB)), "direct read after a buffered write");
      // a direct write, then buffered reads of it (the cached pages it covered are dropped)
      const before = Buffer.alloc(8192);
      await dev.read(before, 4 * MiB); // caches the pages
      const w = alignedBuffer(MiB);
      w.set(randomBytes(MiB));
      await dev.write(w, 4 * MiB);
      w.copy(model, 4 * MiB);
      assert.equal(dev.directBytes, 5 * MiB);
      const after = Buffer.alloc(8192);
      await dev.read(after, 4 * MiB);
      assert.ok(after.equals(model.subarray(4 * MiB, 4 * MiB + 8192)), "buffered read after a direct write");
      // unaligned: offset, length, buffer address, too small — all buffered, all correct
      const n0 = dev.directBytes;
      const cases: [Buffer, number][] = [
        [alignedBuffer(MiB), 512], // offset
        [alignedBuffer(MiB + 512), 0], // length
        [alignedBuffer(MiB + 4096).subarray(512, 512 + MiB), 0], // address
        [Buffer.alloc(MiB), 0], // an ordinary Buffer
        [alignedBuffer(DIRECT_MIN / 2), 0], // small: stays in the page cache
      ];
      for (const [b, at] of cases) {
        await dev.read(b, at);
        assert.ok(b.equals(model.subarray(at, at + b.length)), `read ${b.length}@${at}`);
        b.set(randomBytes(b.length));
        await dev.write(b, at + 6 * MiB);
        b.copy(model, at + 6 * MiB);
      }
      assert.equal(dev.directBytes, n0, "no unaligned transfer went direct");
      await dev.flush();
    } finally {
      await dev.close();
    }
    assert.ok(readFileSync(path).equals(model), "the file holds exactly what was written");
    // an image file's default, and the switch for comparisons (even when asked): everything buffered
    for (const [env, ask] of [[undefined, undefined], ["0", true]] as const) {
      if (env) process.env.TRUSTVOL_DIRECT_IO = env;
      const off = await FileBlockDevice.open(path, { readOnly: true, directIo: ask });
      delete process.env.TRUSTVOL_DIRECT_IO;
      try {
        const a = alignedBuffer(2 * MiB);
        await off.read(a, 0);
        assert.ok(a.equals(model.subarray(0, 2 * MiB)));
        assert.equal(off.directBytes, 0);
        assert.equal(off.directIo, false);
      } finally {
        await off.close();
      }
    }
    // TRUSTVOL_DIRECT_IO=1: an image file goes direct too
    process.env.TRUSTVOL_DIRECT_IO = "1";
    const on = await FileBlockDevice.open(path, { readOnly: true });
    delete process.env.TRUSTVOL_DIRECT_IO;
    try {
      const a = alignedBuffer(2 * MiB);
      await on.read(a, 0);
      assert.ok(a.equals(model.subarray(0, 2 * MiB)));
      assert.equal(on.directBytes, 2 * MiB);
    } finally {
      await on.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("O_DIRECT refused (ramfs: EINVAL at open): falls back to buffered I/O, same bytes", { skip: (!hasAligned && "native addon not built") || (process.getuid?.() !== 0 && "mounting ramfs needs root") }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "trustvol-ramfs-"));
  if (spawnSync("mount", ["-t", "ramfs", "ramfs", dir]).status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    return t.skip("cannot mount ramfs");
  }
  try {
    const { path, model } = image(dir, 4 * MiB);
    const dev = await FileBlockDevice.open(path, { directIo: true });
    try {
      const a = alignedBuffer(2 * MiB);
      await dev.read(a, MiB);
      assert.ok(a.equals(model.subarray(MiB, 3 * MiB)));
      assert.equal(dev.directIo, false, "O_DIRECT turned off after the refusal");
      assert.equal(dev.directBytes, 0);
      a.set(randomBytes(a.length));
      await dev.write(a, 0);
      a.copy(model, 0);
      await dev.flush();
    } finally {
      await dev.close();
    }
    assert.ok(readFileSync(path).equals(model));
  } finally {
    spawnSync("umount", [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("O_DIRECT on a loop block device: direct transfers, same bytes as the backing file", { skip: (!hasAligned && "native addon not built") || (process.getuid?.() !== 0 && "loop devices need root") }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "trustvol-loopdirect-"));
  let loop = "";
  try {
    const { path, model } = image(dir, 4 * MiB);
    const r = spawnSync("losetup", ["-f", "--show", path], { encoding: "utf8" });
    if (r.status !== 0) return t.skip("cannot attach a loop device");
    loop = r.stdout.trim();
    const dev = await FileBlockDevice.open(loop);
    try {
      assert.ok(dev.isBlockDevice);
      const a = alignedBuffer(2 * MiB);
      await dev.read(a, 2 * MiB);
      assert.ok(a.equals(model.subarray(2 * MiB)));
      a.set(randomBytes(a.length));
      await dev.write(a, 0);
      a.copy(model, 0);
      await dev.flush();
      assert.equal(dev.directBytes, 4 * MiB);
      const b = Buffer.alloc(4 * MiB);
      await dev.read(b, 0); // buffered, after the direct write
      assert.ok(b.equals(model));
    } finally {
      await dev.close();
    }
    spawnSync("losetup", ["-d", loop]);
    loop = "";
    assert.ok(readFileSync(path).equals(model));
  } finally {
    if (loop) spawnSync("losetup", ["-d", loop]);
    rmSync(dir, { recursive: true, force: true });
  }
});
