// Label/subsystem/UUID bytes of the binary header, as cryptsetup 2.6.1 treats them (found by the differential test):
// any bytes up to the NUL are loaded (a UTF-8 label is ordinary, control bytes too); trustvol writes UTF-8 and its
// text dump never sends a header's control characters to the terminal.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { tmpDir, needTools, run } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { reseal } from "../helpers/luks-image.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { formatLuks2 } from "../../src/luks2/format.js";

const FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

test("a UTF-8 label written by cryptsetup is read as is; one trustvol writes reads back the same in cryptsetup", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-hdrstr-");
  t.after(cleanup);
  const img = join(dir, "img"), pw = join(dir, "pw");
  writeFileSync(pw, "pw", { mode: 0o600 });
  writeFileSync(img, Buffer.alloc(20 << 20));
  run("cryptsetup", ["luksFormat", "--type", "luks2", "-q", ...FAST, "--key-file", pw, img]);
  run("cryptsetup", ["config", "--label", "persist-ä", "--subsystem", "sübsys", img]);
  const v = await Luks2Volume.open(new MemoryBlockDevice(readFileSync(img)));
  assert.equal(v.header.label, "persist-ä");
  assert.equal(v.header.subsystem, "sübsys");
  const d = await trustvolInProcess(["dump", img]);
  assert.equal(d.status, 0, d.stderr);
  assert.match(d.stdout, /Label:\s+persist-ä\n/);

  const dev = new MemoryBlockDevice(0);
  await formatLuks2(dev, Buffer.from("pw"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 }, dataOffset: 1 << 20, label: "données", subsystem: "ü", digestIterations: 1000 });
  await dev.write(Buffer.alloc(1 << 20), 1 << 20);
  writeFileSync(img, dev.data);
  const cs = run("cryptsetup", ["luksDump", img]).stdout.toString();
  assert.match(cs, /Label:\s+données\n/);
  assert.match(cs, /Subsystem:\s+ü\n/);
  await assert.rejects(formatLuks2(new MemoryBlockDevice(0), Buffer.from("pw"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 }, label: "é".repeat(24) }), /label is too long \(max 47 bytes\)/);
});

test("control bytes in the label: loaded like cryptsetup, shown escaped by dump", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-hdrstr-");
  t.after(cleanup);
  const img = join(dir, "img"), pw = join(dir, "pw");
  writeFileSync(pw, "pw", { mode: 0o600 });
  writeFileSync(img, Buffer.alloc(20 << 20));
  run("cryptsetup", ["luksFormat", "--type", "luks2", "-q", ...FAST, "--key-file", pw, img]);
  const b = readFileSync(img);
  for (const off of [0, 16384]) {
    b.fill(0, off + 24, off + 72);
    Buffer.from([0x41, 0x1b, 0x5b, 0x32, 0x4a, 0xff]).copy(b, off + 24); // "A", ESC [2J (clear screen), a stray 0xff
  }
  reseal(b);
  writeFileSync(img, b);
  assert.equal(run("cryptsetup", ["luksDump", img], { check: false }).status, 0, "cryptsetup loads it");
  assert.equal(run("cryptsetup", ["open", "--test-passphrase", "--key-file", pw, img], { check: false }).status, 0, "and opens it");
  const d = await trustvolInProcess(["dump", img]);
  assert.equal(d.status, 0, d.stderr);
  assert.ok(!d.stdout.includes("\x1b"), "no escape byte reaches the terminal");
  assert.match(d.stdout, /Label:\s+A\\x1b\[2J\uFFFD\n/);
  const o = await trustvolInProcess(["unlock", "--test", "--key-file", pw, img]);
  assert.equal(o.status, 0, o.stderr);
});
