// Re-encryption interop with today's cryptsetup (2.7.5, Debian 13, run from the cached trixie root; issue 10: "both
// directions … against Debian 12's tools and today's"), for rotation, encrypt in place (data shift and detached
// header), decrypt, and decrypt with a data shift (its own section at the end):
//   --init-only by one tool, --resume-only by the other → identical plaintext, opens with every tool;
//   trustvol's --init-only metadata is cryptsetup 2.7.5's, field by field;
//   one tool starts, is SIGKILLed mid-run (the crashed state dumps as 2.7.5's luksDump prints it), the other resumes
//   (after `repair` when it asks) → identical plaintext.
// The plaintext is checked by the independent oracle (host cryptsetup's volume key + AES-XTS per sector). The 2.6.1
// side, with cryptsetup's own dead ends and the graceful stops, is reencrypt-interop.slow.test.ts.
// Kill moments are seeded (REENC_SEED=n replays the choice; timing still varies).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, copyFileSync, rmSync, existsSync, openSync, readSync, closeSync } from "node:fs";
import { spawn } from "node:child_process";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { needTools } from "../helpers/tools.js";
import { DEB13_WORK, needDebian13, runInDebian13, debian13Command } from "../helpers/debian13.js";
import {
  MiB, FAST_PBKDF, PASSPHRASE, writePlain, shaFile, cs, luksJson, inReencryption, oracleFill, tv, fastTmpDir, trustvolCmd,
  needCliEngine, killMidRun, timeRun, seeded, buildInteropFixture, assertPlain, opensWithBoth, knownCryptsetupDeadEnd, normalizeInitMetadata, type LuksJson,
  luksOverPlain, decryptShiftState, assertDumpAsCryptsetup, assertSameBytes, killAtWrite, isLuks, tvContinuesOwnExport,
} from "../helpers/reencrypt.js";

const SEED = Number(process.env.REENC_SEED ?? Math.floor(Math.random() * 1e6));
const rnd = seeded(SEED);
const SIZE = 32 * MiB;
const SHIFT_SIZE = 64 * MiB;

type Tool = "cryptsetup 2.7.5" | "trustvol";
const CS27: Tool = "cryptsetup 2.7.5";

interface Fixture {
  dir: string;
  plain: string;
  plainBig: string;
  luks: string; // luksFormat (host) + the oracle's encryption of plain[0, SIZE-16M)
  encHdr: string; // plain, encrypted with a detached header
  encHdrHdr: string;
}
/** One case's files: the key file, the image and the detached header, in a dir the chroot sees at /w. */
interface Work {
  dir: string;
  pw: string;
  img: string;
  hdr: string;
}
interface Scenario {
  name: string;
  prepare(f: Fixture, w: Work): void;
  args: string[];
  detached: boolean;
  verify(f: Fixture, w: Work): void;
  /** Killed mid-run too (resilience none loses data by design: init/resume only). */
  kill: boolean;
  /** A LUKS2 volume in the end (not after decrypt): every tool opens it. */
  luks: boolean;
}

let shared: Fixture | undefined;
let sharedCleanup: (() => void) | undefined;
let fixturePw = ""; // the fixture's key file (PASSPHRASE, as every case's own)
after(() => sharedCleanup?.());
function fixture(): Fixture {
  if (shared) return shared;
  const { cleanup, pw, ...f } = buildInteropFixture("trustvol-reenc27-fixture-", SEED, SIZE, SHIFT_SIZE);
  sharedCleanup = cleanup;
  fixturePw = pw;
  return (shared = f);
}

/** Every tool opens the finished volume: cryptsetup 2.6.1 and trustvol (opensWithBoth), and 2.7.5. */
function opensWithAll(root: string, w: Work, detached: boolean): void {
  opensWithBoth(w.img, w.pw, detached ? w.hdr : undefined);
  const r = cs27(root, w, ["open", "--test-passphrase", "--key-file", inChroot(w.pw), ...(detached ? ["--header", inChroot(w.hdr)] : []), inChroot(w.img)]);
  assert.equal(r.status, 0, `cryptsetup 2.7.5 open --test-passphrase: ${r.stderr.toString()}`);
}

const rotation = (resilience: string): Scenario => ({
  name: `rotation, resilience ${resilience}`,
  prepare: (f, w) => copyFileSync(f.luks, w.img),
  args: ["--resilience", resilience, "--hotzone-size", "256K"],
  detached: false,
  verify: (f, w) => assertPlain(w.img, w.pw, f.plain, SIZE - 16 * MiB, undefined, "plaintext after rotation"),
  kill: resilience !== "none",
  luks: true,
});

