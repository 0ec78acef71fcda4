// CAAM black keys: the tagged format, the caam_keygen_cmd layout, and the clearly named software simulator
// (blob survives a "reboot", black keys do not; another "SoC" cannot import; the simulator refuses unless enabled).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { tmpDir } from "../../helpers/tools.js";
import { CaamSimulator, CAAM_KEYGEN_IOCTL_CREATE, CAAM_KEYGEN_IOCTL_IMPORT, caamKeygenCmd, decodeTag, TAG_MAGIC, blobLength, CaamKeygenDevice } from "../../../src/trust/caam/index.js";
import { TrustvolError } from "../../../src/util/errors.js";

test("caam_keygen_cmd layout and ioctl numbers (keyctl_caam / linux-imx)", () => {
  assert.equal(CAAM_KEYGEN_IOCTL_CREATE, 0xc0384b00);
  assert.equal(CAAM_KEYGEN_IOCTL_IMPORT, 0xc0384b01);
  const c = caamKeygenCmd({ keyEnc: Buffer.from("ecb\0"), keyMode: Buffer.from("-s\0"), keyValue: Buffer.from("32\0"), keyValueLen: 2, blackKey: Buffer.alloc(96), blob: Buffer.alloc(144) });
  assert.equal(c.struct.length, 56);
  assert.deepEqual([c.struct[0], c.struct[1], c.struct.readUInt16LE(2), c.struct.readUInt32LE(4), c.struct.readUInt32LE(40)], [4, 3, 2, 96, 144]);
  assert.deepEqual(c.pointers.map((p) => p[0]), [8, 16, 24, 32, 48]);
});

test("the real device is refused clearly where there is none", () => {
  assert.throws(() => new CaamKeygenDevice("/dev/caam-keygen-absent"), (e: unknown) => e instanceof TrustvolError && e.code === "EDEVICE" && /caam-keygen/.test(e.message));
});

test("simulator: sizes like the hardware, blobs across boots, black keys per boot, other SoC refuses", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-caam-");
  t.after(cleanup);
  const boot1 = new CaamSimulator({ stateDir: join(dir, "soc"), bootId: "boot-1" });
  const r = await boot1.create("ecb", { size: 16 });
  assert.equal(r.blackKey.length, 36, "caam-keygen writes a 36-byte black key for -s 16");
  assert.equal(r.blob.length, 96, "and a 96-byte blob");
  assert.equal(r.blackKey.readUInt32LE(0), TAG_MAGIC);
  const red1 = boot1.revealBlackKeyForTests(r.blackKey);
  assert.equal(red1.length, 16);
  const ccm = await boot1.create("ccm", { size: 64 });
  assert.equal(decodeTag(ccm.blob).object.length, blobLength(64));
  assert.equal(ccm.blackKey.length, 20 + 64 + 12);
  const given = Buffer.alloc(32, 7);
  const fromPlain = await boot1.create("ccm", { plaintext: given });
  assert.deepEqual(boot1.revealBlackKeyForTests(fromPlain.blackKey), given);

  const boot2 = new CaamSimulator({ stateDir: join(dir, "soc"), bootId: "boot-2" });
  const bk2 = await boot2.import(r.blob);
  assert.notDeepEqual(bk2, r.blackKey, "a black key is only valid in its boot");
  assert.deepEqual(boot2.revealBlackKeyForTests(bk2), red1, "the blob brings back the same key");
  const ccm2 = await boot2.import(ccm.blob);
  assert.equal(ccm2.length, ccm.blackKey.length);
  assert.throws(() => boot2.revealBlackKeyForTests(ccm.blackKey), (e: unknown) => e instanceof TrustvolError && e.code === "ENOKEY");

  const other = new CaamSimulator({ stateDir: join(dir, "other-soc"), bootId: "boot-1" });
  await assert.rejects(other.import(r.blob), (e: unknown) => e instanceof TrustvolError && e.code === "ENOKEY");
  const bad = Buffer.from(r.blob);
  bad[bad.length - 1]! ^= 1;
  await assert.rejects(boot2.import(bad), (e: unknown) => e instanceof TrustvolError && e.code === "ENOKEY");
  await assert.rejects(boot2.import(r.blob.subarray(0, 60)), (e: unknown) => e instanceof TrustvolError && e.code === "ECORRUPT");
  await assert.rejects(boot1.create("ecb", { size: 8 }), (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE");
});

test("simulator refuses to run unless explicitly enabled", (t) => {
  const { dir, cleanup } = tmpDir("trustvol-caam-");
  t.after(cleanup);
  const saved = { a: process.env.TRUSTVOL_TEST, b: process.env.TRUSTVOL_CAAM_SIMULATOR };
  delete process.env.TRUSTVOL_TEST;
  delete process.env.TRUSTVOL_CAAM_SIMULATOR;
  try {
    assert.throws(() => new CaamSimulator({ stateDir: dir }), (e: unknown) => e instanceof TrustvolError && e.code === "EPOLICY" && /tests only/.test(e.message));
  } finally {
    if (saved.a !== undefined) process.env.TRUSTVOL_TEST = saved.a;
    if (saved.b !== undefined) process.env.TRUSTVOL_CAAM_SIMULATOR = saved.b;
  }
});
