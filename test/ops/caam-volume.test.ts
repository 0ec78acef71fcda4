// CAAM black-key data volumes (seed 001) through the clearly named CAAM SIMULATOR: descriptor creation (0600, atomic,
// never replaced), the dm table every boot builds from this boot's black key (dry run: the host has no tk(cbc(aes))),
// a hostile descriptor refused with one line, and `trustvol provision` creating then reopening such a volume.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, statSync, writeFileSync, existsSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { CaamSimulator, CAAM_TK_CIPHER, type CaamKeygen } from "../../src/trust/caam/index.js";
import { createCaamVolume, openCaamVolume, readCaamVolumeDescriptor, blackKeySizeOf } from "../../src/ops/caam-volume.js";
import { parseProvisionConfig } from "../../src/provision/config.js";
import { provision } from "../../src/ops/provision.js";
import { TrustvolError } from "../../src/util/errors.js";

const MiB = 1024 * 1024;

function image(dir: string, name = "data.img", size = 8 * MiB): string {
  const p = join(dir, name);
  writeFileSync(p, Buffer.alloc(size));
  return p;
}

test("create → descriptor 0600 with the blob; every boot's table names this boot's black key as a logon key", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-caamvol-");
  t.after(cleanup);
  const img = image(dir);
  const descriptor = join(dir, "data.caam");
  const kg = new CaamSimulator({ stateDir: join(dir, "soc"), bootId: "boot-1" });
  const d = await createCaamVolume({ descriptor, keygen: kg, keySize: 16 });
  assert.equal(statSync(descriptor).mode & 0o777, 0o600);
  assert.deepEqual({ ...d, blob: undefined }, { type: "trustvol-caam-volume", version: 1, cipher: CAAM_TK_CIPHER, key_size: 16, key_encryption: "ecb", sector_size: 4096, blob: undefined });
  assert.equal(Buffer.from(d.blob, "base64").length, 96, "the same 96-byte blob caam-keygen writes for -s 16");
  assert.equal(blackKeySizeOf(d), 36, "and the 36-byte black key of seed 001's table");
  const r = await openCaamVolume(img, "data", { descriptor, keygen: kg, dryRun: true });
  assert.equal(r.kind, "caam-volume");
  assert.match(r.table, /^0 16384 crypt capi:tk\(cbc\(aes\)\)-plain :36:logon:trustvol-caam:data 0 \S+ 0 1 sector_size:4096$/);
  // A second create must not replace the blob: the volume's data would be lost with it.
  const before = readFileSync(descriptor);
  await assert.rejects(createCaamVolume({ descriptor, keygen: kg }), (e: unknown) => e instanceof TrustvolError && e.code === "EBUSY");
  assert.deepEqual(readFileSync(descriptor), before);
  // The blob opens in a later boot of the same SoC and in no other SoC.
  const boot2 = new CaamSimulator({ stateDir: join(dir, "soc"), bootId: "boot-2" });
  const { blob } = readCaamVolumeDescriptor(descriptor);
  assert.equal((await boot2.import(blob)).length, 36);
  const other = new CaamSimulator({ stateDir: join(dir, "other-soc"), bootId: "boot-1" });
  await assert.rejects(other.import(blob), (e: unknown) => e instanceof TrustvolError && e.code === "ENOKEY");
});

test("a hostile or damaged descriptor: one line, nothing opened", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-caamvol-");
  t.after(cleanup);
  const good = join(dir, "good.caam");
  await createCaamVolume({ descriptor: good, keygen: new CaamSimulator({ stateDir: join(dir, "soc") }), keySize: 32, encryption: "ccm" });
  const base = JSON.parse(readFileSync(good, "utf8"));
  const cases: [string, unknown, RegExp][] = [
    ["cipher", { ...base, cipher: "aes-cbc-plain" }, /cipher must be capi:tk\(cbc\(aes\)\)-plain/],
    ["key_size", { ...base, key_size: 64 }, /key_size 64 is not an AES key size/],
    ["key_size vs blob", { ...base, key_size: 16 }, /does not match key_size 16/],
    ["encryption vs blob", { ...base, key_encryption: "ecb" }, /does not match key_size 32 \/ key_encryption ecb/],
    ["sector_size", { ...base, sector_size: 8192 }, /sector_size 8192 is not/],
    ["extra field", { ...base, module: "/tmp/evil.so" }, /unknown field "module"/],
    ["blob", { ...base, blob: "not base64!" }, /blob is not base64/],
    ["truncated blob", { ...base, blob: Buffer.from(base.blob, "base64").subarray(0, 60).toString("base64") }, /length .* does not match its tag|is too short/],
    ["type", { ...base, type: "trustvol-trusted-volume" }, /is not a trustvol CAAM volume descriptor/],
  ];
  for (const [what, json, re] of cases) {
    const p = join(dir, `${what}.caam`);
    writeFileSync(p, JSON.stringify(json));
    assert.throws(() => readCaamVolumeDescriptor(p), (e: unknown) => e instanceof TrustvolError && re.test(e.message) && !e.oneLine().includes("\n"), what);
  }
  writeFileSync(join(dir, "bad.json.caam"), "{");
  assert.throws(() => readCaamVolumeDescriptor(join(dir, "bad.json.caam")), /is not valid JSON/);
  // Through the CLI: the descriptor is checked before any CAAM is looked for.
  const img = image(dir);
  const p = join(dir, "cipher.caam");
  const r = trustvol(["open", img, "data", "--blob", p]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /^trustvol: .*cipher must be capi:tk\(cbc\(aes\)\)-plain/);
  assert.equal(r.stderr.trim().split("\n").length, 1);
});