const scenarios: Scenario[] = [
  rotation("checksum"),
  rotation("journal"),
  rotation("none"),
  {
    name: "encrypt in place, --reduce-device-size 32M (datashift)",
    prepare: (f, w) => copyFileSync(f.plainBig, w.img),
    args: ["--encrypt", "--reduce-device-size", "32M"],
    detached: false,
    verify: (f, w) => assertPlain(w.img, w.pw, f.plainBig, SHIFT_SIZE - 32 * MiB, undefined, "plaintext after encrypt"),
    kill: true,
    luks: true,
  },
  {
    name: "encrypt, detached --header",
    prepare: (f, w) => {
      copyFileSync(f.plain, w.img);
      rmSync(w.hdr, { force: true });
    },
    args: ["--encrypt", "--hotzone-size", "1M"],
    detached: true,
    verify: (f, w) => assertPlain(w.img, w.pw, f.plain, SIZE, w.hdr, "plaintext after encrypt"),
    kill: true,
    luks: true,
  },
  {
    name: "decrypt, detached --header",
    prepare: (f, w) => {
      copyFileSync(f.encHdr, w.img);
      copyFileSync(f.encHdrHdr, w.hdr);
    },
    args: ["--decrypt", "--hotzone-size", "1M"],
    detached: true,
    verify: (f, w) => assert.equal(shaFile(w.img), shaFile(f.plain), "plain device after decrypt"),
    kill: true,
    luks: false,
  },
];

/** A file of the work dir as the chroot sees it. */
function inChroot(path: string): string {
  return `${DEB13_WORK}/${path.slice(path.lastIndexOf("/") + 1)}`;
}

/** cryptsetup 2.7.5 with args, from the chroot's /tmp (--encrypt --header stages a file in the working directory). */
function cs27Command(root: string, w: Work, args: string[]) {
  return debian13Command(root, "sh", ["-c", 'cd /tmp && exec cryptsetup "$@"', "cryptsetup", ...args], { work: w.dir });
}
function cs27(root: string, w: Work, args: string[]) {
  return runInDebian13(root, "sh", ["-c", 'cd /tmp && exec cryptsetup "$@"', "cryptsetup", ...args], { work: w.dir, check: false, timeoutMs: 600_000 });
}

/** The re-encryption command of a tool: [cmd, args, env]. */
function cmdFor(root: string, tool: Tool, s: Scenario, w: Work, extra: string[]): { cmd: string; args: string[]; env?: NodeJS.ProcessEnv } {
  if (tool === "trustvol") {
    const [cmd, args] = trustvolCmd(["reencrypt", ...extra, "-q", "--key-file", w.pw, ...(s.detached ? ["--header", w.hdr] : []), w.img]);
    return { cmd, args };
  }
  return cs27Command(root, w, ["reencrypt", "--force-offline-reencrypt", ...extra, "-q", "--key-file", inChroot(w.pw), ...(s.detached ? ["--header", inChroot(w.hdr)] : []), inChroot(w.img)]);
}

/** Resume with `tool`; when it asks for recovery first, its `repair`, then resume again. */
function finishWith(root: string, tool: Tool, s: Scenario, w: Work): { ok: boolean; repaired: boolean; message: string } {
  const hdrArgs = (f: (p: string) => string) => (s.detached ? ["--header", f(w.hdr)] : []);
  const go = () =>
    tool === "trustvol"
      ? tv(["reencrypt", "--resume-only", "-q", "--key-file", w.pw, ...hdrArgs((p) => p), w.img])
      : cs27(root, w, ["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", inChroot(w.pw), ...hdrArgs(inChroot), inChroot(w.img)]);
  const said = (r: { stdout: Buffer | string; stderr: Buffer | string }) => `${r.stderr.toString().trim()} ${r.stdout.toString().trim()}`.trim();
  let r = go();
  if (r.status === 0) return { ok: true, repaired: false, message: "" };
  const err1 = said(r);
  if (!/repair|recover/i.test(err1)) return { ok: false, repaired: false, message: `--resume-only: ${err1}` };
  const rep = tool === "trustvol"
    ? tv(["repair", "-q", ...(/--drop-old-keyslots/.test(err1) ? ["--drop-old-keyslots"] : []), "--key-file", w.pw, ...hdrArgs((p) => p), w.img])
    : cs27(root, w, ["repair", "-q", "--key-file", inChroot(w.pw), ...hdrArgs(inChroot), inChroot(w.img)]);
  if (rep.status !== 0) return { ok: false, repaired: true, message: `repair: ${said(rep)} (after: ${err1})` };
  r = go();
  if (r.status === 0) return { ok: true, repaired: true, message: "" };
  if (/not in progress|not in re-encryption/i.test(said(r)) && !inReencryption(w.img, s.detached ? w.hdr : undefined)) return { ok: true, repaired: true, message: "" };
  return { ok: false, repaired: true, message: `--resume-only after repair: ${said(r)}` };
}

