// Byte-identical hash devices and root hashes against `veritysetup format` 2.6.1, and mutual acceptance by verify.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, statSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, tmpDir, run } from "../helpers/tools.js";
import { verityFormat, verityVerify, verityDump, formatVerityDump, type VerityFormatInput } from "../../src/verity/index.js";
import { writeImage, vsFormat, vsVerify, openRO, openRW, type VsFormatArgs } from "./util.js";

const UUID = "0f3b6a4e-9c1d-4e8a-b2f7-5d6c7e8f9a01";

interface Case {
  name: string;
  bytes: number; // data image size
  vs: VsFormatArgs;
  ours: VerityFormatInput;
  sameFile?: boolean;
  threads?: number;
}

const salt = "5eed0123456789abcdef00112233445566778899aabbccddeeff0011223344ff";
const cases: Case[] = [
  { name: "300 blocks sha256 4096/4096", bytes: 300 * 4096, vs: { salt, uuid: UUID }, ours: { salt: Buffer.from(salt, "hex"), uuid: UUID } },
  { name: "1 block", bytes: 4096, vs: { salt, uuid: UUID }, ours: { salt: Buffer.from(salt, "hex"), uuid: UUID } },
  { name: "2 blocks, image not a block multiple", bytes: 2 * 4096 + 1000, vs: { salt: "aa", uuid: UUID }, ours: { salt: Buffer.from("aa", "hex"), uuid: UUID } },
  { name: "129 blocks (fan-out + 1)", bytes: 129 * 4096, vs: { salt: "01", uuid: UUID }, ours: { salt: Buffer.from("01", "hex"), uuid: UUID } },
  { name: "16385 blocks (3 levels), workers", bytes: 16385 * 4096, vs: { salt, uuid: UUID }, ours: { salt: Buffer.from(salt, "hex"), uuid: UUID }, threads: 2 },
  {
    name: "sha1 data 1024 / hash 512, 100003 blocks (odd, 4 levels), workers",
    bytes: 100003 * 1024,
    vs: { salt: "c0ffee", uuid: UUID, hash: "sha1", dataBlockSize: 1024, hashBlockSize: 512 },
    ours: { salt: Buffer.from("c0ffee", "hex"), uuid: UUID, hashAlgorithm: "sha1", dataBlockSize: 1024, hashBlockSize: 512 },
    threads: 2,
  },
  {
    name: "sha512 data 512 / hash 4096, 777 blocks",
    bytes: 777 * 512,
    vs: { salt, uuid: UUID, hash: "sha512", dataBlockSize: 512, hashBlockSize: 4096 },
    ours: { salt: Buffer.from(salt, "hex"), uuid: UUID, hashAlgorithm: "sha512", dataBlockSize: 512, hashBlockSize: 4096 },
  },
  {
    name: "hash type 0 (Chrome OS), sha1 512/512, 5000 blocks",
    bytes: 5000 * 512,
    vs: { salt: "1234", uuid: UUID, hash: "sha1", dataBlockSize: 512, hashBlockSize: 512, format: 0 },
    ours: { salt: Buffer.from("1234", "hex"), uuid: UUID, hashAlgorithm: "sha1", dataBlockSize: 512, hashBlockSize: 512, hashType: 0 },
  },
  {
    name: "hash type 0, sha256 4096/4096, 3000 blocks",
    bytes: 3000 * 4096,
    vs: { salt, uuid: UUID, format: 0 },
    ours: { salt: Buffer.from(salt, "hex"), uuid: UUID, hashType: 0 },
  },
  { name: "no superblock", bytes: 1000 * 4096, vs: { salt, noSuperblock: true }, ours: { salt: Buffer.from(salt, "hex"), noSuperblock: true } },
  { name: "empty salt", bytes: 200 * 4096, vs: { salt: "-", uuid: UUID }, ours: { salt: Buffer.alloc(0), uuid: UUID } },
  { name: "--data-blocks smaller than the device", bytes: 500 * 4096, vs: { salt, uuid: UUID, dataBlocks: 321 }, ours: { salt: Buffer.from(salt, "hex"), uuid: UUID, dataBlocks: 321 } },
  { name: "superblock at --hash-offset 8192 in a separate file", bytes: 700 * 4096, vs: { salt, uuid: UUID, hashOffset: 8192 }, ours: { salt: Buffer.from(salt, "hex"), uuid: UUID, hashOffset: 8192 } },
  {
    name: "same file, hash area appended after the data",
    bytes: 4099 * 4096,
    vs: { salt, uuid: UUID, hashOffset: 4099 * 4096, dataBlocks: 4099 },
    ours: { salt: Buffer.from(salt, "hex"), uuid: UUID, hashOffset: 4099 * 4096, dataBlocks: 4099 },
    sameFile: true,
  },
  {
    name: "same file, no superblock, hash offset not at a hash block boundary of the data",
    bytes: 1500 * 4096,
    vs: { salt, hashOffset: 1500 * 4096 + 4096, dataBlocks: 1500, noSuperblock: true },
    ours: { salt: Buffer.from(salt, "hex"), hashOffset: 1500 * 4096 + 4096, dataBlocks: 1500, noSuperblock: true },
    sameFile: true,
  },
];