test("provision: a caam volume is created empty by the system stage, reopened from its blob at later boots", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-caamvol-");
  t.after(cleanup);
  const img = image(dir);
  const descriptor = join(dir, "etc", "data.caam");
  const cfg = parseProvisionConfig({ volumes: [{ name: "data", device: img, trust: { type: "caam", descriptor, key_size: 16 } }] });
  assert.deepEqual(cfg.volumes[0]!.trust, { type: "caam", descriptor, key_size: 16, key_encryption: "ecb", sector_size: 4096, keygen_device: "/dev/caam-keygen" });
  let kg: CaamKeygen = new CaamSimulator({ stateDir: join(dir, "soc"), bootId: "boot-1" });
  const { mkdirSync } = await import("node:fs");
  mkdirSync(join(dir, "etc"));
  // The initramfs stage writes nothing (its /etc is a RAM copy).
  let r = await provision({ config: cfg, stage: "initramfs", doctor: false, open: false, caamKeygen: kg });
  assert.deepEqual(r.volumes[0]!.steps, []);
  assert.equal(existsSync(descriptor), false);
  // A partition that holds a file system is refused, unchanged.
  const withFs = image(dir, "fs.img");
  const fsCfg = parseProvisionConfig({ volumes: [{ name: "data", device: withFs, trust: { type: "caam", descriptor: join(dir, "etc", "fs.caam") } }] });
  const sb = Buffer.alloc(2); sb.writeUInt16LE(0xef53);
  const { openSync, writeSync, closeSync } = await import("node:fs");
  const fd = openSync(withFs, "r+"); writeSync(fd, sb, 0, 2, 1024 + 0x38); closeSync(fd);
  const fsBefore = readFileSync(withFs);
  await assert.rejects(provision({ config: fsCfg, stage: "system", doctor: false, open: false, caamKeygen: kg }), (e: unknown) => e instanceof TrustvolError && e.code === "EBUSY" && /holds data/.test(e.message));
  assert.deepEqual(readFileSync(withFs), fsBefore);
  assert.equal(existsSync(join(dir, "etc", "fs.caam")), false);
  // System stage: a new black key, its blob in the descriptor.
  r = await provision({ config: cfg, stage: "system", doctor: false, open: false, caamKeygen: kg });
  assert.deepEqual(r.volumes[0]!.steps, ["create-trusted-key"]);
  const blob = readFileSync(descriptor);
  // Next boot (new black key from the same blob): nothing created again, the descriptor is kept as it is.
  kg = new CaamSimulator({ stateDir: join(dir, "soc"), bootId: "boot-2" });
  const copy = join(dir, "data.copy");
  copyFileSync(descriptor, copy);
  r = await provision({ config: cfg, stage: "system", doctor: false, open: false, caamKeygen: kg });
  assert.deepEqual(r.volumes[0]!.steps, []);
  assert.deepEqual(readFileSync(descriptor), blob);
  // A keygen that fails (no CAAM) leaves no descriptor behind.
  const failing: CaamKeygen = { kind: "device", description: "broken", create: async () => { throw new TrustvolError("EDEVICE", "CAAM job ring error"); }, import: async () => { throw new Error("unused"); }, close: async () => {} };
  const img2 = image(dir, "data2.img");
  const cfg2 = parseProvisionConfig({ volumes: [{ name: "data2", device: img2, trust: { type: "caam", descriptor: join(dir, "etc", "data2.caam") } }] });
  await assert.rejects(provision({ config: cfg2, stage: "system", doctor: false, open: false, caamKeygen: failing }), /CAAM job ring error/);
  assert.equal(existsSync(join(dir, "etc", "data2.caam")), false);
});

test("config: caam fields are checked with one-line errors", () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ type: "caam", key_size: 64 }, /volumes\[0\]\.trust\.key_size: expected one of 16, 24, 32/],
    [{ type: "caam", key_encryption: "gcm" }, /volumes\[0\]\.trust\.key_encryption: expected one of "ecb", "ccm"/],
    [{ type: "caam", keygen_device: "caam" }, /volumes\[0\]\.trust\.keygen_device: expected an absolute path/],
    [{ type: "caam", module: "/x.so" }, /volumes\[0\]\.trust\.module: unknown field/],
  ];
  for (const [trust, re] of bad) assert.throws(() => parseProvisionConfig({ volumes: [{ name: "d", device: "/d", trust }] }), re);
});
