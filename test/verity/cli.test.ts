// `trustvol verity …` from the command line: format prints what veritysetup prints and writes the same bytes,
// dump matches veritysetup dump, verify reports the first bad block, bad input gives one-line errors and stable exit
// codes, sign / verify-sig with PEM keys, open without device-mapper says so.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, truncateSync, writeFileSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, tmpDir, run } from "../helpers/tools.js";
import { trustvolInProcess as tv } from "../helpers/cli.js";
import { writeImage, vsFormat, sha, flipByte } from "./util.js";

const UUID = "4f3a1b2c-5d6e-4f70-8a9b-0c1d2e3f4a5b";
const SALT = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

test("CLI verity format: stdout and hash file identical to veritysetup format; --root-hash-file; --json", async (t) => {
  if (!needTools(t, "veritysetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-verity-cli-");
  t.after(cleanup);
  const data = join(dir, "data.img");
  writeImage(data, 300 * 4096 + 100, "cli-format");
  for (const extra of [[], ["--hash", "sha512", "--data-block-size", "1024", "--hash-block-size", "2048"], ["--format", "0", "--hash", "sha1"]]) {
    const vsHash = join(dir, "vs.hash");
    const ourHash = join(dir, "our.hash");
    const vs = run("veritysetup", ["format", data, vsHash, `--salt=${SALT}`, `--uuid=${UUID}`, ...extra.map((x, i) => (i % 2 ? x : x))]).stdout.toString();
    const r = await tv(["verity", "format", data, ourHash, "--salt", SALT, "--uuid", UUID, ...extra, "--root-hash-file", join(dir, "root.txt")]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.replace(ourHash, vsHash), vs, `format output for ${extra.join(" ")}`);
    assert.equal(sha(ourHash), sha(vsHash), `hash device bytes for ${extra.join(" ")}`);
    const root = /Root hash:\s+([0-9a-f]+)/.exec(vs)![1]!;
    assert.equal(readFileSync(join(dir, "root.txt"), "latin1"), root, "root hash file: hex, no newline (as veritysetup writes it)");
    const d = await tv(["verity", "dump", ourHash]);
    assert.equal(d.stdout.replace(ourHash, vsHash), run("veritysetup", ["dump", vsHash]).stdout.toString());
  }
  const j = await tv(["verity", "format", data, join(dir, "j.hash"), "--salt", "-", "--json"]);
  assert.equal(j.status, 0, j.stderr);
  const o = JSON.parse(j.stdout);
  assert.equal(o.salt, "-");
  assert.equal(o.data_blocks, 300);
  assert.match(o.root_hash, /^[0-9a-f]{64}$/);
  assert.equal(o.root_hash, vsFormat(data, join(dir, "vsj.hash"), { salt: "-", uuid: o.uuid }));
});

test("CLI verity verify/open: wrong root hash, corrupted block, truncated hash device, bad superblock → one line, exit 4", async (t) => {
  if (!needTools(t, "veritysetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-verity-cli-");
  t.after(cleanup);
  const data = join(dir, "data.img");
  const hash = join(dir, "data.hash");
  writeImage(data, 64 * 4096, "cli-verify");
  const root = vsFormat(data, hash, { salt: SALT, uuid: UUID });
  writeFileSync(join(dir, "root.txt"), root + "\n");

  let r = await tv(["verity", "verify", data, hash, root]);
  assert.equal(r.status, 0, r.stderr);
  r = await tv(["verity", "verify", data, hash, "--root-hash-file", join(dir, "root.txt"), "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).verified, true);

  const wrong = root.slice(0, -1) + (root.endsWith("0") ? "1" : "0");
  r = await tv(["verity", "verify", data, hash, wrong]);
  assert.equal(r.status, 4);
  assert.match(r.stderr, /^trustvol: verity: verification of root hash failed .*; wrong root hash/);
  assert.equal(r.stderr.trim().split("\n").length, 1);

  r = await tv(["verity", "verify", data, hash, "abc"]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /invalid root hash "abc"/);
  r = await tv(["verity", "verify", data, hash, root, "--root-hash-file", join(dir, "root.txt")]);
  assert.equal(r.status, 2);
  r = await tv(["verity", "verify", data, hash]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /root hash is missing/);

  const bad = join(dir, "bad.img");
  copyFileSync(data, bad);
  flipByte(bad, 37 * 4096 + 5);
  r = await tv(["verity", "verify", bad, hash, root]);
  assert.equal(r.status, 4);
  assert.match(r.stderr, new RegExp(`verification failed at position ${37 * 4096} of data device .*bad\\.img \\(data block 37\\)`));

  const short = join(dir, "short.hash");
  copyFileSync(hash, short);
  truncateSync(short, 4096 + 100);
  r = await tv(["verity", "verify", data, short, root]);
  assert.equal(r.status, 4);
  assert.match(r.stderr, /hash device .*short\.hash is truncated/);
  r = await tv(["verity", "open", data, "vt", short, root]);
  assert.equal(r.status, 4);
  assert.match(r.stderr, /is truncated/);
  truncateSync(short, 100);
  r = await tv(["verity", "dump", short]);
  assert.equal(r.status, 4);
  assert.match(r.stderr, /too short for a superblock/);

  const nosb = join(dir, "nosb.hash");
  copyFileSync(hash, nosb);
  flipByte(nosb, 0);
  for (const args of [["verify", data, nosb, root], ["dump", nosb], ["open", data, "vt", nosb, root]]) {
    r = await tv(["verity", ...args]);
    assert.equal(r.status, 4, `${args[0]}: ${r.stderr}`);
    assert.match(r.stderr, /no verity superblock at offset 0 \(bad magic\)/);
  }
  const badSb = join(dir, "badsb.hash");
  copyFileSync(hash, badSb);
  const b = readFileSync(badSb);
  b.writeUInt32LE(3000, 64); // data block size not a power of two
  writeFileSync(badSb, b);
  r = await tv(["verity", "dump", badSb]);
  assert.equal(r.status, 4);
  assert.match(r.stderr, /invalid block size/);

  // open checks the root hash against the top hash block before it touches device-mapper.
  r = await tv(["verity", "open", data, "vt", hash, wrong]);
  assert.equal(r.status, 4);
  assert.match(r.stderr, /root hash [0-9a-f]{64} does not match the hash tree on .*data\.hash/);
  r = await tv(["verity", "open", data, "bad/name", hash, root]);
  assert.equal(r.status, 2);
});

test("CLI verity format/verify --no-superblock and --hash-offset (hash area inside the data file) agree with veritysetup", async (t) => {
  if (!needTools(t, "veritysetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-verity-cli-");
  t.after(cleanup);
  const data = join(dir, "data.img");
  writeImage(data, 40 * 4096, "cli-nosb");
  const r = await tv(["verity", "format", data, join(dir, "our.hash"), "--no-superblock", "--salt", SALT, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const root = JSON.parse(r.stdout).root_hash;
  assert.equal(root, vsFormat(data, join(dir, "vs.hash"), { noSuperblock: true, salt: SALT }));
  assert.equal(sha(join(dir, "our.hash")), sha(join(dir, "vs.hash")));
  let v = await tv(["verity", "verify", data, join(dir, "our.hash"), root, "--no-superblock", "--salt", SALT]);
  assert.equal(v.status, 0, v.stderr);
  v = await tv(["verity", "verify", data, join(dir, "our.hash"), root, "--no-superblock", "--salt", "-"]);
  assert.equal(v.status, 4, "wrong salt");

  // Hash area appended to the data file: --data-blocks + --hash-offset, one file for both.
  const both = join(dir, "both.img");
  const vsBoth = join(dir, "vsboth.img");
  writeImage(both, 40 * 4096, "cli-nosb");
  copyFileSync(both, vsBoth);
  const f = await tv(["verity", "format", both, both, "--data-blocks", "40", "--hash-offset", String(40 * 4096), "--salt", SALT, "--uuid", UUID, "--json"]);
  assert.equal(f.status, 0, f.stderr);
  const vsRoot = vsFormat(vsBoth, vsBoth, { dataBlocks: 40, hashOffset: 40 * 4096, salt: SALT, uuid: UUID });
  assert.equal(JSON.parse(f.stdout).root_hash, vsRoot);
  assert.equal(sha(both), sha(vsBoth));
  v = await tv(["verity", "verify", both, both, vsRoot, "--hash-offset", String(40 * 4096)]);
  assert.equal(v.status, 0, v.stderr);
});

test("CLI verity sign / verify-sig with a PEM key: openssl accepts, other root refused (4), untrusted signer refused (3)", async (t) => {
  if (!needTools(t, "openssl")) return;
  const { dir, cleanup } = tmpDir("trustvol-verity-cli-");
  t.after(cleanup);
  const root = "3213e709c890c522d3d675dd3bfe1d88be185e60dd6cb2ad9f38c29368e5023b";
  const other = "09927c9db47fbfd270fde648dbd5a1dde6856b2707344601661d0c4ef2c66ab1";
  for (const n of ["a", "b"])
    run("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(dir, `${n}.key`), "-out", join(dir, `${n}.pem`), "-subj", `/CN=signer ${n}`, "-days", "2"]);
  writeFileSync(join(dir, "root.txt"), root);
  const sig = join(dir, "root.p7s");
  let r = await tv(["verity", "sign", "--root-hash-file", join(dir, "root.txt"), "--signing-key", join(dir, "a.key"), "--cert", join(dir, "a.pem"), "-o", sig]);
  assert.equal(r.status, 0, r.stderr);
  const o = run("openssl", ["cms", "-verify", "-binary", "-inform", "DER", "-in", sig, "-content", join(dir, "root.txt"), "-CAfile", join(dir, "a.pem"), "-purpose", "any", "-out", join(dir, "o")], { check: false });
  assert.equal(o.status, 0, o.stderr);
  r = await tv(["verity", "verify-sig", root, "--signature", sig, "--cert", join(dir, "b.pem"), join(dir, "a.pem")]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /signed by CN=signer a/);
  r = await tv(["verity", "verify-sig", other, "--signature", sig, "--cert", join(dir, "a.pem")]);
  assert.equal(r.status, 4);
  assert.match(r.stderr, /does not match root hash/);
  r = await tv(["verity", "verify-sig", root, "--signature", sig, "--cert", join(dir, "b.pem")]);
  assert.equal(r.status, 3);
  r = await tv(["verity", "sign", root, "--signing-key", join(dir, "a.key"), "--cert", join(dir, "b.pem"), "-o", join(dir, "x.p7s")]);
  assert.equal(r.status, 2, "key and certificate do not match");
  assert.ok(!existsSync(join(dir, "x.p7s")));
  r = await tv(["verity", "sign", root, "-o", join(dir, "x.p7s")]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /no signing key/);
  writeFileSync(join(dir, "garbage.p7s"), "not a signature");
  r = await tv(["verity", "verify-sig", root, "--signature", join(dir, "garbage.p7s"), "--cert", join(dir, "a.pem")]);
  assert.equal(r.status, 4);
});

test("CLI verity open/close/status without a device-mapper kernel: one line, exit 6", async (t) => {
  if (!needTools(t, "dmsetup")) return;
  const probe = run("dmsetup", ["targets"], { check: false });
  if (probe.status === 0) {
    t.skip("this kernel has device-mapper (covered by test/vm/verity.slow.test.ts)");
    return;
  }
  const { dir, cleanup } = tmpDir("trustvol-verity-cli-");
  t.after(cleanup);
  const data = join(dir, "data.img");
  writeImage(data, 8 * 4096, "cli-open");
  const f = await tv(["verity", "format", data, join(dir, "h"), "--root-hash-file", join(dir, "root")]);
  assert.equal(f.status, 0, f.stderr);
  const r = await tv(["verity", "open", data, "vt", join(dir, "h"), "--root-hash-file", join(dir, "root")]);
  assert.equal(r.status, 6, r.stderr);
  assert.match(r.stderr, /^trustvol: verity: this kernel has no device-mapper.*CONFIG_DM_VERITY/);
  for (const cmd of ["close", "status"]) {
    const c = await tv(["verity", cmd, "vt"]);
    assert.equal(c.status, 6, c.stderr);
  }
});
