// LUKS1 header validation: the checks of cryptsetup's LUKS_read_phdr / LUKS_check_keyslots, judged by cryptsetup too.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { tmpDir, needTools, run } from "../helpers/tools.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { parseLuks1Header, readLuks1Header } from "../../src/luks1/luks1.js";
import { TrustvolError } from "../../src/util/errors.js";

const ENABLED = 0x00ac71f3, DISABLED = 0x0000dead;

/** A LUKS1 header laid out as cryptsetup lays out aes-xts-plain64/sha256 with a 32-byte key: slots every 256 sectors from 8. */
function header(edit: (b: Buffer) => void = () => {}): Buffer {
  const b = Buffer.alloc(4096 * 513);
  Buffer.from("LUKS\xba\xbe", "latin1").copy(b, 0);
  b.writeUInt16BE(1, 6);
  b.write("aes", 8, "latin1");
  b.write("xts-plain64", 40, "latin1");
  b.write("sha256", 72, "latin1");
  b.writeUInt32BE(4096, 104); // payload offset (sectors)
  b.writeUInt32BE(32, 108);
  b.writeUInt32BE(1000, 164);
  b.write("3a7e1f64-0a50-4a46-9e0c-8b8f3e3e0c11", 168, "latin1");
  for (let i = 0; i < 8; i++) {
    const o = 208 + i * 48;
    b.writeUInt32BE(i === 0 ? ENABLED : DISABLED, o);
    b.writeUInt32BE(1000, o + 4);
    b.writeUInt32BE(8 + 256 * i, o + 40);
    b.writeUInt32BE(4000, o + 44);
  }
  edit(b);
  return b;
}
const slot = (i: number, f: number) => 208 + i * 48 + f;

const cases: { name: string; edit: (b: Buffer) => void; re?: RegExp }[] = [
  { name: "valid", edit: () => {} },
  { name: "disabled slot with 3999 stripes", edit: (b) => b.writeUInt32BE(3999, slot(3, 44)), re: /keyslot 3 has 3999 stripes/ },
  { name: "key material inside the header", edit: (b) => b.writeUInt32BE(1, slot(0, 40)), re: /keyslot 0 key material overlaps the header/ },
  { name: "key material beyond the payload", edit: (b) => b.writeUInt32BE(4096, slot(7, 40)), re: /keyslot 7 key material starts beyond the payload/ },
  { name: "key material running into the payload", edit: (b) => b.writeUInt32BE(4000, slot(7, 40)), re: /keyslot 7 key material overlaps the payload/ },
  { name: "two keyslots overlapping", edit: (b) => b.writeUInt32BE(8 + 256 + 100, slot(2, 40)), re: /key material overlaps keyslot/ },
  { name: "key bytes 64 (areas now overlap)", edit: (b) => b.writeUInt32BE(64, 108), re: /overlaps/ },
  { name: "unknown hash spec", edit: (b) => (b.fill(0, 72, 104), b.write("serpent", 72, "latin1")), re: /hash "serpent" is not supported/ },
  { name: "empty hash spec", edit: (b) => b.fill(0, 72, 104), re: /hash "" is not supported/ },
  { name: "any non-enabled state is a disabled slot", edit: (b) => b.writeUInt32BE(12345, slot(1, 0)) },
  { name: "a non-printable UUID is shown, not refused", edit: (b) => b.fill(0xff, 200, 204) },
  { name: "zero iterations in a disabled slot", edit: (b) => b.writeUInt32BE(0, slot(2, 4)) },
];

test("LUKS1 header checks (cryptsetup's LUKS_read_phdr / LUKS_check_keyslots)", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const haveCs = needTools(t, "cryptsetup");
  for (const c of cases) {
    await t.test(c.name, async () => {
      const img = header(c.edit);
      if (c.re) assert.throws(() => parseLuks1Header(img), (e: TrustvolError) => e.code === "ECORRUPT" && c.re!.test(e.message) && !e.message.includes("\n"));
      else parseLuks1Header(img);
      if (haveCs) {
        writeFileSync(join(dir, "h.img"), img);
        const r = run("cryptsetup", ["luksDump", join(dir, "h.img")], { check: false });
        assert.equal(r.status === 0, !c.re, `cryptsetup agrees: ${r.stderr}`);
      }
    });
  }
});

test("LUKS1: a device shorter than the end of its last keyslot is refused (cryptsetup: device too small)", async () => {
  const img = header();
  await assert.rejects(readLuks1Header(new MemoryBlockDevice(img.subarray(0, (8 + 256 * 7 + 250) * 512 - 1), true)), (e: TrustvolError) => e.code === "ETRUNCATED" && /too small/.test(e.message));
  await readLuks1Header(new MemoryBlockDevice(img.subarray(0, (8 + 256 * 7 + 250) * 512), true));
});