for (const c of cases) {
  test(`verity format == veritysetup format: ${c.name}`, async (t) => {
    if (!needTools(t, "veritysetup")) return;
    const { dir, cleanup } = tmpDir("trustvol-verity-");
    try {
      const dataRef = join(dir, "data-ref.img");
      const dataOurs = join(dir, "data-ours.img");
      writeImage(dataRef, c.bytes, c.name);
      copyFileSync(dataRef, dataOurs);
      const hashRef = c.sameFile ? dataRef : join(dir, "hash-ref.img");
      const hashOurs = c.sameFile ? dataOurs : join(dir, "hash-ours.img");

      const rootRef = vsFormat(dataRef, hashRef, c.vs);

      const data = await openRW(dataOurs);
      const hash = c.sameFile ? data : await openRW(hashOurs);
      const res = await verityFormat(data, hash, c.ours, { threads: c.threads });
      assert.equal(res.rootHash.toString("hex"), rootRef, "root hash");
      if (!c.sameFile) await hash.close();
      await data.close();

      assert.equal(statSync(hashOurs).size, statSync(hashRef).size, "hash device size");
      assert.ok(readFileSync(hashOurs).equals(readFileSync(hashRef)), "hash device bytes identical");

      // veritysetup accepts ours, we accept veritysetup's.
      const v = vsVerify(dataOurs, hashOurs, rootRef, c.vs);
      assert.equal(v.status, 0, `veritysetup verify of ours: ${v.stderr}`);
      const d2 = await openRO(dataRef);
      const h2 = c.sameFile ? d2 : await openRO(hashRef);
      const params = c.vs.noSuperblock ? { ...c.ours, noSuperblock: true } : undefined;
      await verityVerify(d2, h2, rootRef, { hashOffset: c.ours.hashOffset, params, threads: c.threads });
      if (!c.vs.noSuperblock) {
        const dump = await verityDump(h2, c.ours.hashOffset ?? 0);
        const ref = run("veritysetup", ["dump", hashRef, ...(c.ours.hashOffset ? [`--hash-offset=${c.ours.hashOffset}`] : [])]).stdout.toString();
        assert.equal(formatVerityDump(hashRef, dump.params, dump.geometry).trim(), ref.trim(), "dump text");
      }
      if (!c.sameFile) await h2.close();
      await d2.close();
    } finally {
      cleanup();
    }
  });
}

test("verity format: random salt and UUID are fresh and 32 bytes / v4 like veritysetup's defaults", async (t) => {
  if (!needTools(t, "veritysetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-verity-");
  try {
    writeImage(join(dir, "d.img"), 64 * 4096, "defaults");
    const d = await openRO(join(dir, "d.img"));
    const h = await openRW(join(dir, "h.img"));
    const r = await verityFormat(d, h);
    await d.close();
    await h.close();
    assert.equal(r.params.salt.length, 32);
    assert.match(r.params.uuid ?? "", /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const v = vsVerify(join(dir, "d.img"), join(dir, "h.img"), r.rootHash.toString("hex"));
    assert.equal(v.status, 0, v.stderr);
    const dump = run("veritysetup", ["dump", join(dir, "h.img")]).stdout.toString();
    assert.match(dump, new RegExp(`Salt:\\s+${r.params.salt.toString("hex")}`));
    assert.match(dump, new RegExp(`UUID:\\s+${r.params.uuid}`));
  } finally {
    cleanup();
  }
});

test("verity format: pre-existing hash file is overwritten only where veritysetup writes", async (t) => {
  if (!needTools(t, "veritysetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-verity-");
  try {
    writeImage(join(dir, "d.img"), 300 * 4096, "prefill");
    const junk = Buffer.alloc(40000, 0xff);
    const { writeFileSync } = await import("node:fs");
    writeFileSync(join(dir, "href.img"), junk);
    writeFileSync(join(dir, "hours.img"), junk);
    const root = vsFormat(join(dir, "d.img"), join(dir, "href.img"), { salt: "aa", uuid: UUID });
    const d = await openRO(join(dir, "d.img"));
    const h = await openRW(join(dir, "hours.img"));
    const r = await verityFormat(d, h, { salt: Buffer.from("aa", "hex"), uuid: UUID });
    await d.close();
    await h.close();
    assert.equal(r.rootHash.toString("hex"), root);
    assert.ok(readFileSync(join(dir, "hours.img")).equals(readFileSync(join(dir, "href.img"))));
  } finally {
    cleanup();
  }
});
