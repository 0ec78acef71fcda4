// The re-encryption engine on an image file: its hotzone reads, torn-write copies and data writes go O_DIRECT
// (FileBlockDevice + the aligned hotzone buffers), and the result is the same as through the page cache.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileBlockDevice } from "../../src/blockdev/file.js";
import { reencrypt } from "../../src/ops/reencrypt.js";
import { loadNative } from "../../src/dmcrypt/native.js";
import { PASS, PBKDF, makeVolume, plaintextOf } from "./reencrypt-fixture.js";

for (const resilience of ["checksum", "journal"] as const) {
  test(`key rotation (${resilience}) of an image file: O_DIRECT hotzones, plaintext identical with and without (TRUSTVOL_DIRECT_IO=0)`, { skip: !loadNative()?.alignedAlloc && "native addon not built" }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "trustvol-rdirect-"));
    try {
      const { image, plain } = await makeVolume(2 << 20);
      for (const direct of [true, false]) {
        const path = join(dir, `img-${direct}`);
        writeFileSync(path, image);
        if (!direct) process.env.TRUSTVOL_DIRECT_IO = "0";
        const dev = await FileBlockDevice.open(path);
        delete process.env.TRUSTVOL_DIRECT_IO;
        try {
          const r = await reencrypt(dev, { passphrase: PASS, pbkdf: PBKDF, hotzoneSize: 256 * 1024, resilience });
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
