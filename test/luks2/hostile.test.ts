// Hostile input: every damaged header gives one clear line, a non-zero exit, and leaves the file byte-identical.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { randomInt } from "node:crypto";
import { tmpDir } from "../helpers/tools.js";
import { trustvol, trustvolInProcess } from "../helpers/cli.js";
import { withJson } from "../helpers/luks-image.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { formatLuks2 } from "../../src/luks2/format.js";
import { readHeader } from "../../src/luks2/header.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { TrustvolError } from "../../src/util/errors.js";

const HDR = 16384;

async function baseImage(): Promise<Buffer> {
  const dev = new MemoryBlockDevice(20 * 1024 * 1024);
  await formatLuks2(dev, Buffer.from("pw"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 }, digestIterations: 1000 });
  return dev.data;
}

function jsonOf(img: Buffer): string {
  const j = img.subarray(4096, HDR);
  return j.subarray(0, j.indexOf(0)).toString();
}

function bothCopies(img: Buffer, field: number, len: number): Buffer {
  const out = Buffer.from(img);
  for (const off of [0, HDR]) for (let i = 0; i < len; i++) out[off + field + i] ^= 0x5a;
  return out;
}

test("damaged images: one-line error, non-zero exit, file unchanged", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const base = await baseImage();
  const pw = join(dir, "pw");
  writeFileSync(pw, "pw", { mode: 0o600 });
  const cases: { name: string; img: Buffer; re: RegExp; valid?: boolean }[] = [
    { name: "empty file", img: Buffer.alloc(0), re: /too small|truncated/ },
    { name: "truncated inside binary header", img: base.subarray(0, 1000), re: /too small|truncated/ },
    { name: "truncated inside JSON area", img: base.subarray(0, 9000), re: /truncated|past the end|no valid LUKS2 header/ },
    { name: "truncated inside keyslot area", img: base.subarray(0, 100_000), re: /too small .* need at least 16777216 bytes/ },
    { name: "truncated to 1 MiB (data offset 16 MiB)", img: base.subarray(0, 1 << 20), re: /too small .* need at least 16777216 bytes/ },
    { name: "not LUKS at all", img: Buffer.alloc(1 << 20, 0x41), re: /not a LUKS device/ },
    { name: "magic (both copies)", img: bothCopies(base, 0, 6), re: /not a LUKS|damaged|no valid/ },
    { name: "version (both copies)", img: bothCopies(base, 6, 2), re: /version|no valid/ },
    { name: "hdr_size (both copies)", img: bothCopies(base, 8, 8), re: /header size|no valid/ },
    { name: "seqid (both copies)", img: bothCopies(base, 16, 8), re: /checksum/ },
    { name: "label (both copies)", img: bothCopies(base, 24, 48), re: /label|checksum/ },
    { name: "checksum alg (both copies)", img: bothCopies(base, 72, 32), re: /checksum/ },
    { name: "salt (both copies)", img: bothCopies(base, 104, 64), re: /checksum/ },
    { name: "uuid (both copies)", img: bothCopies(base, 168, 40), re: /uuid|checksum/ },
    { name: "subsystem (both copies)", img: bothCopies(base, 208, 48), re: /subsystem|checksum/ },
    { name: "hdr_offset (both copies)", img: bothCopies(base, 256, 8), re: /offset|no valid/ },
    { name: "checksum (both copies)", img: bothCopies(base, 448, 32), re: /checksum mismatch/ },
    { name: "JSON byte flipped (both copies)", img: bothCopies(base, 4096 + 40, 1), re: /checksum mismatch/ },
    { name: "JSON not parseable", img: withJson(base, () => null, "{\"keyslots\":"), re: /does not parse/ },
    { name: "JSON not NUL-terminated", img: withJson(base, () => null, "x".repeat(20000)), re: /NUL-terminated/ },
    { name: "JSON missing segments", img: withJson(base, (j) => (delete j.segments, j)), re: /missing "segments"/ },
    { name: "JSON top level array", img: withJson(base, () => [1, 2]), re: /top level|does not start with "\{"/ },
    { name: "keyslot id not a number", img: withJson(base, (j) => ((j.keyslots["x1"] = j.keyslots["0"]), j)), re: /keyslot id "x1"/ },
    { name: "uint64 as number", img: withJson(base, (j) => ((j.segments["0"].offset = 16777216), j)), re: /segment 0.offset must be a decimal string/ },
    { name: "uint64 overflow", img: withJson(base, (j) => ((j.keyslots["0"].area.offset = "99999999999999999999999"), j)), re: /area.offset/ },
    { name: "negative offset", img: withJson(base, (j) => ((j.keyslots["0"].area.offset = "-4096"), j)), re: /area.offset must be a decimal string/ },
    { name: "keyslot area out of bounds", img: withJson(base, (j) => ((j.keyslots["0"].area.offset = "16777216"), j)), re: /outside the keyslots area/ },
    { name: "keyslot area inside the header", img: withJson(base, (j) => ((j.keyslots["0"].area.offset = "4096"), j)), re: /outside the keyslots area/ },
    { name: "overlapping keyslot areas", img: withJson(base, (j) => ((j.keyslots["1"] = structuredClone(j.keyslots["0"])), (j.keyslots["1"].area.offset = "36864"), j)), re: /areas overlap/ },
    { name: "area too small for key (cryptsetup loads it; only that keyslot is refused, tested below)", img: withJson(base, (j) => ((j.keyslots["0"].area.size = "4096"), j)), re: /smaller than/, valid: true },
    { name: "digest references missing keyslot", img: withJson(base, (j) => ((j.digests["0"].keyslots = ["0", "9"]), j)), re: /missing id 9/ },
    { name: "token references missing keyslot", img: withJson(base, (j) => ((j.tokens["0"] = { type: "x", keyslots: ["5"] }), j)), re: /token 0.keyslots references missing id 5/ },
    { name: "segment in metadata area", img: withJson(base, (j) => ((j.segments["0"].offset = "8192"), j)), re: /inside the metadata/ },
    { name: "bad sector size", img: withJson(base, (j) => ((j.segments["0"].sector_size = 3000), j)), re: /sector_size/ },
    { name: "json_size mismatch", img: withJson(base, (j) => ((j.config.json_size = "4096"), j)), re: /json_size/ },
    { name: "token nested 33 levels (json-c's limit is 32)", img: withJson(base, (j) => ((j.tokens["0"] = { type: "x", keyslots: [], deep: JSON.parse("[".repeat(30) + "]".repeat(30)) }), j)), re: /nested deeper than 32/ },
    { name: "JSON nested 5000 deep", img: withJson(base, () => null, `{"a":${"[".repeat(5000)}${"]".repeat(5000)}}`), re: /nested deeper than 32/ },
    { name: "bytes after the JSON's NUL", img: withJson(base, () => null, `${JSON.stringify(JSON.parse(jsonOf(base)))}\u0000x`), re: /non-zero byte after the JSON/ },
    { name: "JSON not starting with {", img: withJson(base, () => null, ` ${jsonOf(base)}`), re: /does not start with/ },
    { name: "keyslot not referenced by any digest", img: withJson(base, (j) => ((j.keyslots["1"] = { ...j.keyslots["0"], area: { ...j.keyslots["0"].area, offset: "290816" } }), j)), re: /keyslot 1 is not assigned to any digest/ },
    { name: "segment size 0", img: withJson(base, (j) => ((j.segments["0"].size = "0"), j)), re: /size is zero/ },
    { name: "online-reencrypt requirement without a reencrypt keyslot", img: withJson(base, (j) => ((j.config.requirements = { mandatory: ["online-reencrypt-v2"] }), j)), re: /without a reencrypt keyslot/ },
  ];
  for (const c of cases) {
    await t.test(c.name, async () => {
      const p = join(dir, "victim.img");
      writeFileSync(p, c.img);
      if (c.valid) {
        const r = await trustvolInProcess(["dump", p]);
        assert.equal(r.status, 0, r.stderr);
        return;
      }
      for (const args of [["dump", p], ["unlock", "--test", "--key-file", pw, p], ["key", "add", "--key-file", pw, "--new-key-file", pw, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", p]]) {
        const r = await trustvolInProcess(args);
        assert.notEqual(r.status, 0, `${args[0]}: expected failure\n${r.stdout}`);
        const lines = r.stderr.trim().split("\n");
        assert.equal(lines.length, 1, `one line, got: ${r.stderr}`);
        assert.match(lines[0]!, /^trustvol: /);
        assert.doesNotMatch(lines[0]!, /internal error/);
        assert.match(lines[0]!, c.re);
      }
      assert.ok(readFileSync(p).equals(c.img), "file unchanged");
    });
  }
});

test("a damaged primary is survived through the secondary; repair rewrites it; an unknown requirement blocks writes", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const base = await baseImage();
  const p = join(dir, "v.img");
  const broken = Buffer.from(base);
  broken.fill(0, 0, 4096);
  writeFileSync(p, broken);
  writeFileSync(join(dir, "pw"), "pw", { mode: 0o600 });
  assert.equal(trustvol(["unlock", "--test", "--key-file", join(dir, "pw"), p]).status, 0);
  assert.ok(readFileSync(p).equals(broken), "read-only commands do not write");
  const dump = JSON.parse(trustvol(["dump", "--json", p]).stdout);
  assert.equal(dump.header_copies.primary, false);
  assert.equal(dump.header_copies.needs_repair, true);
  const r = trustvol(["repair", p]);
  assert.equal(r.status, 0, r.stderr);
  const after = JSON.parse(trustvol(["dump", "--json", p]).stdout);
  assert.equal(after.header_copies.primary, true);
  assert.equal(after.header_copies.needs_repair, false);

  const req = withJson(base, (j) => ((j.config.requirements = { mandatory: ["future-feature"] }), j));
  writeFileSync(p, req);
  const r2 = trustvol(["key", "add", "--key-file", join(dir, "pw"), "--new-key-file", join(dir, "pw"), p]);
  assert.equal(r2.status, 6);
  assert.match(r2.stderr, /unsupported feature\(s\): future-feature/);
  assert.ok(readFileSync(p).equals(req));
});

