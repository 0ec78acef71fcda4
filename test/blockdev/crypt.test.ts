// Random access through the decrypted view equals what whole-image decryption sees (the /dev/mapper view, no dm).
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, randomInt } from "node:crypto";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { CryptBlockDevice } from "../../src/blockdev/crypt.js";
import { createSectorCipher } from "../../src/dmcrypt/index.js";
import { TrustvolError } from "../../src/util/errors.js";

for (const [cipher, keyLen, ss] of [["aes-xts-plain64", 64, 4096], ["aes-cbc-essiv:sha256", 32, 512], ["aes-xts-plain64", 32, 1024]] as const) {
  test(`CryptBlockDevice ${cipher} ${ss}: unaligned reads/writes match a plaintext model`, async () => {
    const key = randomBytes(keyLen);
    const offset = 16 * 1024 * 1024, length = 256 * 1024;
    const backing = new MemoryBlockDevice(offset + length);
    const dev = new CryptBlockDevice(backing, { offset, length }, createSectorCipher({ cipher, key, sectorSize: ss, ivOffset: 8 }));
    const model = Buffer.alloc(length);
    await dev.write(model, 0); // the encrypted view starts as encrypted zeros
    for (let i = 0; i < 300; i++) {
      const off = randomInt(0, length - 1), len = randomInt(1, Math.min(20000, length - off));
      if (i % 2) {
        const data = randomBytes(len);
        await dev.write(data, off);
        data.copy(model, off);
      } else {
        const got = Buffer.alloc(len);
        await dev.read(got, off);
        assert.ok(got.equals(model.subarray(off, off + len)), `read ${len}@${off}`);
      }
    }
    // The backing store holds ciphertext the plain engine decrypts to the model, sector by sector.
    const whole = Buffer.from(backing.data.subarray(offset));
    createSectorCipher({ cipher, key, sectorSize: ss, ivOffset: 8 }).decrypt(whole, 0);
    assert.ok(whole.equals(model));
    assert.ok(!backing.data.subarray(offset).equals(model));
    await assert.rejects(dev.read(Buffer.alloc(10), length - 5), TrustvolError);
    await dev.close();
  });
}
