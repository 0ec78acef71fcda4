// The head move of `--encrypt --reduce-device-size` (src/ops/reencrypt-headmove.ts): each on-disk state a cut can
// leave before the first valid header copy, built byte by byte, then the same command again: 0 bytes lost. The states
// that used to be guessed from which bytes matched (a copy torn where the header goes, the rest written) are here.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, createHash } from "node:crypto";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { formatLuks2 } from "../../src/luks2/format.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { probeLuksVersion } from "../../src/luks2/header.js";
import { reencryptStatus } from "../../src/luks2/reencrypt-metadata.js";
import { reencrypt, repairReencryption } from "../../src/ops/reencrypt.js";
import { decodeHeadMark, decodeHeadMoveRecord, encodeHeadMark, encodeHeadMoveRecord, moveHead, readHeadMark, HEAD_MARK_SIZE, HEAD_MOVE_RECORD_SIZE } from "../../src/ops/reencrypt-headmove.js";
import { TrustvolError } from "../../src/util/errors.js";
import { PASS, PBKDF, SHIFT_REDUCE, plaintextOf, cutAndResume } from "./reencrypt-fixture.js";

const SHIFT = SHIFT_REDUCE / 2;
const HDR = 16384; // hdrSize of the default header
const TOUCHED_END = 32768 + 256000; // the keyslot area's start + aes-xts-plain64 512-bit key material (4000 stripes)
const opts = { mode: "encrypt" as const, passphrase: PASS, pbkdf: PBKDF, reduceDeviceSize: SHIFT_REDUCE };

function fixture(): { plain: Buffer; image: Buffer; devSize: number; recordAt: number } {
  const plain = randomBytes(3.5 * (1 << 20));
  // (not the mark's first byte: a stale or planted record over data beginning so is refused, not guessed)
  if (plain[0] === 0x74) plain[0] = 0;
  const image = Buffer.concat([plain, Buffer.alloc(SHIFT_REDUCE)]);
  const devSize = image.length - SHIFT;
  return { plain, image, devSize, recordAt: devSize - HEAD_MOVE_RECORD_SIZE };
}

/** The same command again on what the disk holds, repair/resume as after a crash; returns the plaintext. */
async function finish(dev: MemoryBlockDevice): Promise<Buffer> {
  if ((await probeLuksVersion(dev)) === null) await reencrypt(dev, opts);
  const st = reencryptStatus((await Luks2Volume.open(dev)).metadata);
  if (st === "crash") await repairReencryption(dev, { passphrase: PASS });
  if (st !== "none") await reencrypt(dev, { passphrase: PASS, resumeOnly: true });
  assert.equal(reencryptStatus((await Luks2Volume.open(dev)).metadata), "none");
  return plaintextOf(dev);
}

const moved = async (image: Buffer, devSize: number, recordAt: number, touchedEnd = TOUCHED_END) => {
  const dev = new MemoryBlockDevice(image);
  assert.equal(await moveHead(dev, { len: SHIFT, at: devSize, recordAt, touched: [HDR, touchedEnd] }), true);
  return dev;
};

/** A device whose first write at `offset` of at least `minLen` bytes lands only from byte `from` of it, then power goes. */
const cutAt = (image: Buffer, offset: number, from = 0, minLen = 0) =>
  new (class extends MemoryBlockDevice {
    hit = false;
    override async write(buf: Uint8Array, off: number): Promise<void> {
      if (off === offset && buf.length >= minLen && !this.hit) {
        this.hit = true;
        await super.write(buf.subarray(from), off + from);
        throw new Error("power cut");
      }
      return super.write(buf, off);
    }
  })(image);

/** A device whose mark write (the 4 KiB block at 0) lands only its first k bytes, then power goes. */
const tornMarkAt = (image: Buffer, k: number) =>
  new (class extends MemoryBlockDevice {
    override async write(buf: Uint8Array, off: number): Promise<void> {
      if (off === 0 && buf.length === 4096) {
        await super.write(buf.subarray(0, k), 0);
        throw new Error("power cut");
      }
      return super.write(buf, off);
    }
  })(image);

