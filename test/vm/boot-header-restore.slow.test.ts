// Boot tier, scenario 5 of issue 12: both LUKS2 header copies of a provisioned root zeroed. trustvol's initramfs
// script sees no signature on the device, restores the header from the backup on the plain boot partition, says so
// on the console, unlocks with the TPM and the system comes up.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { openSync, writeSync, closeSync } from "node:fs";
import { tmpDir } from "../helpers/tools.js";
import { needBootImage, bootGuest, hostProvisionedDisk, rootPartition } from "../helpers/boot.js";

let tmp: { dir: string; cleanup: () => void };
before(() => (tmp = tmpDir("trustvol-boot-hdr-")));
after(() => tmp?.cleanup());

test("both header copies zeroed: the boot restores the header from the backup, says so and comes up", { timeout: 1_800_000 }, async (t) => {
  const img = needBootImage(t);
  if (!img) return;
  const { disk, tpmState } = await hostProvisionedDisk(img, tmp.dir);
  const fd = openSync(disk, "r+");
  try {
    writeSync(fd, Buffer.alloc(32768), 0, 32768, rootPartition(disk).offset); // primary (0) and secondary (16 KiB)
  } finally {
    closeSync(fd);
  }
  const b = await bootGuest({ disk, img, tpmStateDir: tpmState });
  assert.match(b.console, /shows no LUKS header and no file system/);
  assert.match(b.console, /restoring it from the backup PARTLABEL=tvboot:\/trustvol\/root-header.img/);
  assert.match(b.console, /header restored from the backup/);
  assert.ok(b.completed, "the system came up after the restore");
  assert.ok(b.report.includes("TVTEST-ROOT /dev/mapper/root"), b.report.join("\n"));
  t.diagnostic(`boot with restore: ${b.ms} ms host, root unlocked at ${b.unlockedAt}s uptime`);
});
