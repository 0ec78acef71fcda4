// The later boots of a trusted-key / CAAM data volume: the system stage writes VOLUMES_DIR/NAME.conf (DEVICE=, OPTIONS=)
// once the volume exists, which trustvol-generator turns into trustvol-volume@NAME.service at every boot. Written once
// (a hand-edited one is kept), listed by --dry-run, refused before any write when a path cannot be named in it.
// Power cuts: test/ops/caam-volume-powercut.test.ts sweeps the descriptor and this file together.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { CaamSimulator } from "../../src/trust/caam/index.js";
import { parseProvisionConfig } from "../../src/provision/config.js";
import { provision, volumeConf } from "../../src/ops/provision.js";
import { trustvol } from "../helpers/cli.js";

function setup(t: import("node:test").TestContext, trust: Record<string, unknown> = {}, device?: string) {
  const { dir, cleanup } = tmpDir("trustvol-volconf-");
  t.after(cleanup);
  const img = join(dir, "data.img");
  writeFileSync(img, Buffer.alloc(4 << 20));
  const descriptor = join(dir, "data.caam");
  const cfg = parseProvisionConfig({ volumes: [{ name: "data", device: device ?? img, trust: { type: "caam", descriptor, key_size: 16, ...trust } }] });
  const kg = new CaamSimulator({ stateDir: join(dir, "soc"), bootId: "boot-1" });
  const volumes = join(dir, "volumes");
  const run = (o: { dryRun?: boolean; stage?: "system" | "initramfs" } = {}) => provision({ config: cfg, stage: o.stage ?? "system", doctor: false, open: false, caamKeygen: kg, volumesDir: volumes, devices: { data: img }, dryRun: !!o.dryRun });
  return { dir, img, descriptor, volumes, conf: join(volumes, "data.conf"), run };
}

test("system stage: NAME.conf written after the descriptor, once; a hand-edited one is kept; dry-run lists it; the initramfs stage writes none", async (t) => {
  const s = setup(t, {}, "PARTLABEL=tvdata");
  assert.deepEqual((await s.run({ dryRun: true })).volumes[0]!.steps, ["create-trusted-key", "volume-conf"]);
  assert.equal(existsSync(s.volumes), false, "dry-run writes nothing");
  assert.deepEqual((await s.run({ stage: "initramfs" })).volumes[0]!.steps, []);
  assert.equal(existsSync(s.volumes), false, "the initramfs's /etc is lost at switch-root: nothing written there");
  const r = await s.run();
  assert.deepEqual(r.volumes[0]!.steps, ["create-trusted-key", "volume-conf"]);
  const text = readFileSync(s.conf, "utf8");
  assert.match(text, new RegExp(`^DEVICE=/dev/disk/by-partlabel/tvdata\\nOPTIONS=--blob ${s.descriptor}\\n$`, "m"), "a stable /dev/disk path for the generator's device binding");
  assert.doesNotMatch(text, /blob":|key/i, "no key material: only the descriptor's path");
  assert.deepEqual((await s.run()).volumes[0]!.steps, []);
  writeFileSync(s.conf, text.replace("OPTIONS=--blob", "OPTIONS=--allow-discards --blob"));
  assert.deepEqual((await s.run()).volumes[0]!.steps, []);
  assert.match(readFileSync(s.conf, "utf8"), /--allow-discards/, "a hand-edited NAME.conf is kept");
  assert.deepEqual(readdirSync(s.volumes), ["data.conf"]);
});

test("NAME.conf: devices and descriptors that systemd's EnvironmentFile or the unit's word splitting would mangle are refused before any write, naming the field", async (t) => {
  const s = setup(t, { descriptor: "/etc/trustvol/my data.caam" });
  await assert.rejects(s.run(), (e: Error) => /^volumes\[0\]\.trust\.descriptor: "\/etc\/trustvol\/my data\.caam" cannot be named in .*data\.conf/.test(e.message) && !e.message.includes("\n"));
  assert.equal(existsSync(s.volumes), false);
  assert.equal(existsSync("/etc/trustvol/my data.caam"), false, "no volume was created");
  assert.deepEqual(readFileSync(s.img), Buffer.alloc(4 << 20));
  const vol = parseProvisionConfig({ volumes: [{ name: "data", device: "/dev/vdb", trust: { type: "trusted-key", source: "tpm" } }] }).volumes[0]!;
  for (const [device, field] of [["LABEL=a/b", "device"], ["LABEL=my data", "device"], ["/dev/disk/by-label/a$(id)", "device"]] as const) {
    assert.throws(() => volumeConf({ ...vol, device }, 0, "/etc/trustvol/data.tvkey", "/v"), (e: Error) => e.message.startsWith(`volumes[0].${field}: `), device);
  }
  for (const d of ['/etc/x"y.tvkey', "/etc/x'y.tvkey", "/etc/x\ny.tvkey", "/etc/$X.tvkey"]) assert.throws(() => volumeConf(vol, 0, d, "/v"), (e: Error) => e.message.startsWith("volumes[0].trust.descriptor: ") && !e.message.includes("\n"), JSON.stringify(d));
  assert.equal(volumeConf({ ...vol, device: "PARTUUID=0FC63DAF-8483-4772-8E79-3D69D8477DE4" }, 0, "/etc/trustvol/data.tvkey", "/v").content.split("\n").find((l) => l.startsWith("DEVICE=")), "DEVICE=/dev/disk/by-partuuid/0FC63DAF-8483-4772-8E79-3D69D8477DE4");
});

test("CLI: provision --stage system --dry-run lists volume-conf (volumes/ beside the config; nothing written)", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-volconf-cli-");
  t.after(cleanup);
  // an unknown trust device: the run fails before any write, but --dry-run shows where the file would go
  const img = join(dir, "data.img");
  writeFileSync(img, Buffer.alloc(4 << 20));
  const cfg = join(dir, "provision.json");
  writeFileSync(cfg, JSON.stringify({ volumes: [{ name: "data", device: img, trust: { type: "trusted-key", source: "tpm", descriptor: join(dir, "data.tvkey") }, posture: { secure_boot: "ignore", setup_mode: "ignore", huk: "ignore" } }] }));
  const r = trustvol(["provision", "--config", cfg, "--stage", "system", "--dry-run", "--no-open", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout).volumes[0].steps, ["create-trusted-key", "volume-conf"]);
  assert.equal(existsSync(join(dir, "volumes")), false);
});