/** The data segments and their digests' salts: changed by a killed run only once it has started its work. */
function fingerprint(w: Work, s: Scenario): string {
  try {
    const j = luksJson(w.img, s.detached ? w.hdr : undefined);
    return JSON.stringify(Object.entries(j.segments).map(([id, seg]) => [seg, Object.values(j.digests).filter((d: any) => d.segments.includes(id)).map((d: any) => d.salt)]));
  } catch {
    return "not LUKS";
  }
}

function setup(t: TestContext): { root: string; f: Fixture; w: Work } | undefined {
  if (!needTools(t, "cryptsetup", "unshare", "chroot") || !needCliEngine(t)) return undefined;
  const root = needDebian13(t);
  if (!root) return undefined;
  const { dir, cleanup } = fastTmpDir("trustvol-reenc27-");
  t.after(cleanup);
  const pw = join(dir, "pw");
  writeFileSync(pw, PASSPHRASE, { mode: 0o600 });
  return { root, f: fixture(), w: { dir, pw, img: join(dir, "work.img"), hdr: join(dir, "work.hdr") } };
}

test("the Debian 13 root runs cryptsetup 2.7", (t) => {
  const s = setup(t);
  if (!s) return;
  assert.match(cs27(s.root, s.w, ["--version"]).stdout.toString(), /cryptsetup 2\.7\./);
});

