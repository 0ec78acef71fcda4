// Corruption reporting against `veritysetup verify`, and bad input (truncation, wrong root hash, bad superblock).
import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, readFileSync, writeFileSync, truncateSync } from "node:fs";
import { join } from "node:path";
import { needTools, tmpDir, run } from "../helpers/tools.js";
import { TrustvolError } from "../../src/util/errors.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import {
  verityFormat,
  verityVerify,
  verityDump,
  VerityVerifyError,
  parseVeritySuperblock,
  encodeVeritySuperblock,
  resolveVerityParams,
  verityGeometry,
} from "../../src/verity/index.js";
import { writeImage, vsFormat, vsVerify, openRO, sha, flipByte } from "./util.js";

const UUID = "0f3b6a4e-9c1d-4e8a-b2f7-5d6c7e8f9a01";

/** veritysetup's verdict: "digest"/"spare" with position, or "root". */
function vsVerdict(stderr: string): { kind: string; position: number } {
  let m = /Verification failed at position (\d+)\./.exec(stderr);
  if (m) return { kind: "digest", position: Number(m[1]) };
  m = /Spare area is not zeroed at position (\d+)\./.exec(stderr);
  if (m) return { kind: "spare", position: Number(m[1]) };
  if (/Verification of root hash failed\./.test(stderr)) return { kind: "root", position: -1 };
  return { kind: `unknown: ${stderr.trim()}`, position: NaN };
}

async function ourVerdict(data: string, hash: string, root: string, threads?: number): Promise<{ kind: string; position: number; err: VerityVerifyError }> {
  const d = await openRO(data);
  const h = await openRO(hash);
  try {
    await verityVerify(d, h, root, { threads });
  } catch (e) {
    assert.ok(e instanceof VerityVerifyError, `expected VerityVerifyError, got ${String(e)}`);
    assert.equal(e.code, "ECORRUPT");
    assert.ok(!e.oneLine().includes("\n"), "one line");
    return { kind: e.corruption.kind, position: e.corruption.position, err: e };
  } finally {
    await d.close();
    await h.close();
  }
  throw new Error("verify passed on a corrupted image");
}

interface Corruption {
  name: string;
  /** (dataPath, hashPath) → mutate */
  mutate: (data: string, hash: string) => void;
  expect: { kind: string; position?: number };
}

// Layout of the sha256 case: 3000 data blocks → level 0 has 24 hash blocks, level 1 one block (24 digests).
// Hash device: block 0 superblock, block 1 level 1, blocks 2..25 level 0.
const corruptions: Corruption[] = [
  { name: "data block 77", mutate: (d) => flipByte(d, 77 * 4096 + 5), expect: { kind: "digest", position: 77 * 4096 } },
  { name: "last data block", mutate: (d) => flipByte(d, 2999 * 4096 + 4095), expect: { kind: "digest", position: 2999 * 4096 } },
  { name: "level-0 digest of data block 3", mutate: (_d, h) => flipByte(h, 2 * 4096 + 3 * 32 + 7), expect: { kind: "digest", position: 3 * 4096 } },
  { name: "spare area of the last level-0 block", mutate: (_d, h) => flipByte(h, 25 * 4096 + 4000), expect: { kind: "spare", position: 25 * 4096 + (3000 - 23 * 128) * 32 } },
  { name: "level-1 digest of level-0 block 5", mutate: (_d, h) => flipByte(h, 1 * 4096 + 5 * 32), expect: { kind: "digest", position: (2 + 5) * 4096 } },
  { name: "spare area of the top block", mutate: (_d, h) => flipByte(h, 1 * 4096 + 24 * 32 + 1), expect: { kind: "spare", position: 1 * 4096 + 24 * 32 } },
  { name: "data and level-1 both (data reported first, like veritysetup)", mutate: (d, h) => { flipByte(d, 2000 * 4096); flipByte(h, 4096); }, expect: { kind: "digest", position: 2000 * 4096 } },
];

