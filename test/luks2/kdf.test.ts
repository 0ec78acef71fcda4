// Keyslot KDF choices: Argon2 memory sized for the *target* device, cryptsetup's caps, PBKDF2 AF hash pairing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { argon2MemoryFor, chooseKdf } from "../../src/luks2/kdf.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { formatLuks2 } from "../../src/luks2/format.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { tmpDir } from "../helpers/tools.js";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

test("argon2 memory: half the target RAM, capped at 1 GiB, explicit value wins", () => {
  assert.equal(argon2MemoryFor({ targetRamMiB: 256 }), 128 * 1024);
  assert.equal(argon2MemoryFor({ targetRamMiB: 512 }), 256 * 1024);
  assert.equal(argon2MemoryFor({ targetRamMiB: 8192 }), 1024 * 1024);
  assert.equal(argon2MemoryFor({ targetRamMiB: 256, memoryKiB: 65536 }), 65536);
});

test("chooseKdf honours forced parameters without benchmarking", async () => {
  const k = await chooseKdf({ type: "argon2i", forceIterations: 5, memoryKiB: 40000, parallel: 3 }, Buffer.alloc(32, 7), 64);
  assert.deepEqual({ ...k, salt: undefined }, { type: "argon2i", time: 5, memory: 40000, cpus: 3, salt: undefined });
  const p = await chooseKdf({ type: "pbkdf2", hash: "sha512", forceIterations: 1234 }, Buffer.alloc(32), 64);
  assert.equal(p.type === "pbkdf2" && p.iterations, 1234);
});

test("format --target-ram sizes the keyslot for the device (not this build host); PBKDF2 keyslots take the AF hash from the KDF", async () => {
  const { dir, cleanup } = tmpDir();
  try {
    writeFileSync(join(dir, "pw"), "pw", { mode: 0o600 });
    writeFileSync(join(dir, "v.img"), Buffer.alloc(0));
    const r = await trustvolInProcess(["format", "--key-file", join(dir, "pw"), "--target-ram", "128", "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "1", "--json", join(dir, "v.img")]);
    assert.equal(r.status, 0, r.stderr);
    const d = JSON.parse((await trustvolInProcess(["dump", "--json", join(dir, "v.img")])).stdout);
    assert.equal(d.metadata.keyslots["0"].kdf.memory, 64 * 1024);
    assert.equal(d.metadata.keyslots["0"].af.hash, "sha256");
  } finally {
    cleanup();
  }
  const dev = new MemoryBlockDevice(17 << 20);
  const { volume } = await formatLuks2(dev, Buffer.from("x"), { pbkdf: { type: "pbkdf2", hash: "sha512", forceIterations: 1000 }, digestIterations: 1000 });
  assert.equal(volume.metadata.keyslots["0"]!.af!.hash, "sha512");
});
