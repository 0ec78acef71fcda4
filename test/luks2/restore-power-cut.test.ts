// `header restore` under power loss: cut at every write of a restore (each unsynced policy, several seeds, torn writes);
// afterwards the device must open with all of its old passphrases or all of the restored ones, and a rerun must finish.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { PowerCutDevice, PowerCut, countWrites, type UnsyncedPolicy } from "../helpers/power-cut.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { formatLuks2, type FormatOptions } from "../../src/luks2/format.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { readHeader } from "../../src/luks2/header.js";
import { backupHeader, restoreHeader } from "../../src/luks2/backup.js";
import { TrustvolError } from "../../src/util/errors.js";
import { wipe } from "../../src/util/secret.js";

const FAST = { pbkdf: { type: "pbkdf2" as const, forceIterations: 1000 }, digestIterations: 1000 };
const DATA_OFFSET = 2 << 20;
const LAYOUT: FormatOptions = { ...FAST, dataOffset: DATA_OFFSET, keyslotsSize: DATA_OFFSET - 2 * 16384 };
const b = (s: string) => Buffer.from(s);

async function newVolume(pass: string, opts: FormatOptions = {}): Promise<{ dev: MemoryBlockDevice; vol: Luks2Volume; vk: Buffer }> {
  const dev = new MemoryBlockDevice(DATA_OFFSET + 65536);
  const { volume, volumeKey } = await formatLuks2(dev, b(pass), { ...LAYOUT, ...opts });
  return { dev, vol: volume, vk: volumeKey };
}

/** Does every passphrase unlock this image (through the library)? */
async function opensWithAll(img: Buffer, passes: string[]): Promise<boolean> {
  let vol: Luks2Volume;
  try {
    vol = await Luks2Volume.open(new MemoryBlockDevice(img));
  } catch {
    return false;
  }
  for (const p of passes) {
    try {
      wipe((await vol.unlock(b(p))).volumeKey);
    } catch (e) {
      if (e instanceof TrustvolError) return false;
      throw e;
    }
  }
  return true;
}

interface Scenario {
  name: string;
  device: Buffer;
  backupFile: string;
  oldPasses: string[]; // empty: the device's header is already unreadable
  newPasses: string[];
  force?: boolean;
}

async function scenarios(dir: string): Promise<Scenario[]> {
  const out: Scenario[] = [];
  // The backup: P0 in slot 0, P1 in slot 1.
  const a = await newVolume("P0");
  await a.vol.addKeyslot(a.vk, b("P1"), FAST);
  const bkA = join(dir, "a.hdr");
  await backupHeader(a.dev, bkA);
  // Afterwards the device moves on: slot 0 removed and P2 added where it was, P1 changed to P3 in a new area.
  await a.vol.removeKeyslot(0);
  await a.vol.addKeyslot(a.vk, b("P2"), FAST);
  await a.vol.changeKeyslot(1, b("P1"), b("P3"), FAST);
  assert.ok(a.vol.header.seqid > (await readHeader(new MemoryBlockDevice(readFileSync(bkA)))).header.seqid);
  const moved = Buffer.from(a.dev.data);
  out.push({ name: "same volume, other layout, device newer", device: moved, backupFile: bkA, oldPasses: ["P2", "P3"], newPasses: ["P0", "P1"] });

  const noPrimary = Buffer.from(moved);
  noPrimary.fill(0, 0, 16384);
  out.push({ name: "primary header zeroed", device: noPrimary, backupFile: bkA, oldPasses: ["P2", "P3"], newPasses: ["P0", "P1"] });

  const noHeaders = Buffer.from(moved);
  noHeaders.fill(0, 0, 32768);
  out.push({ name: "both header copies zeroed", device: noHeaders, backupFile: bkA, oldPasses: [], newPasses: ["P0", "P1"], force: true });

  // A different volume (256-bit key: other area sizes) replaced by a backup whose seqid is higher.
  const c = await newVolume("Q0", { keySizeBits: 256 });
  await c.vol.addKeyslot(c.vk, b("Q1"), FAST);
  await c.vol.addKeyslot(c.vk, b("Q2"), FAST);
  const d = await newVolume("R0");
  await d.vol.addKeyslot(d.vk, b("R1"), FAST);
  for (let i = 0; i < 6; i++) await d.vol.setPriority(1, i % 2 ? 1 : 2);
  const bkD = join(dir, "d.hdr");
  await backupHeader(d.dev, bkD);
  assert.ok(d.vol.header.seqid > c.vol.header.seqid);
  out.push({ name: "other volume, other key size, backup newer", device: Buffer.from(c.dev.data), backupFile: bkD, oldPasses: ["Q0", "Q1", "Q2"], newPasses: ["R0", "R1"], force: true });

  // A device with 32 KiB metadata copies gets a backup with 16 KiB ones.
  const e = await newVolume("S0", { metadataSize: 32768, keyslotsSize: DATA_OFFSET - 65536 });
  out.push({ name: "other volume, larger header copies on the device", device: Buffer.from(e.dev.data), backupFile: bkA, oldPasses: ["S0"], newPasses: ["P0", "P1"], force: true });
  for (const v of [a, c, d, e]) wipe(v.vk);
  return out;
}