test("mutation fuzz: thousands of corrupted headers never crash the parser", async () => {
  const base = await baseImage();
  const head = base.subarray(0, 2 * HDR + 300_000);
  let accepted = 0, rejected = 0;
  const N = Number(process.env.TRUSTVOL_FUZZ_N ?? 4000);
  for (let i = 0; i < N; i++) {
    let img: Buffer = Buffer.from(head);
    const mode = i % 4;
    if (mode === 0) for (let k = 0, n = randomInt(1, 8); k < n; k++) img[randomInt(0, 2 * HDR)] ^= 1 << randomInt(0, 8);
    else if (mode === 1) {
      // JSON-level mutation with valid checksums: replace a random character of the JSON text
      img = withJson(img, () => null, (() => {
        const t = img.subarray(4096, HDR);
        const s = t.subarray(0, t.indexOf(0)).toString();
        const pos = randomInt(0, s.length);
        const ch = '{}[]":,0123456789-ax '[randomInt(0, 21)]!;
        return s.slice(0, pos) + ch + s.slice(pos + (randomInt(0, 2) ? 1 : 0));
      })());
    } else if (mode === 2) img = img.subarray(0, randomInt(0, img.length));
    else {
      // structural: swap values between random JSON keys
      img = withJson(img, (j) => {
        const vals = [j.keyslots["0"].area.offset, "0", "18446744073709551615", 4000, -1, null, [], {}, "dynamic", 1e300, "AAAA"];
        const paths: ((x: any, v: any) => void)[] = [
          (x, v) => (x.keyslots["0"].area.size = v), (x, v) => (x.keyslots["0"].key_size = v), (x, v) => (x.segments["0"].size = v),
          (x, v) => (x.segments["0"].iv_tweak = v), (x, v) => (x.digests["0"].iterations = v), (x, v) => (x.config.keyslots_size = v),
          (x, v) => (x.keyslots["0"].af.stripes = v), (x, v) => (x.keyslots["0"].kdf.iterations = v), (x, v) => (x.digests["0"].segments = v),
        ];
        paths[randomInt(0, paths.length)]!(j, vals[randomInt(0, vals.length)]);
        return j;
      });
    }
    try {
      const dev = new MemoryBlockDevice(img, true);
      await readHeader(dev);
      const v = await Luks2Volume.open(dev);
      if (i % 50 === 0) await v.unlock(Buffer.from("pw")).then((r) => r.volumeKey.fill(0)).catch((e) => { if (!(e instanceof TrustvolError)) throw e; });
      accepted++;
    } catch (e) {
      if (!(e instanceof TrustvolError)) throw new Error(`mutation ${i} (mode ${mode}) crashed: ${(e as Error).stack}`);
      assert.ok(e.message.length < 300 && !e.message.includes("\n"), `one short line: ${e.message}`);
      rejected++;
    }
  }
  assert.equal(accepted + rejected, N);
  assert.ok(rejected > N / 4, `most mutations are rejected (${rejected}/${N})`);
});