for (const s of scenarios) {
  for (const [initer, resumer] of [[CS27, "trustvol"], ["trustvol", CS27]] as [Tool, Tool][]) {
    test(`${s.name}: ${initer} --init-only, ${resumer} --resume-only → identical plaintext${s.luks ? ", opens with every tool" : ""}`, (t) => {
      const c = setup(t);
      if (!c) return;
      const { root, f, w } = c;
      s.prepare(f, w);
      const run = cmdFor(root, initer, s, w, [...s.args, ...FAST_PBKDF, "--init-only"]);
      timeRun(run.cmd, run.args, w.dir, run.env);
      assert.ok(inReencryption(w.img, s.detached ? w.hdr : undefined), `${initer} --init-only left a re-encryption in progress`);
      const fin = finishWith(root, resumer, s, w);
      assert.ok(fin.ok, `${resumer} could not resume: ${fin.message}`);
      assert.equal(fin.repaired, false, "an --init-only state needs no repair");
      s.verify(f, w);
      if (s.luks) opensWithAll(root, w, s.detached);
    });
  }

  test(`${s.name}: trustvol --init-only writes the metadata cryptsetup 2.7.5 writes`, (t) => {
    const c = setup(t);
    if (!c) return;
    const { root, f, w } = c;
    const got = {} as Record<Tool, LuksJson>;
    for (const tool of [CS27, "trustvol"] as Tool[]) {
      s.prepare(f, w);
      const run = cmdFor(root, tool, s, w, [...s.args, ...FAST_PBKDF, "--init-only"]);
      timeRun(run.cmd, run.args, w.dir, run.env);
      got[tool] = luksJson(w.img, s.detached ? w.hdr : undefined);
    }
    assert.deepEqual(normalizeInitMetadata(got.trustvol), normalizeInitMetadata(got[CS27]));
  });

  if (!s.kill) continue;
  for (const [starter, finisher] of [["trustvol", CS27], [CS27, "trustvol"]] as [Tool, Tool][]) {
    test(`${s.name}: ${starter} starts, SIGKILL mid-run, ${finisher} resumes → identical plaintext${s.luks ? ", opens with every tool" : ""}`, async (t) => {
      const c = setup(t);
      if (!c) return;
      const { root, f, w } = c;
      // trustvol is killed at a seeded fraction of its --progress-json progress, cryptsetup after a seeded delay.
      const progress = starter === "trustvol";
      // A kill lands in cryptsetup's run only between its start-up and its end: when load makes that window too narrow,
      // the run is tried once more with a quarter of the hotzone size (four times the hotzones, the same format).
      const attempt = async (args: string[]) => {
        const run = cmdFor(root, starter, s, w, [...args, ...FAST_PBKDF, ...(progress ? ["--progress-json"] : [])]);
        s.prepare(f, w);
        const calibratedMs = timeRun(run.cmd, run.args, w.dir, run.env);
        let start = "";
        const landed = await killMidRun({
          cmd: run.cmd, args: run.args, env: run.env, calibratedMs, frac: 0.15 + 0.7 * rnd(), cwd: w.dir, progress,
          prepare: () => {
            s.prepare(f, w);
            start = fingerprint(w, s);
          },
          midRun: () => inReencryption(w.img, s.detached ? w.hdr : undefined),
          touched: () => fingerprint(w, s) !== start,
        }).catch((e: Error) => {
          // cryptsetup's run on these small fixtures can be too short to hit on a loaded machine: that claims nothing.
          if (starter === CS27 && /could not land a kill/.test(e.message)) return undefined;
          throw e;
        });
        return landed && { ...landed, calibratedMs };
      };
      let landed = await attempt(s.args);
      const hz = s.args.indexOf("--hotzone-size");
      if (!landed && starter === CS27 && hz >= 0) {
        const quarter = `${(parseInt(s.args[hz + 1]!, 10) * (s.args[hz + 1]!.endsWith("M") ? 1024 : 1)) / 4}K`;
        t.diagnostic(`no kill landed in cryptsetup 2.7.5's run; again with --hotzone-size ${quarter}`);
        landed = await attempt([...s.args.slice(0, hz + 1), quarter, ...s.args.slice(hz + 2)]);
      }
      if (!landed) return t.skip("cryptsetup 2.7.5's run was too short to interrupt under this load");
      const crashed = luksJson(w.img, s.detached ? w.hdr : undefined);
      // the crashed state as both print it (segments flagged in-reencryption, backup segments, resilience, progress)
      const meta = s.detached ? w.hdr : w.img;
      const dump27 = cs27(root, w, ["luksDump", inChroot(meta)]);
      assert.equal(dump27.status, 0, dump27.stderr.toString());
      // (2.7 added "cipher: (no SW encryption)" under linear segments; trustvol prints 2.6.1's text, the issue's anchor)
      const as261 = dump27.stdout.toString().replace(/^\tcipher: \(no SW encryption\)\n/gm, "");
      assert.equal(tv(["dump", meta]).stdout, as261, "trustvol dump prints the crashed state as cryptsetup 2.7.5's luksDump");
      const fin = finishWith(root, finisher, s, w);
      t.diagnostic(`seed ${SEED}: full run ${landed.calibratedMs.toFixed(0)} ms, killed at ${landed.delayMs.toFixed(0)} ms (attempt ${landed.attempts}); ${finisher} ${fin.ok ? (fin.repaired ? "needed repair first" : "resumed directly") : `could not finish: ${fin.message}`}`);
      if (!fin.ok) {
        // Only a state cryptsetup cannot resume after its own crash either (reencrypt-interop's dead ends) may stop
        // 2.7.5; trustvol must then finish it. trustvol itself must resume whatever 2.7.5 left.
        const kind = knownCryptsetupDeadEnd(crashed, fin.message);
        assert.ok(finisher === CS27 && kind, `${finisher} could not finish after ${starter} was killed: ${fin.message}\ncrashed state: ${JSON.stringify(crashed)}`);
        const fin2 = finishWith(root, "trustvol", s, w);
        assert.ok(fin2.ok, `neither cryptsetup 2.7.5 (${fin.message}) nor trustvol (${fin2.message}) could finish (${kind})`);
        t.diagnostic(`cryptsetup 2.7.5 cannot resume this state (${kind}); trustvol finished it`);
      }
      s.verify(f, w);
      if (s.luks) opensWithAll(root, w, s.detached);
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Decryption with a data shift (cryptsetup 2.6+): `reencrypt --decrypt --header NEW_FILE` of a device that holds its
// header exports the header to NEW_FILE and moves the data to the device's start; the result is plain [0, T), T = size
// - shift. With 2.7.5, both resiliences, both directions: --init-only metadata and device image, init by one / resume
// by the other, whole runs, SIGKILL mid-run, and a cut before the init's metadata commit. Every header file met dumps
// alike with trustvol, 2.7.5 and 2.6.1.
const DEC_T = SHIFT_SIZE - 16 * MiB; // 64 MiB with the default 16 MiB header: two shift-long hotzones, then the moved segment

let decShiftImg: string | undefined;
/** plainBig's first DEC_T bytes in a LUKS2 volume whose header is on the image (built once, read-only). */
function decShiftImage(f: Fixture): string {
  if (!decShiftImg) {
    const img = join(f.dir, "luks-big.img");
    luksOverPlain(f.plainBig, img, fixturePw, DEC_T);
    decShiftImg = img;
  }
  return decShiftImg;
}

/** trustvol dump prints the header file as 2.6.1's luksDump and as 2.7.5's (without 2.7's linear-segment cipher line). */
function assertDumpsAlike(root: string, w: Work, what: string): void {
  const tvText = assertDumpAsCryptsetup(w.hdr, what);
  const d = cs27(root, w, ["luksDump", inChroot(w.hdr)]);
  assert.equal(d.status, 0, `cryptsetup 2.7.5 luksDump of ${what}: ${d.stderr.toString()}`);
  assert.equal(tvText, d.stdout.toString().replace(/^\tcipher: \(no SW encryption\)\n/gm, ""), `trustvol dump prints ${what} as cryptsetup 2.7.5's luksDump`);
}

/** Plaintext at [0, T), a finished header file (no keyslots, no requirement) that every tool dumps alike. */
function verifyDecShift(root: string, f: Fixture, w: Work, what: string): void {
  assertSameBytes(w.img, f.plainBig, DEC_T, `device [0, T) ${what}`);
  assert.equal(decryptShiftState(w.img, w.hdr), "finished", `header file ${what}`);
  const j = luksJson(w.img, w.hdr);
  assert.deepEqual([Object.keys(j.keyslots).length, j.config.requirements?.mandatory ?? []], [0, []], `no keyslots and no requirement left ${what}`);
  assertDumpsAlike(root, w, `the header file ${what}`);
}

const decShift = (resilience: "checksum" | "journal"): Scenario => ({
  name: `decrypt with a data shift, resilience ${resilience}`,
  prepare: (f, w) => {
    copyFileSync(decShiftImage(f), w.img);
    rmSync(w.hdr, { force: true });
  },
  // journal: the default moved segment (the whole 16 MiB shift) does not fit the reencrypt area (16486400 bytes)
  args: ["--decrypt", "--resilience", resilience, ...(resilience === "journal" ? ["--hotzone-size", "8M"] : [])],
  detached: true,
  verify: (f, w) => assertSameBytes(w.img, f.plainBig, DEC_T, "device [0, T) after the decryption"),
  kill: true,
  luks: false,
});

/** s.args with --hotzone-size set to size (replaced when present). */
function withHotzoneSize(args: string[], size: string): string[] {
  const i = args.indexOf("--hotzone-size");
  return i < 0 ? [...args, "--hotzone-size", size] : [...args.slice(0, i + 1), size, ...args.slice(i + 2)];
}

/** SIGKILL a run as soon as cond() holds (polled every few ms): a wide window of the run, hit without calibration. */
function killWhen(run: { cmd: string; args: string[]; env?: NodeJS.ProcessEnv }, cwd: string, cond: () => boolean): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const p = spawn(run.cmd, run.args, { stdio: "ignore", cwd, env: run.env });
    let killed = false;
    const poll = setInterval(() => {
      if (!killed && cond()) killed = p.kill("SIGKILL");
    }, 5);
    p.on("error", reject);
    p.on("exit", (_code, sig) => {
      clearInterval(poll);
      resolve(killed && sig === "SIGKILL");
    });
  });
}

/** The device no longer starts with a LUKS2 magic (cryptsetup wiped its signatures after the export). */
function magicWiped(img: string): boolean {
  const fd = openSync(img, "r");
  try {
    const b = Buffer.alloc(6);
    readSync(fd, b, 0, 6, 0);
    return !b.equals(Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]));
  } finally {
    closeSync(fd);
  }
}

