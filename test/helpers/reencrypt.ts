// Shared plumbing for the re-encryption tests (issue 10): plaintext fixtures, cryptsetup wrappers, the independent
// sector oracle (volume key from `cryptsetup luksDump --dump-volume-key`, one AES-XTS decipher per sector, nothing of
// trustvol involved), kill-at-a-random-moment runners, and a loader for the engine that marks tests `todo` until the
// engine (src/ops/reencrypt.ts, `trustvol reencrypt`) is merged.
import assert from "node:assert/strict";
import { openSync, readSync, writeSync, closeSync, fstatSync, existsSync, mkdtempSync, rmSync, statfsSync, writeFileSync, copyFileSync, realpathSync } from "node:fs";
import { tmpdir } from "node:os";
import { spawn, spawnSync } from "node:child_process";
import { createHash, createDecipheriv, createCipheriv } from "node:crypto";
import { join, dirname, basename } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { TestContext } from "node:test";
import { run } from "./tools.js";
import { TRUSTVOL_BIN } from "./cli.js";
import type { BlockDevice } from "../../src/blockdev/types.js";
import { prng } from "./power-cut.js";

export const MiB = 1024 * 1024;
/** Fast keyslots for every tool: pbkdf2, 1000 iterations (cryptsetup's spelling; trustvol uses the same). */
export const FAST_PBKDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
export const PASSPHRASE = "reencrypt-pw";

// ---------------------------------------------------------------------------------------------------------------
// Deterministic plaintext: AES-256-CTR keystream of a seed, so a failing case can be replayed byte for byte.

export function writePlain(path: string, size: number, seed: number): void {
  const key = createHash("sha256").update(`trustvol-reencrypt-fixture-${seed}`).digest();
  const c = createCipheriv("aes-256-ctr", key, Buffer.alloc(16));
  const fd = openSync(path, "w");
  const zero = Buffer.alloc(4 * MiB);
  for (let off = 0; off < size; off += zero.length) writeSync(fd, c.update(zero.subarray(0, Math.min(zero.length, size - off))));
  closeSync(fd);
}

/** sha256 of [offset, offset+length) of a file (length defaults to the rest of the file). */
export function shaFile(path: string, offset = 0, length?: number): string {
  const fd = openSync(path, "r");
  try {
    const end = length === undefined ? fstatSync(fd).size : offset + length;
    const h = createHash("sha256");
    const b = Buffer.alloc(4 * MiB);
    for (let pos = offset; pos < end; ) {
      const n = readSync(fd, b, 0, Math.min(b.length, end - pos), pos);
      if (n <= 0) throw new Error(`${path}: short read at ${pos} (wanted up to ${end})`);
      h.update(b.subarray(0, n));
      pos += n;
    }
    return h.digest("hex");
  } finally {
    closeSync(fd);
  }
}