/** A device that tears the primary-header write whose JSON contains `tearWhen` (half written, then "power lost"). */
class TearingDevice extends MemoryBlockDevice {
  tearWhen: string | undefined;
  override async write(buf: Uint8Array, offset: number): Promise<void> {
    if (offset === 0 && buf.length >= 4096 && this.tearWhen && Buffer.from(buf).includes(this.tearWhen)) {
      await super.write(buf.subarray(0, 2048), 0);
      throw new Error("power cut");
    }
    return super.write(buf, offset);
  }
}

test("two power cuts in a row never leave a volume that opens with no key", async () => {
  const dev = new TearingDevice(20 * 1024 * 1024);
  await formatLuks2(dev, Buffer.from("old"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 }, digestIterations: 1000 });
  const staleSecondary = Buffer.from(dev.data.subarray(HDR, 2 * HDR));
  let v = await Luks2Volume.open(dev);
  await v.changeKeyslot(0, Buffer.from("old"), Buffer.from("new"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 } });
  staleSecondary.copy(dev.data, HDR); // cut 1: after the primary, before the secondary of changeKeyslot's commit
  v = await Luks2Volume.open(dev);
  assert.equal(v.readStatus.needsRepair, true);
  const { volumeKey } = await v.unlock(Buffer.from("new"));
  dev.tearWhen = '"1":{"type":"luks2"'; // cut 2: tear the primary write of the commit that adds keyslot 1
  await assert.rejects(v.addKeyslot(volumeKey, Buffer.from("third"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 } }), /power cut/);
  const after = await Luks2Volume.open(new MemoryBlockDevice(dev.data));
  const r = await after.unlock(Buffer.from("new"));
  assert.ok(r.volumeKey.equals(volumeKey), "the volume still opens with the passphrase of the last completed change");
});