for (const threads of [0, 2]) {
  for (const c of corruptions) {
    test(`verity verify names the corruption like veritysetup (${threads ? "workers" : "inline"}): ${c.name}`, async (t) => {
      if (!needTools(t, "veritysetup")) return;
      const { dir, cleanup } = tmpDir("trustvol-verity-");
      try {
        const data = join(dir, "d.img");
        const hash = join(dir, "h.img");
        writeImage(data, 3000 * 4096, "corrupt");
        const root = vsFormat(data, hash, { salt: "ab", uuid: UUID });
        c.mutate(data, hash);
        const before = [sha(data), sha(hash)];
        const ref = vsVerify(data, hash, root);
        assert.notEqual(ref.status, 0);
        const vs = vsVerdict(ref.stderr);
        const ours = await ourVerdict(data, hash, root, threads);
        assert.deepEqual({ kind: ours.kind, position: ours.position }, vs, `ours: ${ours.err.message}; veritysetup: ${ref.stderr.trim()}`);
        if (c.expect.position !== undefined) assert.deepEqual(vs, { kind: c.expect.kind, position: c.expect.position });
        assert.match(ours.err.message, new RegExp(c.expect.kind === "spare" ? `spare area is not zeroed at position ${vs.position}` : `verification failed at position ${vs.position}`));
        assert.deepEqual([sha(data), sha(hash)], before, "inputs unchanged");
      } finally {
        cleanup();
      }
    });
  }
}

