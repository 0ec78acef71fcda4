// Host tier for the kernel side of re-encryption: the multi-segment tables cryptsetup loads (activation and the
// overlay's hot table), the engine's hotzone hooks, and cryptsetup's re-encryption lock (flock semantics checked
// with util-linux flock, the same flock(2) cryptsetup uses). The real-kernel tests are test/vm/reencrypt-*.slow.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { reencrypt } from "../../src/ops/reencrypt.js";
import { loadReencryptState, hotMetadata, nextHotzone } from "../../src/luks2/reencrypt-metadata.js";
import { segmentTable, mappedSectors, cryptsetupKeyDescription, luks2DmUuid } from "../../src/ops/reencrypt-online.js";
import { lockReencryption, reencryptLockPath } from "../../src/dm/lock.js";
import { TrustvolError } from "../../src/util/errors.js";
import { createSectorCipher } from "../../src/dmcrypt/sector-cipher.js";
import { exportedHeaderImage } from "../../src/ops/reencrypt-export.js";
import { tmpDir, hasTool } from "../helpers/tools.js";
import { makeVolume, PASS, PBKDF, HOTZONE } from "./reencrypt-fixture.js";

const DATA = 1 << 20;

async function stoppedAfter(hotzones: number) {
  const { image } = await makeVolume(DATA);
  const dev = new MemoryBlockDevice(image);
  const ac = new AbortController();
  const calls: string[] = [];
  let keysSeen: number[] = [];
  await assert.rejects(
    reencrypt(dev, {
      passphrase: PASS, pbkdf: PBKDF, hotzoneSize: HOTZONE, signal: ac.signal,
      onProgress: (p) => { if (p.done >= hotzones * HOTZONE) ac.abort(); },
      hotzoneHooks: {
        before: (hot, keys) => { calls.push(`before:${loadReencryptState(hot).status}`); keysSeen = [...keys.keys()].sort(); },
        after: (post) => { calls.push(`after:${loadReencryptState(post).status}`); },
      },
    }),
    (e: unknown) => e instanceof TrustvolError && e.code === "EINTR",
  );
  return { dev, calls, keysSeen, v: await Luks2Volume.open(dev) };
}

test("hotzone hooks: before (hot metadata, both keys) and after (done) around every hotzone", async () => {
  const { calls, keysSeen } = await stoppedAfter(2);
  assert.deepEqual(calls, ["before:crash", "after:clean", "before:crash", "after:clean"]);
  assert.deepEqual(keysSeen, [0, 1], "old and new volume key, by digest id");
});

test("online resume with --resilience journal (the hooks reencryptOnline uses): the switch is committed before the first hotzone's hook", async () => {
  const { dev } = await stoppedAfter(1);
  const areas: string[] = [];
  await reencrypt(dev, {
    passphrase: PASS, resumeOnly: true, hotzoneSize: HOTZONE, resilience: "journal",
    hotzoneHooks: { before: (hot) => void areas.push(loadReencryptState(hot).keyslot.area.type), after: () => {} },
  });
  assert.ok(areas.length >= 2 && areas.every((a) => a === "journal"), `every hotzone of the resume under journal (${areas.join(",")})`);
});

test("segment table mid-rotation: new-key segment, old-key segment, cryptsetup's key descriptions", async () => {
  const { dev, v } = await stoppedAfter(2);
  const m = v.metadata;
  const total = mappedSectors(m, dev.size);
  assert.equal(total, BigInt(DATA / 512));
  const table = segmentTable(m, { device: "7:3", deviceSize: dev.size, keySize: () => 64, uuid: v.uuid });
  const done = (2 * HOTZONE) / 512;
  assert.equal(
    table,
    [
      `0 ${done} crypt aes-xts-plain64 :64:logon:${cryptsetupKeyDescription(v.uuid, 1)} 0 7:3 2048 1 sector_size:4096`,
      `${done} ${DATA / 512 - done} crypt aes-xts-plain64 :64:logon:cryptsetup:${v.uuid}-d0 ${done} 7:3 ${2048 + done} 1 sector_size:4096`,
    ].join("\n"),
  );
  assert.equal(luks2DmUuid(v.uuid, "vol"), `CRYPT-LUKS2-${v.uuid.replace(/-/g, "")}-vol`);
  // the overlay's hot table: the next hotzone goes through the hotzone device (1:1 from the data offset), new key
  const st = loadReencryptState(m);
  const hz = nextHotzone(m, st, DATA, HOTZONE)!;
  const hot = hotMetadata(m, st, hz.off, hz.len, DATA);
  const lines = segmentTable(hot, { device: "7:3", deviceSize: dev.size, keySize: () => 64, uuid: v.uuid, hotzoneDevice: "253:1", flags: { allowDiscards: true } }).split("\n");
  assert.equal(lines.length, 3);
  assert.equal(lines[1], `${done} ${HOTZONE / 512} crypt aes-xts-plain64 :64:logon:cryptsetup:${v.uuid}-d1 ${done} 253:1 ${done} 2 allow_discards sector_size:4096`);
  assert.match(lines[2]!, new RegExp(`^${done + HOTZONE / 512} \\d+ crypt aes-xts-plain64 :64:logon:cryptsetup:${v.uuid}-d0 `));
});