test("head-move record: round trip; any torn or changed byte of its first 112 is no record; inconsistent ranges neither", () => {
  const r = { len: SHIFT, at: 5 << 20, guardFrom: HDR, guardTo: TOUCHED_END, digest: randomBytes(32) };
  const b = encodeHeadMoveRecord(r);
  assert.equal(b.length, HEAD_MOVE_RECORD_SIZE);
  assert.deepEqual(decodeHeadMoveRecord(b), r);
  for (const i of [0, 15, 16, 31, 40, 47, 48, 79, 80, 111]) {
    const t = Buffer.from(b);
    t[i]! ^= 1;
    assert.equal(decodeHeadMoveRecord(t), null, `byte ${i}`);
  }
  const torn = Buffer.from(b);
  torn.fill(0, 64);
  assert.equal(decodeHeadMoveRecord(torn), null);
  assert.equal(decodeHeadMoveRecord(Buffer.alloc(HEAD_MOVE_RECORD_SIZE)), null);
  for (const bad of [{ guardFrom: 9, guardTo: 8 }, { guardTo: SHIFT + 1 }, { at: SHIFT - 1 }, { len: 0, guardFrom: 0, guardTo: 0 }, { guardFrom: 0 }])
    assert.equal(decodeHeadMoveRecord(encodeHeadMoveRecord({ ...r, ...bad })), null, JSON.stringify(bad));
  // fields past 2^53 (hostile): no record, not a number that slips through as -1
  const huge = encodeHeadMoveRecord(r);
  huge.writeBigUInt64BE(2n ** 64n - 1n, 32);
  huge.writeBigUInt64BE(2n ** 64n - 1n, 40);
  createHash("sha256").update(huge.subarray(0, 80)).digest().copy(huge, 80);
  assert.equal(decodeHeadMoveRecord(huge), null, "guards of 2^64-1");
  // the mark: the move's place and length only, the same bytes every time; any changed byte is no mark
  const mk = encodeHeadMark(SHIFT, 5 << 20);
  assert.deepEqual(decodeHeadMark(mk), { len: SHIFT, at: 5 << 20 });
  assert.ok(mk.equals(encodeHeadMark(SHIFT, 5 << 20)));
  for (const i of [0, 15, 16, 31, 50, 80, 111]) {
    const t = Buffer.from(mk);
    t[i]! ^= 1;
    assert.equal(decodeHeadMark(t), null, `mark byte ${i}`);
  }
});

test("copy torn where the header goes, the rest of it written, no record: copied again, 0 bytes lost", async () => {
  // The fused copy's slices have no order: the one holding [HDR, TOUCHED_END) can be the one a cut tears.
  const { plain, image, devSize } = fixture();
  plain.copy(image, devSize, 0, SHIFT);
  randomBytes(150000).copy(image, devSize + 20000);
  const got = await finish(new MemoryBlockDevice(image));
  assert.ok(got.subarray(0, plain.length).equals(plain));
});

test("copy and record made, keyslot material and secondary header over the head, no valid header: the copy is the source", async () => {
  const { plain, image, devSize, recordAt } = fixture();
  const dev = await moved(image, devSize, recordAt);
  randomBytes(TOUCHED_END - HDR).copy(dev.data, HDR); // what the header writes before its first valid copy
  const got = await finish(dev);
  assert.ok(got.subarray(0, plain.length).equals(plain));
});

test("a head changed since outside the header's bytes (a file system mounted in between): made whole from the copy, copied again", async () => {
  for (const overwritten of [false, true]) {
    const { plain, image, devSize, recordAt } = fixture();
    const dev = await moved(image, devSize, recordAt);
    if (overwritten) randomBytes(TOUCHED_END - HDR).copy(dev.data, HDR); // the keyslot material had landed too
    dev.data.write("mounted since", 1024); // its superblock moved on
    plain.write("mounted since", 1024);
    const got = await finish(dev);
    assert.ok(got.subarray(0, plain.length).equals(plain), `header bytes overwritten: ${overwritten}`);
  }
});

