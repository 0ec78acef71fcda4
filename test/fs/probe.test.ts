// File-system probe against images made by the real mkfs tools, judged by `blkid -p -o export` (TYPE, BLOCK_SIZE);
// the sector-size rule; and `image encrypt` choosing (or refusing) a sector size from the file system it finds.
import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, existsSync, mkdirSync, openSync, readSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { probeFilesystem, chooseEncryptionSectorSize, FS_PROBE_BYTES } from "../../src/fs/probe.js";
import { encryptImage } from "../../src/ops/image.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { FileBlockDevice } from "../../src/blockdev/file.js";
import { TrustvolError } from "../../src/util/errors.js";

function head(path: string): Buffer {
  const fd = openSync(path, "r");
  const b = Buffer.alloc(FS_PROBE_BYTES);
  const n = readSync(fd, b, 0, b.length, 0);
  closeSync(fd);
  return b.subarray(0, n);
}

function blkid(path: string): { TYPE?: string; BLOCK_SIZE?: string; LABEL?: string; UUID?: string } {
  const r = run("blkid", ["-p", "-o", "export", path], { check: false });
  return Object.fromEntries(r.stdout.toString().split("\n").filter((l) => l.includes("=")).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
}

// [name, tool, args (image path appended, or {img}/{src} substituted), size]
const CASES: [string, string, string[], string][] = [
  ["ext4 default, small (1024-byte blocks)", "mkfs.ext4", ["-q", "-F"], "64M"],
  ["ext4 default, large (4096-byte blocks)", "mkfs.ext4", ["-q", "-F"], "600M"],
  ["ext4 2048-byte blocks", "mkfs.ext4", ["-q", "-F", "-b", "2048"], "64M"],
  ["ext4 with a label", "mkfs.ext4", ["-q", "-F", "-L", "rootfs-a"], "16M"],
  ["ext3", "mkfs.ext3", ["-q", "-F"], "16M"],
  ["ext2", "mkfs.ext2", ["-q", "-F"], "16M"],
  ["ext2 4096-byte blocks", "mkfs.ext2", ["-q", "-F", "-b", "4096"], "16M"],
  ["vfat FAT12", "mkfs.vfat", [], "4M"],
  ["vfat FAT16", "mkfs.vfat", [], "64M"],
  ["vfat FAT32", "mkfs.vfat", ["-F", "32"], "64M"],
  ["vfat FAT16 with a label", "mkfs.vfat", ["-n", "BOOT"], "64M"],
  ["vfat FAT32 with a label", "mkfs.vfat", ["-F", "32", "-n", "EFI SYS"], "64M"],
  ["vfat 2048-byte sectors", "mkfs.vfat", ["-S", "2048"], "64M"],
  ["vfat 4096-byte sectors", "mkfs.vfat", ["-S", "4096", "-F", "32"], "128M"],
  ["exfat", "mkfs.exfat", [], "64M"],
  ["xfs default", "mkfs.xfs", ["-q", "-f"], "300M"],
  ["xfs 4096-byte sectors", "mkfs.xfs", ["-q", "-f", "-s", "size=4096"], "300M"],
  ["xfs with a label", "mkfs.xfs", ["-q", "-f", "-L", "data"], "300M"],
  ["btrfs", "mkfs.btrfs", ["-q", "-f"], "128M"],
  ["btrfs with a label", "mkfs.btrfs", ["-q", "-f", "-L", "persist-ä x"], "128M"],
  ["f2fs", "mkfs.f2fs", ["-q", "-f"], "64M"],
  ["squashfs", "mksquashfs", ["{src}", "{img}", "-noappend", "-quiet"], ""],
  ["squashfs 4 KiB blocks", "mksquashfs", ["{src}", "{img}", "-noappend", "-quiet", "-b", "4096"], ""],
  ["erofs", "mkfs.erofs", ["{img}", "{src}"], ""],
];

test("probeFilesystem agrees with blkid -p on images made by the real mkfs tools", async (t) => {
  if (!needTools(t, "blkid")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const src = join(dir, "src");
  mkdirSync(src);
  writeFileSync(join(src, "hello.txt"), "hello\n");
  let n = 0;
  for (const [name, tool, args, size] of CASES) {
    await t.test(name, (tt) => {
      if (!needTools(tt, tool)) return;
      const img = join(dir, `${n++}.img`);
      if (size) run("truncate", ["-s", size, img]);
      const templated = args.some((a) => a.includes("{img}"));
      const argv = templated ? args.map((a) => a.replace("{img}", img).replace("{src}", src)) : [...args, img];
      run(tool, argv);
      const want = blkid(img);
      assert.ok(want.TYPE, `blkid recognises ${name}`);
      const got = probeFilesystem(head(img));
      assert.deepEqual({ type: got?.type, blockSize: got?.blockSize }, { type: want.TYPE, blockSize: want.BLOCK_SIZE ? Number(want.BLOCK_SIZE) : undefined }, name);
      // LABEL/UUID where the probe reads them (what reencrypt --encrypt --label-from-fs uses)
      if (/^(ext[234]|xfs|btrfs|vfat)$/.test(want.TYPE!)) {
        // -o export escapes spaces and non-ASCII; -o value prints the label as it is
        const label = run("blkid", ["-p", "-s", "LABEL", "-o", "value", img], { check: false }).stdout.toString().replace(/\n$/, "");
        assert.deepEqual({ label: got?.label, uuid: got?.uuid }, { label: label || undefined, uuid: want.UUID }, `${name}: label/uuid`);
      }
    });
  }
  // Nothing there: blkid finds nothing, neither do we.
  for (const [name, data] of [["zeros", Buffer.alloc(1 << 20)], ["random", randomBytes(1 << 20)], ["tiny", Buffer.from("x")]] as const) {
    const img = join(dir, `${name}.img`);
    writeFileSync(img, data);
    assert.equal(blkid(img).TYPE, undefined);
    assert.equal(probeFilesystem(head(img)), undefined, name);
  }
});

test("chooseEncryptionSectorSize: never above the file system's block size; explicit sizes checked", () => {
  const c = chooseEncryptionSectorSize;
  assert.equal(c({}), 4096);
  assert.equal(c({ fsBlockSize: 1024 }), 1024);
  assert.equal(c({ fsBlockSize: 2048 }), 2048);
  assert.equal(c({ fsBlockSize: 512 }), 512);
  assert.equal(c({ fsBlockSize: 65536 }), 4096);
  assert.equal(c({ fsBlockSize: 4096, requested: 512 }), 512);
  assert.equal(c({ requested: 2048 }), 2048);
  assert.equal(c({ fsBlockSize: 4096, deviceLogicalSize: 4096 }), 4096);
  assert.equal(c({ fsBlockSize: 2048, deviceLogicalSize: 512 }), 2048);
  const oneLine = (code: string, re: RegExp) => (e: unknown) => e instanceof TrustvolError && e.code === code && re.test(e.message) && !e.message.includes("\n");
  assert.throws(() => c({ fsBlockSize: 1024, fsType: "ext4", requested: 4096 }), oneLine("EUSAGE", /4096 is larger than the ext4 file system's block size \(1024\)/));
  assert.throws(() => c({ requested: 3000 }), oneLine("EUSAGE", /not one of/));
  assert.throws(() => c({ fsBlockSize: 4096, requested: 512, deviceLogicalSize: 4096 }), oneLine("EUSAGE", /smaller than the device's logical sector size/));
  assert.throws(() => c({ fsBlockSize: 1024, deviceLogicalSize: 4096 }), oneLine("EUNSUPPORTED", /smaller than the device's logical sector size/));
});

test("image encrypt: default mkfs.ext4 of a small image gets 1024-byte sectors; a larger --sector-size is refused", async (t) => {
  if (!needTools(t, "mkfs.ext4", "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const pass = Buffer.from("sector pass");
  const pw = join(dir, "pw");
  writeFileSync(pw, pass, { mode: 0o600 });
  const plain = join(dir, "root.ext4");
  run("truncate", ["-s", "32M", plain]);
  run("mkfs.ext4", ["-q", "-F", plain]);
  const pbkdf = { type: "pbkdf2" as const, forceIterations: 1000 };
  const out = join(dir, "root.luks");
  const r = await encryptImage(plain, out, pass, { pbkdf, digestIterations: 1000 });
  assert.equal(r.sectorSize, 1024);
  assert.deepEqual({ type: r.filesystem?.type, blockSize: r.filesystem?.blockSize }, { type: "ext4", blockSize: 1024 });
  assert.match(run("cryptsetup", ["luksDump", out]).stdout.toString(), /sector: 1024 \[bytes\]/);
  run("cryptsetup", ["open", "--test-passphrase", "--key-file", pw, out]);
  const dev = await FileBlockDevice.open(out, { readOnly: true });
  assert.equal((await Luks2Volume.open(dev)).dataArea().sectorSize, 1024);
  await dev.close();
  // Explicit sizes: at most the block size is accepted, more is refused before anything is created.
  const ok = await encryptImage(plain, join(dir, "512.luks"), pass, { pbkdf, digestIterations: 1000, sectorSize: 512 });
  assert.equal(ok.sectorSize, 512);
  const before = readdirSync(dir).sort();
  await assert.rejects(encryptImage(plain, join(dir, "bad.luks"), pass, { pbkdf, sectorSize: 4096 }), (e: TrustvolError) => e.code === "EUSAGE" && /block size \(1024\)/.test(e.message));
  const cli = await trustvolInProcess(["image", "encrypt", plain, join(dir, "bad.luks"), "--key-file", pw, "--sector-size", "2048", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--no-progress"]);
  assert.equal(cli.status, 2);
  assert.match(cli.stderr, /^trustvol: sector size 2048 is larger than the ext4 file system's block size \(1024\)/);
  assert.equal(cli.stderr.trim().split("\n").length, 1, cli.stderr);
  assert.deepEqual(readdirSync(dir).sort(), before, "nothing created");
  // No file system recognised: 4096 as before.
  const raw = join(dir, "raw.bin");
  writeFileSync(raw, randomBytes(1 << 20));
  assert.equal((await encryptImage(raw, join(dir, "raw.luks"), pass, { pbkdf, digestIterations: 1000 })).sectorSize, 4096);
  assert.ok(!existsSync(join(dir, "bad.luks.partial")));
});
