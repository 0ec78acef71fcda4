// Issue 10, "cryptsetup starts, is killed → trustvol resumes", at every write instead of at random moments: cryptsetup
// 2.6.1's run is traced once (strace: its write(2) calls, one thread), then run again from the same start and SIGKILLed
// on entry to its n-th write (strace fault injection), for each n. trustvol then finishes the job as a user would —
// `reencrypt --resume-only`; `repair -q` first when it says so; the original command when nothing was committed; the
// `trustvol header restore …` its refusal names, or moving aside a header file a cut run may have left — and the plaintext must be byte-identical (checked without trustvol
// code: cryptsetup's volume key and AES-XTS per sector, or the plain device itself) and the volume open with both
// tools. CI takes a sample of each run's writes (its init's header commits, its finalisation, a seeded few in
// between); TRUSTVOL_CSKILL=all takes every write. Any kill point trustvol does not finish fails the test.
// (A random kill in CI once met a state no trustvol path finished: cryptsetup's finalisation between a keyslot's wipe
// and the commit that drops it. This sweep finds such states deterministically.)
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, existsSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { needTools, run } from "../helpers/tools.js";
import {
  MiB, FAST_PBKDF, PASSPHRASE, writePlain, shaFile, cs, luksJson, inReencryption, isLuks, tv, fastTmpDir, needCliEngine, seeded,
  assertPlain, opensWithBoth, assertSameBytes, luksOverPlain, decryptShiftState,
} from "../helpers/reencrypt.js";

const ALL = process.env.TRUSTVOL_CSKILL === "all";
const SEED = Number(process.env.TRUSTVOL_CSKILL_SEED ?? 20261205);
/**
 * CI's sample: HEAD writes of cryptsetup's init (its first writes that are metadata-sized or start a run of equal
 * sizes: every header commit, not each MiB of a wipe), the last TAIL (its finalisation), MIDDLE seeded between.
 */
const HEAD = 16, TAIL = 12, MIDDLE = 4;

interface Scenario {
  name: string;
  /** cryptsetup reencrypt options (besides --force-offline-reencrypt -q --key-file, and --header when detached). */
  args: string[];
  detached: boolean;
  /** The finished header's one data segment: encrypted (under a new volume key for a rotation), or plain. */
  final: "crypt" | "new key" | "linear";
  /** The start state at img (and hdr): built once per scenario into the given files. */
  build(dir: string, pw: string, img: string, hdr: string): void;
  verify(dir: string, pw: string, img: string, hdr: string): void;
}

const DATA = 4 * MiB;
const plainOf = (dir: string, size: number, seed: number, fs = false) => {
  const p = join(dir, `plain-${size}-${seed}${fs ? "-ext4" : ""}`);
  if (existsSync(p)) return p;
  writePlain(p, size, seed);
  // an ext4 file system over the random bytes (what devices hold): evidence of plain data a header may lie about
  if (fs) run("mkfs.ext4", ["-q", "-F", "-E", "nodiscard,lazy_itable_init=1", p]);
  return p;
};

const rotation = (resilience: string): Scenario => ({
  name: `rotation, resilience ${resilience}`,
  args: ["--resilience", resilience, "--hotzone-size", "512K"],
  detached: false,
  final: "new key",
  build: (dir, pw, img) => luksOverPlain(plainOf(dir, 16 * MiB + DATA, 1), img, pw, DATA),
  verify: (dir, pw, img) => {
    assertPlain(img, pw, plainOf(dir, 16 * MiB + DATA, 1), DATA, undefined, "plaintext after rotation");
    opensWithBoth(img, pw);
  },
});

const scenarios: Scenario[] = [
  rotation("checksum"),
  rotation("journal"),
  {
    name: "encrypt, detached --header",
    args: ["--encrypt", "--hotzone-size", "512K"],
    detached: true,
    final: "crypt",
    build: (dir, _pw, img, hdr) => {
      copyFileSync(plainOf(dir, DATA, 2, true), img);
      rmSync(hdr, { force: true });
    },
    verify: (dir, pw, img, hdr) => {
      assertPlain(img, pw, plainOf(dir, DATA, 2, true), DATA, hdr, "plaintext after encrypt");
      opensWithBoth(img, pw, hdr);
    },
  },
  {
    // data shift 2 MiB: the first 2 MiB copied to the end, then backward in shift-long hotzones
    name: "encrypt in place, --reduce-device-size 4M (datashift)",
    args: ["--encrypt", "--reduce-device-size", "4M"],
    detached: false,
    final: "crypt",
    build: (dir, _pw, img) => copyFileSync(plainOf(dir, 12 * MiB, 3), img),
    verify: (dir, pw, img) => {
      assertPlain(img, pw, plainOf(dir, 12 * MiB, 3), 8 * MiB, undefined, "plaintext after encrypt");
      opensWithBoth(img, pw);
    },
  },
  {
    name: "decrypt, detached --header",
    args: ["--decrypt", "--hotzone-size", "512K"],
    detached: true,
    final: "linear",
    build: (dir, pw, img, hdr) => {
      copyFileSync(plainOf(dir, DATA, 4), img);
      rmSync(hdr, { force: true });
      cs(["reencrypt", "--encrypt", "-q", "--force-offline-reencrypt", "--header", hdr, ...FAST_PBKDF, "--key-file", pw, img], { cwd: dir });
    },
    verify: (dir, _pw, img) => assert.equal(shaFile(img), shaFile(plainOf(dir, DATA, 4)), "plain device after decrypt"),
  },
  {
    // the header on the device: exported to the new header file, the data shifted down by the 16 MiB data offset
    name: "decrypt in place (--header NEW_FILE, data shift), resilience checksum",
    args: ["--decrypt", "--resilience", "checksum", "--hotzone-size", "4M"],
    detached: true,
    final: "linear",
    build: (dir, pw, img, hdr) => {
      luksOverPlain(plainOf(dir, 16 * MiB + 8 * MiB, 5), img, pw, 8 * MiB);
      rmSync(hdr, { force: true });
    },
    verify: (dir, _pw, img, hdr) => {
      assertSameBytes(img, plainOf(dir, 16 * MiB + 8 * MiB, 5), 8 * MiB, "device [0, T) after the decryption");
      assert.equal(decryptShiftState(img, hdr), "finished", "header file after the decryption");
    },
  },
];