test("a mark whose record is gone or whose copy no longer matches it (or a previous format's mark): refused in one line, nothing written", async () => {
  for (const change of ["copy", "record", "v3 mark"] as const) {
    const { image, devSize, recordAt } = fixture();
    const dev = await moved(image, devSize, recordAt);
    if (change === "copy") dev.data[devSize + 200000]! ^= 1; // damaged since where its digest covers it
    if (change === "record") dev.data.fill(0, recordAt + 40, recordAt + 4096); // (records are never rewritten in place)
    if (change === "v3 mark") {
      // a session-14 build's mark (its record's first 112 bytes), whose record this version does not read
      const v3 = encodeHeadMoveRecord({ len: SHIFT, at: devSize, guardFrom: HDR, guardTo: TOUCHED_END, digest: randomBytes(32) });
      v3.write("trustvol-headmv3", 0, "latin1");
      createHash("sha256").update(v3.subarray(0, 80)).digest().copy(v3, 80);
      v3.copy(dev.data, 0, 0, HEAD_MARK_SIZE);
      v3.copy(dev.data, recordAt);
    }
    const before = Buffer.from(dev.data);
    await assert.rejects(reencrypt(dev, opts), (e: TrustvolError) => e.code === "ECORRUPT" && !e.message.includes("\n") && /restore/.test(e.hint ?? ""));
    assert.ok(dev.data.equals(before), `${change}: nothing written`);
  }
});

test("primary header torn elsewhere than its magic over a valid secondary: resumed as LUKS2, not moved again", async () => {
  // Sectors of one write need not land in order: [0, 512) can keep the file system's bytes while the rest is LUKS2.
  const { plain, image } = fixture();
  const dev = cutAt(image, 0, 512, HDR); // the primary header (the head-move mark at 0 is one 4 KiB block)
  await assert.rejects(reencrypt(dev, opts), /power cut/);
  assert.ok(dev.data.subarray(HEAD_MARK_SIZE, 512).equals(plain.subarray(HEAD_MARK_SIZE, 512)), "the magic did not land");
  assert.ok(await readHeadMark(dev), "the head-move mark is what [0, 512) holds");
  assert.equal(await probeLuksVersion(dev), null, "no LUKS magic at offset 0");
  const again = new MemoryBlockDevice(dev.data);
  for (const resume of [opts, { passphrase: PASS, resumeOnly: true }]) {
    const again = new MemoryBlockDevice(dev.data); // the same command, or --resume-only: resumed from the secondary
    await reencrypt(again, resume);
    assert.equal(reencryptStatus((await Luks2Volume.open(again)).metadata), "none");
    assert.ok((await plaintextOf(again)).subarray(0, plain.length).equals(plain));
  }
});

test("a plain device that kept an old LUKS2 secondary header (mkfs over LUKS, not in re-encryption) is encrypted as plain", async () => {
  const { image } = fixture();
  const old = new MemoryBlockDevice(1 << 20);
  await formatLuks2(old, PASS, { pbkdf: PBKDF, dataOffset: 1 << 20, digestIterations: 1000 });
  old.data.copy(image, HDR, HDR, 2 * HDR); // its secondary copy, valid, inside the file system's bytes
  image.fill(7, 0, 4096); // the new file system's first block over the primary
  const plain = Buffer.from(image.subarray(0, image.length - SHIFT_REDUCE));
  const got = await finish(new MemoryBlockDevice(image));
  assert.ok(got.subarray(0, plain.length).equals(plain));
});

test("an attempt with a smaller keyslot area cut after its keyslots, then one with the default: its wider keyslots are guarded too", async () => {
  // Attempt 1 (say --key-size 256) guarded [HDR, 100000) and overwrote it; attempt 2 trusts its copy, then writes
  // keyslot material up to TOUCHED_END and is cut before its secondary header lands: attempt 3 must still trust it.
  const { plain, image, devSize, recordAt } = fixture();
  const first = await moved(image, devSize, recordAt, 100000);
  randomBytes(100000 - HDR).copy(first.data, HDR);
  const dev = cutAt(first.data, HDR, HDR); // the secondary header write, none of it landed (keyslot material flushed)
  await assert.rejects(reencrypt(dev, opts), /power cut/);
  assert.equal(await probeLuksVersion(dev), null, "no header copy yet");
  const slot = (k: number) => decodeHeadMoveRecord(dev.data.subarray(recordAt - k * HEAD_MOVE_RECORD_SIZE, recordAt - (k - 1) * HEAD_MOVE_RECORD_SIZE));
  assert.equal(slot(0)?.guardTo, 100000, "the narrower record stays in its slot");
  assert.equal(slot(1)?.guardTo, TOUCHED_END, "widened, in the other slot");
  const got = await finish(new MemoryBlockDevice(dev.data));
  assert.ok(got.subarray(0, plain.length).equals(plain));
});

