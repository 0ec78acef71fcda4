// dm-verity FEC: Reed-Solomon codewords are multiples of the generator (zero at α^0 … α^(roots-1)), and
// `trustvol verity format --fec-device` writes the same parity bytes and prints the same text as veritysetup 2.6.1.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, copyFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, tmpDir, run } from "../helpers/tools.js";
import { trustvolInProcess as tv } from "../helpers/cli.js";
import { writeImage, sha, detBytes } from "./util.js";
import { rsEncode } from "../../src/verity/fec.js";

const UUID = "0b6c4c1e-7f0a-4d2b-9e3c-5a6b7c8d9e0f";
const SALT = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

// Independent GF(2^8)/0x11d arithmetic for the check (Horner evaluation of the codeword at the generator's roots).
function gfMulSlow(a: number, b: number): number {
  let r = 0;
  while (b) {
    if (b & 1) r ^= a;
    a <<= 1;
    if (a & 0x100) a ^= 0x11d;
    b >>= 1;
  }
  return r;
}

test("RS(255, 255-roots): every codeword (message ‖ parity) vanishes at α^0 … α^(roots-1)", () => {
  for (const roots of [2, 3, 8, 24]) {
    for (const seed of ["a", "b", "zeros"]) {
      const msg = seed === "zeros" ? new Uint8Array(255 - roots) : detBytes(255 - roots, `rs-${roots}-${seed}`);
      const cw = [...msg, ...rsEncode(msg, roots)];
      assert.equal(cw.length, 255);
      let alpha = 1;
      for (let i = 0; i < roots; i++) {
        let acc = 0;
        for (const c of cw) acc = gfMulSlow(acc, alpha) ^ c;
        assert.equal(acc, 0, `roots=${roots} seed=${seed}: codeword(α^${i}) = ${acc}`);
        alpha = gfMulSlow(alpha, 2);
      }
    }
  }
  assert.deepEqual([...rsEncode(new Uint8Array(253), 2)], [0, 0]);
});

test("CLI verity format --fec-device: parity bytes and output identical to veritysetup format --fec-device", async (t) => {
  if (!needTools(t, "veritysetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-verity-fec-");
  t.after(cleanup);
  const cases: { size: number; args: string[] }[] = [
    { size: 256 * 4096, args: [] },
    { size: 700 * 4096 + 10, args: ["--fec-roots", "5"] },
    { size: 300 * 1024, args: ["--fec-roots", "24", "--data-block-size", "1024", "--hash-block-size", "1024", "--hash", "sha1"] },
    { size: 90 * 4096, args: ["--fec-roots", "3", "--fec-offset", "8192"] },
  ];
  for (const [n, c] of cases.entries()) {
    const data = join(dir, `d${n}.img`);
    writeImage(data, c.size, `fec-${n}`);
    const ourFec = join(dir, `our${n}.fec`);
    const vsFec = join(dir, `vs${n}.fec`);
    if (c.args.includes("--fec-offset")) {
      const junk = detBytes(8192, "fec-prefix");
      writeFileSync(ourFec, junk);
      writeFileSync(vsFec, junk);
    }
    const vs = run("veritysetup", ["format", data, join(dir, `vs${n}.hash`), `--salt=${SALT}`, `--uuid=${UUID}`, `--fec-device=${vsFec}`, ...c.args]).stdout.toString();
    const r = await tv(["verity", "format", data, join(dir, `our${n}.hash`), "--salt", SALT, "--uuid", UUID, "--fec-device", ourFec, ...c.args]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.replace(join(dir, `our${n}.hash`), join(dir, `vs${n}.hash`)), vs, `output, case ${n} ${c.args.join(" ")}`);
    assert.equal(sha(join(dir, `our${n}.hash`)), sha(join(dir, `vs${n}.hash`)), `hash device, case ${n}`);
    assert.equal(sha(ourFec), sha(vsFec), `FEC device, case ${n} ${c.args.join(" ")}`);
  }
  // JSON names the layout the kernel table needs.
  const data = join(dir, "d0.img");
  const j = await tv(["verity", "format", data, join(dir, "j.hash"), "--fec-device", join(dir, "j.fec"), "--json"]);
  assert.equal(j.status, 0, j.stderr);
  const o = JSON.parse(j.stdout);
  assert.equal(o.fec_roots, 2);
  assert.equal(o.fec_covered_blocks, 259); // 256 data blocks + 3 hash blocks
  assert.equal(o.fec_blocks, 4);
});

test("CLI verity format --fec-device: bad FEC parameters are usage errors", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-verity-fec-");
  t.after(cleanup);
  const data = join(dir, "d.img");
  writeImage(data, 16 * 4096, "fec-bad");
  copyFileSync(data, join(dir, "copy.img"));
  let r = await tv(["verity", "format", data, join(dir, "h"), "--fec-device", join(dir, "f"), "--hash-block-size", "1024"]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /FEC needs equal data and hash block sizes/);
  r = await tv(["verity", "format", data, join(dir, "h"), "--fec-device", join(dir, "f"), "--fec-roots", "30"]);
  assert.equal(r.status, 2);
  r = await tv(["verity", "format", data, join(dir, "h"), "--fec-device", join(dir, "f"), "--fec-offset", "1000"]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /FEC offset 1000 is invalid/);
  r = await tv(["verity", "format", data, join(dir, "h"), "--fec-roots", "4"]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /need --fec-device/);
});

test("CLI verity verify --fec-device: parity checked after the tree; a damaged FEC area or wrong --fec-roots → exit 4", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-verity-fec-");
  t.after(cleanup);
  const data = join(dir, "d.img");
  writeImage(data, 600 * 4096, "fec-verify");
  const f = await tv(["verity", "format", data, join(dir, "h"), "--fec-device", join(dir, "f"), "--fec-roots", "4", "--root-hash-file", join(dir, "root")]);
  assert.equal(f.status, 0, f.stderr);
  const args = ["verity", "verify", data, join(dir, "h"), "--root-hash-file", join(dir, "root"), "--fec-device", join(dir, "f")];
  let r = await tv([...args, "--fec-roots", "4", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).fec_checked, true);
  r = await tv([...args, "--fec-roots", "2"]);
  assert.equal(r.status, 4, r.stderr);
  assert.match(r.stderr, /FEC parity differs in RS round 0/);
  r = await tv([...args, "--fec-roots", "8"]);
  assert.equal(r.status, 4, r.stderr);
  assert.match(r.stderr, /FEC device .* has \d+ bytes/);
  const b = readFileSync(join(dir, "f"));
  b[4096 * 4 + 17] ^= 1; // round 1
  writeFileSync(join(dir, "f"), b);
  r = await tv([...args, "--fec-roots", "4"]);
  assert.equal(r.status, 4, r.stderr);
  assert.match(r.stderr, /FEC parity differs in RS round 1 at position 16384/);
});
