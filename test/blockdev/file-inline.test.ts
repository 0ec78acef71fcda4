// FileBlockDevice.inlineSmallIo (offline re-encryption's commits): writes up to 64 KiB and flush() run on the calling
// thread, larger writes still go through the thread pool; the bytes and the errors are the same either way.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileBlockDevice } from "../../src/blockdev/file.js";
import { TrustvolError } from "../../src/util/errors.js";

const MiB = 1 << 20;

test("inlineSmallIo: small and large writes, a write that grows the file, flush; read-only refused as before", async () => {
  const dir = mkdtempSync(join(tmpdir(), "trustvol-inline-"));
  try {
    const path = join(dir, "img");
    const model = randomBytes(4 * MiB);
    writeFileSync(path, model);
    const dev = await FileBlockDevice.open(path);
    assert.equal(dev.inlineSmallIo, false, "off by default");
    dev.inlineSmallIo = true;
    const writes: [number, number][] = [[0, 4096], [16384, 16384], [MiB + 3, 65536], [2 * MiB, 65537], [3 * MiB, MiB], [4 * MiB - 100, 300]];
    let expected: Buffer = Buffer.from(model);
    for (const [off, len] of writes) {
      const b = randomBytes(len);
      await dev.write(b, off);
      if (off + len > expected.length) expected = Buffer.concat([expected, Buffer.alloc(off + len - expected.length)]);
      b.copy(expected, off);
    }
    await dev.flush();
    assert.equal(dev.size, 4 * MiB + 200, "the last write grew the file");
    assert.ok(readFileSync(path).equals(expected), "the file holds every write");
    const back = Buffer.alloc(65536);
    await dev.read(back, MiB + 3);
    assert.ok(back.equals(expected.subarray(MiB + 3, MiB + 3 + 65536)));
    await dev.close();
    const ro = await FileBlockDevice.open(path, { readOnly: true });
    ro.inlineSmallIo = true;
    await assert.rejects(ro.write(Buffer.alloc(512), 0), (e: unknown) => e instanceof TrustvolError && e.code === "EDEVICE");
    await ro.flush(); // a read-only device has nothing to sync
    await ro.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