test("verity verify: sha1 type 1 digest padding that is not zero is a spare-area error like veritysetup's", async (t) => {
  if (!needTools(t, "veritysetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-verity-");
  try {
    const data = join(dir, "d.img");
    const hash = join(dir, "h.img");
    writeImage(data, 500 * 4096, "sha1pad");
    const root = vsFormat(data, hash, { salt: "ab", uuid: UUID, hash: "sha1" });
    // 500 blocks → level 0 = 4 blocks at hash blocks 2..5; entry 10's padding is bytes 20..31 of its 32-byte slot.
    flipByte(hash, 2 * 4096 + 10 * 32 + 25);
    const vs = vsVerdict(vsVerify(data, hash, root, { hash: "sha1" }).stderr);
    const ours = await ourVerdict(data, hash, root);
    assert.deepEqual({ kind: ours.kind, position: ours.position }, vs);
    assert.deepEqual(vs, { kind: "spare", position: 2 * 4096 + 10 * 32 + 20 });
  } finally {
    cleanup();
  }
});

test("verity verify: wrong root hash → root hash error, like veritysetup", async (t) => {
  if (!needTools(t, "veritysetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-verity-");
  try {
    const data = join(dir, "d.img");
    const hash = join(dir, "h.img");
    writeImage(data, 300 * 4096, "wrongroot");
    const root = vsFormat(data, hash, { salt: "ab", uuid: UUID });
    const wrong = root.slice(0, -1) + (root.endsWith("0") ? "1" : "0");
    assert.equal(vsVerdict(vsVerify(data, hash, wrong).stderr).kind, "root");
    const ours = await ourVerdict(data, hash, wrong);
    assert.equal(ours.kind, "root");
    assert.match(ours.err.message, /verification of root hash failed/);
    // Malformed root hash strings are usage errors, not corruption.
    const d = await openRO(data);
    const h = await openRO(hash);
    await assert.rejects(verityVerify(d, h, "00" + root), (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE" && /invalid root hash/.test(e.message));
    await assert.rejects(verityVerify(d, h, "zz" + root.slice(2)), (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE");
    await d.close();
    await h.close();
  } finally {
    cleanup();
  }
});

test("verity verify: truncated hash device and truncated data → ETRUNCATED with a clear message; veritysetup fails too", async (t) => {
  if (!needTools(t, "veritysetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-verity-");
  try {
    const data = join(dir, "d.img");
    const hash = join(dir, "h.img");
    writeImage(data, 300 * 4096, "trunc");
    const root = vsFormat(data, hash, { salt: "ab", uuid: UUID });
    const hashT = join(dir, "ht.img");
    copyFileSync(hash, hashT);
    truncateSync(hashT, 16384);
    assert.notEqual(vsVerify(data, hashT, root).status, 0);
    const before = sha(hashT);
    let d = await openRO(data);
    let h = await openRO(hashT);
    await assert.rejects(verityVerify(d, h, root), (e: unknown) => {
      assert.ok(e instanceof TrustvolError);
      assert.equal(e.code, "ETRUNCATED");
      assert.match(e.message, /hash device .*ht\.img is truncated: 16384 bytes, the hash tree needs 20480/);
      return true;
    });
    await d.close();
    await h.close();
    assert.equal(sha(hashT), before);
    // Hash device that ends inside the superblock.
    truncateSync(hashT, 100);
    h = await openRO(hashT);
    d = await openRO(data);
    await assert.rejects(verityVerify(d, h, root), (e: unknown) => e instanceof TrustvolError && e.code === "ETRUNCATED" && /too short for a superblock/.test(e.message));
    await h.close();
    await d.close();
    // Data shorter than the superblock says.
    const dataT = join(dir, "dt.img");
    copyFileSync(data, dataT);
    truncateSync(dataT, 299 * 4096);
    assert.notEqual(vsVerify(dataT, hash, root).status, 0);
    d = await openRO(dataT);
    h = await openRO(hash);
    await assert.rejects(verityVerify(d, h, root), (e: unknown) => e instanceof TrustvolError && e.code === "ETRUNCATED" && /data device .* has 1224704 bytes/.test(e.message));
    await d.close();
    await h.close();
  } finally {
    cleanup();
  }
});

interface BadSb {
  name: string;
  patch: (sb: Buffer) => void;
  code: string;
  msg: RegExp;
}
const badSbs: BadSb[] = [
  { name: "magic", patch: (b) => b.write("veritx", 0, "latin1"), code: "ECORRUPT", msg: /no verity superblock at offset 0 \(bad magic\)/ },
  { name: "version", patch: (b) => b.writeUInt32LE(2, 8), code: "EUNSUPPORTED", msg: /unsupported verity superblock version 2/ },
  { name: "hash type", patch: (b) => b.writeUInt32LE(7, 12), code: "EUNSUPPORTED", msg: /unsupported verity hash type 7/ },
  { name: "algorithm", patch: (b) => { b.fill(0, 32, 64); b.write("md4x", 32, "latin1"); }, code: "EUNSUPPORTED", msg: /hash algorithm "md4x" is not supported/ },
  { name: "data block size", patch: (b) => b.writeUInt32LE(1000, 64), code: "ECORRUPT", msg: /invalid block size \(data 1000, hash 4096\)/ },
  { name: "hash block size", patch: (b) => b.writeUInt32LE(1 << 20, 68), code: "ECORRUPT", msg: /invalid block size \(data 4096, hash 1048576\)/ },
  { name: "salt size", patch: (b) => b.writeUInt16LE(300, 80), code: "ECORRUPT", msg: /salt size 300 exceeds 256/ },
];

for (const c of badSbs) {
  test(`verity: bad superblock (${c.name}) → ${c.code}, one line; veritysetup refuses it too`, async (t) => {
    if (!needTools(t, "veritysetup")) return;
    const { dir, cleanup } = tmpDir("trustvol-verity-");
    try {
      const data = join(dir, "d.img");
      const hash = join(dir, "h.img");
      writeImage(data, 64 * 4096, "badsb");
      const root = vsFormat(data, hash, { salt: "ab", uuid: UUID });
      const buf = readFileSync(hash);
      c.patch(buf);
      writeFileSync(hash, buf);
      const before = sha(hash);
      assert.notEqual(run("veritysetup", ["dump", hash], { check: false }).status, 0, "veritysetup dump refuses");
      assert.notEqual(vsVerify(data, hash, root).status, 0, "veritysetup verify refuses");
      const d = await openRO(data);
      const h = await openRO(hash);
      // One at a time: both promises created up front let the second reject before anything handles it (an
      // unhandledRejection failure that came and went with machine load).
      for (const f of [() => verityDump(h), () => verityVerify(d, h, root)])
        await assert.rejects(f(), (e: unknown) => {
          assert.ok(e instanceof TrustvolError, String(e));
          assert.equal(e.code, c.code);
          assert.match(e.message, c.msg);
          assert.ok(!e.oneLine().includes("\n"));
          return true;
        });
      await d.close();
      await h.close();
      assert.equal(sha(hash), before, "input unchanged");
    } finally {
      cleanup();
    }
  });
}

test("verity superblock: encode/parse round trip; geometry edge cases", () => {
  const p = resolveVerityParams({ salt: Buffer.from("0102", "hex"), uuid: UUID.toUpperCase(), dataBlocks: 1n, hashAlgorithm: "sha512", dataBlockSize: 512, hashBlockSize: 1024 });
  const sb = encodeVeritySuperblock(p);
  assert.equal(sb.length, 512);
  const q = parseVeritySuperblock(sb);
  assert.deepEqual({ ...q, hashOffset: 0 }, { ...p, uuid: UUID });
  const g = verityGeometry(p);
  assert.equal(g.levels, 0);
  assert.equal(g.hashBlocks, 0n);
  assert.equal(g.hashDeviceSize, 1024n);
  // 128^2 + 1 blocks need three levels of 1 + 2 + 129 blocks.
  const g3 = verityGeometry(resolveVerityParams({ dataBlocks: 16385, salt: Buffer.alloc(0) }));
  assert.equal(g3.levels, 3);
  assert.deepEqual(g3.levelBlocks, [129n, 2n, 1n]);
  assert.deepEqual(g3.levelStart, [4n, 2n, 1n]);
  assert.throws(() => resolveVerityParams({ dataBlockSize: 3000, dataBlocks: 1 }), (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE");
  assert.throws(() => resolveVerityParams({ hashOffset: 1000, dataBlocks: 1 }), /hash offset 1000 is invalid/);
  assert.throws(() => resolveVerityParams({ salt: Buffer.alloc(257), dataBlocks: 1 }), /salt of 257 bytes/);
});

test("verity format: memory devices, same-device overlap refused, empty data refused", async () => {
  const data = new MemoryBlockDevice(Buffer.alloc(10 * 4096, 7));
  const hash = new MemoryBlockDevice(0);
  const r = await verityFormat(data, hash, { salt: Buffer.from("aa", "hex"), uuid: UUID });
  assert.equal(hash.size, 2 * 4096);
  await verityVerify(data, hash, r.rootHash);
  // Worker threads over a non-file device (blocks handed over in shared memory) == the calling thread.
  const big = new MemoryBlockDevice(Buffer.from(Array.from({ length: 3001 * 4096 }, (_, i) => (i * 2654435761) >>> 24)));
  const h0 = new MemoryBlockDevice(0);
  const h2 = new MemoryBlockDevice(0);
  const r0 = await verityFormat(big, h0, { salt: Buffer.from("ab", "hex"), uuid: UUID }, { threads: 0 });
  const r2 = await verityFormat(big, h2, { salt: Buffer.from("ab", "hex"), uuid: UUID }, { threads: 2 });
  assert.equal(r2.rootHash.toString("hex"), r0.rootHash.toString("hex"));
  assert.ok(h0.data.equals(h2.data));
  await verityVerify(big, h2, r0.rootHash, { threads: 2 });
  big.data[1234 * 4096 + 9] ^= 1;
  await assert.rejects(verityVerify(big, h2, r0.rootHash, { threads: 2 }), (e: unknown) => e instanceof VerityVerifyError && e.corruption.position === 1234 * 4096);
  const same = new MemoryBlockDevice(Buffer.alloc(10 * 4096, 7));
  await assert.rejects(verityFormat(same, same, { hashOffset: 4096, dataBlocks: 10 }), /overlaps the data/);
  await assert.rejects(verityFormat(new MemoryBlockDevice(100), new MemoryBlockDevice(0)), (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE" && /no complete data block/.test(e.message));
});
