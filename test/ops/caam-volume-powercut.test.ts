// Power cut at every file-system write of `trustvol provision` creating a CAAM black-key data volume (its write
// paths: the descriptor with the blob, then the volume's NAME.conf for trustvol-volume@NAME.service — both written by
// atomicWriteFileSync). Model for files: the call in flight when
// power goes does not complete (a write lands torn: a prefix); data not fsynced may be lost (the temp file is cut to a
// prefix); a rename not yet made durable by the directory's fsync may be undone. After every cut the descriptor is
// either absent (nothing of the volume exists: the next boot creates it) or whole and valid, a NAME.conf exists only
// whole and beside its descriptor, the device is byte-identical, and the next run ends with a valid descriptor and its
// NAME.conf — never a second key over a kept one.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs, { existsSync, mkdirSync, readdirSync, readFileSync, renameSync as realRename, rmSync, truncateSync, writeFileSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { PowerCut } from "../helpers/power-cut.js";
import { CaamSimulator } from "../../src/trust/caam/index.js";
import { readCaamVolumeDescriptor } from "../../src/ops/caam-volume.js";
import { parseProvisionConfig } from "../../src/provision/config.js";
import { provision } from "../../src/ops/provision.js";

type FsFn = "openSync" | "writeSync" | "fsyncSync" | "closeSync" | "renameSync";
const FNS: FsFn[] = ["openSync", "writeSync", "fsyncSync", "closeSync", "renameSync"];

/**
 * Run `op` with node:fs's synchronous writers counted; at call number `cutAt` the call fails as a power cut would leave
 * it. Returns the number of calls (when not cut) and what the cut left undone for the caller to apply.
 */
async function withFsCut(cutAt: number | undefined, op: () => Promise<unknown>): Promise<{ calls: number; cut: boolean; pendingRename?: [string, string]; unsynced: Set<string> }> {
  const real = Object.fromEntries(FNS.map((f) => [f, fs[f]])) as Record<FsFn, (...a: unknown[]) => unknown>;
  const fdPath = new Map<number, string>();
  const unsynced = new Set<string>();
  let pendingRename: [string, string] | undefined;
  let calls = 0;
  let cut = false;
  // once power is gone every later call fails too (a caller that swallows one failure does not get to write more)
  const power = (): "on" | "cut" | "off" => (cut ? "off" : ++calls === cutAt ? ((cut = true), "cut") : "on");
  const hit = () => power() !== "on";
  const m = fs as unknown as Record<FsFn, (...a: unknown[]) => unknown>;
  m.openSync = (...a) => {
    if (hit()) throw new PowerCut(calls);
    const fd = real.openSync(...a) as number;
    fdPath.set(fd, String(a[0]));
    return fd;
  };
  m.writeSync = (...a) => {
    const fd = a[0] as number;
    if (fdPath.has(fd)) unsynced.add(fdPath.get(fd)!);
    const p = power();
    if (p === "off") throw new PowerCut(calls);
    if (p === "cut") {
      const buf = a[1] as Uint8Array;
      const off = typeof a[2] === "number" ? a[2] : 0;
      const len = typeof a[3] === "number" ? a[3] : buf.length - off;
      real.writeSync(fd, buf, off, Math.floor(len / 2), a[4]); // torn: a prefix lands
      throw new PowerCut(calls);
    }
    return real.writeSync(...a);
  };
  m.fsyncSync = (...a) => {
    if (hit()) throw new PowerCut(calls);
    const r = real.fsyncSync(...a);
    const p = fdPath.get(a[0] as number);
    if (p) unsynced.delete(p);
    if (pendingRename && p === join(pendingRename[1], "..")) pendingRename = undefined; // the directory's fsync
    return r;
  };
  m.closeSync = (...a) => {
    if (hit()) throw new PowerCut(calls);
    return real.closeSync(...a);
  };
  m.renameSync = (...a) => {
    if (hit()) throw new PowerCut(calls);
    const r = real.renameSync(...a);
    pendingRename = [String(a[0]), String(a[1])];
    return r;
  };
  syncBuiltinESMExports();
  try {
    await op();
  } catch (e) {
    if (!(e instanceof PowerCut)) throw e;
  } finally {
    Object.assign(fs, real);
    syncBuiltinESMExports();
  }
  return { calls, cut, unsynced, ...(pendingRename ? { pendingRename } : {}) };
}

