// Differential test of MID-RE-ENCRYPTION LUKS2 headers: hundreds of seeded mutations of the re-encryption metadata
// (the `reencrypt` keyslot's fields and id, the data and backup segments' fields, flags and ids, the digests'
// keyslot/segment membership, the online-reencrypt requirement, numeric edge values — negative, 2^53+, 2^64, not a
// multiple of 512, number vs string, 4.096e3 — and headers that lie consistently about the progress) of real states
// made by the real tools: cryptsetup 2.6.1 `reencrypt --init-only` (rotation with resilience checksum, journal, none;
// `--encrypt --reduce-device-size`, a data shift), those runs stopped part-way (several segments) and cut inside a
// hotzone (a segment in-reencryption); and decryption with a data shift (`--decrypt --header NEW_FILE` of a device
// that holds its header: online-reencrypt-v3, datashift-checksum and datashift-journal, a moved segment), whose
// states — init, a run stopped between hotzones (SIGINT), killed inside a hotzone and inside the moved segment's
// (SIGKILL) — are cryptsetup's own, stopped deterministically by strace fault injection; there the mutations change
// the detached header FILE, both tools get `--header FILE`, and the plaintext is the device's first size − shift bytes.
// Each mutation is judged on its own copy by cryptsetup (`luksDump`, then
// `reencrypt --resume-only --force-offline-reencrypt`, after `repair` when it says a crashed hotzone needs recovery)
// and by trustvol (`dump`, then `reencrypt --resume-only`, the CLI in a long-lived child; one refusal in 25 also
// through the spawned bin/trustvol.mjs, which must say the same).
//
// What it proves (strict: any violation fails, except the committed ALLOWED list below, each entry with its reason):
//  - trustvol is no more lenient than cryptsetup: a header cryptsetup refuses to resume, trustvol refuses too
//    (class trustvol-more-lenient), and no stricter without a reason (trustvol-stricter);
//  - a refusal is one line on stderr (no stack trace, no "internal error"), a non-zero exit, the file byte-identical
//    (trustvol-crash);
//  - nothing trustvol accepts loses data (DATA-LOSS): when it exits 0 the volume is finished (cryptsetup loads it) and
//    its plaintext — decrypted here with the volume key `cryptsetup luksDump --dump-volume-key` prints, no trustvol
//    code — is the original's, sha256 of every byte, whatever cryptsetup made of the same header;
//  - `trustvol dump` accepts what `cryptsetup luksDump` accepts and refuses what it refuses;
//  - every unmodified base state resumes with both tools to the original plaintext (the premise of the rest).
// cryptsetup's own data losses (it accepts and garbles: cryptsetup-data-loss) are counted, not failed.
// Headers are rewritten here, both copies, checksums recomputed with node:crypto (no trustvol code writes a header).
// The rotation and --encrypt mid-run and cut states are made by trustvol's library from cryptsetup's --init-only states
// (deterministic: an AbortSignal after k hotzones; a device that stops at its n-th write); both tools' acceptance of
// each is checked.
// cryptsetup runs with --disable-locks: the pool's copies share a UUID, which names its re-encryption lock.
//
// A second run judges other mutations (seed + 1, TRUSTVOL_REDIFF_N27 of them, default 400) by today's cryptsetup, 2.7.5
// from the Debian 13 root (test/helpers/debian13.ts): the same ALLOWED list holds for it.
// Knobs: TRUSTVOL_REDIFF_SEED (PRNG seed), TRUSTVOL_REDIFF_N (mutations; 0: no 2.6.1 run), TRUSTVOL_REDIFF_N27
// (mutations judged by 2.7.5; 0: none), TRUSTVOL_REDIFF_POOL (workers, each with
// a trustvol judge child), TRUSTVOL_REDIFF_ONLY=i,j (judge only these mutation indices), TRUSTVOL_REDIFF_OUT=FILE
// (every verdict, one JSON line each), TRUSTVOL_REDIFF_KEEP=DIR (the images of the violations, m<i>.img; with a
// detached header m<i>.hdr too),
// TRUSTVOL_REDIFF_BASES=DIR (the base states and their plaintexts' sha256, to replay a case by hand; a detached-header
// state is <name>.img, the device, and <name>.hdr, the header file).
// Replay one case (#i in the failure list): TRUSTVOL_REDIFF_SEED=<seed> TRUSTVOL_REDIFF_N=<n> TRUSTVOL_REDIFF_ONLY=<i>
// node --import tsx --test test/luks2/reencrypt-differential.slow.test.ts. Volume keys and salts are fresh each run;
// the mutations depend only on the seed and the states' structure (offsets, sizes, ids), the same every run.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile, type ChildProcessWithoutNullStreams } from "node:child_process";
import { createInterface } from "node:readline";
import { writeFileSync, readFileSync, mkdirSync, chmodSync, appendFileSync } from "node:fs";
import { createHash, createDecipheriv } from "node:crypto";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { needTools, hasTool, IN_CI } from "../helpers/tools.js";
import { TRUSTVOL_BIN, trustvolInProcess } from "../helpers/cli.js";
import { prng } from "../helpers/power-cut.js";
import { MiB, FAST_PBKDF, PASSPHRASE, writePlain, shaFile, cs, fastTmpDir, oracleFill, cliHasReencrypt } from "../helpers/reencrypt.js";
import { DEB13_WORK, needDebian13, debian13Command } from "../helpers/debian13.js";

const SEED = Number(process.env.TRUSTVOL_REDIFF_SEED ?? 20261215);
const N = Number(process.env.TRUSTVOL_REDIFF_N ?? 800); // spread over the bases (17: 8 of them a decryption with a data shift)
const POOL = Number(process.env.TRUSTVOL_REDIFF_POOL ?? 2);
/** Mutations judged by today's cryptsetup (2.7.5, from the Debian 13 root) in a second run (TRUSTVOL_REDIFF_N27; 0: none). */
const N27 = Number(process.env.TRUSTVOL_REDIFF_N27 ?? 400);
const ONLY = process.env.TRUSTVOL_REDIFF_ONLY ? new Set(process.env.TRUSTVOL_REDIFF_ONLY.split(",").map(Number)) : undefined;
/** One in this many trustvol refusals is also judged through the spawned CLI (bin/trustvol.mjs, as it ships). */
const SPAWN_EVERY = 25;
const JUDGE_TIMEOUT_MS = 60_000;

type Rnd = () => number;
const pick = <T>(r: Rnd, a: readonly T[]): T => a[Math.floor(r() * a.length)]!;
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const exec = (cmd: string, args: string[], timeoutMs = JUDGE_TIMEOUT_MS): Promise<{ rc: number; out: string; err: string }> =>
  new Promise((resolve) => {
    execFile(cmd, args, { encoding: "latin1", maxBuffer: 1 << 26, timeout: timeoutMs, killSignal: "SIGKILL", env: { ...process.env, LC_ALL: "C" } }, (e, out, err) =>
      resolve({ rc: e ? (typeof e.code === "number" ? e.code : -1) : 0, out, err }),
    );
  });
/** Where the judging cryptsetup runs: the host's (2.6.1), or 2.7.5 in the Debian 13 root with the work dir at /w. */
type CsJudge = { root: string; dir: string } | undefined;
const csJudge = (judge: CsJudge, args: string[]): Promise<{ rc: number; out: string; err: string }> => {
  if (!judge) return exec("cryptsetup", args);
  const { root, dir } = judge;
  const mapped = args.map((a) => (a.startsWith(dir + "/") ? DEB13_WORK + a.slice(dir.length) : a));
  const c = debian13Command(root, "cryptsetup", mapped, { work: dir, env: { LC_ALL: "C" } });
  return new Promise((resolve) => {
    execFile(c.cmd, c.args, { encoding: "latin1", maxBuffer: 1 << 26, timeout: JUDGE_TIMEOUT_MS, killSignal: "SIGKILL", env: c.env }, (e, out, err) =>
      resolve({ rc: e ? (typeof e.code === "number" ? e.code : -1) : 0, out, err: err.replaceAll(DEB13_WORK + "/", dir + "/") }),
    );
  });
};
const lastLine = (s: string) => s.trim().split("\n").filter(Boolean).at(-1) ?? "";

// ---------------------------------------------------------------------------------------------------------------
// Header JSON, both copies, checksums recomputed here (sha256 over the header area with its checksum field zeroed)

/** JSON text with raw number tokens: a string "@@RAW:<token>@@" becomes <token> (so 2^64, -0, 4096.0, 1e3 reach the parsers). */
const raw = (tok: string) => `@@RAW:${tok}@@`;
const toText = (j: unknown) => JSON.stringify(j).replace(/"@@RAW:([^@"]*)@@"/g, "$1");

function jsonOf(img: Buffer): any {
  const hdr = Number(img.readBigUInt64BE(8));
  const a = img.subarray(4096, hdr);
  return JSON.parse(a.subarray(0, a.indexOf(0)).toString("latin1"));
}

function withText(base: Buffer, text: string): Buffer {
  const img = Buffer.from(base);
  const hdr = Number(img.readBigUInt64BE(8));
  for (const off of [0, hdr]) {
    const area = img.subarray(off, off + hdr);
    if (area.subarray(72, 78).toString("latin1") !== "sha256") throw new Error("fixture header checksum is not sha256");
    const t = Buffer.from(text, "latin1");
    if (t.length >= hdr - 4096) throw new Error("mutated JSON does not fit");
    area.fill(0, 4096);
    t.copy(area, 4096);
    area.fill(0, 448, 512);
    createHash("sha256").update(area).digest().copy(area, 448);
  }
  return img;
}

// ---------------------------------------------------------------------------------------------------------------
// Base states, made by cryptsetup (and stopped part-way by trustvol's library)

interface Base {
  name: string;
  /** The file that holds the metadata (what the mutations change): the image, or the detached header file. */
  img: Buffer;
  /** A detached header's data device (never mutated); its finished plaintext is plain bytes from the linear segment. */
  dev?: Buffer;
  /** The volume's plaintext once finished: its first plainLen bytes hash to plainSha. */
  plainLen: number;
  plainSha: string;
}

const DATA = 4 * MiB;
const IMG = 6 * MiB; // 16 KiB metadata ×2, keyslots to 2 MiB, data from 2 MiB
const LAYOUT = ["--luks2-metadata-size", "16k", "--luks2-keyslots-size", "1984k"];

