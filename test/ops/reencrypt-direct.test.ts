// The re-encryption engine on an image file: its hotzone reads and data writes go O_DIRECT when asked (a block
// device's default; FileBlockDevice + the aligned hotzone buffers), and the result is the same as through the page
// cache (an image file's default); a data
// shift's hotzones go through the fused native copy, with the same result as the piecewise path.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync, readFileSync, truncateSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileBlockDevice } from "../../src/blockdev/file.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { reencryptStatus } from "../../src/luks2/reencrypt-metadata.js";
import { TrustvolError } from "../../src/util/errors.js";
import { reencrypt } from "../../src/ops/reencrypt.js";
import { loadNative } from "../../src/dmcrypt/native.js";
import { PASS, PBKDF, makeVolume, plaintextOf } from "./reencrypt-fixture.js";

for (const resilience of ["checksum", "journal"] as const) {
  test(`key rotation (${resilience}) of an image file: buffered by default, O_DIRECT hotzones when asked, plaintext identical`, { skip: !loadNative()?.alignedAlloc && "native addon not built" }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "trustvol-rdirect-"));
    try {
      const { image, plain } = await makeVolume(2 << 20);
      for (const direct of [true, false]) {
        const path = join(dir, `img-${direct}`);
        writeFileSync(path, image);
        const dev = await FileBlockDevice.open(path, direct ? { directIo: true } : {});
        try {
          const r = await reencrypt(dev, { passphrase: PASS, pbkdf: PBKDF, hotzoneSize: 1 << 20, resilience });
          assert.equal(r.state, "finished");
          if (direct) assert.ok(dev.directBytes >= 2 * (2 << 20), `hotzone data went O_DIRECT (${dev.directBytes} bytes)`);
          else assert.equal(dev.directBytes, 0);
          assert.ok((await plaintextOf(dev)).equals(plain), `plaintext intact (direct ${direct})`);
        } finally {
          await dev.close();
        }
        // reopened from the file: what reached it, not what a cache holds
        const again = await FileBlockDevice.open(path, { readOnly: true });
        try {
          assert.ok((await plaintextOf(again)).equals(plain));
        } finally {
          await again.close();
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test("encrypt in place (data shift) of an image file: one fused native copy per hotzone, plaintext identical to the piecewise path; a file cut short under the run fails in one line, hotzone recorded", { skip: !loadNative()?.recryptCopyAsync && "native addon without recryptCopyAsync" }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "trustvol-rfused-"));
  try {
    const reduce = 4 << 20;
    const plain = randomBytes(12 << 20);
    const image = Buffer.concat([plain, Buffer.alloc(reduce)]);
    // the piecewise path (memory device) and the fused one (file) give the same plaintext
    const mem = new MemoryBlockDevice(Buffer.from(image));
    assert.equal((await reencrypt(mem, { mode: "encrypt", passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: reduce })).state, "finished");
    assert.ok((await plaintextOf(mem)).subarray(0, plain.length).equals(plain));
    const path = join(dir, "img");
    writeFileSync(path, image);
    const dev = await FileBlockDevice.open(path);
    // what goes through the BlockDevice's own read/write: headers, zeroing, the final wipe — not the data
    let moved = 0;
    const [read, write] = [dev.read.bind(dev), dev.write.bind(dev)];
    dev.read = (b, o) => ((moved += b.length), read(b, o));
    dev.write = (b, o) => ((moved += b.length), write(b, o));
    try {
      assert.equal((await reencrypt(dev, { mode: "encrypt", passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: reduce })).state, "finished");
    } finally {
      await dev.close();
    }
    assert.ok(moved < plain.length, `the head move and the hotzones' data went through the fused copy (${moved} bytes through read/write)`);
    const again = await FileBlockDevice.open(path, { readOnly: true });
    try {
      assert.ok((await plaintextOf(again)).subarray(0, plain.length).equals(plain), "plaintext intact");
    } finally {
      await again.close();
    }
    // The moved head at the end is the last hotzone's source: cut the file short after the first hotzone.
    writeFileSync(path, image);
    const short = await FileBlockDevice.open(path);
    let cut = false;
    try {
      await assert.rejects(
        reencrypt(short, { mode: "encrypt", passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: reduce, onProgress: (p) => void (p.done > 0 && !cut && ((cut = true), truncateSync(path, image.length - (1 << 20)))) }),
        (e: unknown) => e instanceof TrustvolError && e.code === "ETRUNCATED" && e.oneLine().includes(path) && !e.oneLine().includes("\n"),
      );
    } finally {
      await short.close();
    }
    assert.ok(cut);
    const st = reencryptStatus((await Luks2Volume.open(new MemoryBlockDevice(readFileSync(path)))).metadata);
    assert.equal(st, "crash", "the hotzone stays recorded as in re-encryption");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// A device smaller than twice the shift: the moved head (at the device's end) overlaps where the last hotzone goes, a
// copy down over itself that the addon's parallel slices cannot do (it refuses overlapping ranges): the engine copies
// it piece by piece, in order. cryptsetup 2.6.1 does these sizes too.
test("encrypt in place of a device smaller than twice the shift (8 MiB, --reduce-device-size 6M and 7M): plaintext intact", async () => {
  const dir = mkdtempSync(join(tmpdir(), "trustvol-rsmall-"));
  try {
    for (const reduce of [6 << 20, 7 << 20]) {
      const size = 8 << 20, plain = randomBytes(size - reduce);
      const path = join(dir, "img");
      writeFileSync(path, Buffer.concat([plain, randomBytes(reduce)]));
      const dev = await FileBlockDevice.open(path);
      try {
        assert.equal((await reencrypt(dev, { mode: "encrypt", passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: reduce })).state, "finished");
        assert.ok((await plaintextOf(dev)).subarray(0, plain.length).equals(plain), `--reduce-device-size ${reduce >> 20}M: plaintext intact`);
      } finally {
        await dev.close();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
