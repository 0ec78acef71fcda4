// Power cuts inside the fused native copy (the data shift of `--encrypt --reduce-device-size` on a file: the head move
// and every hotzone), which writes to the file's descriptor directly and so is out of PowerCutDevice's reach. The
// addon's test hook cuts at its N-th slice write — that slice torn (half written), no later write of any run — for
// every N of a whole run; then the run is resumed from what the file holds, as after a reboot (the same command again
// when no header was written yet, cryptsetup-style `repair` for every other crashed state, `--resume-only`), and the
// whole plaintext must be byte-identical: 0 bytes lost. The page cache keeps what was written before the cut; the
// dropped-write policies of a real power cut are swept on the same loop by reencrypt-powercut-sweep.slow.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { FileBlockDevice } from "../../src/blockdev/file.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { probeLuksVersion } from "../../src/luks2/header.js";
import { reencryptStatus } from "../../src/luks2/reencrypt-metadata.js";
import { reencrypt, repairReencryption } from "../../src/ops/reencrypt.js";
import { loadNative } from "../../src/dmcrypt/native.js";
import { PASS, PBKDF, SHIFT_REDUCE, plaintextOf } from "./reencrypt-fixture.js";

const hook = loadNative()?.recryptCopyCutAfter;

for (const directIo of [false, true]) {
  test(`power cut at every slice write of the fused data-shift copy (torn${directIo ? ", O_DIRECT as on a block device" : ""}): each resumes with 0 bytes lost`, { skip: !hook && "native addon without the fused copy's test hook" }, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "trustvol-fusedcut-"));
    let directCopies = 0;
    const open = async (p: string) => {
      const d = await FileBlockDevice.open(p, { directIo });
      const orig = d.directFdFor.bind(d);
      d.directFdFor = async (o, l) => {
        const fd = await orig(o, l);
        if (fd !== null) directCopies++;
        return fd;
      };
      return d;
    };
    const plain = randomBytes((6 << 20) + (512 << 10)); // a 1 MiB shift: the head move, 6 whole hotzones and a partial one
    const image = Buffer.concat([plain, Buffer.alloc(SHIFT_REDUCE)]);
    const path = join(dir, "img");
    const opts = { mode: "encrypt" as const, passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: SHIFT_REDUCE };
    let cuts = 0, restarted = 0, resumed = 0;
    try {
      for (let n = 0; ; n++) {
        writeFileSync(path, image);
        let cut = false;
        let dev = await open(path);
        try {
          hook!(n);
          await reencrypt(dev, opts).catch((e: Error) => {
            assert.match(e.message, /test power cut/, `cut ${n}: only the cut stops the run`);
            cut = true;
          });
        } finally {
          hook!(-1);
          await dev.close();
        }
        if (!cut) break; // n is past the last slice write of the run
        cuts++;
        dev = await open(path);
        try {
          if ((await probeLuksVersion(dev)) === null) {
            restarted++; // cut in the head move, before the first header copy: the same command again
            await reencrypt(dev, opts);
          }
          const st = reencryptStatus((await Luks2Volume.open(dev)).metadata);
          if (st === "crash" && n % 2) await repairReencryption(dev, { passphrase: PASS });
          if (st !== "none") {
            resumed++;
            await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
          }
          assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "none");
          const got = (await plaintextOf(dev)).subarray(0, plain.length);
          assert.ok(got.equals(plain), `cut at slice write ${n}: plaintext intact`);
        } finally {
          await dev.close();
        }
      }
      t.diagnostic(`survived ${cuts}/${cuts} cuts in the fused copy (torn slice, later writes lost): restarted ${restarted}, resumed ${resumed}; 0 bytes lost`);
      assert.ok(cuts >= 28, `a cut at every slice write: 4 of the head move and 4 per hotzone (${cuts})`);
      if (!directIo) assert.equal(directCopies, 0, "an image file's copies go through the page cache");
      else if (directCopies === 0) t.diagnostic(`${tmpdir()} refuses O_DIRECT: the copies went buffered`);
    } finally {
      hook!(-1);
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