const csArgs = (s: Scenario, pw: string, img: string, hdr: string, extra: string[] = []) =>
  ["reencrypt", "--force-offline-reencrypt", "-q", ...s.args, ...FAST_PBKDF, ...extra, "--key-file", pw, ...(s.detached ? ["--header", hdr] : []), img];

/** cryptsetup under strace: every write(2) traced (n = 0), or SIGKILLed on entry to the n-th. */
function straced(dir: string, args: string[], n: number, trace?: string): { killed: boolean; status: number | null } {
  const r = spawnSync("strace", ["-f", "-qq", "-o", trace ?? "/dev/null", "-e", "trace=write", ...(n ? ["-e", `inject=write:signal=SIGKILL:when=${n}`] : []), "cryptsetup", ...args], { encoding: "utf8", timeout: 600_000, cwd: dir });
  return { killed: r.signal === "SIGKILL" || r.status === 137, status: r.status };
}

/** The writes to kill at: all of them, or the sample (both ends of the run, a seeded few in between). */
function pick(sizes: number[], rnd: () => number): number[] {
  const total = sizes.length;
  if (ALL || total <= HEAD + TAIL + MIDDLE) return Array.from({ length: total }, (_, i) => i + 1);
  const set = new Set<number>();
  for (let i = 0; i < total - TAIL && set.size < HEAD; i++) if (sizes[i]! <= 16384 || sizes[i] !== sizes[i - 1]) set.add(i + 1);
  const head = Math.max(...set);
  for (let i = 1; i <= TAIL; i++) set.add(total + 1 - i);
  for (let k = 0; k < MIDDLE && total - TAIL > head; k++) set.add(head + 1 + Math.floor(rnd() * (total - TAIL - head)));
  return [...set].sort((a, b) => a - b);
}

/**
 * Finish as a user would, following what trustvol says: resume (or the original command when nothing is in
 * re-encryption), `repair -q` when it asks, the header restore it names. Returns the steps taken, or throws.
 */