export function shaBuf(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

/**
 * A temp dir in /dev/shm when it has room (fsync is free there: the tests measure the tools' logic, not the shared
 * VM disk that six engineers hammer at once), else the normal temp dir.
 */
export function fastTmpDir(prefix = "trustvol-reenc-"): { dir: string; cleanup: () => void } {
  let base = tmpdir();
  try {
    const st = statfsSync("/dev/shm");
    if (st.bavail * st.bsize > 2048 * MiB) base = "/dev/shm";
  } catch {
    /* no /dev/shm */
  }
  const dir = mkdtempSync(join(base, prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

// ---------------------------------------------------------------------------------------------------------------
// cryptsetup

export function cs(args: string[], opts: { check?: boolean; input?: string; cwd?: string } = {}) {
  // never the checkout: cryptsetup --encrypt --header stages LUKS2-temp-<uuid>.new in the working directory
  return run("cryptsetup", args, { check: opts.check, input: opts.input, timeoutMs: 600_000, cwd: opts.cwd ?? tmpdir() });
}

export interface LuksJson {
  keyslots: Record<string, any>;
  tokens: Record<string, any>;
  segments: Record<string, any>;
  digests: Record<string, any>;
  config: { json_size: string; keyslots_size: string; requirements?: { mandatory?: string[] }; flags?: string[] };
}

/** The JSON metadata as cryptsetup reads it (`header` = detached header file, else the image itself). */
export function luksJson(img: string, header?: string): LuksJson {
  const r = cs(["luksDump", "--dump-json-metadata", ...(header ? ["--header", header] : []), img]);
  return JSON.parse(r.stdout.toString()) as LuksJson;
}

export function isLuks(path: string): boolean {
  return cs(["isLuks", path], { check: false }).status === 0;
}

/** The reencrypt keyslot (if a re-encryption is in progress), as cryptsetup sees it. */
export function reencryptKeyslot(img: string, header?: string): any | undefined {
  const hdr = header ?? img;
  if (!isLuks(hdr)) return undefined;
  const j = luksJson(img, header);
  return Object.values(j.keyslots).find((k: any) => k.type === "reencrypt");
}

export function inReencryption(img: string, header?: string): boolean {
  return reencryptKeyslot(img, header) !== undefined;
}

export function volumeKey(img: string, keyFile: string, header?: string): Buffer {
  const out = cs(["luksDump", "--dump-volume-key", "-q", "--key-file", keyFile, ...(header ? ["--header", header] : []), img]).stdout.toString();
  const m = out.match(/MK dump:\s*((?:[0-9a-f]{2}\s+)+)/);
  if (!m) throw new Error("cryptsetup printed no volume key");
  return Buffer.from(m[1]!.replace(/\s+/g, ""), "hex");
}

/** cryptsetup open --test-passphrase: 0 = the passphrase opens the volume. */
export function csTestPassphrase(img: string, keyFile: string, header?: string): { status: number; stderr: string } {
  const r = cs(["open", "--test-passphrase", "--key-file", keyFile, ...(header ? ["--header", header] : []), img], { check: false });
  return { status: r.status, stderr: r.stderr };
}

/**
 * The independent oracle: the first `length` plaintext bytes of the (single, finished) data segment, decrypted sector
 * by sector with the volume key cryptsetup dumps, handed to `sink` in order. aes-xts-plain64 only: IV = le64(iv_tweak
 * + byte offset in the segment / 512) ‖ 0⁸, whatever the sector size.
 */
export function oraclePlain(img: string, keyFile: string, length: number, header: string | undefined, sink: (pos: number, plain: Buffer) => void): void {
  const j = luksJson(img, header);
  // One data segment — or, in a re-encryption whose data is all done (killed in its finalisation), the one segment
  // that is not a backup and covers the whole device.
  let segs = Object.values(j.segments);
  if (segs.length > 1) segs = segs.filter((x: any) => !x.flags?.length && x.size === "dynamic");
  if (segs.length !== 1) throw new Error(`oracle: expected one data segment, found ${JSON.stringify(j.segments)}`);
  const seg = segs[0]!;
  if (seg.type !== "crypt" || seg.encryption !== "aes-xts-plain64") throw new Error(`oracle: unsupported segment ${JSON.stringify(seg)}`);
  const key = volumeKey(img, keyFile, header);
  const ss = Number(seg.sector_size);
  const base = Number(seg.offset);
  const tweak = BigInt(seg.iv_tweak ?? "0");
  const cipher = key.length === 64 ? "aes-256-xts" : "aes-128-xts";
  const fd = openSync(img, "r");
  try {
    const size = fstatSync(fd).size;
    const segLen = seg.size === "dynamic" ? size - base : Number(seg.size);
    if (length > segLen) throw new Error(`oracle: wanted ${length} plaintext bytes, the segment has ${segLen}`);
    const chunk = Buffer.alloc(MiB);
    const iv = Buffer.alloc(16);
    for (let pos = 0; pos < length; pos += chunk.length) {
      const n = Math.min(chunk.length, length - pos);
      const m = Math.ceil(n / ss) * ss;
      if (readSync(fd, chunk, 0, m, base + pos) !== m) throw new Error("oracle: short read");
      const out: Buffer[] = [];
      for (let s = 0; s < m; s += ss) {
        iv.fill(0);
        iv.writeBigUInt64LE(tweak + BigInt((pos + s) / 512));
        const d = createDecipheriv(cipher, key, iv).setAutoPadding(false);
        out.push(d.update(chunk.subarray(s, s + ss)), d.final());
      }
      sink(pos, Buffer.concat(out).subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
}

export function oraclePlainSha(img: string, keyFile: string, length: number, header?: string): string {
  const h = createHash("sha256");
  oraclePlain(img, keyFile, length, header, (_pos, b) => h.update(b));
  return h.digest("hex");
}

/** Byte ranges (at `grain` granularity) where the oracle's plaintext differs from plainPath's first `length` bytes. */
export function oracleDiff(img: string, keyFile: string, plainPath: string, length: number, header?: string, grain = 512): { bad: number; first: number; last: number } {
  const fd = openSync(plainPath, "r");
  const want = Buffer.alloc(MiB);
  let bad = 0, first = -1, last = -1;
  try {
    oraclePlain(img, keyFile, length, header, (pos, b) => {
      readSync(fd, want, 0, b.length, pos);
      for (let o = 0; o < b.length; o += grain) {
        const e = Math.min(o + grain, b.length);
        if (!b.subarray(o, e).equals(want.subarray(o, e))) {
          bad += e - o;
          if (first < 0) first = pos + o;
          last = pos + e;
        }
      }
    });
  } finally {
    closeSync(fd);
  }
  return { bad, first, last };
}

// ---------------------------------------------------------------------------------------------------------------
// The engine under test

export const trustvolCmd = (args: string[]): [string, string[]] => [process.execPath, [TRUSTVOL_BIN, ...args]];

/**
 * trustvol's same command (`args`, its device `img`) on its own export cut before the init's commit: it goes on — or,
 * the moved copy whole (what another export's committed start leaves too), it is refused with nothing written and goes
 * on after the `trustvol header restore` its refusal names.
 */
export function tvContinuesOwnExport(args: string[], img: string, copyWhole: boolean): void {
  const before = shaFile(img);
  const r = tv(args);
  if (!copyWhole) return assert.equal(r.status, 0, `trustvol --decrypt --header of its own exported header: ${r.stderr.trim()}`);
  assert.notEqual(r.status, 0, "the continuation stops where the copy is whole");
  const way = /`(trustvol header restore --force --file \S+ \S+)`/.exec(r.stderr);
  assert.ok(way, `the refusal names the restore: ${r.stderr.trim()}`);
  assert.equal(shaFile(img), before, "the refusal left the device as it was");
  const restored = tv(way[1]!.split(" ").slice(1));
  assert.equal(restored.status, 0, restored.stderr);
  const again = tv(args);
  assert.equal(again.status, 0, `the same command after the restore: ${again.stderr.trim()}`);
}

export function tv(args: string[], opts: { input?: string } = {}): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [TRUSTVOL_BIN, ...args], { input: opts.input ?? "", encoding: "utf8", timeout: 600_000, maxBuffer: 1 << 26, cwd: tmpdir() });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

let cliState: boolean | undefined;
/** True when the CLI knows `reencrypt` (the engine is merged). */
export function cliHasReencrypt(): boolean {
  if (cliState === undefined) {
    const r = tv(["reencrypt", "--help"]);
    cliState = r.status === 0 && /resume-only/.test(r.stdout + r.stderr);
  }
  return cliState;
}

export interface ReencryptOptions {
  mode?: "reencrypt" | "encrypt" | "decrypt";
  passphrase?: Uint8Array;
  keyslot?: number;
  header?: BlockDevice;
  resilience?: "checksum" | "journal" | "datashift" | "none";
  hash?: string;
  hotzoneSize?: number;
  reduceDeviceSize?: number;
  cipher?: string;
  keySize?: number;
  sectorSize?: number;
  pbkdf?: { type: "pbkdf2" | "argon2i" | "argon2id"; forceIterations?: number; hash?: string; memoryKiB?: number; parallel?: number };
  initOnly?: boolean;
  resumeOnly?: boolean;
  onProgress?: (p: unknown) => void;
  signal?: AbortSignal;
}
export interface Engine {
  reencrypt(dev: BlockDevice, opts: ReencryptOptions): Promise<unknown>;
}

const ENGINE_PATH = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "src", "ops", "reencrypt.ts");
/** The library engine, or undefined before it is merged (a path in a variable: tsc never needs the module). */
export async function loadEngine(): Promise<Engine | undefined> {
  if (!existsSync(ENGINE_PATH)) return undefined;
  const mod = (await import(pathToFileURL(ENGINE_PATH).href)) as Partial<Engine>;
  return typeof mod.reencrypt === "function" ? (mod as Engine) : undefined;
}

/** The engine said it does not implement this yet (exit 6, EUNSUPPORTED): the test is `todo`, not failed. */
export class EngineLacks extends Error {}
export function checkEngineLacks(status: number, stderr: string): void {
  if (status === 6 && /not implemented|does not do yet|not supported yet/i.test(stderr)) throw new EngineLacks(`engine lacks a feature: ${stderr.trim()}`);
}
/** Run a test body; an EngineLacks anywhere in it marks the test todo with the engine's own words. */
export async function todoIfEngineLacks(t: TestContext, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (e) {
    if (e instanceof EngineLacks) return void t.todo(e.message);
    throw e;
  }
}

/** Mark a test todo (and return false) while the engine's CLI is missing, so main stays green before the merge. */
export function needCliEngine(t: TestContext): boolean {
  if (cliHasReencrypt()) return true;
  t.todo("engine not merged: `trustvol reencrypt` is an unknown command (issue 10)");
  return false;
}

// ---------------------------------------------------------------------------------------------------------------
// Kill at a random moment

export interface KillOutcome {
  /** The process was killed (false: it exited on its own first). */
  killed: boolean;
  status: number | null;
  stderr: string;
  ms: number;
  /** When the signal was sent (ms after the start), or null when it exited first. */
  signalledMs: number | null;
}

/** Start cmd, SIGKILL it after delayMs (unless it exits first). Key material only via files named in argv. */
export function runAndKill(cmd: string, args: string[], delayMs: number, signal: NodeJS.Signals = "SIGKILL", cwd?: string, atProgress?: number, env?: NodeJS.ProcessEnv): Promise<KillOutcome> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    // cwd: cryptsetup --encrypt --header stages a LUKS2-temp-<uuid>.new file in the working directory
    const p = spawn(cmd, args, { stdio: ["ignore", atProgress === undefined ? "ignore" : "pipe", "pipe"], cwd, env });
    let stderr = "";
    let killed = false;
    let signalledMs: number | null = null;
    const send = () => {
      killed = p.kill(signal);
      if (killed) signalledMs = performance.now() - t0;
    };
    p.stderr!.on("data", (d) => (stderr += d));
    if (atProgress !== undefined) {
      // --progress-json lines (cryptsetup's fields): signal as soon as device_bytes/device_size reaches atProgress.
      let buf = "";
      p.stdout!.on("data", (d) => {
        buf += d;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          try {
            const j = JSON.parse(line) as { device_bytes: string; device_size: string };
            if (!killed && Number(j.device_bytes) >= atProgress * Number(j.device_size)) send();
          } catch {
            /* not a progress line */
          }
        }
      });
    }
    const timer = setTimeout(() => {
      if (!killed) send();
    }, delayMs);
    p.on("error", reject);
    p.on("exit", (code, sig) => {
      clearTimeout(timer);
      // SIGKILL: the process died of it. Other signals: it was sent while the process ran (it may exit gracefully).
      resolve({ killed: killed && (signal !== "SIGKILL" || sig === "SIGKILL"), status: code, stderr, ms: performance.now() - t0, signalledMs });
    });
  });
}

/** Wall time of a full run of cmd (used to aim a kill into the middle of the next run). */
export function timeRun(cmd: string, args: string[], cwd?: string, env?: NodeJS.ProcessEnv): number {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 600_000, cwd, env });
  if (cmd === process.execPath) checkEngineLacks(r.status ?? -1, r.stderr);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status}): ${r.stderr}`);
  return performance.now() - t0;
}

/**
 * Kill a run mid-way: `prepare()` rebuilds the starting state, `midRun()` says whether the device was left in the
 * middle of a re-encryption, `touched()` whether it differs from the prepared state (so a kill that missed is known
 * to be too early — nothing written — or too late — finished). The first delay is `frac` of a calibrated run; misses
 * bisect towards the run's re-encryption window, with a little jitter so a window narrower than the timer's noise is
 * still hit. Returns the delay that landed (or throws after `tries`, listing every attempt).
 */
export async function killMidRun(opts: {
  cmd: string;
  args: string[];
  prepare: () => void;
  midRun: () => boolean;
  touched?: () => boolean;
  calibratedMs: number;
  frac: number;
  tries?: number;
  signal?: NodeJS.Signals;
  cwd?: string;
  /** The command prints --progress-json: signal at this fraction of the progress instead of after a delay. */
  progress?: boolean;
  /** The command's environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
}): Promise<{ delayMs: number; attempts: number; outcome: KillOutcome }> {
  let lo = 0, hi = opts.calibratedMs * 2;
  let delay = Math.max(1, opts.calibratedMs * opts.frac);
  // 24: cryptsetup's SIGTERM window on the small fixtures is a few ms wide, and 12 tries once missed it in CI.
  const tries = opts.tries ?? 24;
  const jitter = seeded(Math.floor(opts.calibratedMs));
  const log: string[] = [];
  for (let i = 1; i <= tries; i++) {
    opts.prepare();
    const frac = Math.min(0.95, Math.max(0.02, opts.calibratedMs ? delay / opts.calibratedMs : opts.frac));
    const o = opts.progress
      ? await runAndKill(opts.cmd, opts.args, opts.calibratedMs * 20, opts.signal, opts.cwd, frac, opts.env)
      : await runAndKill(opts.cmd, opts.args, delay, opts.signal, opts.cwd, undefined, opts.env);
    const mid = o.killed && opts.midRun();
    // Missed: too late when it finished on its own or had already written (touched); else too early. Without a
    // touched() probe, a signalled run that still exited 0 counts as finished. A graceful signal the tool ignored
    // (cryptsetup, sent before its hotzone loop: it then runs the whole re-encryption and exits 0) is too early: the
    // run went on for long after it.
    const ignored = !!opts.signal && opts.signal !== "SIGKILL" && o.status === 0 && o.signalledMs !== null && o.ms - o.signalledMs > 0.25 * opts.calibratedMs;
    const late = !o.killed || (!mid && !ignored && (opts.touched ? opts.touched() : !!opts.signal && opts.signal !== "SIGKILL" && o.status === 0));
    log.push(`${delay.toFixed(0)}ms: ${o.killed ? "signalled" : "exited"} status ${o.status}${mid ? " mid-run" : late ? " (too late)" : ignored ? " (ignored: too early)" : " (too early)"}`);
    if (mid) return { delayMs: delay, attempts: i, outcome: o };
    if (!o.killed && o.status !== 0) throw new Error(`${opts.cmd} ${opts.args.join(" ")} failed before the kill (${o.status}): ${o.stderr}`);
    if (late) hi = delay;
    else lo = delay;
    delay = lo + (hi - lo) * (0.3 + 0.4 * jitter());
  }
  throw new Error(`could not land a kill mid-run of ${opts.cmd} ${opts.args.join(" ")} in ${tries} tries (${log.join("; ")})`);
}

/** Seeded PRNG for kill moments (the power-cut device's mulberry32). */
export const seeded = prng;

/**
 * The oracle in reverse: write `length` bytes of plain file `plainPath` into the (single) data segment of a freshly
 * formatted LUKS2 image, encrypted sector by sector with the volume key cryptsetup dumps (no trustvol code involved).
 */
export function oracleFill(img: string, keyFile: string, plainPath: string, length: number, header?: string): void {
  const j = luksJson(img, header);
  const seg = Object.values(j.segments)[0]!;
  if (seg.encryption !== "aes-xts-plain64") throw new Error(`oracleFill: unsupported segment ${JSON.stringify(seg)}`);
  const key = volumeKey(img, keyFile, header);
  const ss = Number(seg.sector_size);
  const base = Number(seg.offset);
  const cipher = key.length === 64 ? "aes-256-xts" : "aes-128-xts";
  if (length % ss) throw new Error("oracleFill: length must be whole sectors");
  const src = openSync(plainPath, "r");
  const dst = openSync(img, "r+");
  try {
    const chunk = Buffer.alloc(MiB);
    const iv = Buffer.alloc(16);
    for (let pos = 0; pos < length; pos += chunk.length) {
      const n = Math.min(chunk.length, length - pos);
      if (readSync(src, chunk, 0, n, pos) !== n) throw new Error("oracleFill: short read");
      const out: Buffer[] = [];
      for (let s = 0; s < n; s += ss) {
        iv.fill(0);
        iv.writeBigUInt64LE(BigInt((pos + s) / 512));
        const c = createCipheriv(cipher, key, iv).setAutoPadding(false);
        out.push(c.update(chunk.subarray(s, s + ss)), c.final());
      }
      writeSync(dst, Buffer.concat(out), 0, n, base + pos);
    }
  } finally {
    closeSync(src);
    closeSync(dst);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Checks shared by the interop tests (2.6.1: reencrypt-interop.slow.test.ts; 2.7.5: reencrypt-cryptsetup27.slow.test.ts)

/** The oracle's plaintext equals plainPath's first len bytes; on a mismatch, say which bytes differ. */
export function assertPlain(img: string, pw: string, plainPath: string, len: number, hdr: string | undefined, what: string): void {
  if (oraclePlainSha(img, pw, len, hdr) === shaFile(plainPath, 0, len)) return;
  const d = oracleDiff(img, pw, plainPath, len, hdr);
  assert.fail(`${what}: ${d.bad} bytes of plaintext differ, first at ${d.first}, last ending at ${d.last} (of ${len})`);
}

/** Both tools open the finished volume with the passphrase in pw, and nothing of the re-encryption is left. */
export function opensWithBoth(img: string, pw: string, hdr?: string): void {
  const c = csTestPassphrase(img, pw, hdr);
  assert.equal(c.status, 0, `cryptsetup open --test-passphrase: ${c.stderr}`);
  const t = tv(["unlock", "--test", "--key-file", pw, ...(hdr ? ["--header", hdr] : []), img]);
  assert.equal(t.status, 0, `trustvol unlock --test: ${t.stderr}`);
  const j = luksJson(img, hdr);
  assert.equal(Object.values(j.keyslots).some((k: any) => k.type === "reencrypt"), false, "no reencrypt keyslot left");
  assert.equal(j.config.requirements?.mandatory?.includes("online-reencrypt-v2") ?? false, false, "requirement cleared");
}

/**
 * States cryptsetup 2.6.1 leaves after its own SIGKILL and then cannot resume (measured here). Returns a name, or
 * undefined for a state it should have resumed.
 */
export function knownCryptsetupDeadEnd(j: LuksJson, message: string): string | undefined {
  const reenc = Object.values(j.keyslots).find((k: any) => k.type === "reencrypt");
  const segs = Object.entries(j.segments);
  const live = segs.filter(([, x]) => !x.flags?.length);
  const final = segs.find(([, x]) => x.flags?.includes("backup-final"));
  const digestOf = (id: string) => Object.keys(j.digests).find((d) => j.digests[d].segments.includes(id));
  if (reenc && live.length === 1 && final && live[0]![1].size === "dynamic" && live[0]![1].type === final[1].type && digestOf(live[0]![0]) === digestOf(final[0]))
    // Measured for rotation (old keyslot already wiped) and decrypt (every passphrase keyslot wiped, or one wiped in
    // its area with its JSON still there: trustvol's repair -q finishes that): the data is all done, the reencrypt
    // keyslot and backup segments are still there, and --resume-only fails.
    return `${reenc.mode} finalisation: data all done (one whole-device segment = backup-final), reencrypt keyslot still there, ${Object.values(j.keyslots).filter((k: any) => k.type === "luks2").length} passphrase keyslot(s) left`;
  if (reenc?.area?.type === "datashift" && /Failed to set device segments for next reencryption hotzone/.test(message))
    return "datashift tail of --encrypt --reduce-device-size";
  const moved = segs.find(([, x]) => x.flags?.includes("backup-moved-segment"));
  if (reenc?.mode === "decrypt" && moved && Number(moved[1].size) < Number(reenc.area?.shift_size) && /Failed to write reencryption resilience metadata/.test(message))
    // Measured with 2.6.1 and 2.7.5 (decryption with a data shift, its own crash too): a resume that starts at the
    // moved segment takes the shift as the hotzone's length (reencrypt_load; only reencrypt_context_update, mid-run,
    // sets the moved segment's size), and that hotzone's resilience does not fit the area.
    return "decrypt with a data shift resumed at its moved segment (shorter than the shift): cryptsetup's hotzone is the shift";
  return undefined;
}

/**
 * Drop what is random per run (salts, digests) and the digests' PBKDF2 iteration counts (cryptsetup benchmarks the
 * re-encryption digest's cost for --decrypt whatever --pbkdf-force-iterations says); keep every other field.
 */
export function normalizeInitMetadata(j: LuksJson): unknown {
  j = JSON.parse(JSON.stringify(j)) as LuksJson;
  for (const d of Object.values(j.digests)) delete d.iterations;
  const scrub = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(scrub);
    if (v && typeof v === "object")
      return Object.fromEntries(Object.entries(v).filter(([k]) => k !== "salt" && k !== "digest").map(([k, x]) => [k, scrub(x)]));
    return v;
  };
  return scrub(j);
}

/**
 * Rewrite the JSON metadata of both header copies with `edit` applied; binary headers keep their seqid, checksums are
 * recomputed (sha256 over the header with the checksum field zeroed ‖ the JSON area), as cryptsetup computes them.
 */
export function tamperJson(img: string, edit: (j: LuksJson) => void): void {
  const fd = openSync(img, "r+");
  try {
    const bin = Buffer.alloc(4096);
    readSync(fd, bin, 0, 4096, 0);
    const hdrSize = Number(bin.readBigUInt64BE(8));
    for (const off of [0, hdrSize]) {
      const area = Buffer.alloc(hdrSize);
      readSync(fd, area, 0, hdrSize, off);
      const text = area.subarray(4096).toString("latin1").replace(/\0+$/, "");
      const j = JSON.parse(text) as LuksJson;
      edit(j);
      const out = Buffer.from(JSON.stringify(j), "latin1");
      if (out.length >= hdrSize - 4096) throw new Error("tampered JSON does not fit");
      area.fill(0, 4096);
      out.copy(area, 4096);
      assert.equal(area.subarray(72, 72 + 6).toString("latin1"), "sha256", "checksum algorithm of the fixture");
      area.fill(0, 448, 448 + 64);
      createHash("sha256").update(area).digest().copy(area, 448);
      writeSync(fd, area, 0, hdrSize, off);
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * The interop tests' fixtures, built once per file: plaintexts of `size` and `shiftSize` bytes (seeds seed, seed+1), a
 * luksFormat'ed volume whose first size-16 MiB are the plaintext (oracleFill), and the plaintext encrypted by
 * cryptsetup with a detached header. Read-only afterwards: every case copies what it changes.
 */
export function buildInteropFixture(prefix: string, seed: number, size: number, shiftSize: number) {
  const { dir, cleanup } = fastTmpDir(prefix);
  const pw = join(dir, "pw");
  writeFileSync(pw, PASSPHRASE, { mode: 0o600 });
  const plain = join(dir, "plain.img"), plainBig = join(dir, "plain-big.img");
  writePlain(plain, size, seed);
  writePlain(plainBig, shiftSize, seed + 1);
  const luks = join(dir, "luks.img");
  luksOverPlain(plain, luks, pw, size - 16 * MiB);
  const encHdr = join(dir, "enc-hdr.img"), encHdrHdr = join(dir, "enc-hdr.hdr");
  copyFileSync(plain, encHdr);
  cs(["reencrypt", "--encrypt", "-q", "--force-offline-reencrypt", "--header", encHdrHdr, ...FAST_PBKDF, "--key-file", pw, encHdr]);
  return { dir, cleanup, pw, plain, plainBig, luks, encHdr, encHdrHdr };
}

/** A LUKS2 image of plainPath's size (luksFormat, its header on the image) whose data are plainPath's first dataLen bytes (oracleFill). */
export function luksOverPlain(plainPath: string, out: string, pw: string, dataLen: number): void {
  copyFileSync(plainPath, out);
  cs(["luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF, "--key-file", pw, out]);
  oracleFill(out, pw, plainPath, dataLen);
}

// ---------------------------------------------------------------------------------------------------------------
// Decryption with a data shift (`reencrypt --decrypt --header NEW_FILE` of a device that holds its header)

/**
 * Where such a decryption stands, read from its header file: no file yet (untouched), a file that is no LUKS2 header
 * (a cut inside cryptsetup's export), the header as exported (a cut before the init's metadata commit: cryptsetup
 * refuses it, trustvol goes on from it with the same command), in re-encryption, or finished (one linear segment).
 */
export type DecryptShiftState = "untouched" | "torn export" | "exported" | "in re-encryption" | "finished";
export function decryptShiftState(img: string, hdr: string): DecryptShiftState {
  if (!existsSync(hdr)) return "untouched";
  if (!isLuks(hdr)) return "torn export";
  const j = luksJson(img, hdr);
  if (Object.values(j.keyslots).some((k: any) => k.type === "reencrypt")) return "in re-encryption";
  const segs = Object.values(j.segments);
  if (segs.length === 1 && segs[0]!.type === "linear" && segs[0]!.offset === "0") return "finished";
  if (segs.length === 1 && segs[0]!.type === "crypt" && Number(segs[0]!.offset) > 0) return "exported";
  throw new Error(`${hdr}: neither in re-encryption nor finished nor as exported: segments ${JSON.stringify(j.segments)}`);
}

/** `trustvol dump HDR` prints exactly what cryptsetup 2.6.1's `luksDump HDR` prints; returns that text. */
export function assertDumpAsCryptsetup(hdr: string, what: string): string {
  const c = cs(["luksDump", hdr], { check: false });
  assert.equal(c.status, 0, `cryptsetup luksDump of ${what}: ${c.stderr.trim()}`);
  const t = tv(["dump", hdr]);
  assert.equal(t.status, 0, `trustvol dump of ${what}: ${t.stderr.trim()}`);
  assert.equal(t.stdout, c.stdout.toString(), `trustvol dump prints ${what} as cryptsetup luksDump does`);
  return t.stdout;
}

/** Files a and b hold the same first len bytes; on a mismatch, say the first MiB that differs. */
export function assertSameBytes(a: string, b: string, len: number, what: string): void {
  if (shaFile(a, 0, len) === shaFile(b, 0, len)) return;
  let off = 0;
  while (off < len && shaFile(a, off, Math.min(MiB, len - off)) === shaFile(b, off, Math.min(MiB, len - off))) off += MiB;
  assert.fail(`${what}: the bytes differ, first in the MiB at ${off} (of ${len})`);
}

/**
 * Run cmd under strace and SIGKILL it on entry to its nth `syscall` that writes to `path` (that write never happens):
 * a cut at an exact point of the run, no timing involved. strace counts per thread: nth > 1 only for a tool that
 * writes from one thread (cryptsetup), not for trustvol (libuv's thread pool).
 */
export function killAtWrite(cmd: string, args: string[], path: string, syscall: "write" | "pwrite64", nth = 1, cwd?: string): { killed: boolean; stderr: string } {
  const at = join(realpathSync(dirname(path)), basename(path)); // strace matches the path an fd resolves to
  const r = spawnSync("strace", ["-f", "-qq", "-o", "/dev/null", "-P", at, "-e", `trace=${syscall}`, "-e", `inject=${syscall}:signal=SIGKILL:when=${nth}`, cmd, ...args], { encoding: "utf8", timeout: 600_000, cwd: cwd ?? tmpdir() });
  return { killed: r.signal === "SIGKILL" || r.status === 137, stderr: r.stderr };
}