test("a stale secondary (power cut between the two header writes) is synced before the next change reuses space", async () => {
  const dev = new MemoryBlockDevice(20 * 1024 * 1024);
  await formatLuks2(dev, Buffer.from("old"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 }, digestIterations: 1000 });
  const snapshot = Buffer.from(dev.data.subarray(HDR, 2 * HDR)); // the secondary before the change
  let v = await Luks2Volume.open(dev);
  await v.changeKeyslot(0, Buffer.from("old"), Buffer.from("new"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 } });
  snapshot.copy(dev.data, HDR); // simulate: the cut hit after the primary, before the secondary was written
  v = await Luks2Volume.open(dev);
  assert.equal(v.readStatus.needsRepair, true);
  const { volumeKey } = await v.unlock(Buffer.from("new"));
  await v.addKeyslot(volumeKey, Buffer.from("third"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 } });
  // Tear the primary now: the secondary must be the synced one, not the stale copy from before the change.
  dev.data.fill(0, 0, 4096);
  const after = await Luks2Volume.open(dev);
  assert.equal(after.readStatus.primary.ok, false);
  for (const pw of ["new", "third"]) await after.unlock(Buffer.from(pw)).then((r) => r.volumeKey.fill(0));
});

test("header restore refuses to overwrite a device that is not this LUKS2 volume unless forced", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const base = await baseImage();
  writeFileSync(join(dir, "v.img"), base);
  assert.equal((await trustvolInProcess(["header", "backup", join(dir, "v.img"), "--file", join(dir, "b.bin")])).status, 0);
  const other = Buffer.alloc(20 * 1024 * 1024, 0x5a); // some file system, not LUKS
  writeFileSync(join(dir, "fs.img"), other);
  const r = await trustvolInProcess(["header", "restore", join(dir, "fs.img"), "--file", join(dir, "b.bin")]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /^trustvol: .*has no LUKS header; restoring would overwrite .*--force[^\n]*\n$/);
  assert.ok(readFileSync(join(dir, "fs.img")).equals(other), "untouched");
  // the same volume restores without --force; the restored copies win over the (newer) header on the device
  writeFileSync(join(dir, "pw"), "pw", { mode: 0o600 });
  const add = await trustvolInProcess(["key", "add", "--key-file", join(dir, "pw"), "--new-key-file", join(dir, "pw"), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", join(dir, "v.img")]);
  assert.equal(add.status, 0, add.stderr);
  const r2 = await trustvolInProcess(["header", "restore", join(dir, "v.img"), "--file", join(dir, "b.bin"), "--json"]);
  assert.equal(r2.status, 0, r2.stderr);
  const d = JSON.parse((await trustvolInProcess(["dump", "--json", join(dir, "v.img")])).stdout);
  assert.deepEqual(Object.keys(d.metadata.keyslots), ["0"]);
  assert.equal(d.header_copies.needs_repair, false);
});

test("image encrypt refuses --header naming the output or the input", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  writeFileSync(join(dir, "in.img"), Buffer.alloc(1 << 20));
  writeFileSync(join(dir, "pw"), "pw", { mode: 0o600 });
  const r = await trustvolInProcess(["image", "encrypt", "--key-file", join(dir, "pw"), "--header", join(dir, "out.img"), join(dir, "in.img"), join(dir, "out.img")]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--header must name a file other than the input and the output/);
});