function finish(s: Scenario, pw: string, img: string, hdr: string, startDigest: string | undefined): string[] {
  const hdrArgs = s.detached ? ["--header", hdr] : [];
  const steps: string[] = [];
  const json = () => ((s.detached ? existsSync(hdr) && isLuks(hdr) : isLuks(img)) ? luksJson(img, s.detached ? hdr : undefined) : undefined);
  const inReenc = (j: ReturnType<typeof json>) => !!j && Object.values(j.keyslots).some((k: any) => k.type === "reencrypt");
  const pending = () => inReenc(json());
  /** Not in re-encryption and the one data segment is the final one (a kill in the last commit: nothing left to do). */
  const done = () => {
    const j = json();
    if (!j || inReenc(j)) return false;
    const segs = Object.entries(j.segments);
    if (segs.length !== 1) return false;
    const [id, seg] = segs[0]!;
    if (s.final === "linear") return seg.type === "linear";
    const digest = Object.values(j.digests).find((d: any) => d.segments.includes(id)) as { salt: string; keyslots: string[] } | undefined;
    // (cryptsetup's detached --encrypt commits a header with no keyslot first: not done)
    return seg.type === "crypt" && !!digest?.keyslots.length && (s.final === "crypt" || digest.salt !== startDigest);
  };
  for (let i = 0; i < 5; i++) {
    // a rotation's finished state is its new key; --encrypt/--decrypt are run again, as a user would, and say so
    if (s.final === "new key" && done()) return [...steps, "done"];
    const resume = pending();
    const args = resume ? ["reencrypt", "--resume-only", "-q", "--key-file", pw, ...hdrArgs, img] : ["reencrypt", "-q", ...s.args, ...FAST_PBKDF, "--key-file", pw, ...hdrArgs, img];
    const before = [shaFile(img), existsSync(hdr) ? shaFile(hdr) : "none"].join();
    const r = tv(args);
    steps.push(`${resume ? "resume" : "run"}: ${r.status}`);
    if (r.status === 0) return steps;
    const said = r.stderr.trim();
    assert.equal(said.split("\n").length, 1, `one line: ${said}`);
    assert.equal([shaFile(img), existsSync(hdr) ? shaFile(hdr) : "none"].join(), before, `the refusal changed nothing: ${said}`);
    if (!resume && /is already a LUKS2 volume|is decrypted already/.test(said) && done()) return [...steps.slice(0, -1), "done"];
    const aside = /move (\S+) aside/.exec(said);
    if (aside) {
      assert.equal(aside[1], hdr, "only the header file is ever named");
      renameSync(hdr, `${hdr}.aside`);
      steps.push("header file moved aside");
      continue;
    }
    const restore = /`(trustvol header restore [^`]+)`/.exec(said);
    if (restore) {
      const rr = tv(restore[1]!.split(/\s+/).slice(1));
      steps.push(`header restore: ${rr.status}`);
      assert.equal(rr.status, 0, `the restore trustvol named: ${rr.stderr.trim()}`);
      continue;
    }
    if (/repair/.test(said)) {
      const rp = tv(["repair", "-q", ...(/--drop-old-keyslots/.test(said) ? ["--drop-old-keyslots"] : []), "--key-file", pw, ...hdrArgs, img]);
      steps.push(`repair: ${rp.status}`);
      assert.equal(rp.status, 0, `repair: ${rp.stderr.trim()} (after: ${said})`);
      if (!pending() && rp.stderr.includes("Finished")) return steps;
      continue;
    }
    throw new Error(`trustvol could not go on (${steps.join(", ")}): ${said}`);
  }
  throw new Error(`no end after ${steps.join(", ")}`);
}

const summary: string[] = [];
after(() => summary.length && console.log(`# cryptsetup 2.6.1 SIGKILLed at its writes, trustvol finished:\n#   ${summary.join("\n#   ")}`));

for (const s of scenarios) {
  test(`${s.name}: cryptsetup SIGKILLed at ${ALL ? "every one" : "a sample"} of its writes → trustvol finishes, plaintext identical, opens with both`, { timeout: 40 * 60_000 }, async (t) => {
    if (!needTools(t, "cryptsetup", "strace", "mkfs.ext4") || !needCliEngine(t)) return;
    const { dir, cleanup } = fastTmpDir("trustvol-cskill-");
    t.after(cleanup);
    const pw = join(dir, "pw");
    writeFileSync(pw, PASSPHRASE, { mode: 0o600 });
    const start = join(dir, "start.img"), startHdr = join(dir, "start.hdr");
    s.build(dir, pw, start, startHdr);
    const img = join(dir, "work.img"), hdr = join(dir, "work.hdr");
    // a rotation's start key: its digest's salt (the finished rotation's data segment has another)
    const startDigest = s.final === "new key" ? (Object.values(luksJson(start).digests)[0] as { salt: string }).salt : undefined;
    const reset = () => {
      rmSync(`${hdr}.aside`, { force: true });
      copyFileSync(start, img);
      if (existsSync(startHdr)) copyFileSync(startHdr, hdr);
      else rmSync(hdr, { force: true });
    };
    // 1. the whole run, traced: its writes (and the premise: cryptsetup's own run ends as verify expects)
    reset();
    const trace = join(dir, "trace");
    const full = straced(dir, csArgs(s, pw, img, hdr), 0, trace);
    assert.equal(full.status, 0, "cryptsetup's full run");
    s.verify(dir, pw, img, hdr);
    const sizes = readFileSync(trace, "utf8").split("\n").filter((l) => /\bwrite\(/.test(l)).map((l) => Number(/= (\d+)\s*$/.exec(l)?.[1] ?? -1));
    const total = sizes.length;
    const at = pick(sizes, seeded(SEED + total));
    // 2. killed at each chosen write, finished by trustvol
    const kinds = new Map<string, number>();
    let survived = 0;
    for (const n of at) {
      reset();
      const k = straced(dir, csArgs(s, pw, img, hdr), n);
      assert.ok(k.killed, `cryptsetup was killed at write ${n} of ${total}`);
      let steps: string[];
      try {
        steps = finish(s, pw, img, hdr, startDigest);
        s.verify(dir, pw, img, hdr);
      } catch (e) {
        assert.fail(`killed at write ${n} of ${total}: ${(e as Error).message}`);
      }
      const kind = steps.join(" → ");
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
      survived++;
    }
    const how = [...kinds].map(([k, c]) => `${c}× ${k}`).join("; ");
    t.diagnostic(`${survived} of ${at.length} kills (of ${total} writes) finished by trustvol, plaintext intact: ${how}`);
    summary.push(`${s.name}: ${survived}/${at.length} kills of ${total} writes (${how})`);
  });
}
