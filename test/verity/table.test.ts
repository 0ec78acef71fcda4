// verityTable(): the device-mapper line for the kernel dm-verity target (Documentation/admin-guide/device-mapper/verity.rst).
import { test } from "node:test";
import assert from "node:assert/strict";
import { verityTable, resolveVerityParams } from "../../src/verity/index.js";
import { TrustvolError } from "../../src/util/errors.js";

const ROOT = Buffer.from("3213e709c890c522d3d675dd3bfe1d88be185e60dd6cb2ad9f38c29368e5023b", "hex");
const SALT = Buffer.from("a1b2c3d4", "hex");

test("verityTable: positional fields (sectors, devices, block sizes, data blocks, tree start, algorithm, root, salt)", () => {
  const p = resolveVerityParams({ dataBlocks: 2048, salt: SALT, uuid: "4f3a1b2c-5d6e-4f70-8a9b-0c1d2e3f4a5b" });
  assert.equal(verityTable("/dev/loop0", "/dev/loop1", p, ROOT), `0 16384 verity 1 /dev/loop0 /dev/loop1 4096 4096 2048 1 sha256 ${ROOT.toString("hex")} a1b2c3d4`);
  // Superblock at a hash offset: the tree starts at the first hash block after it.
  const q = resolveVerityParams({ dataBlocks: 100, salt: Buffer.alloc(0), hashOffset: 409600, dataBlockSize: 1024, hashBlockSize: 1024, hashType: 0, hashAlgorithm: "sha1" });
  assert.equal(verityTable("8:1", "8:1", q, ROOT.subarray(0, 20)), `0 200 verity 0 8:1 8:1 1024 1024 100 401 sha1 ${ROOT.subarray(0, 20).toString("hex")} -`);
  // No superblock: the tree starts at the hash offset itself.
  const r = resolveVerityParams({ dataBlocks: 8, salt: SALT, hashOffset: 8192, noSuperblock: true });
  assert.match(verityTable("a", "b", r, ROOT), / 8 2 sha256 /);
});

test("verityTable: optional arguments are counted word by word", () => {
  const p = resolveVerityParams({ dataBlocks: 8, salt: SALT });
  const base = `0 64 verity 1 d h 4096 4096 8 1 sha256 ${ROOT.toString("hex")} a1b2c3d4`;
  assert.equal(verityTable("d", "h", p, ROOT, { rootHashSigKeyDesc: "trustvol:verity:x:1" }), `${base} 2 root_hash_sig_key_desc trustvol:verity:x:1`);
  assert.equal(verityTable("d", "h", p, ROOT, { onCorruption: "restart", ignoreZeroBlocks: true, checkAtMostOnce: true }),
    `${base} 3 restart_on_corruption ignore_zero_blocks check_at_most_once`);
  assert.equal(verityTable("d", "h", p, ROOT, { fec: { device: "f", start: 0n, blocks: 11n, roots: 2 }, rootHashSigKeyDesc: "k" }),
    `${base} 10 use_fec_from_device f fec_start 0 fec_blocks 11 fec_roots 2 root_hash_sig_key_desc k`);
  assert.throws(() => verityTable("d", "h", p, ROOT, { rootHashSigKeyDesc: "a b" }), (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE");
});
