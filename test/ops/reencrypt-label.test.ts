// reencrypt --encrypt: --label, --subsystem, --uuid (cryptsetup's options) and --label-from-fs (the plain file
// system's label on the LUKS2 header, as LmP does with `cryptsetup config --label otaroot` after its encryption),
// judged by blkid and cryptsetup luksDump on the result. The file system's UUID stays inside (the mapped device).
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync, closeSync, openSync, ftruncateSync, statSync } from "node:fs";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { tmpDir, needTools, run } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { LuksHandle } from "../../src/ops/volume.js";
import { probeFilesystem, FS_PROBE_BYTES } from "../../src/fs/probe.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { reencrypt } from "../../src/ops/reencrypt.js";
import { PASS, PBKDF, plaintextOf } from "./reencrypt-fixture.js";

const FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
const sha = (p: string) => createHash("sha256").update(readFileSync(p)).digest("hex");
const grow = (p: string, by: number) => {
  const fd = openSync(p, "r+");
  ftruncateSync(fd, statSync(p).size + by);
  closeSync(fd);
};
function blkid(path: string): Record<string, string> {
  const r = run("blkid", ["-p", "-o", "export", path], { check: false });
  return Object.fromEntries(r.stdout.toString().split("\n").filter((l) => l.includes("=")).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
}
async function innerFs(img: string, pw: string, header?: string) {
  const h = await LuksHandle.open(img, { header, readOnly: true });
  try {
    const { volumeKey } = await h.unlock(readFileSync(pw));
    const d = h.decrypted(volumeKey, { readOnly: true });
    const head = Buffer.alloc(FS_PROBE_BYTES);
    await d.read(head, 0);
    return probeFilesystem(head);
  } finally {
    await h.close();
  }
}

test("--encrypt --label-from-fs (in place, data shift): LABEL= finds the LUKS2 partition; the fs UUID stays inside", async (t) => {
  if (!needTools(t, "cryptsetup", "blkid", "mkfs.ext4")) return;
  const { dir, cleanup } = tmpDir("trustvol-label-");
  t.after(cleanup);
  const img = join(dir, "img"), pw = join(dir, "pw");
  writeFileSync(pw, "pw", { mode: 0o600 });
  run("truncate", ["-s", "32M", img]);
  run("mkfs.ext4", ["-q", "-F", "-L", "otaroot", img]);
  const fsUuid = blkid(img).UUID!;
  grow(img, 4 << 20);
  const r = await trustvolInProcess(["reencrypt", "--encrypt", "--reduce-device-size", "4M", "--label-from-fs", "--key-file", pw, ...FAST, img]);
  assert.equal(r.status, 0, r.stderr);
  const b = blkid(img);
  assert.equal(b.TYPE, "crypto_LUKS");
  assert.equal(b.LABEL, "otaroot");
  assert.notEqual(b.UUID, fsUuid, "the LUKS2 UUID is a new one, not the file system's");
  assert.match(run("cryptsetup", ["luksDump", img]).stdout.toString(), /Label:\s+otaroot\n/);
  const inner = await innerFs(img, pw);
  assert.equal(inner?.type, "ext4");
  assert.equal(inner?.uuid, fsUuid, "the mapped device keeps the file system's UUID");
  assert.equal(inner?.label, "otaroot");
});

test("--encrypt --header with --label, --subsystem, --uuid: what cryptsetup luksDump and blkid show", async (t) => {
  if (!needTools(t, "cryptsetup", "blkid", "mkfs.vfat")) return;
  const { dir, cleanup } = tmpDir("trustvol-label-");
  t.after(cleanup);
  const img = join(dir, "img"), hdr = join(dir, "hdr"), pw = join(dir, "pw");
  writeFileSync(pw, "pw", { mode: 0o600 });
  run("truncate", ["-s", "8M", img]);
  run("mkfs.vfat", ["-n", "BOOT", img]);
  const uuid = "0b7c5f46-2c1e-4d8a-9d3e-5a6b7c8d9e0f";
  const r = await trustvolInProcess(["reencrypt", "--encrypt", "--header", hdr, "--label", "rootfs-b", "--subsystem", "trustvol-test", "--uuid", uuid, "--key-file", pw, ...FAST, img]);
  assert.equal(r.status, 0, r.stderr);
  const dump = run("cryptsetup", ["luksDump", hdr]).stdout.toString();
  assert.match(dump, /Label:\s+rootfs-b\n/);
  assert.match(dump, /Subsystem:\s+trustvol-test\n/);
  assert.match(dump, new RegExp(`UUID:\\s+${uuid}\\n`));
  const b = blkid(hdr);
  assert.deepEqual([b.TYPE, b.LABEL, b.UUID], ["crypto_LUKS", "rootfs-b", uuid]);
  assert.equal((await innerFs(img, pw, hdr))?.label, "BOOT");
});

test("--label-from-fs without a label, with --label, or outside --encrypt: one-line error, file unchanged", async (t) => {
  if (!needTools(t, "mkfs.ext4", "cryptsetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-label-");
  t.after(cleanup);
  const img = join(dir, "img"), pw = join(dir, "pw"), luks = join(dir, "luks");
  writeFileSync(pw, "pw", { mode: 0o600 });
  run("truncate", ["-s", "32M", img]);
  run("mkfs.ext4", ["-q", "-F", img]);
  grow(img, 4 << 20);
  run("truncate", ["-s", "20M", luks]);
  run("cryptsetup", ["luksFormat", "--type", "luks2", "-q", ...FAST, "--key-file", pw, luks]);
  for (const [args, file, re] of [
    [["reencrypt", "--encrypt", "--reduce-device-size", "4M", "--label-from-fs", "--key-file", pw, ...FAST, img], img, /ext4 file system without a label.*--label LABEL/],
    [["reencrypt", "--encrypt", "--reduce-device-size", "4M", "--label-from-fs", "--label", "x", "--key-file", pw, ...FAST, img], img, /exclude each other/],
    [["reencrypt", "--label", "x", "--key-file", pw, ...FAST, luks], luks, /are for --encrypt/],
  ] as [string[], string, RegExp][]) {
    const before = sha(file);
    const r = await trustvolInProcess(args);
    assert.notEqual(r.status, 0);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, re);
    assert.equal(sha(file), before, `${args.join(" ")}: unchanged`);
  }
});

test("--label-from-fs after a cut behind the head-move mark (vfat: its label sits where the mark goes): read from the copy", async (t) => {
  if (!needTools(t, "mkfs.vfat")) return;
  const { dir, cleanup } = tmpDir("trustvol-label-");
  t.after(cleanup);
  const img = join(dir, "img");
  run("truncate", ["-s", "12M", img]);
  run("mkfs.vfat", ["-n", "BOOT", img]);
  grow(img, 4 << 20);
  const plain = readFileSync(img).subarray(0, 12 << 20);
  const opts = { mode: "encrypt" as const, passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: 4 << 20, labelFromFs: true };
  // cut as the keyslot material goes over the head (the head's first bytes are the mark, the label's among them), or
  // as the mark itself goes there, torn after 50 bytes: the label and the default sector size come from the copy
  for (const cut of ["keyslots", "torn mark"] as const) {
    const dev = new (class extends MemoryBlockDevice {
      override async write(buf: Uint8Array, off: number): Promise<void> {
        if (cut === "keyslots" && off === 32768) throw new Error("power cut");
        if (cut === "torn mark" && off === 0 && buf.length === 4096) {
          await super.write(buf.subarray(0, 50), 0);
          throw new Error("power cut");
        }
        return super.write(buf, off);
      }
    })(readFileSync(img));
    await assert.rejects(reencrypt(dev, opts), /power cut/);
    assert.notEqual(probeFilesystem(dev.data.subarray(0, FS_PROBE_BYTES))?.label, "BOOT", "the head no longer shows the label");
    const again = new MemoryBlockDevice(dev.data);
    await reencrypt(again, opts);
    const h = (await Luks2Volume.open(again)).header;
    assert.equal(h.label, "BOOT", cut);
    assert.ok((await plaintextOf(again)).subarray(0, plain.length).equals(plain), `${cut}: 0 bytes lost`);
  }
});
