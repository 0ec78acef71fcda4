// Guest side of test/vm/open.slow.test.ts: `trustvol open/close/trusted/caam/doctor` on a real kernel, driven
// in-process through the CLI's main() (one node start per boot). Runs inside the QEMU guest as root:
//   node --import tsx test/vm/guest/open-flow.ts <boot1|boot2> <dir>
// Prints one JSON line of facts for the host test.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync, openSync, closeSync } from "node:fs";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { main } from "../../../src/cli/main.js";
import { io } from "../../../src/cli/io.js";
import { CaamSimulator } from "../../../src/trust/caam/index.js";
import { ioctlRaw, errnoName } from "../../../src/dm/ioctl.js";

const [phase, dir] = process.argv.slice(2) as [string, string];
process.env.TRUSTVOL_CAAM_SIMULATOR = "1"; // the simulator is explicitly enabled for this test only
const facts: Record<string, unknown> = { phase };
const T = "/tmp";
const PASS = join(T, "pass");
writeFileSync(PASS, "guest test passphrase (not a secret)", { mode: 0o600 });
const SEED_MSG = "This is a test of full disk encryption on i.MX";

function sh(cmd: string, args: string[], check = true): { status: number; out: string; err: string } {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 120_000 });
  const res = { status: r.status ?? -1, out: (r.stdout ?? "").trim(), err: (r.stderr ?? "").trim() };
  if (check && res.status !== 0) throw new Error(`${cmd} ${args.join(" ")} (${res.status}): ${res.err}`);
  return res;
}

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string; json?: any }> {
  let out = "";
  let err = "";
  const saved = { ...io };
  io.out = (s) => void (out += s.toString());
  io.err = (s) => void (err += s.toString());
  const t0 = Date.now();
  let code: number;
  try {
    code = await main(argv);
  } finally {
    Object.assign(io, saved);
  }
  let json: any;
  try {
    json = out.trim() ? JSON.parse(out) : undefined;
  } catch {
    json = undefined;
  }
  (facts.timings as Record<string, number>)[argv.slice(0, 2).join(" ")] = Date.now() - t0;
  return { code, out, err: err.trim(), json };
}
facts.timings = {};

async function ok(...argv: string[]) {
  const r = await cli(...argv);
  if (r.code !== 0) throw new Error(`trustvol ${argv.join(" ")} → ${r.code}: ${r.err}`);
  return r;
}

function mnt(dev: string, fn: (m: string) => void, ro = false) {
  const m = join(T, `mnt-${Math.random().toString(36).slice(2)}`);
  mkdirSync(m);
  sh("mount", [...(ro ? ["-o", "ro"] : []), "-t", "ext4", dev, m]);
  try {
    fn(m);
  } finally {
    sh("umount", [m]);
  }
}

function mkfsWrite(dev: string, text: string) {
  sh("mkfs.ext4", ["-q", "-F", dev]);
  mnt(dev, (m) => writeFileSync(join(m, "readme.txt"), text));
}

function readBack(dev: string): string {
  let s = "";
  mnt(dev, (m) => (s = readFileSync(join(m, "readme.txt"), "utf8")), true);
  return s;
}

const loops = () => sh("losetup", ["-a"], false).out;
const logonKeys = () => sh("keyctl", ["show", "@u"], false).out.split("\n").filter((l) => /logon: trustvol/.test(l)).length;
function sparse(path: string, mib: number) {
  const fd = openSync(path, "w", 0o600);
  closeSync(fd);
  sh("truncate", ["-s", `${mib}M`, path]);
}

const KH = "0x81000001";
const seedImg = join(dir, "seed.img");
const kmkBlob = join(dir, "kmk.blob");
const tvImg = join(dir, "tv.img");
const caamDir = join(dir, "caam");
const simState = join(dir, "caam-sim");