for (const s of [decShift("checksum"), decShift("journal")]) {
  test(`${s.name}: trustvol --init-only writes the metadata and the device image cryptsetup 2.7.5 writes`, (t) => {
    const c = setup(t);
    if (!c) return;
    const { root, f, w } = c;
    const got = {} as Record<Tool, { json: LuksJson; sha: string }>;
    for (const tool of [CS27, "trustvol"] as Tool[]) {
      s.prepare(f, w);
      const run = cmdFor(root, tool, s, w, [...s.args, ...FAST_PBKDF, "--init-only"]);
      timeRun(run.cmd, run.args, w.dir, run.env);
      assert.equal(decryptShiftState(w.img, w.hdr), "in re-encryption", `${tool} --init-only`);
      assertDumpsAlike(root, w, `${tool}'s --init-only header file`);
      got[tool] = { json: luksJson(w.img, w.hdr), sha: shaFile(w.img) };
    }
    assert.deepEqual(normalizeInitMetadata(got.trustvol.json), normalizeInitMetadata(got[CS27].json), "the init metadata");
    // the header copies zeroed, the moved segment copied to the device's start: the same bytes
    assert.equal(got.trustvol.sha, got[CS27].sha, "the device image after --init-only");
  });

  for (const [initer, resumer] of [[CS27, "trustvol"], ["trustvol", CS27]] as [Tool, Tool][]) {
    test(`${s.name}: ${initer} --init-only, ${resumer} --resume-only → plaintext at the device's start`, (t) => {
      const c = setup(t);
      if (!c) return;
      const { root, f, w } = c;
      s.prepare(f, w);
      const run = cmdFor(root, initer, s, w, [...s.args, ...FAST_PBKDF, "--init-only"]);
      timeRun(run.cmd, run.args, w.dir, run.env);
      assert.equal(decryptShiftState(w.img, w.hdr), "in re-encryption", `${initer} --init-only`);
      const fin = finishWith(root, resumer, s, w);
      assert.ok(fin.ok, `${resumer} could not resume: ${fin.message}`);
      assert.equal(fin.repaired, false, "an --init-only state needs no repair");
      verifyDecShift(root, f, w, `after ${initer}'s init and ${resumer}'s resume`);
    });
  }

  for (const tool of [CS27, "trustvol"] as Tool[]) {
    test(`${s.name}: a whole run by ${tool}, and one with --hotzone-size 4M (moved segment shorter than the shift) → plaintext`, (t) => {
      const c = setup(t);
      if (!c) return;
      const { root, f, w } = c;
      for (const args of [s.args, withHotzoneSize(s.args, "4M")]) {
        s.prepare(f, w);
        // the user's command line: no --pbkdf (a decryption makes no keyslot; the re-encryption digest is benchmarked)
        const run = cmdFor(root, tool, s, w, args);
        timeRun(run.cmd, run.args, w.dir, run.env);
        verifyDecShift(root, f, w, `after ${tool}'s run with ${args.join(" ")}`);
      }
    });
  }

  for (const [starter, finisher] of [["trustvol", CS27], [CS27, "trustvol"]] as [Tool, Tool][]) {
    test(`${s.name}: ${starter} starts, SIGKILL mid-run, ${finisher} finishes → plaintext at the device's start`, async (t) => {
      const c = setup(t);
      if (!c) return;
      const { root, f, w } = c;
      // trustvol is killed at a seeded fraction of its --progress-json progress (printed once its init is committed),
      // cryptsetup after a seeded delay; a kill in cryptsetup's init (the re-encryption digest's PBKDF benchmark runs
      // after the export and the signature wipe) leaves the header as exported: too early here, that cut has its own test.
      const progress = starter === "trustvol";
      const attempt = async (args: string[]) => {
        const run = cmdFor(root, starter, s, w, [...args, ...FAST_PBKDF, ...(progress ? ["--progress-json"] : [])]);
        s.prepare(f, w);
        const calibratedMs = timeRun(run.cmd, run.args, w.dir, run.env);
        const landed = await killMidRun({
          cmd: run.cmd, args: run.args, env: run.env, calibratedMs, frac: 0.15 + 0.7 * rnd(), cwd: w.dir, progress,
          prepare: () => s.prepare(f, w),
          midRun: () => decryptShiftState(w.img, w.hdr) === "in re-encryption",
          touched: () => decryptShiftState(w.img, w.hdr) === "finished",
        }).catch((e: Error) => {
          if (starter === CS27 && /could not land a kill/.test(e.message)) return undefined;
          throw e;
        });
        return landed && { ...landed, calibratedMs };
      };
      let landed = await attempt(s.args);
      if (!landed) {
        // a moved segment a quarter as long: one hotzone more, the data phase a little longer
        const smaller = s.args.includes("--hotzone-size") ? "2M" : "4M";
        t.diagnostic(`no kill landed in cryptsetup 2.7.5's run; again with --hotzone-size ${smaller}`);
        landed = await attempt(withHotzoneSize(s.args, smaller));
      }
      if (!landed) return t.skip("cryptsetup 2.7.5's run was too short to interrupt under this load");
      const crashed = luksJson(w.img, w.hdr);
      assertDumpsAlike(root, w, "the crashed state");
      // (knownCryptsetupDeadEnd skips flagged segments: a moved segment's hotzone in re-encryption is not the finalisation)
      const hot = Object.values(crashed.segments).some((x: any) => x.flags?.includes("in-reencryption"));
      const finalising = hot ? undefined : knownCryptsetupDeadEnd(crashed, "");
      if (finalising && finisher === CS27) {
        // Measured (2.6.1 the same): 2.7.5's --resume-only of this state (its own crash there too) exits 0 having
        // decrypted [0, shift) a second time. Watched on a copy; trustvol finishes the state itself.
        const copy: Work = { ...w, img: join(w.dir, "cs.img"), hdr: join(w.dir, "cs.hdr") };
        copyFileSync(w.img, copy.img);
        copyFileSync(w.hdr, copy.hdr);
        const c27 = finishWith(root, CS27, s, copy);
        const intact = c27.ok && shaFile(copy.img, 0, DEC_T) === shaFile(f.plainBig, 0, DEC_T);
        t.diagnostic(`seed ${SEED}: killed in the finalisation (${finalising}): cryptsetup 2.7.5 ${intact ? "finished it" : c27.ok ? "exited 0 and corrupted the plaintext" : `could not finish: ${c27.message}`}; trustvol finishes it`);
        const fin = finishWith(root, "trustvol", s, w);
        assert.ok(fin.ok, `trustvol could not finish the finalisation crash: ${fin.message}`);
        return verifyDecShift(root, f, w, `after trustvol finished ${starter}'s finalisation crash`);
      }
      const fin = finishWith(root, finisher, s, w);
      t.diagnostic(`seed ${SEED}: full run ${landed.calibratedMs.toFixed(0)} ms, killed at ${landed.delayMs.toFixed(0)} ms (attempt ${landed.attempts}); ${finisher} ${fin.ok ? (fin.repaired ? "needed repair first" : "resumed directly") : `could not finish: ${fin.message}`}`);
      if (!fin.ok) {
        // only a state cryptsetup cannot resume after its own crash either may stop 2.7.5; trustvol must then finish it
        const kind = knownCryptsetupDeadEnd(crashed, fin.message);
        assert.ok(finisher === CS27 && kind, `${finisher} could not finish after ${starter} was killed: ${fin.message}\ncrashed state: ${JSON.stringify(crashed)}`);
        const fin2 = finishWith(root, "trustvol", s, w);
        assert.ok(fin2.ok, `neither cryptsetup 2.7.5 (${fin.message}) nor trustvol (${fin2.message}) could finish (${kind})`);
        t.diagnostic(`cryptsetup 2.7.5 cannot resume this state (${kind}); trustvol finished it`);
      }
      verifyDecShift(root, f, w, `after ${starter}'s crash and ${finisher}'s finish`);
    });
  }

  // A cut between the header's export and the init's metadata commit. trustvol: SIGKILL on entry to its commit's
  // first write (strace; checksum) or to its first write to the device (journal). cryptsetup 2.7.5: SIGKILL once its
  // signature wipe is seen (its re-encryption digest's PBKDF benchmark follows: a wide window). The header file is the
  // volume's header as exported: 2.7.5 refuses it (by design: its own cut there ends the same way). trustvol goes on
  // from its own export only (the record after the header names the volume and the device; at its commit, the copy
  // whole, after the header restore its refusal names); from 2.7.5's, the way out
  // is cryptsetup's: luksHeaderRestore from the file (the data at the shift is untouched until the commit), then again.
  for (const tool of ["trustvol", CS27] as Tool[]) {
    const then = tool === "trustvol" ? "trustvol goes on from it" : "trustvol refuses it too, luksHeaderRestore and a new run recover";
    test(`${s.name}: ${tool} SIGKILLed before its init's metadata commit → cryptsetup 2.7.5 refuses the exported header, ${then}`, async (t) => {
      const c = setup(t);
      if (!c) return;
      if (tool === "trustvol" && !needTools(t, "strace")) return;
      const { root, f, w } = c;
      s.prepare(f, w);
      const atCommit = s.name.endsWith("checksum");
      const run = cmdFor(root, tool, s, w, [...s.args, ...FAST_PBKDF]);
      if (tool === "trustvol") {
        const k = killAtWrite(run.cmd, run.args, atCommit ? w.hdr : w.img, "pwrite64", 1, w.dir);
        assert.ok(k.killed, `trustvol was not killed: ${k.stderr.trim()}`);
      } else {
        const killed = await killWhen(run, w.dir, () => existsSync(w.hdr) && magicWiped(w.img));
        if (!killed) return t.skip("cryptsetup 2.7.5 finished before its signature wipe was seen");
      }
      const state = decryptShiftState(w.img, w.hdr);
      if (tool === CS27 && state !== "exported") return t.skip(`the kill left cryptsetup 2.7.5's run ${state}, not before its commit (polled too late under load)`);
      assert.equal(state, "exported", "trustvol's header file after a kill before its commit");
      if (tool === "trustvol") assert.equal(isLuks(w.img), !atCommit, atCommit ? "the device's header copies zeroed before the commit" : "the device untouched before its first write");
      assertDumpsAlike(root, w, "the header as exported");
      const before = shaFile(w.img);
      const resume = cs27(root, w, ["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", inChroot(w.pw), "--header", inChroot(w.hdr), inChroot(w.img)]);
      assert.match(resume.stderr, /not in progress/, `cryptsetup 2.7.5 --resume-only of the exported header (status ${resume.status})`);
      const again = cs27(root, w, ["reencrypt", "--decrypt", "--force-offline-reencrypt", "-q", "--key-file", inChroot(w.pw), "--header", inChroot(w.hdr), inChroot(w.img)]);
      assert.match(again.stderr, /supported with detached header device only \(with data offset set to 0\)/, `cryptsetup 2.7.5 --decrypt --header of the exported header (status ${again.status})`);
      assert.equal(shaFile(w.img), before, "cryptsetup 2.7.5's refusals left the device as it was");
      if (tool === "trustvol") tvContinuesOwnExport(["reencrypt", ...s.args, "-q", "--key-file", w.pw, "--header", w.hdr, w.img], w.img, atCommit);
      else {
        const r = tv(["reencrypt", ...s.args, "-q", "--key-file", w.pw, "--header", w.hdr, w.img]);
        assert.notEqual(r.status, 0, "trustvol goes on only from its own export, not from cryptsetup 2.7.5's");
        // its reason: the export is not its own; or, the device shown unchanged but for the magics (and the moved copy), the way on
        assert.match(r.stderr, /exported from this device|`trustvol header restore --force --file \S+ \S+`|move \S+ aside/, "trustvol's reason for refusing cryptsetup 2.7.5's export");
        assert.equal(shaFile(w.img), before, "trustvol's refusal left the device as it was");
        const rest = cs27(root, w, ["luksHeaderRestore", "-q", "--header-backup-file", inChroot(w.hdr), inChroot(w.img)]);
        assert.equal(rest.status, 0, `cryptsetup 2.7.5 luksHeaderRestore from its export: ${rest.stderr.toString()}`);
        assert.equal(shaFile(w.img), shaFile(decShiftImage(f)), "the device after luksHeaderRestore from cryptsetup 2.7.5's export");
        rmSync(w.hdr);
        const again = tv(["reencrypt", ...s.args, "-q", "--key-file", w.pw, "--header", w.hdr, w.img]);
        assert.equal(again.status, 0, `trustvol's run after the restore: ${again.stderr.trim()}`);
      }
      verifyDecShift(root, f, w, `after ${tool}'s cut before the commit`);
    });
  }
}