/** A LUKS2 volume whose data area holds a known plaintext (encrypted with the key cryptsetup dumps), one keyslot. */
function formatted(dir: string, pw: string, name: string, extra: string[], seed: number): { img: string; plainSha: string } {
  const img = join(dir, `${name}.img`);
  writePlain(img, IMG, seed);
  cs(["luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF, ...LAYOUT, "--offset", "4096", ...extra, "--key-file", pw, img]);
  const plain = join(dir, `${name}.plain`);
  writePlain(plain, DATA, seed + 1000);
  oracleFill(img, pw, plain, DATA);
  return { img, plainSha: shaFile(plain) };
}

function initOnly(img: string, pw: string, extra: string[]): void {
  cs(["reencrypt", "--init-only", "-q", "--force-offline-reencrypt", ...extra, ...FAST_PBKDF, "--key-file", pw, img]);
}

/** A device that stops (throws, the write not made) at its n-th write: what a killed process leaves on a file. */
class StopDevice {
  readonly readOnly = false;
  readonly name = "stop-device";
  writes = 0;
  log: number[] = [];
  constructor(public data: Buffer, private readonly stopAt = Infinity) {}
  get size() {
    return this.data.length;
  }
  async read(buf: Uint8Array, off: number) {
    if (off < 0 || off + buf.length > this.data.length) throw new Error(`read past the end at ${off}`);
    buf.set(this.data.subarray(off, off + buf.length));
  }
  async write(buf: Uint8Array, off: number) {
    if (++this.writes >= this.stopAt) throw new Error("stopped");
    this.log.push(off);
    this.data.set(buf, off);
  }
  async flush() {}
  async close() {}
}

async function engine() {
  return await import("../../src/ops/reencrypt.js");
}

/** Resume `img` with trustvol's library, hotzones of `hotzone` bytes, stopped at a safe point after k hotzones. */
async function stoppedAfter(img: Buffer, hotzone: number, k: number): Promise<Buffer> {
  const { reencrypt } = await engine();
  const dev = new StopDevice(Buffer.from(img));
  const ac = new AbortController();
  let n = 0;
  await reencrypt(dev, { resumeOnly: true, passphrase: Buffer.from(PASSPHRASE), hotzoneSize: hotzone, signal: ac.signal, onProgress: () => void (++n > k && ac.abort()) }).then(
    () => assert.fail("the run was not stopped"),
    (e: { code?: string }) => assert.equal(e.code, "EINTR", String(e)),
  );
  return dev.data;
}

/**
 * Resume `img` and stop it (a killed process: the writes before stay) at the `nth` data write after the first header
 * commit: a hotzone in-reencryption over partly written data, the state `repair` recovers.
 */
async function cutInHotzone(img: Buffer, hotzone: number, nth: number, dataOffset: number): Promise<Buffer> {
  const { reencrypt } = await engine();
  const probe = new StopDevice(Buffer.from(img));
  await reencrypt(probe, { resumeOnly: true, passphrase: Buffer.from(PASSPHRASE), hotzoneSize: hotzone });
  const firstCommit = probe.log.findIndex((o) => o === 0);
  const dataWrites = probe.log.map((o, i) => [o, i] as const).filter(([o, i]) => i > firstCommit && o >= dataOffset);
  const [, at] = dataWrites[Math.min(nth, dataWrites.length - 1)]!;
  const dev = new StopDevice(Buffer.from(img), at + 1);
  await reencrypt(dev, { resumeOnly: true, passphrase: Buffer.from(PASSPHRASE), hotzoneSize: hotzone }).then(
    () => assert.fail("the run was not cut"),
    (e: Error) => assert.equal(e.message, "stopped"),
  );
  const segs = Object.values<any>(jsonOf(dev.data).segments);
  assert.ok(segs.some((s) => s.flags?.includes("in-reencryption")), "the cut left a hotzone in re-encryption");
  return dev.data;
}

// Decryption with a data shift: the same 6 MiB volume (shift = data offset = 2 MiB, T = 4 MiB of plaintext), a 1 MiB
// moved segment (--hotzone-size 1M, which datashift-journal needs: its journal must hold it), so a run is three
// hotzones — [1M, 3M) and [3M, 4M) decrypted from one shift further on, then the moved segment [0, 1M) in place.
const DEC_MOVED = ["--hotzone-size", "1M"];

async function decryptShiftInit(dir: string, pw: string, name: string, resilience: "checksum" | "journal", extra: string[], seed: number, moved: string[]): Promise<{ hdr: Buffer; dev: Buffer; plainSha: string }> {
  const f = formatted(dir, pw, name, extra, seed);
  const hdr = join(dir, `${name}.hdr`);
  // (asynchronous: the init benchmarks the re-encryption digest's PBKDF2, ~0.6 s of CPU each, two at a time)
  const r = await exec("cryptsetup", ["reencrypt", "--decrypt", "--init-only", "-q", "--force-offline-reencrypt", "--resilience", resilience, ...moved, "--header", hdr, ...FAST_PBKDF, "--key-file", pw, f.img]);
  assert.equal(r.rc, 0, `cryptsetup reencrypt --decrypt --init-only --header (${name}): ${r.err}`);
  return { hdr: readFileSync(hdr), dev: readFileSync(f.img), plainSha: f.plainSha };
}

/** cryptsetup's resume of a detached-header state, traced once: for each write() in order, whether it goes to the device. */
async function csWrites(dir: string, pw: string, from: { hdr: Buffer; dev: Buffer }, tag: string): Promise<boolean[]> {
  const hdr = join(dir, `${tag}.hdr`), dev = join(dir, `${tag}.img`), trace = join(dir, `${tag}.trace`);
  writeFileSync(hdr, from.hdr);
  writeFileSync(dev, from.dev);
  const r = await exec("strace", ["-f", "-o", trace, "-e", "trace=openat,write", "cryptsetup", ...csResumeArgs(pw, dev, hdr)]);
  assert.equal(r.rc, 0, `cryptsetup resume of ${tag} (traced): ${r.err}`);
  const fds = new Map<string, string>();
  const writes: boolean[] = [];
  for (const l of readFileSync(trace, "utf8").split("\n")) {
    const o = l.match(/openat\(AT_FDCWD, "([^"]+)", ([A-Z_|]+)\) = (\d+)/);
    if (o) fds.set(o[3]!, /O_RDWR|O_WRONLY/.test(o[2]!) ? o[1]! : "");
    const w = l.match(/\bwrite\((\d+),/);
    if (w) writes.push(fds.get(w[1]!) === dev);
  }
  return writes;
}

/**
 * cryptsetup resuming `from`, signalled (strace fault injection: deterministic, no timing) on entry to its `nth` data
 * write (0-based): SIGINT — it finishes that hotzone and stops cleanly between hotzones; SIGKILL — killed inside it,
 * the hotzone left in re-encryption.
 */
async function csStopped(dir: string, pw: string, from: { hdr: Buffer; dev: Buffer }, writes: boolean[], nth: number, signal: "SIGINT" | "SIGKILL", tag: string): Promise<{ hdr: Buffer; dev: Buffer }> {
  const at = writes.map((d, i) => (d ? i : -1)).filter((i) => i >= 0)[nth];
  assert.ok(at !== undefined, `${tag}: cryptsetup made fewer than ${nth + 1} data writes`);
  const hdr = join(dir, `${tag}.hdr`), dev = join(dir, `${tag}.img`);
  writeFileSync(hdr, from.hdr);
  writeFileSync(dev, from.dev);
  const r = await exec("strace", ["-f", "-o", "/dev/null", "-e", "trace=write", "-e", `inject=write:signal=${signal}:when=${at + 1}`, "cryptsetup", ...csResumeArgs(pw, dev, hdr)]);
  assert.notEqual(r.rc, 0, `${tag}: cryptsetup was not stopped by its ${signal}`);
  return { hdr: readFileSync(hdr), dev: readFileSync(dev) };
}

/** The data segments' shape, as "type@offset+size[*]" (* = in-reencryption), to check a stopped state is the one wanted. */
const shapeOf = (hdr: Buffer) =>
  Object.values<any>(jsonOf(hdr).segments)
    .filter((x) => !(x.flags ?? []).some((f: string) => f.startsWith("backup-")))
    .map((x) => `${x.type}@${x.offset}+${x.size}${x.flags?.includes("in-reencryption") ? "*" : ""}`)
    .join(" ");

async function makeBases(dir: string, pw: string): Promise<Base[]> {
  const bases: Base[] = [];
  const add = (name: string, path: string | Buffer, plainSha: string, plainLen = DATA, dev?: Buffer) => bases.push({ name, img: typeof path === "string" ? readFileSync(path) : path, dev, plainLen, plainSha });
  // rotation, checksum: 256-bit key, 512-byte sectors → 512-bit key, 4096-byte sectors (old and new segments differ)
  const a = formatted(dir, pw, "rot-checksum", ["--key-size", "256", "--sector-size", "512"], 1);
  initOnly(a.img, pw, ["--resilience", "checksum", "--key-size", "512", "--sector-size", "4096"]);
  add("rot-checksum", a.img, a.plainSha);
  const b = formatted(dir, pw, "rot-journal", ["--key-size", "512", "--sector-size", "4096"], 2);
  initOnly(b.img, pw, ["--resilience", "journal"]);
  add("rot-journal", b.img, b.plainSha);
  const c = formatted(dir, pw, "rot-none", ["--key-size", "512", "--sector-size", "4096"], 3);
  initOnly(c.img, pw, ["--resilience", "none"]);
  add("rot-none", c.img, c.plainSha);
  // --encrypt with a data shift: 10 MiB device, 6 MiB of it the file system (plaintext), data offset = shift = 2 MiB
  const s = join(dir, "enc-shift.img");
  writePlain(s, 10 * MiB, 4);
  const shiftLen = 6 * MiB;
  const shiftSha = shaFile(s, 0, shiftLen);
  cs(["reencrypt", "--encrypt", "--init-only", "-q", "--force-offline-reencrypt", "--reduce-device-size", "4M", ...LAYOUT, ...FAST_PBKDF, "--key-file", pw, s]);
  add("enc-shift", s, shiftSha, shiftLen);
  // mid-run: several segments (new | old) beside the backups; a data shift part-way (linear | crypt)
  add("rot-checksum-mid", await stoppedAfter(bases[0]!.img, 512 * 1024, 3), a.plainSha);
  add("rot-journal-mid", await stoppedAfter(bases[1]!.img, 512 * 1024, 2), b.plainSha);
  // (a data shift's loop sees the stop only after the next hotzone: stopped after 2 of its 3)
  add("enc-shift-mid", await stoppedAfter(bases[3]!.img, 2 * MiB, 1), shiftSha, shiftLen);
  // cut inside a hotzone (checksum: one chunk of it written; journal: before its data write, the journal full)
  add("rot-checksum-crash", await cutInHotzone(bases[4]!.img, 512 * 1024, 1, 2 * MiB), a.plainSha);
  add("rot-journal-crash", await cutInHotzone(bases[5]!.img, 512 * 1024, 0, 2 * MiB), b.plainSha);
  // decryption with a data shift: cryptsetup's --init-only (checksum: 512-bit key, 4096-byte sectors; journal: 256-bit
  // key, 512-byte sectors), and its own runs of them stopped between hotzones and killed inside one
  if (!hasTool("strace")) {
    if (IN_CI) throw new Error("strace missing in CI (.ci/run must install it): it stops cryptsetup's decrypt runs");
    return bases; // a dev machine without strace: the data-shift decryption's mid-run states are left out
  }
  const [dc, dj, dw] = await Promise.all([
    decryptShiftInit(dir, pw, "dec-shift-checksum", "checksum", ["--key-size", "512", "--sector-size", "4096"], 5, DEC_MOVED),
    decryptShiftInit(dir, pw, "dec-shift-journal", "journal", ["--key-size", "256", "--sector-size", "512"], 6, DEC_MOVED),
    // the default moved segment, the shift long: a run is two hotzones, [2M, 4M) then the moved segment [0, 2M)
    decryptShiftInit(dir, pw, "dec-shift-wide", "checksum", ["--key-size", "512", "--sector-size", "4096"], 7, []),
  ]);
  const addDec = (name: string, st: { hdr: Buffer; dev: Buffer }, plainSha: string, want: string) => {
    assert.equal(shapeOf(st.hdr), want, `${name}: the data segments cryptsetup left`);
    add(name, st.hdr, plainSha, DATA, st.dev);
  };
  const [L, S] = [MiB, 2 * MiB];
  addDec("dec-shift-checksum", dc, dc.plainSha, `crypt@0+${L} crypt@${S + L}+dynamic`);
  addDec("dec-shift-journal", dj, dj.plainSha, `crypt@0+${L} crypt@${S + L}+dynamic`);
  // data writes of a run: 0 = hotzone [1M, 3M), 1 = [3M, 4M), 2 = the moved segment [0, 1M), then the tail's wipe.
  // (Not a base: stopped after write 1, right before the moved segment's hotzone, cryptsetup 2.6.1 cannot resume its
  // own state — it sizes that hotzone the shift long, not the moved segment's 1 MiB: "Overlapping segments" with
  // checksum, the journal too small with journal; trustvol finishes it.)
  const [wc, wj, ww] = await Promise.all([csWrites(dir, pw, dc, "trace-c"), csWrites(dir, pw, dj, "trace-j"), csWrites(dir, pw, dw, "trace-w")]);
  const cut = await Promise.all([
    csStopped(dir, pw, dc, wc, 0, "SIGINT", "cut-1"),
    csStopped(dir, pw, dj, wj, 0, "SIGINT", "cut-2"),
    csStopped(dir, pw, dw, ww, 0, "SIGINT", "cut-3"),
    csStopped(dir, pw, dc, wc, 0, "SIGKILL", "cut-4"),
    csStopped(dir, pw, dc, wc, 2, "SIGKILL", "cut-5"),
    csStopped(dir, pw, dj, wj, 2, "SIGKILL", "cut-6"),
  ]);
  addDec("dec-shift-checksum-mid", cut[0], dc.plainSha, `crypt@0+${L} linear@${L}+${S} crypt@${2 * S + L}+dynamic`);
  addDec("dec-shift-journal-mid", cut[1], dj.plainSha, `crypt@0+${L} linear@${L}+${S} crypt@${2 * S + L}+dynamic`);
  addDec("dec-shift-wide-mid", cut[2], dw.plainSha, `crypt@0+${S} linear@${S}+dynamic`);
  addDec("dec-shift-checksum-crash", cut[3], dc.plainSha, `crypt@0+${L} linear@${L}+${S}* crypt@${2 * S + L}+dynamic`);
  addDec("dec-shift-checksum-moved-crash", cut[4], dc.plainSha, `linear@0+${L}* linear@${L}+dynamic`);
  addDec("dec-shift-journal-moved-crash", cut[5], dj.plainSha, `linear@0+${L}* linear@${L}+dynamic`);
  return bases;
}

// ---------------------------------------------------------------------------------------------------------------
// Mutators, aimed at the re-encryption metadata

interface Mutation {
  i: number;
  base: Base;
  what: string;
  img: Buffer;
}

interface Roles {
  rk: string; // reencrypt keyslot id
  data: string[]; // data segment ids, in order
  prev: string;
  fin: string;
  moved?: string;
  dOld?: string;
  dNew?: string;
  dRe: string; // the re-encryption digest
  luks: string[]; // luks2 keyslots
}

function roles(j: any): Roles {
  const segIds = Object.keys(j.segments).sort((a, b) => +a - +b);
  const flagged = (f: string) => segIds.find((id) => j.segments[id].flags?.includes(f));
  const digestOf = (seg?: string) => (seg === undefined ? undefined : Object.keys(j.digests).find((d) => j.digests[d].segments.includes(seg)));
  const rk = Object.keys(j.keyslots).find((k) => j.keyslots[k].type === "reencrypt")!;
  const prev = flagged("backup-previous")!, fin = flagged("backup-final")!;
  return {
    rk,
    data: segIds.filter((id) => !(j.segments[id].flags ?? []).some((f: string) => f.startsWith("backup-"))),
    prev,
    fin,
    moved: flagged("backup-moved-segment"),
    dOld: digestOf(prev),
    dNew: digestOf(fin),
    dRe: Object.keys(j.digests).find((d) => j.digests[d].keyslots.includes(rk))!,
    luks: Object.keys(j.keyslots).filter((k) => j.keyslots[k].type === "luks2"),
  };
}

const U64_EDGES: unknown[] = [
  "0", "1", "511", "512", "513", "4095", "4096", "65536", "1048576", "-1", "-4096", "18446744073709551615", "18446744073709551616", "9223372036854775808",
  "9007199254740992", "9007199254740993", "00", "04096", "0x1000", "1e3", " 4096", "4096 ", "+4096", "", "dynamic", "4096.0",
  0, 4096, -1, 2 ** 53, raw("18446744073709551616"), raw("4096.0"), raw("1e3"), null, true, [], {},
];
const U32_EDGES: unknown[] = [0, 1, 2, 3, 511, 512, 513, 1024, 2048, 4095, 4096, 8192, 65536, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53, -1, -512, -4096, raw("4096.0"), raw("4.096e3"), raw("-0"), raw("18446744073709551616"), "4096", "512", null, true, 1.5];
const HASHES = ["sha1", "sha256", "sha512", "sha3-256", "ripemd160", "whirlpool", "blake2b-512", "md5", "crc32c", "nosuchhash", "", "SHA256", "sha256 ", 0];
const CIPHERS = ["aes-xts-plain64", "aes-cbc-essiv:sha256", "aes-xts-plain", "serpent-xts-plain64", "cipher_null-ecb", "aes-xts-plain64 ", "", "aes", 1];
const FLAGS = ["backup-previous", "backup-final", "backup-moved-segment", "in-reencryption", "backup-bogus", "bogus", "in-reencryption "];

/** Relative edit of a decimal-string u64 field (keeps it a string). */
function rel(v: unknown, d: number): string {
  const n = typeof v === "string" && /^[0-9]+$/.test(v) ? BigInt(v) : 0n;
  const x = n + BigInt(d);
  return (x < 0n ? 0n : x).toString();
}

/**
 * Mutations aimed at a decryption with a data shift (its header file): the moved segment (live copy, backup, both), the
 * shift_size, the requirement version against the area type, mode and direction, the last data segment's offset,
 * iv_tweak and size, the progress and the hotzone told otherwise, the moved segment's length, the backups. Returns
 * what it did to j.
 */
function mutateDecryptShift(j: any, R: Roles, r: Rnd, T: number): string {
  const ks = j.keyslots[R.rk];
  const seg = (id: string) => j.segments[id];
  const S = Number(ks.area.shift_size), L = Number(seg(R.moved!).size);
  const str = (n: number) => String(n);
  const [tailId, tail] = [R.data.at(-1)!, seg(R.data.at(-1)!)];
  const hot = R.data.find((id) => seg(id).flags?.includes("in-reencryption"));
  const s0 = seg(R.data[0]!);
  // the hotzone: a crashed one resized, moved or dropped; a clean state made to look crashed
  const hotzone = (): string => {
    if (hot !== undefined) {
      const h = seg(hot);
      const sub = pick(r, ["size", "offset", "drop", "crypt"] as const);
      if (sub === "size") h.size = rel(h.size, pick(r, [4096, -4096, L, -L / 2, S]));
      if (sub === "offset") h.offset = rel(h.offset, pick(r, [4096, -4096, L, S]));
      if (sub === "drop") delete h.flags;
      if (sub === "crypt") Object.assign(h, { type: "crypt", iv_tweak: String(Number(h.offset) / 512), encryption: seg(R.prev).encryption, sector_size: seg(R.prev).sector_size });
      return `hotzone segment ${hot} ${sub === "drop" ? "flag in-reencryption dropped" : sub === "crypt" ? "made crypt" : `${sub}=${h[sub]}`}`;
    }
    if (s0.type === "crypt" && r() < 0.5) {
      // the moved segment's own hotzone, as cryptsetup writes it (segment 0 linear, in re-encryption) over clean data
      j.segments[R.data[0]!] = { type: "linear", offset: "0", size: String(L), flags: ["in-reencryption"] };
      for (const dg of Object.values<any>(j.digests)) dg.segments = dg.segments.filter((x: string) => x !== R.data[0]);
      return `segment ${R.data[0]} (the moved segment) replaced by its hotzone, linear in re-encryption`;
    }
    const id = pick(r, R.data);
    seg(id).flags = ["in-reencryption"];
    return `segment ${id} (${seg(id).type}) marked in-reencryption`;
  };
  switch (Math.floor(r() * 9)) {
    case 0: {
      // the moved segment: its live copy (segment 0, encrypted until the last hotzone), its backup, or both alike
      const field = pick(r, ["size", "size", "offset", "iv_tweak", "sector_size", "encryption"] as const);
      const v =
        field === "size" ? pick(r, [L - 4096, L + 4096, L - 512, S, S + 4096, 2 * L, T, 0, 512].map(str)) :
        field === "offset" ? pick(r, [512, 4096, L, S, S + L].map(str)) :
        field === "iv_tweak" ? pick(r, [1, 8, L / 512, S / 512, (S + L) / 512].map(str)) :
        field === "sector_size" ? pick(r, [512, 1024, 4096, 8192]) : pick(r, ["aes-cbc-essiv:sha256", "aes-xts-plain", "twofish-xts-plain64"]);
      const which = pick(r, ["live", "backup", "both"] as const);
      const ids = which === "live" ? [R.data[0]!] : which === "backup" ? [R.moved!] : [R.data[0]!, R.moved!];
      for (const id of ids) seg(id)[field] = v;
      return `moved segment (${ids.map((id) => `segment ${id}`).join(" and ")}${which === "live" ? `, ${s0.type}` : ""}) ${field}=${toText(v)}`;
    }
    case 1: {
      // shift_size against the moved segment, the device and the sectors
      const v = pick(r, [L, S - 4096, S + 4096, S - 512, S + 512, 2 * S, S / 2, T, T + S, 0].map(str));
      ks.area.shift_size = v;
      return `keyslot ${R.rk} (reencrypt) area.shift_size=${v} (shift ${S}, moved ${L})`;
    }
    case 2: {
      // the requirement version against the area type (v3 goes with datashift-checksum/-journal, v2 with the rest)
      const req = pick(r, [["online-reencrypt-v2"], ["online-reencrypt-v2"], ["online-reencrypt-v3"], ["online-reencrypt-v2", "online-reencrypt-v3"], ["online-reencrypt"]]);
      const type = pick(r, [ks.area.type, "datashift-checksum", "datashift-journal", "checksum", "journal", "datashift", "none"]);
      j.config.requirements = { mandatory: req };
      ks.area.type = type;
      return `config.requirements.mandatory=${JSON.stringify(req)} with keyslot ${R.rk} (reencrypt) area.type=${JSON.stringify(type)}`;
    }
    case 3: {
      // mode and direction (never both as they are)
      const mode = pick(r, ["decrypt", "reencrypt", "encrypt"]);
      const dir = mode === "decrypt" ? "backward" : pick(r, ["forward", "backward"]);
      [ks.mode, ks.direction] = [mode, dir];
      return `keyslot ${R.rk} (reencrypt) mode=${mode} direction=${dir}`;
    }
    case 4: {
      // the last data segment (the encrypted rest at shift + p, or the plain rest): offset, iv_tweak, size
      const p = tail.type === "crypt" ? Number(tail.offset) - S : Number(tail.offset);
      const field = pick(r, ["offset", "offset+iv_tweak", "iv_tweak", "size"] as const);
      const d = pick(r, [512, -512, 4096, -4096, L, -L, S, -S]);
      if (field === "size") tail.size = pick(r, [T - p, T - p - 4096, T - p + 4096, S, T + S - Number(tail.offset)].map(str));
      if (field === "offset" || field === "offset+iv_tweak") tail.offset = rel(tail.offset, d);
      if (field === "offset+iv_tweak") tail.iv_tweak = rel(tail.iv_tweak ?? "0", d / 512);
      if (field === "iv_tweak") tail.iv_tweak = rel(tail.iv_tweak ?? "0", pick(r, [1, 8, -8, L / 512, -L / 512, S / 512]));
      return `last data segment ${tailId} (${tail.type}) ${field}=${field === "size" ? tail.size : field === "iv_tweak" ? tail.iv_tweak : `${tail.offset}${field === "offset" ? "" : `/${tail.iv_tweak}`}`}`;
    }
    case 5:
      // the progress told otherwise, consistently: the plain part before the encrypted rest grows or shrinks by d
      if (R.data.length >= 3 && tail.type === "crypt") {
        const before = seg(R.data.at(-2)!);
        const d = pick(r, [4096, -4096, L / 2, -L / 2, L, S]);
        before.size = rel(before.size, d);
        tail.offset = rel(tail.offset, d);
        tail.iv_tweak = rel(tail.iv_tweak, d / 512);
        return `boundary between segments ${R.data.at(-2)} and ${tailId} moved by ${d} (consistent lie about the progress)`;
      }
      return hotzone(); // no plain part to move
    case 6:
      return hotzone();
    case 7: {
      // the moved segment's length changed where it shows (the live copy and its backup; the encrypted rest follows)
      const d = pick(r, [4096, -4096, 512, L / 2, -L / 2, L]);
      const L2 = L + d;
      seg(R.moved!).size = str(L2);
      if (s0.type === "crypt") s0.size = str(L2);
      if (R.data.length === 2 && tail.type === "crypt") [tail.offset, tail.iv_tweak] = [str(S + L2), rel(seg(R.prev).iv_tweak, L2 / 512)];
      return `moved segment length ${L} → ${L2} (backup ${R.moved}${s0.type === "crypt" ? `, segment ${R.data[0]}` : ""}${R.data.length === 2 && tail.type === "crypt" ? `, segment ${tailId} follows` : ""})`;
    }
    default: {
      // the backups: backup-previous (the encrypted data at the shift) and backup-final (plain at 0)
      const which = pick(r, ["prev.offset", "prev.iv_tweak", "prev.size", "fin.offset", "fin.size", "fin.crypt"] as const);
      const p = seg(R.prev), f = seg(R.fin);
      if (which === "prev.offset") p.offset = pick(r, [0, L, S - 4096, S + 4096, S + L].map(str));
      if (which === "prev.iv_tweak") p.iv_tweak = pick(r, [1, 8, S / 512].map(str));
      if (which === "prev.size") p.size = pick(r, [T, T - 4096, L].map(str));
      if (which === "fin.offset") f.offset = pick(r, [512, 4096, L, S].map(str));
      if (which === "fin.size") f.size = pick(r, [T, T + S, L].map(str));
      if (which === "fin.crypt") Object.assign(f, { type: "crypt", iv_tweak: "0", encryption: p.encryption, sector_size: p.sector_size });
      return `backup ${which.startsWith("prev") ? `previous (segment ${R.prev})` : `final (segment ${R.fin})`} ${which.slice(which.indexOf(".") + 1)}${which === "fin.crypt" ? "" : `=${which.startsWith("prev") ? p[which.slice(5)] : f[which.slice(4)]}`}`;
    }
  }
}

function mutate(base: Base, r: Rnd, i: number): Mutation {
  const j = jsonOf(base.img);
  const R = roles(j);
  // a decryption with a data shift: 40% aimed at what only it has, the rest the generic mutations below
  if (base.dev && r() < 0.4) return { i, base, what: mutateDecryptShift(j, R, r, base.plainLen), img: withText(base.img, toText(j)) };
  const ks = j.keyslots[R.rk];
  const segIds = Object.keys(j.segments).sort((a, b) => +a - +b);
  const seg = (id: string) => j.segments[id];
  let what = "";
  const op = Math.floor(r() * 100);

  if (op < 28) {
    // the reencrypt keyslot's fields
    const field = pick(r, ["mode", "direction", "area.type", "area.offset", "area.size", "area.hash", "area.sector_size", "area.shift_size", "priority", "key_size", "type", "area", "extra", "id"] as const);
    const [obj, key] = field.startsWith("area.") ? [ks.area, field.slice(5)] : [ks, field];
    const how = r();
    let v: unknown;
    if (field === "id") {
      // renumbered: the keyslot under another id, its digest following (or not)
      const to = pick(r, ["0", "5", "31", "32", String(+R.rk + 1)].filter((x) => !(x in j.keyslots)));
      const follow = r() < 0.7;
      j.keyslots[to] = ks;
      delete j.keyslots[R.rk];
      if (follow) for (const d of Object.values<any>(j.digests)) d.keyslots = d.keyslots.map((x: string) => (x === R.rk ? to : x));
      return { i, base, what: `reencrypt keyslot ${R.rk} renumbered ${to}${follow ? " (digest follows)" : ""}`, img: withText(base.img, toText(j)) };
    }
    if (field === "extra") {
      const k = pick(r, ["extra", "flags", "af", "kdf", "hotzone"]);
      ks[k] = pick(r, [1, "x", {}, [], { type: "luks1" }]);
      return { i, base, what: `keyslot ${R.rk} (reencrypt) add ${k}=${JSON.stringify(ks[k])}`, img: withText(base.img, toText(j)) };
    }
    if (how < 0.12) {
      delete obj[key];
      what = `keyslot ${R.rk} (reencrypt) delete ${field}`;
    } else {
      switch (field) {
        case "mode": v = pick(r, ["reencrypt", "encrypt", "decrypt", "", "REENCRYPT", "encrypt ", 1, null]); break;
        case "direction": v = pick(r, ["forward", "backward", "", "Forward", "sideways", 0]); break;
        case "area.type": v = pick(r, ["checksum", "journal", "none", "datashift", "datashift-checksum", "datashift-journal", "", "Checksum", 1]); break;
        case "area.offset": v = r() < 0.6 ? rel(obj[key], pick(r, [-4096, -512, 512, 4096, 1, 32768, -32768, 2 * MiB])) : pick(r, [...U64_EDGES, "0", "16384", "32768"]); break;
        case "area.size": v = r() < 0.6 ? rel(obj[key], pick(r, [-4096, -512, 512, 4096, 1, -1, 2 * MiB])) : pick(r, [...U64_EDGES, "0", "4096", "8192", "32"]); break;
        case "area.hash": v = pick(r, HASHES); break;
        case "area.sector_size": v = pick(r, U32_EDGES); break;
        case "area.shift_size": v = r() < 0.5 ? rel(obj[key] ?? "2097152", pick(r, [-512, 512, -4096, 4096, 1, 2 * MiB, -2 * MiB, -1 * MiB])) : pick(r, U64_EDGES); break;
        case "priority": v = pick(r, [0, 1, 2, -1, "0", null, 2 ** 32, 1.5]); break;
        case "key_size": v = pick(r, [0, 1, 2, 32, 64, -1, "1", raw("1.0"), 2 ** 32 + 1]); break;
        case "type": v = pick(r, ["luks2", "reencrypt2", "Reencrypt", ""]); break;
        case "area": v = pick(r, [{}, null, "checksum", { type: "none", offset: ks.area.offset, size: ks.area.size }]); break;
      }
      obj[key] = v;
      what = `keyslot ${R.rk} (reencrypt) ${field}=${toText(v)}`;
    }
  } else if (op < 56) {
    // one segment's fields (data or backup)
    const hot = R.data.find((d) => seg(d).flags?.includes("in-reencryption"));
    const id = hot !== undefined && r() < 0.4 ? hot : r() < 0.5 ? pick(r, R.data) : pick(r, segIds);
    const s = seg(id);
    const role = s.flags?.length ? s.flags.join("+") : "data";
    const field = pick(r, ["offset", "size", "size", "iv_tweak", "encryption", "sector_size", "type", "offset+size"] as const);
    let v: unknown;
    if (r() < 0.08 && field !== "offset+size") {
      delete s[field];
      what = `segment ${id} (${role}) delete ${field}`;
    } else {
      switch (field) {
        case "offset": v = r() < 0.6 ? rel(s.offset, pick(r, [-4096, -512, 512, 4096, MiB, -MiB, 1, 2 * MiB])) : pick(r, U64_EDGES); s.offset = v; break;
        case "size":
          if (r() < 0.35) v = s.size === "dynamic" ? pick(r, [String(DATA), String(DATA - 4096), String(DATA + 4096), String(2 * MiB), "512", String(8 * MiB)]) : "dynamic";
          else v = r() < 0.5 && s.size !== "dynamic" ? rel(s.size, pick(r, [-4096, -512, 512, 4096, 1, MiB, -MiB])) : pick(r, U64_EDGES);
          s.size = v;
          break;
        case "iv_tweak": v = r() < 0.6 ? rel(s.iv_tweak ?? "0", pick(r, [1, 8, -8, 16, 4096, 1024, -1024])) : pick(r, U64_EDGES); s.iv_tweak = v; break;
        case "encryption": v = pick(r, CIPHERS); s.encryption = v; break;
        case "sector_size": v = pick(r, U32_EDGES.concat([512, 1024, 2048, 4096, 512, 4096])); s.sector_size = v; break;
        case "type":
          if (s.type === "crypt") {
            v = pick(r, ["linear", "Crypt", "", 1]);
            s.type = v;
            if (v === "linear" && r() < 0.5) for (const k of ["iv_tweak", "encryption", "sector_size"]) delete s[k];
          } else {
            v = pick(r, ["crypt", "Linear", ""]);
            s.type = v;
            if (v === "crypt" && r() < 0.7) Object.assign(s, { iv_tweak: "0", encryption: seg(R.fin).encryption ?? "aes-xts-plain64", sector_size: seg(R.fin).sector_size ?? 512 });
          }
          break;
        case "offset+size": {
          const d = pick(r, [4096, -4096, 512, -512, MiB]);
          s.offset = rel(s.offset, d);
          if (s.size !== "dynamic") s.size = rel(s.size, -d);
          v = `${s.offset}/${s.size}`;
          break;
        }
      }
      what = `segment ${id} (${role}) ${field}=${toText(v)}`;
    }
  } else if (op < 66) {
    // segment flags
    const id = pick(r, segIds);
    const s = seg(id);
    const sub = Math.floor(r() * 6);
    const role = s.flags?.length ? s.flags.join("+") : "data";
    if (sub === 0) {
      const f = pick(r, FLAGS);
      s.flags = [...(s.flags ?? []), f];
      what = `segment ${id} (${role}) add flag ${f}`;
    } else if (sub === 1 && s.flags?.length) {
      const f = pick(r, s.flags);
      s.flags = s.flags.filter((x: string) => x !== f);
      if (!s.flags.length && r() < 0.5) delete s.flags;
      what = `segment ${id} (${role}) remove flag ${f}`;
    } else if (sub === 2) {
      seg(R.prev).flags = ["backup-final"];
      seg(R.fin).flags = ["backup-previous"];
      what = `swap backup-previous (${R.prev}) and backup-final (${R.fin}) flags`;
    } else if (sub === 3) {
      const f = pick(r, FLAGS);
      s.flags = [f];
      what = `segment ${id} (${role}) flags=[${f}]`;
    } else if (sub === 4) {
      const v = pick(r, [[], "backup-final", [1], [null], ["backup-final", "backup-final"], ["in-reencryption", "backup-final"], {}]);
      s.flags = v;
      what = `segment ${id} (${role}) flags=${JSON.stringify(v)}`;
    } else {
      // in-reencryption moved to, or put on, another data segment
      const hot = R.data.find((d) => seg(d).flags?.includes("in-reencryption"));
      if (hot) delete seg(hot).flags;
      const to = pick(r, R.data);
      seg(to).flags = ["in-reencryption"];
      what = hot ? `in-reencryption moved from segment ${hot} to ${to}` : `segment ${to} (data) marked in-reencryption`;
    }
  } else if (op < 74) {
    // segments: renumbering, deletion, duplication
    const sub = Math.floor(r() * 6);
    const ids = segIds;
    if (sub === 0 && ids.length > 1) {
      const a = pick(r, ids);
      let b = pick(r, ids);
      if (b === a) b = ids[(ids.indexOf(a) + 1) % ids.length]!;
      [j.segments[a], j.segments[b]] = [j.segments[b], j.segments[a]];
      for (const d of Object.values<any>(j.digests)) d.segments = d.segments.map((x: string) => (x === a ? b : x === b ? a : x));
      what = `segments ${a} and ${b} swap ids (digests follow)`;
    } else if (sub === 1 && ids.length > 1) {
      const a = pick(r, ids);
      let b = pick(r, ids);
      if (b === a) b = ids[(ids.indexOf(a) + 1) % ids.length]!;
      [j.segments[a], j.segments[b]] = [j.segments[b], j.segments[a]];
      what = `segments ${a} and ${b} swap ids (digests do not follow)`;
    } else if (sub === 2) {
      const a = pick(r, ids);
      delete j.segments[a];
      const fix = r() < 0.5;
      if (fix) for (const d of Object.values<any>(j.digests)) d.segments = d.segments.filter((x: string) => x !== a);
      what = `segment ${a} deleted${fix ? " (and from the digests)" : ""}`;
    } else if (sub === 3) {
      const a = pick(r, ids);
      const nid = String(Math.max(...ids.map(Number)) + pick(r, [1, 2]));
      j.segments[nid] = structuredClone(j.segments[a]);
      what = `segment ${a} duplicated as ${nid}`;
    } else if (sub === 4) {
      // every segment id shifted by one (a gap at 0)
      const next: any = {};
      for (const id of ids) next[String(+id + 1)] = j.segments[id];
      j.segments = next;
      for (const d of Object.values<any>(j.digests)) d.segments = d.segments.map((x: string) => String(+x + 1));
      what = "segment ids shifted by one (digests follow)";
    } else {
      // the backups in another order (ids permuted among themselves, digests follow)
      const bk = ids.filter((id) => !R.data.includes(id));
      const perm = [...bk].reverse();
      const saved = Object.fromEntries(bk.map((id) => [id, j.segments[id]]));
      bk.forEach((id, k) => (j.segments[perm[k]!] = saved[id]));
      const map = Object.fromEntries(bk.map((id, k) => [id, perm[k]!]));
      for (const d of Object.values<any>(j.digests)) d.segments = d.segments.map((x: string) => map[x] ?? x);
      what = `backup segments reordered (${bk.join(",")} → ${perm.join(",")}, digests follow)`;
    }
  } else if (op < 84) {
    // digests: which keyslots and segments each one covers
    const sub = Math.floor(r() * 8);
    const ds = Object.keys(j.digests);
    if (sub === 0) {
      const d = pick(r, ds);
      const s = pick(r, j.digests[d].segments.length ? j.digests[d].segments : ["0"]);
      j.digests[d].segments = j.digests[d].segments.filter((x: string) => x !== s);
      what = `digest ${d} no longer lists segment ${s}`;
    } else if (sub === 1) {
      const d = pick(r, ds);
      const s = pick(r, segIds);
      if (!j.digests[d].segments.includes(s)) j.digests[d].segments.push(s);
      what = `digest ${d} also lists segment ${s}`;
    } else if (sub === 2 && R.dOld !== undefined && R.dNew !== undefined) {
      [j.digests[R.dOld].segments, j.digests[R.dNew].segments] = [j.digests[R.dNew].segments, j.digests[R.dOld].segments];
      what = `old (${R.dOld}) and new (${R.dNew}) digests swap their segments`;
    } else if (sub === 3) {
      const to = pick(r, ds.filter((d) => d !== R.dRe));
      j.digests[R.dRe].keyslots = [];
      j.digests[to].keyslots.push(R.rk);
      what = `reencrypt keyslot ${R.rk} moved to digest ${to}`;
    } else if (sub === 4) {
      const k = pick(r, R.luks);
      for (const d of Object.values<any>(j.digests)) d.keyslots = d.keyslots.filter((x: string) => x !== k);
      j.digests[R.dRe].keyslots.push(k);
      what = `keyslot ${k} moved to the re-encryption digest ${R.dRe}`;
    } else if (sub === 5) {
      j.digests[R.dRe].segments = [pick(r, segIds)];
      what = `re-encryption digest ${R.dRe} lists segment ${j.digests[R.dRe].segments[0]}`;
    } else if (sub === 6) {
      delete j.digests[R.dRe];
      what = `re-encryption digest ${R.dRe} deleted`;
    } else {
      const d = pick(r, ds);
      const s = pick(r, segIds);
      j.digests[d].segments = [...j.digests[d].segments, s, s];
      what = `digest ${d} lists segment ${s} twice more`;
    }
  } else if (op < 91) {
    // the requirement
    const v = pick(r, [
      [], ["online-reencrypt"], ["online-reencrypt-v3"], ["online-reencrypt-v1"], ["online-reencrypt-v2", "online-reencrypt-v2"], ["online-reencrypt-v2", "online-reencrypt-v3"],
      ["online-reencrypt-v3", "online-reencrypt-v2"], ["online-reencrypt-v20"], ["online-reencrypt-v02"], ["online-reencrypt-v2 "], ["Online-reencrypt-v2"], ["online-reencrypt-v2", "x-future"],
      ["offline-reencrypt"], "online-reencrypt-v2", ["online-reencrypt-v"], ["online-reencrypt-v0"], ["online-reencrypt-v4294967298"], null,
    ]);
    if (v === null) delete j.config.requirements;
    else j.config.requirements = { mandatory: v };
    what = v === null ? "config.requirements deleted" : `config.requirements.mandatory=${JSON.stringify(v)}`;
  } else if (op < 95) {
    // metadata that lies consistently (as a genuine state would look): the format cannot tell, both tools should agree
    const sub = Math.floor(r() * 3);
    if (sub === 0 && R.data.length >= 2 && seg(R.data[0]!).size !== "dynamic" && !seg(R.data[1]!).flags?.length && seg(R.data[0]!).type === "crypt" && seg(R.data[1]!).type === "crypt") {
      const d = pick(r, [4096, -4096, 65536, -65536, 512 * 1024]);
      const [s0, s1] = [seg(R.data[0]!), seg(R.data[1]!)];
      s0.size = rel(s0.size, d);
      s1.offset = rel(s1.offset, d);
      s1.iv_tweak = rel(s1.iv_tweak, d / 512);
      what = `boundary between segments ${R.data[0]} and ${R.data[1]} moved by ${d}`;
    } else if (sub === 1) {
      // "not started": the data segment is the old one again
      const p = structuredClone(seg(R.prev));
      delete p.flags;
      const backups = segIds.filter((id) => !R.data.includes(id));
      const next: any = { "0": p };
      backups.forEach((id, k) => (next[String(k + 1)] = j.segments[id]));
      j.segments = next;
      const map = Object.fromEntries(backups.map((id, k) => [id, String(k + 1)]));
      for (const d of Object.values<any>(j.digests)) d.segments = d.segments.filter((x: string) => map[x]).map((x: string) => map[x]);
      if (p.type === "crypt" && R.dOld !== undefined) j.digests[R.dOld].segments.unshift("0");
      what = "data segments replaced by one old segment (a run that never started)";
    } else {
      // "all done": the data segment is the final one
      const f = structuredClone(seg(R.fin));
      delete f.flags;
      const backups = segIds.filter((id) => !R.data.includes(id));
      const next: any = { "0": f };
      backups.forEach((id, k) => (next[String(k + 1)] = j.segments[id]));
      j.segments = next;
      const map = Object.fromEntries(backups.map((id, k) => [id, String(k + 1)]));
      for (const d of Object.values<any>(j.digests)) d.segments = d.segments.filter((x: string) => map[x]).map((x: string) => map[x]);
      if (f.type === "crypt" && R.dNew !== undefined) j.digests[R.dNew].segments.unshift("0");
      what = "data segments replaced by one final segment (a run whose data is all done)";
    }
  } else {
    // a numeric field of the re-encryption metadata set to an edge value
    const fields: [any, string, string][] = [
      [ks.area, "offset", `keyslot ${R.rk}.area.offset`],
      [ks.area, "size", `keyslot ${R.rk}.area.size`],
      [ks, "key_size", `keyslot ${R.rk}.key_size`],
      ...(ks.area.sector_size !== undefined ? [[ks.area, "sector_size", `keyslot ${R.rk}.area.sector_size`] as [any, string, string]] : []),
      ...(ks.area.shift_size !== undefined ? [[ks.area, "shift_size", `keyslot ${R.rk}.area.shift_size`] as [any, string, string]] : []),
      ...segIds.flatMap((id) => ["offset", "size", "iv_tweak", "sector_size"].filter((k) => seg(id)[k] !== undefined).map((k) => [seg(id), k, `segment ${id} (${seg(id).flags?.join("+") || "data"}) ${k}`] as [any, string, string])),
    ];
    const [o, k, name] = pick(r, fields);
    const v = typeof o[k] === "number" ? pick(r, U32_EDGES) : pick(r, U64_EDGES);
    o[k] = v;
    what = `${name}=${toText(v)}`;
  }
  return { i, base, what, img: withText(base.img, toText(j)) };
}

// ---------------------------------------------------------------------------------------------------------------
// Judges

interface Verdict {
  /** luksDump / trustvol dump accepted the header. */
  dump: boolean;
  dumpErr: string;
  /** Exit status of the resume (cryptsetup: of its last step). */
  rc: number;
  err: string;
  /** cryptsetup needed `repair` first (a crashed hotzone). */
  repaired?: boolean;
  /** The file changed (trustvol: must not on a refusal). */
  changed: boolean;
  /** When rc = 0: the finished volume's plaintext, or why it could not be read. */
  plain?: { sha?: string; why?: string };
  /** A broken rule of trustvol's (multi-line error, stack trace, file changed on refusal, hang). */
  problem?: string;
}

/** `--header FILE` for a detached header, else nothing. */
const hdrArg = (hdr?: string) => (hdr ? ["--header", hdr] : []);

function csResumeArgs(pw: string, img: string, hdr?: string): string[] {
  return ["reencrypt", "--resume-only", "--force-offline-reencrypt", "--disable-locks", "-q", ...hdrArg(hdr), "--key-file", pw, img];
}

/** sha256 of the files a judge may change (the image; with a detached header, the header file too). */
const shaOfFiles = (img: string, hdr?: string) => sha(readFileSync(img)) + (hdr ? sha(readFileSync(hdr)) : "");

/**
 * The finished volume's plaintext, read without trustvol: cryptsetup loads the header and dumps the volume key; the
 * one data segment is decrypted here (aes-xts-plain64, IV = iv_tweak + 512-byte sector index, per sector_size). A
 * decryption (`hdr`: its detached header) must end in one linear segment: its bytes are the plaintext.
 */
async function plainOf(img: string, pw: string, len: number, hdr?: string): Promise<{ sha?: string; why?: string }> {
  const d = await exec("cryptsetup", ["luksDump", "--dump-json-metadata", ...hdrArg(hdr), img]);
  if (d.rc !== 0) return { why: `cryptsetup cannot load the result: ${lastLine(d.err)}` };
  const j = JSON.parse(d.out);
  if (Object.values<any>(j.keyslots).some((k) => k.type === "reencrypt") || j.config.requirements?.mandatory?.length) return { why: "the result is still in re-encryption" };
  const segs = Object.values<any>(j.segments);
  if (segs.length !== 1) return { why: `the result has ${segs.length} segments` };
  const seg = segs[0];
  if (hdr) {
    if (seg.type !== "linear") return { why: `the decryption's result is not plain: ${JSON.stringify(seg)}` };
    const file = readFileSync(img), off = Number(seg.offset);
    if (off + len > (seg.size === "dynamic" ? file.length : off + Number(seg.size))) return { why: `the result's segment ${JSON.stringify(seg)} holds fewer than the ${len} bytes of the plaintext` };
    return { sha: sha(file.subarray(off, off + len)) };
  }
  if (seg.type !== "crypt" || seg.encryption !== "aes-xts-plain64") return { why: `the result's segment is ${JSON.stringify(seg)}` };
  const k = await exec("cryptsetup", ["luksDump", "--dump-volume-key", "-q", "--key-file", pw, img]);
  const m = k.out.match(/MK dump:\s*((?:[0-9a-f]{2}\s+)+)/);
  if (k.rc !== 0 || !m) return { why: `cryptsetup dumps no volume key: ${lastLine(k.err)}` };
  const key = Buffer.from(m[1]!.replace(/\s+/g, ""), "hex");
  const ss = Number(seg.sector_size), off = Number(seg.offset), tweak = BigInt(seg.iv_tweak);
  const file = readFileSync(img);
  const end = seg.size === "dynamic" ? file.length : off + Number(seg.size);
  if (off + len > end) return { why: `the result's segment holds ${end - off} bytes, fewer than the ${len} of the plaintext` };
  const h = createHash("sha256");
  const iv = Buffer.alloc(16);
  for (let p = 0; p < len; p += ss) {
    iv.fill(0);
    iv.writeBigUInt64LE(tweak + BigInt(p / 512));
    const dc = createDecipheriv(key.length === 64 ? "aes-256-xts" : "aes-128-xts", key, iv).setAutoPadding(false);
    const out = Buffer.concat([dc.update(file.subarray(off + p, off + p + ss)), dc.final()]);
    h.update(out.subarray(0, Math.min(ss, len - p)));
  }
  return { sha: h.digest("hex") };
}

async function judgeCryptsetup(judge: CsJudge, img: string, pw: string, len: number, hdr?: string): Promise<Verdict> {
  const before = shaOfFiles(img, hdr);
  const d = await csJudge(judge, ["luksDump", ...hdrArg(hdr), img]);
  // --disable-locks: the pool's copies share a UUID, and cryptsetup's re-encryption lock (named by it) would refuse the
  // second run at once; it only skips the locks (lib/luks2/luks2_reencrypt.c reencrypt_lock_internal), no check.
  const resume = () => csJudge(judge, csResumeArgs(pw, img, hdr));
  let r = await resume();
  let repaired = false;
  if (r.rc !== 0 && /requires reencryption recovery/.test(r.err)) {
    // cryptsetup 2.6.1 resumes a crashed hotzone only after `repair` (trustvol's resume recovers it itself)
    const p = await csJudge(judge, ["repair", "--disable-locks", "-q", ...hdrArg(hdr), "--key-file", pw, img]);
    repaired = true;
    r = p.rc === 0 ? await resume() : { ...p, err: `repair: exit ${p.rc}: ${lastLine(p.err) || lastLine(p.out)}` };
    // the moved segment's hotzone is a decryption's last: recovering it, `repair` finishes the volume (checked below)
    if (p.rc === 0 && r.rc !== 0 && /Device reencryption not in progress/.test(r.err)) r = { rc: 0, out: "", err: "" };
  }
  const v: Verdict = { dump: d.rc === 0, dumpErr: lastLine(d.err), rc: r.rc, err: lastLine(r.err), repaired, changed: shaOfFiles(img, hdr) !== before };
  if (r.rc === 0) v.plain = await plainOf(img, pw, len, hdr);
  return v;
}

/** trustvol's verdicts from a long-lived child running the CLI in process (one image at a time per child). */
class TrustvolJudge {
  private child!: ChildProcessWithoutNullStreams;
  private buf = "";
  private waiting: ((line: string) => void)[] = [];
  constructor(private readonly lockDir: string) {
    this.start();
  }
  private start(): void {
    this.child = spawn(process.execPath, ["--import", "tsx", fileURLToPath(import.meta.url)], { env: { ...process.env, TRUSTVOL_REDIFF_CHILD: "1", TRUSTVOL_TEST: "1", TRUSTVOL_LUKS2_LOCK_DIR: this.lockDir } });
    this.child.stderr.on("data", (d) => process.stderr.write(d));
    this.child.stdout.setEncoding("utf8");
    this.child.stdout.on("data", (d: string) => {
      this.buf += d;
      for (let i; (i = this.buf.indexOf("\n")) >= 0; ) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        this.waiting.shift()?.(line);
      }
    });
  }
  judge(img: string, pw: string, hdr?: string): Promise<Omit<Verdict, "plain" | "problem">> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        // a hang is a crash: restart the child for the next image
        this.waiting = [];
        this.child.kill("SIGKILL");
        this.buf = "";
        this.start();
        resolve({ dump: false, dumpErr: "", rc: -1, err: `trustvol did not answer in ${JUDGE_TIMEOUT_MS / 1000}s`, changed: false });
      }, JUDGE_TIMEOUT_MS);
      this.waiting.push((line) => {
        clearTimeout(timer);
        resolve(JSON.parse(line));
      });
      this.child.stdin.write(JSON.stringify({ img, pw, hdr }) + "\n");
    });
  }
  close(): void {
    this.child.stdin.end();
  }
}