test("provision of a CAAM volume: power cut at every file write (torn, unsynced lost, rename undone): descriptor absent or whole, device unchanged, the next run finishes", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-caam-cut-");
  t.after(cleanup);
  const img = join(dir, "data.img");
  writeFileSync(img, Buffer.alloc(4 << 20));
  const device = readFileSync(img);
  const etc = join(dir, "etc");
  const descriptor = join(etc, "data.caam");
  const volumes = join(etc, "volumes");
  const conf = join(volumes, "data.conf");
  const cfg = parseProvisionConfig({ volumes: [{ name: "data", device: img, trust: { type: "caam", descriptor, key_size: 16 } }] });
  const kg = new CaamSimulator({ stateDir: join(dir, "soc"), bootId: "boot-1" }); // the SoC: made before the cuts
  const run = () => provision({ config: cfg, stage: "system", doctor: false, open: false, caamKeygen: kg, volumesDir: volumes });
  const fresh = () => {
    rmSync(etc, { recursive: true, force: true });
    mkdirSync(etc);
  };
  fresh();
  const clean = await withFsCut(undefined, run);
  assert.ok(!clean.cut && clean.calls >= 10, `a clean run makes the writes (${clean.calls})`);
  const confText = readFileSync(conf, "utf8");
  assert.match(confText, new RegExp(`^DEVICE=${img}\nOPTIONS=--blob ${descriptor}\n$`, "m"));
  let survived = 0;
  for (let n = 1; n <= clean.calls; n++) {
    for (const undo of [false, true]) {
      fresh();
      const r = await withFsCut(n, run);
      assert.ok(r.cut, `cut ${n} happened`);
      // what the power loss takes: unsynced file data (cut to a prefix), a rename whose directory was not fsynced
      for (const p of r.unsynced) if (existsSync(p)) truncateSync(p, Math.floor(readFileSync(p).length / 3));
      if (undo && r.pendingRename) realRename(r.pendingRename[1], r.pendingRename[0]);
      if (existsSync(descriptor)) assert.doesNotThrow(() => readCaamVolumeDescriptor(descriptor), `cut ${n}: a descriptor that exists is whole`);
      if (existsSync(conf)) {
        assert.equal(readFileSync(conf, "utf8"), confText, `cut ${n}: a NAME.conf that exists is whole`);
        assert.ok(existsSync(descriptor), `cut ${n}: a NAME.conf never names a volume that does not exist`);
      }
      assert.deepEqual(readFileSync(img), device, `cut ${n}: the device is untouched`);
      const kept = existsSync(descriptor) ? readFileSync(descriptor) : undefined;
      const keptConf = existsSync(conf);
      const next = await run(); // the next boot
      assert.ok(readCaamVolumeDescriptor(descriptor).blob.length > 0);
      assert.equal(readFileSync(conf, "utf8"), confText, `cut ${n}: the next run leaves the NAME.conf`);
      if (kept) {
        assert.deepEqual(readFileSync(descriptor), kept, `cut ${n}: a kept descriptor is never replaced`);
        assert.deepEqual(next.volumes[0]!.steps, keptConf ? [] : ["volume-conf"]);
      } else assert.deepEqual(next.volumes[0]!.steps, ["create-trusted-key", "volume-conf"]);
      assert.ok(readdirSync(etc).every((f) => f === "data.caam" || f === "volumes" || f.endsWith(".tmp")), `cut ${n}: only the descriptor, volumes/ (and a dead temp file)`);
      assert.ok(readdirSync(volumes).every((f) => f === "data.conf" || f.endsWith(".tmp")), `cut ${n}: only data.conf in volumes/ (and a dead temp file)`);
      survived++;
      if (!r.pendingRename) break; // nothing to undo: one outcome
    }
  }
  t.diagnostic(`${clean.calls} file writes per run, ${survived} cuts survived, 0 bytes of the device changed`);
});