test("power cut at every write from the start through the header (torn, unsynced dropped/kept/random): 0 bytes lost", async () => {
  const { plain, image } = fixture();
  let n = 0;
  for (let cut = 1; cut <= 12; cut++)
    for (const pol of ["drop", "keep", "random"] as const) {
      await cutAndResume(image, plain, "datashift", cut, pol);
      n++;
    }
  assert.equal(n, 36);
});

test("cut after the head move, rerun with another --reduce-device-size: refused in one line naming the size, nothing written; the same size then loses 0 bytes", async () => {
  const { plain, image } = fixture();
  // the run is cut as it writes its keyslot material over the head (the first write past the mark's block)
  const dev = cutAt(image, 32768, 0, 1);
  await assert.rejects(reencrypt(dev, opts), /power cut/);
  const mark = await readHeadMark(dev);
  assert.ok(mark && mark.at === image.length - SHIFT, "the mark names the move");
  const before = Buffer.from(dev.data);
  const other = new MemoryBlockDevice(dev.data);
  await assert.rejects(reencrypt(other, { ...opts, reduceDeviceSize: 2 * SHIFT_REDUCE }), (e: TrustvolError) => {
    assert.equal(e.code, "EUSAGE");
    assert.ok(!e.message.includes("\n"));
    assert.match(e.message, new RegExp(`--reduce-device-size ${SHIFT_REDUCE >> 20}M\\b`));
    assert.match(e.hint ?? "", new RegExp(`--reduce-device-size ${SHIFT_REDUCE >> 20}M\\b`));
    return true;
  });
  assert.ok(other.data.equals(before), "nothing written");
  const got = await finish(new MemoryBlockDevice(before));
  assert.ok(got.subarray(0, plain.length).equals(plain));
});

test("cut after the head move, the image grown since: the refusal still names the size that run was started with", async () => {
  const { image } = fixture();
  const dev = cutAt(image, 32768, 0, 1);
  await assert.rejects(reencrypt(dev, opts), /power cut/);
  const grown = new MemoryBlockDevice(Buffer.concat([dev.data, Buffer.alloc(8 << 20)]));
  const before = Buffer.from(grown.data);
  await assert.rejects(reencrypt(grown, { ...opts, reduceDeviceSize: 2 * SHIFT_REDUCE }), (e: TrustvolError) => {
    assert.equal(e.code, "EUSAGE");
    assert.match(e.message, new RegExp(`--reduce-device-size ${SHIFT_REDUCE >> 20}M\\b`));
    return true;
  });
  assert.ok(grown.data.equals(before), "nothing written");
});

test("a mark whose copy lies past the device's end (shrunk since, or hostile): refused in one line naming the size, nothing written", async () => {
  const { image } = fixture();
  encodeHeadMark(SHIFT, image.length).copy(image, 0);
  const dev = new MemoryBlockDevice(image);
  const before = Buffer.from(image);
  await assert.rejects(reencrypt(dev, opts), (e: TrustvolError) => e.code === "EUSAGE" && /restore its size/.test(e.hint ?? ""));
  assert.ok(dev.data.equals(before), "nothing written");
});