/** The child's side: `trustvol dump` and `trustvol reencrypt --resume-only` in process, the file hashed around them. */
async function childLoop(): Promise<void> {
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    const { img, pw, hdr } = JSON.parse(line) as { img: string; pw: string; hdr?: string };
    let out: Omit<Verdict, "plain" | "problem">;
    try {
      const before = shaOfFiles(img, hdr);
      const d = await trustvolInProcess(["dump", ...hdrArg(hdr), img]);
      const r = await trustvolInProcess(["reencrypt", "--resume-only", "-q", ...hdrArg(hdr), "--key-file", pw, img]);
      out = { dump: d.status === 0, dumpErr: d.stderr.trim(), rc: r.status, err: r.stderr.trim(), changed: shaOfFiles(img, hdr) !== before };
    } catch (e) {
      out = { dump: false, dumpErr: "", rc: -1, err: `the CLI threw: ${(e as Error).stack ?? e}`, changed: false };
    }
    process.stdout.write(JSON.stringify(out) + "\n");
  }
}

/** trustvol's own rules, whatever cryptsetup says. */
function problemOf(v: Verdict): string | undefined {
  for (const [what, s, rc] of [["reencrypt", v.err, v.rc], ["dump", v.dumpErr, v.dump ? 0 : 1]] as const) {
    if (rc === 0) continue;
    const lines = s.split("\n").filter(Boolean);
    if (/internal error|the CLI threw|did not answer|\bat .*\.[tj]s:\d+|^\s+at /m.test(s)) return `${what}: crash: ${s}`;
    if (lines.length !== 1) return `${what}: ${lines.length} lines on stderr: ${s}`;
    if (!/^trustvol: /.test(lines[0]!)) return `${what}: stderr is not a trustvol error line: ${s}`;
  }
  if (v.rc !== 0 && v.changed) return `refused (exit ${v.rc}) but the file changed: ${v.err}`;
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Classes, and where a disagreement is allowed

type Cls = "agree-refuse" | "agree-accept" | "DATA-LOSS" | "cryptsetup-data-loss" | "trustvol-more-lenient" | "trustvol-stricter" | "trustvol-crash";

interface Result {
  m: Mutation;
  cs: Verdict;
  tv: Verdict;
  cls: Cls;
  dumpDisagrees: boolean;
  note?: string;
  /** The ALLOWED entry that explains it, if any. */
  allowed?: string;
}

const plainOk = (v: Verdict, b: Base) => v.plain?.sha === b.plainSha;

/** The mutated header's reencrypt area type (undefined when it does not parse). */
function areaTypeOf(r: Result): unknown {
  try {
    return Object.values<any>(jsonOf(r.m.img).keyslots).find((k) => k?.type === "reencrypt")?.area?.type;
  } catch {
    return undefined;
  }
}

/** A decryption with a data shift whose last data segment has a fixed size, exactly what is left of the plain data. */
function tailSizedExactly(r: Result): boolean {
  try {
    const j = jsonOf(r.m.img);
    const ks = Object.values<any>(j.keyslots).find((k) => k?.type === "reencrypt");
    const data = Object.keys(j.segments).sort((a, b) => +a - +b).map((id) => j.segments[id]).filter((x) => !(x.flags ?? []).some((f: string) => f.startsWith("backup-")));
    const t = data.at(-1);
    const p = Number(t.offset) - (t.type === "crypt" ? Number(ks.area.shift_size) : 0);
    return t.size !== "dynamic" && Number(t.size) === r.m.base.plainLen - p;
  } catch {
    return false;
  }
}

/** trustvol's refusals of a decryption-with-a-data-shift layout (reencrypt-shift-decrypt.ts checkDecryptShiftLayout/Device). */
const DEC_SHIFT_LAYOUT =
  /decryption with a data shift|the moved segment|segment \d+ is not (at offset 0|the moved segment|where the plain data|the encrypted data from)|the data after the moved segment|follows the hotzone|does not fit the data shift|is dynamic but not the last|is not the dynamic end|the segments describe|does not start and end on the \d+-byte sector grid/;

function classify(m: Mutation, c: Verdict, t: Verdict): Result {
  const res = (cls: Cls, note?: string): Result => ({ m, cs: c, tv: t, cls, dumpDisagrees: c.dump !== t.dump, note });
  const problem = t.problem ?? problemOf(t);
  if (problem) return res("trustvol-crash", problem);
  if (t.rc === 0 && !plainOk(t, m.base)) return res("DATA-LOSS", `trustvol exit 0, ${t.plain?.why ?? "plaintext differs from the original"}${c.rc === 0 ? `; cryptsetup exit 0, ${plainOk(c, m.base) ? "plaintext intact" : c.plain?.why ?? (c.plain?.sha === t.plain?.sha ? "the same wrong plaintext" : "another wrong plaintext")}` : "; cryptsetup refused"}`);
  if (c.rc !== 0 && t.rc !== 0) return res("agree-refuse");
  if (c.rc === 0 && t.rc === 0) return plainOk(c, m.base) ? res("agree-accept") : res("cryptsetup-data-loss", c.plain?.why ?? "cryptsetup's plaintext differs");
  if (t.rc === 0) return res("trustvol-more-lenient");
  return res("trustvol-stricter", plainOk(c, m.base) ? undefined : `cryptsetup's result: ${c.plain?.why ?? "plaintext differs from the original"}`);
}

/** A class that fails the test unless an ALLOWED entry explains it. */
const FAILS: Cls[] = ["DATA-LOSS", "trustvol-more-lenient", "trustvol-stricter", "trustvol-crash"];

const bothRefuse = (r: Result) => r.cs.rc !== 0 && r.tv.rc !== 0;
const dumpOnly = (r: Result) => r.dumpDisagrees && !FAILS.includes(r.cls);

/** `alsoDump`: the entry explains the dump verdict's disagreement too (else a class entry needs the dumps to agree). */
const ALLOWED: { id: string; reason: string; alsoDump?: boolean; match: (r: Result) => boolean }[] = [
  {
    id: "trustvol-refuses-unknown-data-segment-flag",
    reason:
      "a data segment carrying a flag other than in-reencryption (\"bogus\", \"in-reencryption \"): cryptsetup 2.6.1 only ever looks a flag up by exact name (json_segment_contains_flag) and ignores the rest; trustvol refuses a flag it does not know (reencrypt-metadata.ts loadReencryptState) rather than guess what it means — stricter, nothing written",
    match: (r) => r.cls === "trustvol-stricter" && /data segment \d+ has an unknown flag/.test(r.tv.err),
  },
  {
    id: "cryptsetup-honours-shift_size-of-other-area-types",
    reason:
      "area.shift_size put on a checksum/journal/none reencrypt keyslot: reenc_keyslot_validate reads it only for datashift types and the re-encryption digest serializes it only for them (luks2_reencrypt_digest.c), yet reencrypt_data_shift() (luks2_reencrypt.c) applies it whatever the type — its refusals here ('Failed to write reencryption resilience metadata', 'Failed to load LUKS2 reencryption context') are that bug, and with other values it re-encrypts at the wrong place and garbles the data (class cryptsetup-data-loss). trustvol ignores the field for those types (plaintext intact), and refuses one that is not a decimal string (stricter, nothing written)",
    match: (r) =>
      /\(reencrypt\) area\.shift_size=/.test(r.m.what) && !/^(enc|dec)-shift/.test(r.m.base.name) &&
      ((r.cls === "trustvol-more-lenient" && plainOk(r.tv, r.m.base)) || (r.cls === "trustvol-stricter" && /shift_size must be a decimal string/.test(r.tv.err))),
  },
  {
    id: "trustvol-refuses-data-segments-that-do-not-meet",
    reason:
      "a data segment's offset or size moved so that the new and old segments leave a gap or overlap: cryptsetup's _offset_forward/_offset_backward (luks2_reencrypt.c) take the progress from segment 0's size alone and never look at where the next segment starts (with segment 0 moved into the keyslots area it then garbles the data); trustvol refuses the inconsistent geometry before writing",
    match: (r) => r.cls === "trustvol-stricter" && /old and new segments do not meet/.test(r.tv.err),
  },
  {
    id: "trustvol-refuses-offsets-beyond-2^53",
    reason:
      "a segment offset or size of 2^53 bytes (8 PiB) or more where cryptsetup never uses it (a data segment of a state it recomputes from the backups): trustvol holds offsets as exact JS numbers and refuses any value they cannot hold rather than round it (metadata.ts u64Num, 'is too large') — stricter, nothing written",
    alsoDump: true,
    match: (r) => r.cls === "trustvol-stricter" && /is too large/.test(r.tv.err) && plainOk(r.cs, r.m.base),
  },
  {
    id: "a-consistent-lie-both-tools-garble-alike",
    reason:
      "the header describes another, self-consistent progress (the data segments of a run that never started, a hotzone moved onto finished data): LUKS2 v2 authenticates only the reencrypt keyslot and the backup segments (luks2_reencrypt_digest.c), not the data segments nor the journal/checksum area, so such a header is indistinguishable from a genuine one — cryptsetup 2.6.1 accepts it and writes byte for byte the same plaintext as trustvol",
    match: (r) => r.cls === "DATA-LOSS" && r.cs.rc === 0 && !!r.tv.plain?.sha && r.tv.plain.sha === r.cs.plain?.sha,
  },
  {
    id: "trustvol-refuses-iv_tweak-that-contradicts-the-offset",
    reason:
      "a data segment whose iv_tweak is not its backup segment's plus its distance from it in 512-byte sectors (the field changed, or the offset moved without it): cryptsetup derives the field so when it writes, trusts it when it reads, and garbles the data wherever it reads through such a segment (class cryptsetup-data-loss, and DIFFERS here); trustvol refuses the contradiction wherever it is (reencrypt-metadata.ts checkIvTweaks), before writing — stricter also where cryptsetup happens never to read that segment",
    match: (r) => r.cls === "trustvol-stricter" && /iv_tweak \d+ does not follow from its offset/.test(r.tv.err),
  },
  {
    id: "trustvol-refuses-a-data-shift-layout-cryptsetup-garbles",
    reason:
      "data-shift segments moved or resized so that they no longer tile the plain data (moved copy, the rest in place, the encrypted part at the new offset): cryptsetup 2.6.1 accepts them and leaves garbled data or an unfinished volume (exit 0 with 2 segments); trustvol checks the layout and dry-runs every hotzone left before writing (reencrypt-metadata.ts checkShiftLayout) — the entry only covers cases where cryptsetup's result is wrong",
    match: (r) => r.cls === "trustvol-stricter" && /data shift|the segments cover/.test(r.tv.err) && !plainOk(r.cs, r.m.base),
  },
  {
    id: "all-done-is-taken-at-its-word",
    reason:
      "the data segments replaced by the one final segment on a rotation whose data is not done: cryptsetup's _offset_forward restarts from offset 0 when there is one segment, which happens to keep this forged state intact but garbles the genuine state of the same shape (cryptsetup killed in its own teardown after the last hotzone, reencrypt_teardown_ok: reencrypt-interop.slow.test.ts hunts it and trustvol finishes it); LUKS2 authenticates neither the data segments nor the data, so trustvol takes the header's word that the data is done, as for every other progress. For a data shift (cryptsetup 2.6.1 refuses this state, its 'datashift tail' dead end, which trustvol finishes) trustvol keeps the moved copy, the head's only copy in the forged state: it zeroes only sectors that are the head now encrypted in place (reencrypt.ts wipeMovedHead; test/ops/reencrypt-shift-finish.test.ts). For a decryption with a data shift (cryptsetup refuses the forged state, or resumes it by decrypting the moved segment again) trustvol finalises too, and zeroes the device's last shift only where it is stale ciphertext of plaintext now in place (reencrypt.ts wipeStaleTail), so the forged state's data, never moved, stays on the device",
    match: (r) => r.cls === "DATA-LOSS" && /data segments replaced by one final segment/.test(r.m.what),
  },
  {
    id: "json-number-literal-with-a-fraction",
    reason:
      "an integer field written as 1.0 or 4.096e3: json-c types it as a double and cryptsetup refuses it (luksDump too); JSON.parse gives the same number as 1 or 4096, and trustvol reads that value (nothing else differs: plaintext intact)",
    alsoDump: true,
    match: (r) => r.cls === "trustvol-more-lenient" && /=[0-9]+(\.[0-9]+)?e[0-9]+|=[0-9]+\.[0-9]+/.test(r.m.what) && plainOk(r.tv, r.m.base),
  },
  {
    id: "dump: trustvol requires a digest for the reencrypt keyslot",
    reason:
      "the re-encryption digest deleted: cryptsetup's LUKS2_keyslots_validate demands exactly one digest only of luks2 keyslots, so luksDump still shows the header, but its resume refuses it ('Reencryption metadata is invalid'); trustvol refuses to load a keyslot no digest covers (metadata.ts validateMetadata) — both refuse the run",
    match: (r) => dumpOnly(r) && bothRefuse(r) && !r.tv.dump && /keyslot \d+ is not assigned to any digest/.test(r.tv.dumpErr),
  },
  {
    id: "dump: trustvol requires sector-aligned keyslot areas",
    reason: "a reencrypt keyslot area at an offset that is not a multiple of 512: cryptsetup's hdr_validate_areas checks bounds and overlap only (luksDump shows it) but its resume refuses it; trustvol refuses it at load — both refuse the run",
    match: (r) => dumpOnly(r) && bothRefuse(r) && !r.tv.dump && /area is not sector-aligned/.test(r.tv.dumpErr),
  },
  {
    id: "dump: datashift-checksum without shift_size",
    reason:
      "area.type datashift-checksum without a valid shift_size (missing, a number, zero): reenc_keyslot_validate (luks2_keyslot_reenc.c) takes its checksum branch for that type and, being an else-if, never checks shift_size, so luksDump shows it; its resume refuses it (a rotation's keyslot made datashift-checksum: 2.6.1 resumes no such type without a moved segment; a decryption with a data shift: 'Reencryption metadata is invalid', or it fails later); trustvol refuses it at load — both refuse the run",
    match: (r) => dumpOnly(r) && bothRefuse(r) && !r.tv.dump && (/area\.type="datashift-checksum"/.test(r.m.what) || (/shift_size/.test(r.m.what) && areaTypeOf(r) === "datashift-checksum")) && /shift_size must be (a decimal string|a non-zero multiple of 512)/.test(r.tv.dumpErr),
  },
  {
    id: "dump: keyslot id 32 or more",
    reason: "the reencrypt keyslot renumbered 32: cryptsetup's numbered() takes any decimal key, so luksDump shows it, though 2.6.1 has keyslots 0..31 only (LUKS2_KEYSLOTS_MAX) and its resume refuses it; trustvol refuses the id at load — both refuse the run",
    match: (r) => dumpOnly(r) && bothRefuse(r) && !r.tv.dump && /keyslot id "\d+" is not a number below 32/.test(r.tv.dumpErr),
  },
  {
    id: "dump: unknown reencrypt area type",
    reason:
      "a reencrypt keyslot whose area.type is none of checksum, journal, none, datashift(-checksum, -journal) (\"Checksum\", \"\"): reenc_keyslot_validate (luks2_keyslot_reenc.c) has no else branch for an unknown type, so luksDump shows it, and its resume refuses it (the type is in the re-encryption digest: 'Reencryption metadata is invalid'); trustvol refuses it at load — both refuse the run",
    match: (r) => dumpOnly(r) && bothRefuse(r) && !r.tv.dump && /area\.type=/.test(r.m.what) && /area\.type ".*" is unknown/.test(r.tv.dumpErr),
  },
  {
    id: "trustvol-refuses-a-decrypt-shift-layout-cryptsetup-garbles",
    reason:
      "a decryption with a data shift whose data segments no longer describe the data as it lies (the moved copy at 0, the plain part after it, the ciphertext one shift further on; a run that never started, the moved segment's hotzone forged over clean data, the encrypted rest moved): cryptsetup 2.6.1 accepts them and leaves garbled data or an unfinished volume; trustvol checks the layout (reencrypt-shift-decrypt.ts checkDecryptShiftLayout) before writing — the entry only covers cases where cryptsetup's result is wrong",
    match: (r) => r.cls === "trustvol-stricter" && !!r.m.base.dev && DEC_SHIFT_LAYOUT.test(r.tv.err) && !plainOk(r.cs, r.m.base),
  },
  {
    id: "trustvol-refuses-decrypt-shift-data-segments-that-misdescribe-the-device",
    reason:
      "a decryption with a data shift whose plain or encrypted data segment has an offset, size or iv_tweak that is not where the layout puts it (or a sized last segment that is not what is left of the device): LUKS2 authenticates only the backups, cryptsetup reads the ciphertext through backup-previous/backup-moved-segment and runs its hotzones to the device's end, so here it happens to write the right plaintext, but an open of the device mid-run maps the data segments as they are (LUKS2_assembly_multisegment_dmd: the wrong bytes); trustvol cannot tell which of the header and the device is wrong and refuses before writing (checkDecryptShiftLayout/checkDecryptShiftDevice)",
    match: (r) => r.cls === "trustvol-stricter" && !!r.m.base.dev && (DEC_SHIFT_LAYOUT.test(r.tv.err) || /is too small for data segment \d+/.test(r.tv.err)) && plainOk(r.cs, r.m.base) && !/does not fit the data shift/.test(r.tv.err) && !tailSizedExactly(r),
  },
  {
    id: "trustvol-refuses-a-decrypt-shift-hotzone-longer-than-the-shift",
    reason:
      "a crashed hotzone of a decryption with a data shift made longer than the shift: its destination then overlaps its own source (ciphertext one shift further on), so if any of it was written, redoing it reads overwritten ciphertext; cryptsetup's repair redoes it (right here only because the kill left it unwritten), trustvol refuses it before writing",
    match: (r) => r.cls === "trustvol-stricter" && !!r.m.base.dev && /the hotzone in segment \d+ does not fit the data shift/.test(r.tv.err),
  },
];

// ---------------------------------------------------------------------------------------------------------------

if (process.env.TRUSTVOL_REDIFF_CHILD === "1") void childLoop();
else
{
  if (N > 0)
    test("reencrypt differential: mutated mid-re-encryption LUKS2 headers — trustvol is as strict as cryptsetup 2.6.1 and never loses data", { timeout: 30 * 60_000 }, (t) => differential(t, false, N, SEED));
  // the same states and mutation kinds, another seed, judged by today's cryptsetup: the ALLOWED list holds for it too
  if (N27 > 0)
    test("reencrypt differential: the same, judged by cryptsetup 2.7.5 (Debian 13)", { timeout: 30 * 60_000 }, (t) => differential(t, true, N27, SEED + 1));
}

async function differential(t: TestContext, cs27: boolean, N: number, SEED: number): Promise<void> {
  if (!needTools(t, "cryptsetup")) return;
  if (!cliHasReencrypt()) return void t.todo("engine not merged: `trustvol reencrypt` is an unknown command");
  const { dir, cleanup } = fastTmpDir("trustvol-rediff-");
  t.after(cleanup);
  let judge: CsJudge;
  if (cs27) {
    const root = needDebian13(t);
    if (!root) return;
    judge = { root, dir };
  }
  const savedLock = process.env.TRUSTVOL_LUKS2_LOCK_DIR;
  process.env.TRUSTVOL_LUKS2_LOCK_DIR = join(dir, "locks-main"); // the library runs that make the mid-run states
  t.after(() => (savedLock === undefined ? delete process.env.TRUSTVOL_LUKS2_LOCK_DIR : (process.env.TRUSTVOL_LUKS2_LOCK_DIR = savedLock)));
  const pw = join(dir, "pw");
  writeFileSync(pw, PASSPHRASE, { mode: 0o600 });
  chmodSync(pw, 0o600);
  const t0 = Date.now();
  const bases = await makeBases(dir, pw);
  const tBases = Date.now() - t0;
  if (process.env.TRUSTVOL_REDIFF_BASES) {
    // the base states, to replay a case by hand: <name>.img and <name>.sha256 (the plaintext's hash and length)
    mkdirSync(process.env.TRUSTVOL_REDIFF_BASES, { recursive: true });
    for (const b of bases) {
      writeFileSync(join(process.env.TRUSTVOL_REDIFF_BASES, `${b.name}.img`), b.dev ?? b.img);
      if (b.dev) writeFileSync(join(process.env.TRUSTVOL_REDIFF_BASES, `${b.name}.hdr`), b.img);
      writeFileSync(join(process.env.TRUSTVOL_REDIFF_BASES, `${b.name}.sha256`), `${b.plainSha} ${b.plainLen}\n`);
    }
  }

  // Mutations are made one at a time in a fixed order (the PRNG sequence does not depend on the pool): first every
  // base unmodified, then N mutations over the bases in turn.
  const r = prng(SEED);
  const total = bases.length + N;
  let made = 0;
  const next = (): Mutation => {
    const i = made++;
    if (i < bases.length) return { i, base: bases[i]!, what: "unmodified", img: bases[i]!.img };
    const base = bases[(i - bases.length) % bases.length]!;
    return mutate(base, r, i);
  };

  const results: Result[] = [];
  const judges = Array.from({ length: POOL }, (_, w) => {
    mkdirSync(join(dir, `locks${w}`), { recursive: true, mode: 0o700 });
    return new TrustvolJudge(join(dir, `locks${w}`));
  });
  t.after(() => judges.forEach((j) => j.close()));
  let spawned = 0, refusals = 0, csMs = 0, tvMs = 0, plainMs = 0;
  const worker = async (w: number) => {
    while (made < total) {
      const m = next();
      if (ONLY && !ONLY.has(m.i)) continue;
      // files of the judgement: the image (with a detached header: the device, and the header file that was mutated)
      const files = (p: string) => {
        const img = join(dir, `${p}${w}.img`), hdr = m.base.dev ? join(dir, `${p}${w}.hdr`) : undefined;
        writeFileSync(img, m.base.dev ?? m.img);
        if (hdr) writeFileSync(hdr, m.img);
        return [img, hdr] as const;
      };
      const [cp, ch] = files("c"), [tp, th] = files("t");
      const ta = Date.now();
      const [c, tvv] = await Promise.all([judgeCryptsetup(judge, cp, pw, m.base.plainLen, ch).then((v) => ((csMs += Date.now() - ta), v)), judges[w]!.judge(tp, pw, th).then((v) => ((tvMs += Date.now() - ta), v))]);
      const tvVerdict: Verdict = { ...tvv };
      const tp0 = Date.now();
      if (tvVerdict.rc === 0) tvVerdict.plain = await plainOf(tp, pw, m.base.plainLen, th);
      plainMs += Date.now() - tp0;
      if (tvVerdict.rc !== 0 && refusals++ % SPAWN_EVERY === 0) {
        // the shipped CLI (a fresh process) says the same, in one line, and leaves the file as it was
        const [sp, sh] = files("s");
        const before = shaOfFiles(sp, sh);
        const s = await exec(process.execPath, [TRUSTVOL_BIN, "reencrypt", "--resume-only", "-q", ...hdrArg(sh), "--key-file", pw, sp]);
        spawned++;
        const said = sh && th ? s.err.trim().replaceAll(sh, th).replaceAll(sp, tp) : s.err.trim().replaceAll(sp, tp);
        const diff =
          s.rc !== tvVerdict.rc ? `exit ${s.rc} (in process: ${tvVerdict.rc})` :
          said !== tvVerdict.err ? `stderr ${JSON.stringify(s.err.trim())} (in process: ${JSON.stringify(tvVerdict.err)})` :
          shaOfFiles(sp, sh) !== before ? "the file changed on a refusal" : "";
        if (diff && !problemOf(tvVerdict)) tvVerdict.problem = `the spawned CLI differs from the in-process run: ${diff}`;
      }
      const res = classify(m, c, tvVerdict);
      // an entry explains one disagreement: a class (with dump agreeing) or, its id starting "dump:", a dump verdict
      if ((FAILS.includes(res.cls) || res.dumpDisagrees) && res.cls !== "trustvol-crash")
        res.allowed = ALLOWED.find((x) => x.match(res) && (x.id.startsWith("dump:") || x.alsoDump || !res.dumpDisagrees))?.id;
      results.push(res);
      if (process.env.TRUSTVOL_REDIFF_OUT)
        appendFileSync(process.env.TRUSTVOL_REDIFF_OUT, JSON.stringify({ i: m.i, base: m.base.name, what: m.what, cls: res.cls, note: res.note, allowed: res.allowed, dumpDisagrees: res.dumpDisagrees, cs: { ...c, plain: c.plain && (c.plain.sha === m.base.plainSha ? "ok" : c.plain.why ?? "DIFFERS") }, tv: { ...tvVerdict, plain: tvVerdict.plain && (tvVerdict.plain.sha === m.base.plainSha ? "ok" : tvVerdict.plain.why ?? "DIFFERS") } }) + "\n");
      if (process.env.TRUSTVOL_REDIFF_KEEP && (FAILS.includes(res.cls) || res.dumpDisagrees)) {
        mkdirSync(process.env.TRUSTVOL_REDIFF_KEEP, { recursive: true });
        writeFileSync(join(process.env.TRUSTVOL_REDIFF_KEEP, `m${m.i}.img`), m.base.dev ?? m.img);
        if (m.base.dev) writeFileSync(join(process.env.TRUSTVOL_REDIFF_KEEP, `m${m.i}.hdr`), m.img);
      }
      m.img = Buffer.alloc(0); // judged: hundreds of 6-10 MiB images must not stay in memory
    }
  };
  await Promise.all(judges.map((_, w) => worker(w)));

  const counts = new Map<string, number>();
  const allowedHits = new Map<string, number>();
  const bad: Result[] = [];
  for (const res of results) {
    counts.set(res.cls, (counts.get(res.cls) ?? 0) + 1);
    if (res.dumpDisagrees) {
      const k = res.tv.dump ? "dump: trustvol accepts, cryptsetup refuses" : "dump: trustvol refuses, cryptsetup accepts";
      counts.set(k, (counts.get(k) ?? 0) + 1);
    }
    if (!FAILS.includes(res.cls) && !res.dumpDisagrees) continue;
    if (res.allowed) allowedHits.set(res.allowed, (allowedHits.get(res.allowed) ?? 0) + 1);
    else bad.push(res);
  }
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  t.diagnostic(`judge: ${cs27 ? "cryptsetup 2.7.5 (Debian 13 root)" : "the host's cryptsetup"}; seed ${SEED}: ${results.length} judged (${bases.length} unmodified bases + ${N} mutations) in ${secs}s (bases ${tBases} ms), pool ${POOL}, ${spawned} spawned-CLI samples; summed over the pool: cryptsetup ${csMs} ms, trustvol ${tvMs} ms, reading trustvol's results ${plainMs} ms`);
  for (const [k, n] of [...counts].sort()) t.diagnostic(`${k}: ${n}`);
  for (const [k, n] of allowedHits) t.diagnostic(`allowed (${k}): ${n}`);
  const line = (b: Result) =>
    `#${b.m.i} ${b.m.base.name}: ${b.m.what} → ${b.cls}${b.dumpDisagrees ? " (dump disagrees)" : ""}${b.note ? ` [${b.note}]` : ""} | cryptsetup: dump ${b.cs.dump ? "ok" : "refused"}, resume exit ${b.cs.rc}${b.cs.repaired ? " (after repair)" : ""} ${b.cs.err} | trustvol: dump ${b.tv.dump ? "ok" : `refused: ${b.tv.dumpErr}`}, resume exit ${b.tv.rc} ${b.tv.err}`;

  // The premise: every base state resumes with both tools to its plaintext.
  for (const res of results.filter((x) => x.m.what === "unmodified")) assert.equal(res.cls, "agree-accept", `unmodified ${res.m.base.name}: ${line(res)}`);
  if (!ONLY) assert.equal(results.length, total);
  const replay = cs27 ? `TRUSTVOL_REDIFF_SEED=${SEED - 1} TRUSTVOL_REDIFF_N=0 TRUSTVOL_REDIFF_N27=${N}` : `TRUSTVOL_REDIFF_SEED=${SEED} TRUSTVOL_REDIFF_N=${N} TRUSTVOL_REDIFF_N27=0`;
  assert.equal(bad.length, 0, `${bad.length} violations (replay: ${replay} TRUSTVOL_REDIFF_ONLY=<i>; TRUSTVOL_REDIFF_OUT/KEEP to list and keep them):\n${bad.slice(0, 40).map(line).join("\n")}`);
}