test("re-encryption lock: cryptsetup's path, exclusive (util-linux flock agrees), file removed on release", async (t) => {
  if (!hasTool("flock")) return t.skip("no util-linux flock");
  const { dir, cleanup } = tmpDir("trustvol-lock-");
  t.after(cleanup);
  const saved = process.env.TRUSTVOL_LUKS2_LOCK_DIR;
  process.env.TRUSTVOL_LUKS2_LOCK_DIR = `${dir}/cryptsetup`;
  t.after(() => (saved === undefined ? delete process.env.TRUSTVOL_LUKS2_LOCK_DIR : (process.env.TRUSTVOL_LUKS2_LOCK_DIR = saved)));
  const uuid = "0f6b5e4c-1d2e-4a3b-9c8d-7e6f5a4b3c2d";
  const path = reencryptLockPath(uuid);
  assert.equal(path, `${dir}/cryptsetup/LN_LUKS2-reencryption-${uuid}`);
  const l = await lockReencryption(uuid);
  assert.ok(existsSync(path));
  assert.notEqual(spawnSync("flock", ["-n", path, "true"]).status, 0, "another flock(LOCK_EX|LOCK_NB) fails while we hold it");
  await assert.rejects(lockReencryption(uuid), (e: unknown) => e instanceof TrustvolError && e.code === "EBUSY");
  await l.release();
  assert.equal(existsSync(path), false);
  const again = await lockReencryption(uuid);
  await again.release();
  assert.throws(() => reencryptLockPath("../../etc"), /bad LUKS2 UUID/);
});

test("re-encryption lock: an unwritable lock directory refuses (EIO) unless the lock is optional (offline runs by a user)", async (t) => {
  const saved = process.env.TRUSTVOL_LUKS2_LOCK_DIR;
  process.env.TRUSTVOL_LUKS2_LOCK_DIR = "/sys/trustvol-no-lock-here"; // mkdir: EPERM even for root
  t.after(() => (saved === undefined ? delete process.env.TRUSTVOL_LUKS2_LOCK_DIR : (process.env.TRUSTVOL_LUKS2_LOCK_DIR = saved)));
  const uuid = "0f6b5e4c-1d2e-4a3b-9c8d-7e6f5a4b3c2d";
  await assert.rejects(lockReencryption(uuid), (e: unknown) => e instanceof TrustvolError && e.code === "EIO" && /cannot take the re-encryption lock/.test(e.message));
  const none = await lockReencryption(uuid, { optional: true });
  await none.release();
  assert.equal(existsSync("/sys/trustvol-no-lock-here"), false);
});

test("segment table mid decryption with a data shift: moved segment, plain part, the rest one shift on; it maps the plain data only", async () => {
  const DEV = 6 << 20, SHIFT = 1 << 20; // makeVolume: 1 MiB of header, so the shift is 1 MiB: 4 shifted hotzones, then the moved one
  const { image, plain } = await makeVolume(DEV - SHIFT);
  const dev = new MemoryBlockDevice(image);
  const uuid = (await Luks2Volume.open(new MemoryBlockDevice(image))).uuid;
  const hdr = new MemoryBlockDevice(await exportedHeaderImage(new MemoryBlockDevice(image), uuid, SHIFT)); // as exported (the continuation path)
  const ac = new AbortController();
  await assert.rejects(
    reencrypt(dev, { mode: "decrypt", header: hdr, passphrase: PASS, pbkdf: PBKDF, signal: ac.signal, onProgress: (p) => { if (p.done >= 2 * SHIFT) ac.abort(); } }),
    (e: unknown) => e instanceof TrustvolError && e.code === "EINTR",
  );
  const v = await Luks2Volume.open(hdr);
  const total = mappedSectors(v.metadata, dev.size);
  assert.equal(total, BigInt((DEV - SHIFT) / 512), "the plain data ends one shift before the device");
  const table = segmentTable(v.metadata, { device: "7:3", deviceSize: dev.size, keySize: () => 64, uuid: v.uuid });
  const s = SHIFT / 512, done = Number(v.metadata.segments["1"]!.size) / 512, end = s + done; // [moved | plain | encrypted]
  assert.ok(done >= s && end < Number(total), `stopped part-way (${done} sectors plain)`);
  assert.equal(
    table,
    [
      `0 ${s} crypt aes-xts-plain64 :64:logon:${cryptsetupKeyDescription(v.uuid, 0)} 0 7:3 0 1 sector_size:4096`,
      `${s} ${done} linear 7:3 ${s}`,
      `${end} ${Number(total) - end} crypt aes-xts-plain64 :64:logon:${cryptsetupKeyDescription(v.uuid, 0)} ${end} 7:3 ${end + s} 1 sector_size:4096`,
    ].join("\n"),
  );
  // what that table shows is the plaintext: read it as dm-crypt and dm-linear would
  const { volumeKey } = await v.unlock(PASS);
  const out: Buffer[] = [];
  for (const line of table.split("\n")) {
    const f = line.split(" ");
    const len = Number(f[1]) * 512, from = Number(f[f[2] === "linear" ? 4 : 7]) * 512;
    const b = Buffer.from(dev.data.subarray(from, from + len));
    if (f[2] === "crypt") createSectorCipher({ cipher: "aes-xts-plain64", key: volumeKey, sectorSize: 4096 }).decrypt(b, Number(f[5]) / 8);
    out.push(b);
  }
  assert.ok(Buffer.concat(out).equals(plain), "the mid-run table maps the original plaintext");
});