/** Two pbkdf2 keyslots, both opened by "pw"; slot 0 gets damaged, slot 1 must keep working. */
async function twoSlotImage(): Promise<Buffer> {
  const dev = new MemoryBlockDevice(20 * 1024 * 1024);
  const fast = { pbkdf: { type: "pbkdf2" as const, forceIterations: 1000 } };
  const { volume, volumeKey } = await formatLuks2(dev, Buffer.from("pw"), { ...fast, digestIterations: 1000 });
  await volume.addKeyslot(volumeKey, Buffer.from("pw"), fast);
  volumeKey.fill(0);
  return dev.data;
}

test("one keyslot or token trustvol cannot use leaves the header readable and only that keyslot refused", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const base = await twoSlotImage();
  const pw = join(dir, "pw");
  writeFileSync(pw, "pw", { mode: 0o600 });
  const salt = "c2FsdHNhbHRzYWx0c2FsdA==";
  const cases: { name: string; edit: (j: any) => void; dump: RegExp; slot0: RegExp }[] = [
    { name: "unknown KDF", edit: (j) => (j.keyslots["0"].kdf.type = "scrypt"), dump: /PBKDF:\s+scrypt/, slot0: /KDF "scrypt" is not supported/ },
    { name: "unknown keyslot type", edit: (j) => (j.keyslots["0"].type = "luks3"), dump: /0: luks3/, slot0: /keyslot type "luks3" cannot be opened/ },
    { name: "unknown token type", edit: (j) => (j.tokens["0"] = { type: "vendor-thing", keyslots: ["0"] }), dump: /vendor-thing/, slot0: /^$/ },
    { name: "af.hash whirlpool", edit: (j) => (j.keyslots["0"].af.hash = "whirlpool"), dump: /AF hash:\s+whirlpool/, slot0: /hash "whirlpool" is not available.*legacy-provider/ },
    { name: "kdf.hash unknown", edit: (j) => (j.keyslots["0"].kdf.hash = "md6"), dump: /Hash:\s+md6/, slot0: /hash "md6" is not supported/ },
    { name: "pbkdf2 iterations 2^31", edit: (j) => (j.keyslots["0"].kdf.iterations = 2 ** 31), dump: /Iterations: 2147483648/, slot0: /iterations 2147483648 out of range/ },
    { name: "pbkdf2 iterations 2^32+1", edit: (j) => (j.keyslots["0"].kdf.iterations = 2 ** 32 + 1), dump: /Iterations: 4294967297/, slot0: /out of range/ },
    { name: "argon2 memory 1e12 KiB", edit: (j) => (j.keyslots["0"].kdf = { type: "argon2id", time: 4, memory: 1e12, cpus: 4, salt }), dump: /Memory:\s+1000000000000/, slot0: /argon2 memory .* out of range/ },
    { name: "argon2 time 2^32", edit: (j) => (j.keyslots["0"].kdf = { type: "argon2id", time: 2 ** 32, memory: 64, cpus: 1, salt }), dump: /Time cost:\s+4294967296/, slot0: /argon2 time .* out of range/ },
    { name: "argon2 cpus 2^24", edit: (j) => (j.keyslots["0"].kdf = { type: "argon2i", time: 1, memory: 64, cpus: 2 ** 24, salt }), dump: /Threads:\s+16777216/, slot0: /argon2 cpus .* out of range/ },
    { name: "argon2 memory below 8 × cpus", edit: (j) => (j.keyslots["0"].kdf = { type: "argon2id", time: 1, memory: 8, cpus: 4, salt }), dump: /Memory:\s+8/, slot0: /argon2 memory 8 KiB out of range/ },
  ];
  for (const c of cases) {
    await t.test(c.name, async () => {
      const img = withJson(base, (j) => (c.edit(j), j));
      const p = join(dir, "v.img");
      writeFileSync(p, img);
      const d = await trustvolInProcess(["dump", p]);
      assert.equal(d.status, 0, d.stderr);
      assert.match(d.stdout, c.dump);
      const u = await trustvolInProcess(["unlock", "--test", "--key-file", pw, p]);
      assert.equal(u.status, 0, u.stderr);
      const u0 = await trustvolInProcess(["unlock", "--test", "--key-slot", "0", "--key-file", pw, p]);
      if (c.name === "unknown token type") assert.equal(u0.status, 0, u0.stderr);
      else {
        assert.equal(u0.status, 6, u0.stderr);
        assert.match(u0.stderr, /^trustvol: [^\n]*\n$/);
        assert.match(u0.stderr, c.slot0);
      }
      assert.ok(readFileSync(p).equals(img), "read-only commands leave the file as it was");
    });
  }
});