// Found by review (session 15): each failed before.
test("cut after the keyslot material, image shrunk since (the copy's guarded part intact): refused, then restored and finished", async () => {
  const { plain, image } = fixture();
  const big = Buffer.concat([image, Buffer.alloc(1 << 20)]);
  const dev = cutAt(big, HDR, HDR);
  await assert.rejects(reencrypt(dev, opts), /power cut/);
  const shrunk = new MemoryBlockDevice(Buffer.from(dev.data.subarray(0, dev.data.length - (512 << 10))));
  const before = Buffer.from(shrunk.data);
  await assert.rejects(reencrypt(shrunk, opts), (e: TrustvolError) => e.code === "EUSAGE" && e.message.includes(`${dev.data.length} bytes`));
  assert.ok(shrunk.data.equals(before), "nothing written");
  const got = await finish(new MemoryBlockDevice(dev.data)); // its size back
  assert.ok(got.subarray(0, plain.length).equals(plain));
});

test("cut after the head move, image grown since, the same --reduce-device-size: refused naming the size it had", async () => {
  const { image } = fixture();
  const dev = cutAt(image, 32768, 0, 1);
  await assert.rejects(reencrypt(dev, opts), /power cut/);
  const grown = new MemoryBlockDevice(Buffer.concat([dev.data, Buffer.alloc(8 << 20)]));
  await assert.rejects(reencrypt(grown, opts), (e: TrustvolError) => e.code === "EUSAGE" && e.hint!.includes(`restore its size to ${image.length} bytes`));
});

test("a record in free space with no mark (stale, or planted: guarding everything) is not trusted over the head", async () => {
  for (const kind of ["planted", "stale"] as const) {
    const { plain, image, devSize, recordAt } = fixture();
    if (kind === "planted") {
      const evil = Buffer.alloc(SHIFT, 0x41);
      evil.copy(image, devSize);
      encodeHeadMoveRecord({ len: SHIFT, at: devSize, guardFrom: HDR, guardTo: SHIFT, digest: createHash("sha256").update(evil).digest() }).copy(image, recordAt);
    } else {
      const dev = cutAt(image, 32768, 0, 1); // an attempt cut at its keyslot write, then abandoned
      await assert.rejects(reencrypt(dev, opts), /power cut/);
      randomBytes(plain.length).copy(plain); // the data made anew over the whole area (the mark with it)
      if (plain[0] === 0x74) plain[0] = 0; // (as in fixture())
      plain.copy(image);
    }
    const got = await finish(new MemoryBlockDevice(image));
    assert.ok(got.subarray(0, plain.length).equals(plain), kind);
  }
});

test("a widening record write torn (byte tear): the narrower record in the other slot still guards what was overwritten", async () => {
  const { plain, image, devSize, recordAt } = fixture();
  const first = await moved(image, devSize, recordAt, 100000);
  randomBytes(100000 - HDR).copy(first.data, HDR); // attempt 1's keyslot material
  // attempt 2 (wider keyslots): its record write lands 60 bytes, then power goes
  const dev = new (class extends MemoryBlockDevice {
    override async write(buf: Uint8Array, off: number): Promise<void> {
      if (off === recordAt - HEAD_MOVE_RECORD_SIZE && buf.length === HEAD_MOVE_RECORD_SIZE && buf[0] !== 0) {
        await super.write(buf.subarray(0, 60), off);
        throw new Error("power cut");
      }
      return super.write(buf, off);
    }
  })(first.data);
  await assert.rejects(reencrypt(dev, opts), /power cut/);
  const got = await finish(new MemoryBlockDevice(dev.data));
  assert.ok(got.subarray(0, plain.length).equals(plain));
});

test("a mark torn in its magic, rerun with another --reduce-device-size, or with a detached --header: refused, nothing written", async () => {
  const { image } = fixture();
  const dev = tornMarkAt(image, 50);
  await assert.rejects(reencrypt(dev, opts), /power cut/);
  const before = Buffer.from(dev.data);
  const other = new MemoryBlockDevice(Buffer.from(before));
  await assert.rejects(reencrypt(other, { ...opts, reduceDeviceSize: 2 * SHIFT_REDUCE }), (e: TrustvolError) => e.code === "EUSAGE" && /torn mark/.test(e.message));
  assert.ok(other.data.equals(before), "nothing written");
  for (const dev2 of [new MemoryBlockDevice(Buffer.from(before)), await (async () => {
    const d = cutAt(Buffer.from(fixture().image), 32768, 0, 1); // a whole mark this time
    await assert.rejects(reencrypt(d, opts), /power cut/);
    return new MemoryBlockDevice(d.data);
  })()]) {
    const was = Buffer.from(dev2.data);
    await assert.rejects(reencrypt(dev2, { mode: "encrypt", passphrase: PASS, pbkdf: PBKDF, header: new MemoryBlockDevice(0) }), (e: TrustvolError) => e.code === "EUSAGE" && /--reduce-device-size/.test(e.message));
    assert.ok(dev2.data.equals(was), "nothing written (--header)");
  }
});

