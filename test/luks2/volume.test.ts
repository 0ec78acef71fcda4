// Luks2Volume: which keyslots may yield a volume key, and what a failed keyslot write leaves on disk.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { tmpDir, needTools, run } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { withJson } from "../helpers/luks-image.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { formatLuks2 } from "../../src/luks2/format.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { TrustvolError } from "../../src/util/errors.js";

const FAST = { pbkdf: { type: "pbkdf2" as const, forceIterations: 1000 } };

/** Slot 0 ("pw") bound to segment 0; slot 1 ("other") holds the same key but its digest covers no segment. */
async function unboundImage(): Promise<Buffer> {
  const dev = new MemoryBlockDevice(20 * 1024 * 1024);
  const { volume, volumeKey } = await formatLuks2(dev, Buffer.from("pw"), { ...FAST, digestIterations: 1000 });
  await volume.addKeyslot(volumeKey, Buffer.from("other"), FAST);
  return withJson(dev.data, (j) => {
    j.digests["0"].keyslots = ["0"];
    j.digests["1"] = { ...j.digests["0"], keyslots: ["1"], segments: [] };
    return j;
  });
}

test("a keyslot whose digest is not bound to the data segment never unlocks (library, CLI, cryptsetup)", async (t) => {
  const img = await unboundImage();
  const v = await Luks2Volume.open(new MemoryBlockDevice(Buffer.from(img), true));
  await assert.rejects(v.unlock(Buffer.from("other")), (e: TrustvolError) => e.code === "ENOKEY" || e.code === "EBADPASS");
  await assert.rejects(v.unlock(Buffer.from("other"), { slot: 1 }), (e: TrustvolError) => e.code === "EBADPASS");
  const ok = await v.unlock(Buffer.from("pw"), { segment: "0" });
  assert.equal(ok.keyslot, 0);
  ok.volumeKey.fill(0);

  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const p = join(dir, "v.img");
  writeFileSync(p, img);
  writeFileSync(join(dir, "other"), "other", { mode: 0o600 });
  for (const args of [
    ["unlock", "--test", "--key-file", join(dir, "other"), p],
    ["unlock", "--test", "--key-slot", "1", "--key-file", join(dir, "other"), p],
    ["dump", "--dump-volume-key", "--volume-key-file", join(dir, "vk"), "--key-file", join(dir, "other"), p],
    ["image", "decrypt", "--key-file", join(dir, "other"), p, join(dir, "out.raw")],
  ]) {
    const r = await trustvolInProcess(args);
    assert.equal(r.status, 3, `${args.slice(0, 2).join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /^trustvol: no (usable keyslot|key available)[^\n]*\n$/);
  }
  const d = await trustvolInProcess(["dump", p]);
  assert.match(d.stdout, /^  1: luks2 \(unbound\)$/m, "dump marks it as cryptsetup does");
  assert.ok(readFileSync(p).equals(img), "read-only commands leave the image as it was");
  if (needTools(t, "cryptsetup")) {
    const c = run("cryptsetup", ["open", "--test-passphrase", "--key-file", "-", p], { input: "other", check: false });
    assert.notEqual(c.status, 0, "cryptsetup refuses it too");
  }
});

/** A device that fails one chosen write or flush (EIO), then keeps working. */
class FailingDevice extends MemoryBlockDevice {
  failWrite?: (offset: number, len: number) => boolean;
  failFlushNo?: number;
  flushes = 0;
  written: { offset: number; data: Buffer }[] = [];
  override async write(buf: Uint8Array, offset: number): Promise<void> {
    if (this.failWrite?.(offset, buf.length)) {
      this.failWrite = undefined;
      throw new TrustvolError("EIO", "simulated I/O error");
    }
    this.written.push({ offset, data: Buffer.from(buf) });
    return super.write(buf, offset);
  }
  override async flush(): Promise<void> {
    if (++this.flushes === this.failFlushNo) throw new TrustvolError("EIO", "simulated flush error");
    return super.flush();
  }
}

async function failingVolume(): Promise<{ dev: FailingDevice; vk: Buffer }> {
  const dev = new FailingDevice(20 * 1024 * 1024);
  const { volumeKey } = await formatLuks2(dev, Buffer.from("pw"), { ...FAST, digestIterations: 1000 });
  dev.written = [];
  return { dev, vk: volumeKey };
}

/** The keyslot area written before the failure no longer holds those bytes, and the new passphrase opens nothing. */
async function assertNoNewMaterial(dev: FailingDevice, newPass: string): Promise<void> {
  const area = dev.written.find((w) => w.offset >= 32768 && w.offset < 16 << 20 && w.data.length >= 4000 * 64 - 512);
  assert.ok(area, "the keyslot area was written before the failure");
  assert.ok(!dev.data.subarray(area.offset, area.offset + area.data.length).equals(area.data), "the area was overwritten");
  const v = await Luks2Volume.open(new MemoryBlockDevice(Buffer.from(dev.data), true));
  await assert.rejects(v.unlock(Buffer.from(newPass)));
  const old = await v.unlock(Buffer.from("pw"));
  old.volumeKey.fill(0);
}

test("key add: a failure after the area write (flush, token, header commit) wipes the new keyslot area", async (t) => {
  await t.test("flush of the area fails", async () => {
    const { dev, vk } = await failingVolume();
    const v = await Luks2Volume.open(dev);
    dev.failFlushNo = dev.flushes + 1;
    await assert.rejects(v.addKeyslot(vk, Buffer.from("new"), FAST), /simulated flush/);
    await assertNoNewMaterial(dev, "new");
  });
  await t.test("the token cannot be stored", async () => {
    const { dev, vk } = await failingVolume();
    const v = await Luks2Volume.open(dev);
    const badToken = { type: "x", keyslots: [], f: () => 0 } as unknown as Record<string, unknown>;
    await assert.rejects(v.addKeyslotWithToken(vk, async () => ({ tokenJson: badToken, passphrase: Buffer.from("new") }), FAST));
    await assertNoNewMaterial(dev, "new");
  });
  await t.test("the header write fails", async () => {
    const { dev, vk } = await failingVolume();
    const v = await Luks2Volume.open(dev);
    dev.failWrite = (off) => off === 0;
    await assert.rejects(v.addKeyslot(vk, Buffer.from("new"), FAST), /simulated I\/O/);
    await assertNoNewMaterial(dev, "new");
  });
});

test("key change: a failed header commit wipes the new area and the old passphrase still opens", async () => {
  const { dev } = await failingVolume();
  const v = await Luks2Volume.open(dev);
  dev.failWrite = (off) => off === 0;
  await assert.rejects(v.changeKeyslot(0, Buffer.from("pw"), Buffer.from("new"), FAST), /simulated I\/O/);
  await assertNoNewMaterial(dev, "new");
});

test("key change: a failure after the primary copy landed keeps the new area (the header on disk uses it)", async () => {
  const { dev } = await failingVolume();
  const v = await Luks2Volume.open(dev);
  dev.failWrite = (off) => off === 16384;
  await assert.rejects(v.changeKeyslot(0, Buffer.from("pw"), Buffer.from("new"), FAST), /simulated I\/O/);
  const after = await Luks2Volume.open(new MemoryBlockDevice(Buffer.from(dev.data), true));
  const r = await after.unlock(Buffer.from("new"));
  r.volumeKey.fill(0);
});

test("prepareCommit: validated and encoded now, written later as commit() writes it; a commit in between refuses it, nothing written", async () => {
  const dev = new MemoryBlockDevice(16 * 1024 * 1024);
  const { volume } = await formatLuks2(dev, Buffer.from("pw"), { ...FAST, digestIterations: 1000 });
  const seq = volume.header.seqid;
  const m = structuredClone(volume.metadata);
  m.config.flags = ["allow-discards"];
  const prepared = volume.prepareCommit(m);
  assert.equal(volume.header.seqid, seq, "nothing written by prepare");
  await prepared.write();
  assert.equal(volume.header.seqid, seq + 1n);
  const again = await Luks2Volume.open(dev);
  assert.deepEqual(again.metadata.config.flags, ["allow-discards"]);
  assert.equal(again.header.seqid, seq + 1n);
  // the secondary copy carries it too: with the primary's binary header wiped, it still reads back
  const noPrimary = Buffer.from(dev.data);
  noPrimary.fill(0, 0, 4096);
  assert.deepEqual((await Luks2Volume.open(new MemoryBlockDevice(noPrimary, true))).metadata.config.flags, ["allow-discards"]);
  const stale = volume.prepareCommit({ ...structuredClone(volume.metadata), config: { ...volume.metadata.config, flags: [] } });
  await volume.commit(structuredClone(volume.metadata));
  const before = Buffer.from(dev.data);
  await assert.rejects(stale.write(), /the header changed after a commit was prepared/);
  assert.ok(Buffer.from(dev.data).equals(before), "the stale commit wrote nothing");
  const bad = structuredClone(volume.metadata);
  (bad.segments as Record<string, unknown>)["0"] = { type: "bogus" };
  assert.throws(() => volume.prepareCommit(bad), "invalid metadata is refused when prepared");
});

test("format: a keyslots area over 128 MiB or too small for the keyslot is refused (cryptsetup refuses both), before the KDF; the default is capped", async () => {
  const usage = (says: RegExp) => (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE" && says.test(e.message);
  const pbkdf = { type: "pbkdf2" as const, forceIterations: 1000 };
  await assert.rejects(formatLuks2(new MemoryBlockDevice(0), Buffer.from("pw"), { pbkdf, dataOffset: 0, keyslotsSize: 1 << 30 }), usage(/over the LUKS2 limit/));
  await assert.rejects(formatLuks2(new MemoryBlockDevice(0), Buffer.from("pw"), { pbkdf, keyslotsSize: 100 << 10 }), usage(/too small for one keyslot of a 512-bit key \(258048 bytes\)/));
  await assert.rejects(formatLuks2(new MemoryBlockDevice(0), Buffer.from("pw"), { pbkdf, keySizeBits: 256, keyslotsSize: 4096 }), usage(/too small for one keyslot of a 256-bit key \(131072 bytes\)/));
  const dev = new MemoryBlockDevice(0);
  await formatLuks2(dev, Buffer.from("pw"), { pbkdf, dataOffset: 512 << 20 });
  assert.equal((await Luks2Volume.open(dev)).metadata.config.keyslots_size, String(128 << 20), "a data offset past 128 MiB: the keyslots area stops at the limit");
});