test("token import: JSON nested deeper than the header may hold is one line, exit 2, file unchanged", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const img = await baseImage();
  const p = join(dir, "v.img");
  writeFileSync(p, img);
  for (const depth of [31, 100_000]) {
    writeFileSync(join(dir, "t.json"), `{"type":"x","keyslots":[],"d":${"[".repeat(depth)}${"]".repeat(depth)}}`);
    const r = await trustvolInProcess(["token", "import", p, "--json-file", join(dir, "t.json")]);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /^trustvol: token JSON is nested deeper than 30 levels[^\n]*\n$/);
  }
  writeFileSync(join(dir, "t.json"), `{"type":"x","keyslots":[],"d":${"[".repeat(28)}${"]".repeat(28)}}`);
  const ok = await trustvolInProcess(["token", "import", p, "--json-file", join(dir, "t.json")]);
  assert.equal(ok.status, 0, ok.stderr);
  assert.ok(!readFileSync(p).equals(img));
});

test("segment sizes up to 2^64-1 are valid metadata (cryptsetup accepts them); the data path checks them against the device", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const base = await baseImage();
  writeFileSync(join(dir, "pw"), "pw", { mode: 0o600 });
  for (const size of ["9007199254740992", "18446744073709547520"]) {
    const img = withJson(base, (j) => ((j.segments["0"].size = size), j));
    const p = join(dir, "v.img");
    writeFileSync(p, img);
    const d = await trustvolInProcess(["dump", p]);
    assert.equal(d.status, 0, d.stderr);
    assert.match(d.stdout, new RegExp(`length: ${size} \\[bytes\\]`));
    assert.equal((await trustvolInProcess(["unlock", "--test", "--key-file", join(dir, "pw"), p])).status, 0);
    const x = await trustvolInProcess(["image", "decrypt", "--key-file", join(dir, "pw"), p, join(dir, "out.raw")]);
    assert.equal(x.status, 4, x.stderr);
    assert.match(x.stderr, /^trustvol: the data segment .* runs past the end of the device[^\n]*\n$/);
    assert.ok(readFileSync(p).equals(img));
  }
});