test("header restore: a power cut at any write leaves old or restored passphrases working", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  let survived = 0;
  const perScenario: string[] = [];
  for (const sc of await scenarios(dir)) {
    await t.test(sc.name, async () => {
      if (sc.oldPasses.length) assert.ok(await opensWithAll(sc.device, sc.oldPasses), "old passphrases open before the restore");
      const restore = (dev: PowerCutDevice) => restoreHeader(dev, sc.backupFile, { force: sc.force });
      const n = await countWrites(sc.device, restore);
      perScenario.push(`${sc.name}: ${n} writes`);
      const clean = new PowerCutDevice(sc.device);
      await restore(clean);
      assert.ok(await opensWithAll(clean.image(), sc.newPasses), "an uninterrupted restore opens with the restored passphrases");
      const bk = readFileSync(sc.backupFile), hs = (await readHeader(new MemoryBlockDevice(bk))).header.hdrSize;
      assert.ok(clean.image().subarray(2 * hs, bk.length).equals(bk.subarray(2 * hs)), "the keyslots area ends as in the backup");
      for (let cut = 1; cut <= n; cut++) {
        for (const unsynced of ["drop", "keep", "random"] as UnsyncedPolicy[]) {
          for (const seed of unsynced === "random" ? [1, 2] : [1]) {
            const where = `cut at write ${cut}/${n}, unsynced ${unsynced}, seed ${seed}`;
            const dev = new PowerCutDevice(sc.device, { cutAtWrite: cut, unsynced, seed });
            await assert.rejects(restore(dev), PowerCut);
            const img = dev.image();
            const mem = new MemoryBlockDevice(img);
            const read = await readHeader(mem).catch(() => null);
            if (read?.needsRepair) {
              await (await Luks2Volume.open(mem)).repair();
              const again = await readHeader(mem);
              assert.ok(again.primary.ok && again.secondary.ok && !again.needsRepair, `${where}: repair leaves two good copies`);
            }
            const oldOk = sc.oldPasses.length > 0 && (await opensWithAll(mem.data, sc.oldPasses));
            const newOk = await opensWithAll(mem.data, sc.newPasses);
            if (!sc.oldPasses.length && !newOk) assert.equal(read, null, `${where}: a header that reads must open`);
            else assert.ok(oldOk || newOk, `${where}: neither the old nor the restored passphrases open the device`);
            // The same command run again from the intact backup finishes the job.
            const rerun = new PowerCutDevice(img);
            await restore(rerun);
            assert.ok(await opensWithAll(rerun.image(), sc.newPasses), `${where}: a rerun restores`);
            survived++;
          }
        }
      }
    });
  }
  console.log(`header restore: ${survived} power cuts survived (${perScenario.join("; ")})`);
});

test("header restore: a backup with larger header copies that would cover live keyslots is refused, nothing written", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const big = await newVolume("B0", { metadataSize: 32768, keyslotsSize: DATA_OFFSET - 65536 });
  const file = join(dir, "big.hdr");
  await backupHeader(big.dev, file);
  const small = await newVolume("S0");
  const before = Buffer.from(small.dev.data);
  await assert.rejects(restoreHeader(small.dev, file, { force: true }), (e: TrustvolError) => e.code === "EUNSUPPORTED" && !e.message.includes("\n"));
  assert.ok(small.dev.data.equals(before));
  wipe(big.vk, small.vk);
});

test("header restore: no free space to stage colliding keyslots is refused before anything is written", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  // Two keyslots fill a small keyslots area on both volumes: every restored area collides and nothing is free.
  const tight: FormatOptions = { keyslotsSize: 2 * 258048 + 4096 };
  const bk = await newVolume("N0", tight);
  await bk.vol.addKeyslot(bk.vk, b("N1"), FAST);
  const file = join(dir, "tight.hdr");
  await backupHeader(bk.dev, file);
  const cur = await newVolume("C0", tight);
  await cur.vol.addKeyslot(cur.vk, b("C1"), FAST);
  const before = Buffer.from(cur.dev.data);
  await assert.rejects(restoreHeader(cur.dev, file, { force: true }), (e: TrustvolError) => e.code === "ENOSPC" && /no free space/.test(e.message) && !e.message.includes("\n"));
  assert.ok(cur.dev.data.equals(before));
  // Once the device's header is gone there is nothing left to keep openable: the restore goes ahead.
  cur.dev.data.fill(0, 0, 32768);
  await restoreHeader(cur.dev, file, { force: true });
  assert.ok(await opensWithAll(cur.dev.data, ["N0", "N1"]));
  wipe(bk.vk, cur.vk);
});
