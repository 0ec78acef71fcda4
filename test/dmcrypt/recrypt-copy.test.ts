// The fused re-encryption copy (nativeRecryptCopy, the data-shift path of src/ops/reencrypt-io.ts) against the sector
// engine's own decrypt/encrypt: rotation between different ciphers and sector sizes, encrypt only, decrypt only,
// lengths that are not whole 256 KiB slices, 1–3 runs, IV offsets; nothing outside the destination is touched; read
// past the end, a read-only descriptor, overlapping ranges and a disposed cipher fail; the fallback engine declines.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, openSync, closeSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { createSectorCipher, nativeAvailable, nativeRecryptCopy, type SectorCipher } from "../../src/dmcrypt/sector-cipher.js";
import { loadNative } from "../../src/dmcrypt/native.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const native = nativeAvailable() && !!loadNative()?.recryptCopyAsync;

function xtsKey(bytes: number): Buffer {
  for (;;) {
    const k = randomBytes(bytes);
    if (!k.subarray(0, bytes / 2).equals(k.subarray(bytes / 2))) return k;
  }
}

function withFile(size: number, fn: (path: string, original: Buffer) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "trustvol-recopy-"));
  const path = join(dir, "f.img");
  const original = randomBytes(size);
  writeFileSync(path, original);
  return fn(path, original).finally(() => rmSync(dir, { recursive: true, force: true }));
}

/** What the copy must produce: src bytes, decrypted with `from`, encrypted with `to`, at data-area offset `at`. */
function expected(data: Buffer, at: number, from: SectorCipher | null, to: SectorCipher | null): Buffer {
  const b = Buffer.from(data);
  if (from) from.decrypt(b, at / from.sectorSize);
  if (to) to.encrypt(b, at / to.sectorSize);
  return b;
}

const CASES: { name: string; from?: [string, number, number]; to?: [string, number, number] }[] = [
  { name: "rotation aes-xts-plain64/512 → aes-xts-plain64/4096 (512-bit)", from: ["aes-xts-plain64", 32, 512], to: ["aes-xts-plain64", 64, 4096] },
  { name: "rotation aes-cbc-essiv:sha256/4096 → aes-xts-plain64/1024", from: ["aes-cbc-essiv:sha256", 32, 4096], to: ["aes-xts-plain64", 64, 1024] },
  { name: "encrypt only (aes-xts-plain64/4096, IV offset)", to: ["aes-xts-plain64", 64, 4096] },
  { name: "decrypt only (aes-xts-plain64/512)", from: ["aes-xts-plain64", 64, 512] },
];

for (const c of CASES) {
  test(`fused copy = decrypt then encrypt by the sector engine: ${c.name}`, { skip: !native && "native addon without recryptCopyAsync" }, async () => {
    const mk = (s?: [string, number, number], ivOffset = 0) =>
      s ? createSectorCipher({ cipher: s[0], key: s[0].includes("xts") ? xtsKey(s[1]) : randomBytes(s[1]), sectorSize: s[2], ivOffset, backend: "native" }) : null;
    const from = mk(c.from, 8);
    const to = mk(c.to, c.to && !c.from ? 24 : 0);
    try {
      // 1 MiB + 12 KiB: four whole slices and a partial one; the data-area offset is not the file offset. More jobs than
      // the pool has threads (7, 100 → one per slice): the late ones find their runs taken and take halves of others.
      for (const [len, parts] of [[MiB + 12 * KiB, 1], [MiB + 12 * KiB, 2], [3 * MiB, 3], [4 * KiB, 2], [3 * MiB + 12 * KiB, 7], [2 * MiB, 100]] as const) {
        await withFile(8 * MiB, async (path, original) => {
          const src = 64 * KiB, dst = 4 * MiB + 4 * KiB, at = 40 * KiB;
          const fd = openSync(path, "r+");
          try {
            const p = nativeRecryptCopy(fd, src, dst, len, at, from, to, parts);
            assert.ok(p, "runs natively");
            await p;
          } finally {
            closeSync(fd);
          }
          const after = readFileSync(path);
          const want = Buffer.from(original);
          expected(original.subarray(src, src + len), at, from, to).copy(want, dst);
          assert.ok(after.subarray(dst, dst + len).equals(want.subarray(dst, dst + len)), `${len} bytes in ${parts} runs: the destination is the re-encrypted source`);
          assert.ok(after.equals(want), "nothing outside the destination changed");
        });
      }
    } finally {
      from?.dispose();
      to?.dispose();
    }
  });
}

test("fused copy failures: past the end (ETRUNCATED), read-only descriptor (EBADF), overlap, disposed cipher; the fallback engine declines", { skip: !native && "native addon without recryptCopyAsync" }, async () => {
  const to = createSectorCipher({ cipher: "aes-xts-plain64", key: xtsKey(64), sectorSize: 4096, backend: "native" });
  await withFile(4 * MiB, async (path, original) => {
    const fd = openSync(path, "r+");
    try {
      await assert.rejects(nativeRecryptCopy(fd, 3 * MiB + 512 * KiB, MiB, MiB, 0, null, to, 2)!, (e: NodeJS.ErrnoException) => e.code === "ETRUNCATED" && /end of data/.test(e.message));
      assert.throws(() => nativeRecryptCopy(fd, 0, 512 * KiB, MiB, 0, null, to, 1), /overlapping/);
      assert.throws(() => nativeRecryptCopy(fd, 0, MiB, 1000, 0, null, to, 1), /whole sectors/);
    } finally {
      closeSync(fd);
    }
    const ro = openSync(path, "r");
    try {
      await assert.rejects(nativeRecryptCopy(ro, 0, 2 * MiB, 512 * KiB, 0, null, to, 1)!, (e: NodeJS.ErrnoException) => e.code === "EBADF" && /^write: /.test(e.message));
    } finally {
      closeSync(ro);
    }
    // the failed copies wrote only into their destinations: [0, 1 MiB) is untouched
    assert.ok(readFileSync(path).subarray(0, MiB).equals(original.subarray(0, MiB)));
  });
  const js = createSectorCipher({ cipher: "aes-xts-plain64", key: xtsKey(64), sectorSize: 4096, backend: "js" });
  assert.equal(nativeRecryptCopy(0, 0, MiB, MiB, 0, null, js, 1), null, "a cipher on the fallback engine: not fused");
  js.dispose();
  to.dispose();
  assert.throws(() => nativeRecryptCopy(0, 0, MiB, MiB, 0, null, to, 1), /after dispose/);
});