// A resilience change at resume (cryptsetup 2.5+): 2.7.5 starts a checksum rotation, trustvol resumes it with
// --resilience journal and stops after one hotzone (SIGINT, exit 7), 2.7.5 verifies the new digest and finishes.
test("rotation: cryptsetup 2.7.5 --init-only (checksum), trustvol resumes with --resilience journal and is stopped, 2.7.5 finishes", async (t) => {
  const s = setup(t);
  if (!s) return;
  const { root, f, w } = s;
  copyFileSync(f.luks, w.img);
  const init = cs27(root, w, ["reencrypt", "--init-only", "--force-offline-reencrypt", "-q", ...FAST_PBKDF, "--resilience", "checksum", "--key-file", inChroot(w.pw), inChroot(w.img)]);
  assert.equal(init.status, 0, init.stderr.toString());
  const [cmd, args] = trustvolCmd(["reencrypt", "--resume-only", "--resilience", "journal", "--hotzone-size", "256K", "--progress-json", "-q", "--key-file", w.pw, w.img]);
  const stopped = await new Promise<number | null>((resolve) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let sent = false;
    const onLine = (b: Buffer) => {
      // (a line with bytes done: the switch is committed before the first hotzone; the first line may say 0)
      if (!sent && /"device_bytes":"[1-9]/.test(b.toString())) {
        sent = true;
        p.kill("SIGINT");
      }
    };
    p.stdout.on("data", onLine);
    p.stderr.on("data", onLine);
    p.on("exit", (code) => resolve(code));
  });
  const j = luksJson(w.img);
  const rk = Object.values(j.keyslots).find((k: any) => k.type === "reencrypt") as any;
  if (stopped !== 0) {
    assert.equal(stopped, 7, "stopped at a safe point");
    assert.equal(rk?.area.type, "journal", "trustvol switched the run to journal");
    const r = cs27(root, w, ["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", inChroot(w.pw), inChroot(w.img)]);
    assert.equal(r.status, 0, `cryptsetup 2.7.5 resumes trustvol's switched run: ${r.stderr.toString()}`);
  } else t.diagnostic("trustvol finished before the SIGINT landed");
  assertPlain(w.img, w.pw, f.plain, SIZE - 16 * MiB, undefined, "plaintext after the switched rotation");
  opensWithAll(root, w, false);
});