if (phase === "boot1") {
  // ---- seed 000 through trustvol: trusted key → blob → dm-crypt aes-cbc-plain :32:trusted:kmk → ext4
  await ok("trusted", "new", "kmk", "--size", "32", "--blob", kmkBlob, "--keyhandle", KH);
  facts.kmkBlobMode = (statSync(kmkBlob).mode & 0o777).toString(8);
  sparse(seedImg, 32);
  const o1 = await ok("open", "--plain", "--cipher", "aes-cbc-plain", "--key-type", "trusted", "--key-desc", "kmk", "--key-size", "32", "--sector-size", "512", seedImg, "encrypted", "--json");
  facts.seedTable = o1.json.table;
  facts.seedLoopAutoclear = o1.json.loop_autoclear;
  facts.seedDmTable = sh("dmsetup", ["table", "--showkeys", "encrypted"]).out;
  mkfsWrite("/dev/mapper/encrypted", SEED_MSG);
  const c1 = await ok("close", "encrypted", "--json");
  facts.seedClose = c1.json;

  // ---- trusted-key volume convenience: descriptor beside the image
  const f = await ok("trusted", "format", tvImg, "--create-size", "32", "--keyhandle", KH, "--json");
  facts.tvDescriptorMode = (statSync(f.json.descriptor).mode & 0o777).toString(8);
  facts.tvDescriptorHasBlob = JSON.parse(readFileSync(f.json.descriptor, "utf8")).blob.length > 100;
  const o2 = await ok("open", tvImg, "tv", "--json");
  facts.tvTable = o2.json.table;
  facts.tvKeyUnlinked = o2.json.key_unlinked;
  facts.tvKeysLeft = sh("keyctl", ["show", "@u"]).out.split("\n").filter((l) => /trusted: trustvol-tv/.test(l)).length;
  mkfsWrite("/dev/mapper/tv", "trusted volume, boot 1");
  await ok("close", "tv");

  // ---- LUKS2 made by trustvol, opened by trustvol (write) then by cryptsetup (read)
  const a = join(T, "a.img");
  sparse(a, 48);
  await ok("format", a, "--key-file", PASS, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--batch");
  const oa = await ok("open", a, "tva", "--key-file", PASS, "--json");
  facts.luksTable = oa.json.table;
  facts.luksKeyUnlinked = oa.json.key_unlinked;
  facts.luksLogonKeysLeft = logonKeys();
  facts.luksDmTableShowkeys = sh("dmsetup", ["table", "--showkeys", "tva"]).out;
  facts.luksDmUuid = sh("dmsetup", ["info", "-c", "--noheadings", "-o", "uuid", "tva"]).out;
  facts.cryptsetupStatus = sh("cryptsetup", ["status", "tva"], false).out;
  mkfsWrite("/dev/mapper/tva", "made by trustvol");
  await ok("close", "tva");
  sh("cryptsetup", ["open", "--key-file", PASS, a, "csa"]);
  facts.trustvolImageByCryptsetup = readBack("/dev/mapper/csa");
  sh("cryptsetup", ["close", "csa"]);

  // ---- LUKS2 made by cryptsetup, opened by trustvol
  const b = join(T, "b.img");
  sparse(b, 48);
  sh("cryptsetup", ["luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", PASS, b]);
  sh("cryptsetup", ["open", "--key-file", PASS, b, "csb"]);
  mkfsWrite("/dev/mapper/csb", "made by cryptsetup");
  sh("cryptsetup", ["close", "csb"]);
  const ob = await ok("open", b, "tvb", "--key-file", PASS, "--json");
  facts.cryptsetupTable = ob.json.table;
  facts.cryptsetupImageByTrustvol = readBack("/dev/mapper/tvb");
  await ok("close", "tvb");

  // ---- `image encrypt` output (no root, no dm at build time) mounted through dm-crypt
  const src = join(T, "src");
  mkdirSync(src);
  writeFileSync(join(src, "readme.txt"), "from image encrypt");
  const plain = join(T, "plain.ext4");
  sh("mkfs.ext4", ["-q", "-b", "4096", "-d", src, plain, "16M"]); // 4096-byte blocks: the LUKS2 image uses 4096-byte sectors
  const enc = join(T, "enc.luks");
  await ok("image", "encrypt", plain, enc, "--key-file", PASS, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--no-progress");
  await ok("open", enc, "tve", "--key-file", PASS, "--read-only");
  facts.imageEncryptReadBack = readBack("/dev/mapper/tve");
  await ok("close", "tve");

  // ---- clear errors: missing cipher, missing key, wrong passphrase; nothing left behind
  const c = join(T, "c.img");
  sparse(c, 4);
  const k64 = join(T, "k64");
  writeFileSync(k64, Buffer.alloc(64, 0x5a), { mode: 0o600 });
  const e1 = await cli("open", "--plain", "--cipher", "serpent-xts-plain64", "--volume-key-file", k64, c, "bad1");
  facts.noCipher = { code: e1.code, err: e1.err };
  const e2 = await cli("open", "--plain", "--cipher", "aes-xts-plain64", "--key-type", "trusted", "--key-desc", "absent", "--key-size", "64", c, "bad2");
  facts.noKey = { code: e2.code, err: e2.err };
  const wrong = join(T, "wrong");
  writeFileSync(wrong, "nope");
  const e3 = await cli("open", a, "bad3", "--key-file", wrong);
  facts.wrongPass = { code: e3.code, err: e3.err };
  const e4 = await cli("close", "never-opened");
  facts.closeMissing = e4.code;
  facts.loopsLeft = loops();
  facts.mappingsLeft = sh("dmsetup", ["ls"]).out;
  facts.logonKeysLeftAtEnd = logonKeys();

  // ---- CAAM through the simulator: keygen, logon key, the tk() table; the guest kernel has no CAAM
  const kg = await ok("caam", "keygen", "randomkey", "--size", "16", "--dir", caamDir, "--simulator", simState, "--json");
  facts.caamKeygen = { blackKeySize: kg.json.black_key_size, blobSize: kg.json.blob_size, backend: kg.json.backend, mode: (statSync(join(caamDir, "randomkey")).mode & 0o777).toString(8) };
  const dry = await ok("open", "--plain", "--black-key", join(caamDir, "randomkey"), c, "caamvol", "--dry-run", "--json");
  facts.caamDryTable = dry.json.table;
  const padd = spawnSync("keyctl", ["padd", "logon", "logkey:", "@u"], { input: readFileSync(join(caamDir, "randomkey")), encoding: "utf8" });
  facts.caamLogonSerial = padd.status === 0 && /^\d+$/.test(padd.stdout.trim());
  facts.caamLogonDescribe = sh("keyctl", ["rdescribe", padd.stdout.trim()], false).out;
  facts.caamLogonPipe = sh("keyctl", ["pipe", padd.stdout.trim()], false).status; // logon keys are unreadable
  sh("keyctl", ["unlink", padd.stdout.trim(), "@u"], false);
  const e5 = await cli("open", "--plain", "--black-key", join(caamDir, "randomkey"), c, "caamvol");
  facts.caamOpen = { code: e5.code, err: e5.err };
  facts.caamLoopsLeft = loops();
  const red = new CaamSimulator({ stateDir: simState }).revealBlackKeyForTests(readFileSync(join(caamDir, "randomkey")));
  writeFileSync(join(dir, "caam-red.sha256"), createHash("sha256").update(red).digest("hex"));

  // ---- doctor on a real kernel
  const d = await cli("doctor", "--json");
  facts.doctor = { code: d.code, tpm: d.json?.trust_sources?.tpm, dmCrypt: d.json?.kernel?.dm_crypt, dmVerity: d.json?.kernel?.dm_verity, trustedTpm: d.json?.kernel?.trusted_sources?.tpm, source: d.json?.trust_sources?.trusted_key_source, secureBoot: d.json?.secure_boot?.state, tmp: d.json?.tmp, findings: d.json?.findings?.map((f: { id: string; severity: string }) => `${f.severity}:${f.id}`) };

  // ---- the native ioctl wrapper with an embedded pointer: BLKPG add/remove a partition on a loop device
  const pimg = join(T, "p.img");
  sparse(pimg, 4);
  const loop = sh("losetup", ["-P", "-f", "--show", pimg]).out;
  const part = Buffer.alloc(152); // struct blkpg_partition: start, length (i64), pno (int), devname[64], volname[64]
  part.writeBigInt64LE(1048576n, 0);
  part.writeBigInt64LE(1048576n, 8);
  part.writeInt32LE(1, 16);
  const arg = Buffer.alloc(24); // struct blkpg_ioctl_arg: op, flags, datalen (int), data (pointer @16)
  arg.writeInt32LE(1, 0); // BLKPG_ADD_PARTITION
  arg.writeInt32LE(152, 8);
  const fd = openSync(loop, "r");
  try {
    const r = ioctlRaw(fd, 0x1269, arg, [[16, part, 8]]);
    const base = loop.split("/").pop()!;
    facts.blkpg = { ret: r < 0 ? errnoName(-r) : r, start: existsSync(`/sys/block/${base}/${base}p1/start`) ? readFileSync(`/sys/block/${base}/${base}p1/start`, "utf8").trim() : null };
    arg.writeInt32LE(2, 0); // BLKPG_DEL_PARTITION
    ioctlRaw(fd, 0x1269, arg, [[16, part, 8]]);
  } finally {
    closeSync(fd);
    sh("losetup", ["-d", loop], false);
  }
} else if (phase === "boot2") {
  // ---- seed 000 second boot: load the blob, map, read
  await ok("trusted", "load", "kmk", "--blob", kmkBlob, "--keyhandle", KH);
  await ok("open", "--plain", "--cipher", "aes-cbc-plain", "--key-type", "trusted", "--key-desc", "kmk", "--key-size", "32", "--sector-size", "512", seedImg, "encrypted");
  facts.seedReadBack = readBack("/dev/mapper/encrypted");
  await ok("close", "encrypted");
  const plainBytes = readFileSync(seedImg);
  facts.seedPlaintextOnDisk = plainBytes.includes(Buffer.from(SEED_MSG));
  // without the key: a clear refusal
  sh("keyctl", ["unlink", sh("keyctl", ["search", "@u", "trusted", "kmk"]).out, "@u"], false);
  const e = await cli("open", "--plain", "--cipher", "aes-cbc-plain", "--key-type", "trusted", "--key-desc", "kmk", "--key-size", "32", seedImg, "encrypted");
  facts.seedWithoutKey = { code: e.code, err: e.err };
  // ---- trusted-key volume: one command
  await ok("open", tvImg, "tv");
  facts.tvReadBack = readBack("/dev/mapper/tv");
  await ok("close", "tv");
  // ---- CAAM simulator: the blob brings the key back in a new boot; the old black key is stale
  await ok("caam", "import", join(caamDir, "randomkey.bb"), "randomkey2", "--dir", caamDir, "--simulator", simState);
  const sim = new CaamSimulator({ stateDir: simState });
  const k2 = readFileSync(join(caamDir, "randomkey2"));
  facts.caamImported = { size: k2.length, differsFromBoot1: k2.toString("hex") !== readFileSync(join(caamDir, "randomkey")).toString("hex"), sameRedKey: createHash("sha256").update(sim.revealBlackKeyForTests(k2)).digest("hex") === readFileSync(join(dir, "caam-red.sha256"), "utf8") };
  // an ECB black key carries no MAC: under the new boot's (simulated) JDKEK it decrypts to a different, useless key
  const stale = sim.revealBlackKeyForTests(readFileSync(join(caamDir, "randomkey")));
  facts.caamStaleBlackKey = createHash("sha256").update(stale).digest("hex") === readFileSync(join(dir, "caam-red.sha256"), "utf8") ? "same key" : "different key";
  facts.loopsLeft = loops();
}
process.stdout.write(JSON.stringify(facts) + "\n");