test("repair never grows a file: a truncated image with a damaged primary is refused, size and bytes unchanged", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const base = await baseImage();
  for (const size of [HDR + 4096, 2 * HDR + 1000, 1 << 20]) {
    const img = Buffer.from(base.subarray(0, size));
    img.fill(0, 0, 4096); // primary destroyed: repair would rewrite it from the secondary
    const p = join(dir, "r.img");
    writeFileSync(p, img);
    const r = await trustvolInProcess(["repair", p]);
    assert.notEqual(r.status, 0, r.stdout);
    assert.match(r.stderr, /^trustvol: [^\n]*(too small|truncated|past the end)[^\n]*\n$/);
    const after = readFileSync(p);
    assert.equal(after.length, size, "the file did not grow");
    assert.ok(after.equals(img), "nothing was written");
  }
});

test("header copies with the same seqid but different UUIDs: the primary wins (as cryptsetup), a write repairs the secondary", async () => {
  const { sealChecksum } = await import("../../src/luks2/binary-header.js");
  const img = await baseImage();
  const area = img.subarray(HDR, 2 * HDR);
  area.fill(0, 168, 208);
  area.write("12345678-1234-1234-1234-123456789abc", 168, "latin1");
  sealChecksum(area, "sha256");
  const before = Buffer.from(img);
  const dev = new MemoryBlockDevice(img);
  const v = await Luks2Volume.open(dev);
  assert.notEqual(v.uuid, "12345678-1234-1234-1234-123456789abc");
  const { volumeKey } = await v.unlock(Buffer.from("pw"));
  assert.ok(dev.data.equals(before), "reading and unlocking write nothing");
  await v.addKeyslot(volumeKey, Buffer.from("pw2"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 } });
  const r = await readHeader(dev);
  assert.equal(r.needsRepair, false);
  assert.equal(r.header.uuid, v.uuid);
});

test("a keyslot area too small for its key material: the header stays readable, only that keyslot is refused (as cryptsetup)", async () => {
  const dev0 = new MemoryBlockDevice(await baseImage());
  const v0 = await Luks2Volume.open(dev0);
  const { volumeKey } = await v0.unlock(Buffer.from("pw"));
  await v0.addKeyslot(volumeKey, Buffer.from("pw2"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 } });
  const img = withJson(dev0.data, (j) => {
    j.keyslots["1"].area.size = "16384";
    return j;
  });
  const v = await Luks2Volume.open(new MemoryBlockDevice(img));
  assert.equal((await v.unlock(Buffer.from("pw"))).keyslot, 0);
  await assert.rejects(v.unlock(Buffer.from("pw2"), { slot: 1 }), (e: TrustvolError) => e.code === "ECORRUPT" && /smaller than the 256000 bytes/.test(e.message) && !e.message.includes("\n"));
});

test("digest hash/digest fields are checked when used, a segment listed twice is accepted (cryptsetup loads all three)", async () => {
  const { dumpText } = await import("../../src/luks2/dump.js");
  const base = await baseImage();
  const cases: [string, (j: any) => any, boolean][] = [
    ["digest deleted", (j) => (delete j.digests["0"].digest, j), false],
    ["hash deleted", (j) => (delete j.digests["0"].hash, j), false],
    ["hash not a string", (j) => ((j.digests["0"].hash = 7), j), false],
    ["segment listed twice", (j) => ((j.digests["0"].segments = ["0", "0"]), j), true],
  ];
  for (const [name, edit, opens] of cases) {
    const v = await Luks2Volume.open(new MemoryBlockDevice(withJson(base, edit)));
    assert.match(dumpText(v), /Digests:/, name);
    if (opens) assert.equal((await v.unlock(Buffer.from("pw"))).keyslot, 0, name);
    else await assert.rejects(v.unlock(Buffer.from("pw")), (e: TrustvolError) => e.code === "EBADPASS", name);
  }
});