test("the mark's write torn inside its first bytes: the same command trusts the copy; with the head changed elsewhere too, refused until the hint's dd", async () => {
  for (const changed of [false, true]) {
    const { plain, image } = fixture();
    // the 4 KiB block at 0 (the mark) lands only its first 50 bytes: no mark, the head's first bytes garbled
    const dev = tornMarkAt(image, 50);
    await assert.rejects(reencrypt(dev, opts), /power cut/);
    assert.equal(await readHeadMark(dev), null);
    assert.ok(!dev.data.subarray(0, 50).equals(plain.subarray(0, 50)), "the head's first bytes are not the data's");
    if (changed) {
      // changed since (mounted): which of the first bytes are the data's cannot be told — refused, nothing written;
      // the hint's dd (the copy's first bytes back) lets the same command finish with 0 bytes lost
      dev.data.write("mounted since", 1024);
      dev.data.copy(plain, 1024, 1024, 2048);
      const before = Buffer.from(dev.data);
      let n = 0;
      await assert.rejects(reencrypt(new MemoryBlockDevice(dev.data), opts), (e: TrustvolError) => {
        assert.equal(e.code, "ECORRUPT");
        assert.match(e.hint ?? "", /dd if=/);
        n = Number(/first (\d+) bytes/.exec(e.message)![1]);
        return true;
      });
      assert.ok(dev.data.equals(before), "nothing written");
      const at = dev.data.length - SHIFT;
      dev.data.copy(dev.data, 0, at, at + n); // dd … bs=1 count=n skip=at conv=notrunc
    }
    const got = await finish(new MemoryBlockDevice(dev.data));
    assert.ok(got.subarray(0, plain.length).equals(plain), `head changed: ${changed}`);
  }
});

// Found by a third review (session 15): a torn mark over a head changed since (inside the header's range, or inside
// the first bytes), and a planted record over data that begins with the mark's first byte, each lost data silently.
test("a torn mark over a head changed since, or a planted record over data beginning like the mark: refused, nothing written", async () => {
  for (const [k, at] of [[5, 20000], [60, 100000], [5, 80], [60, 80]] as const) {
    const { image } = fixture();
    const dev = tornMarkAt(image, k);
    await assert.rejects(reencrypt(dev, opts), /power cut/);
    dev.data.write("written since", at); // a file system mounted in between
    const before = Buffer.from(dev.data);
    await assert.rejects(reencrypt(new MemoryBlockDevice(dev.data), opts), (e: TrustvolError) => e.code === "ECORRUPT" && /first \d+ bytes look like a torn mark/.test(e.message)); // (k, or more where the data's next byte is the mark's)
    assert.ok(dev.data.equals(before), `torn after ${k}, changed at ${at}: nothing written`);
  }
  const { plain, image, devSize, recordAt } = fixture();
  image[0] = plain[0] = 0x74; // the mark's first byte
  const copy = Buffer.from(plain.subarray(0, SHIFT));
  copy[0] = 0;
  Buffer.alloc(1000, 0x41).copy(copy, 20000); // planted bytes where a header would go
  copy.copy(image, devSize);
  const digest = createHash("sha256").update(copy.subarray(0, HEAD_MARK_SIZE)).update(copy.subarray(HDR, TOUCHED_END)).digest();
  encodeHeadMoveRecord({ len: SHIFT, at: devSize, guardFrom: HDR, guardTo: TOUCHED_END, digest }).copy(image, recordAt);
  const before = Buffer.from(image);
  await assert.rejects(reencrypt(new MemoryBlockDevice(image), opts), (e: TrustvolError) => e.code === "ECORRUPT");
  assert.ok(image.equals(before), "planted: nothing written");
});
