// Re-encryption (issue 10) on the same 1 GiB device, side by side in one run, same resilience (checksum, cryptsetup's
// default) and the same fast keyslot KDF for every tool:
//   key rotation:       trustvol reencrypt            vs cryptsetup reencrypt --force-offline-reencrypt
//   encrypt in place:   trustvol reencrypt --encrypt --reduce-device-size 32M  vs the same with cryptsetup
//   decrypt:            trustvol reencrypt --decrypt --header H  vs the same with cryptsetup
//   the floor:          dd if=F of=F bs=4M conv=notrunc,fdatasync (an in-place read+write of the whole device)
//   and rotation and --encrypt once more on a block device (a loop device with direct I/O; root only), dd both ways
// Targets: ≥ 2× cryptsetup, ≥ 0.7× dd, trustvol peak RSS ≤ 128 MiB whatever the size. Wall time, CPU seconds and
// peak RSS come from /usr/bin/time around each process; BENCH_RUNS rounds (default 3) run every command in turn, and the
// ratios are of the median runs (the best runs' in brackets): on a shared VM one run can take twice another. Runs in
// /dev/shm when it has room (the tools, not the VM's shared disk; BENCH_DIR overrides). BENCH_REENC_MIB sets the size
// (default 1024); use a small one while developing.
// trustvol runs as an installed package does: the bundle dist/cli/run.js, rebuilt first when src/ is newer, and run
// directly (bin/trustvol.mjs in a checkout walks src/ at every start, and runs tsx once src/ is edited mid-bench).
// The "CPU floor" lines measure, in this process, what one core needs for the crypto and hashing, then add rotation's
// page-cache copies (one read, two writes) at dd's cost: the best dd ratio this host allows. "The ideal loop" runs
// bench/rotation-ideal.c, a zero-copy C rotation with nothing but the unavoidable work, plus trustvol's start-up.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, openSync, writeSync, closeSync, copyFileSync, statfsSync, existsSync, readFileSync } from "node:fs";
import { tmpdir, loadavg, availableParallelism } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureBuilt } from "./built.js";
import { randomBytes, createHash } from "node:crypto";
import { createSectorCipher } from "../src/dmcrypt/sector-cipher.js";
import { loadNative } from "../src/dmcrypt/native.js";

const MiB = 1024 * 1024;
const SIZE_MIB = Number(process.env.BENCH_REENC_MIB ?? 1024);
const TRUSTVOL_BIN = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "cli", "run.js");
const KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
/** Rounds of every command (BENCH_RUNS, default 3): ratios are of the medians. */
const RUNS = Math.max(1, Number(process.env.BENCH_RUNS ?? 3));

interface Trial {
  key: string;
  what: string;
  /** trustvol's own command (skipped when its reencrypt is not built) */
  ours?: boolean;
  prepare(): void;
  cmd: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  /** after the first run: the result opens with cryptsetup */
  check?(): void;
}

interface Measured {
  /** wall seconds (of the median run, in the table); best: the fastest run's */
  best?: number;
  wall: number;
  cpu: number;
  rssMiB: number;
}

/** Run a command under /usr/bin/time: wall seconds, user+sys CPU seconds, peak RSS (of that process tree's max). */
function measure(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Measured {
  const tf = join(tmpdir(), `trustvol-bench-time-${process.pid}`);
  const r = spawnSync("/usr/bin/time", ["-o", tf, "-f", "%e %U %S %M", cmd, ...args], { encoding: "utf8", stdio: ["ignore", "ignore", "pipe"], cwd: tmpdir(), env });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status}): ${r.stderr.trim()}`);
  const [wall, user, sys, rssKiB] = readFileSync(tf, "utf8").trim().split("\n").at(-1)!.split(" ").map(Number) as [number, number, number, number];
  rmSync(tf, { force: true });
  return { wall, cpu: user + sys, rssMiB: rssKiB / 1024 };
}

/**
 * One core's throughput (MiB per CPU-second, so a loaded machine does not skew it) of trustvol's sector engine
 * (AES-256-XTS, 4 KiB sectors) and of SHA-256 over 4 KiB blocks (native hasher when built), on 64 MiB.
 */
function cpuFloor(): { xts: number; sha: number } {
  const data = randomBytes(64 * MiB);
  const cpuS = (f: () => void) => {
    const c = process.cpuUsage();
    f();
    const d = process.cpuUsage(c);
    return (d.user + d.system) / 1e6;
  };
  const c = createSectorCipher({ cipher: "aes-xts-plain64", key: randomBytes(64), sectorSize: 4096 });
  const xts = 64 / cpuS(() => c.encrypt(data, 0));
  c.dispose();
  const a = loadNative();
  const out = Buffer.alloc((data.length / 4096) * 32);
  const sha =
    64 /
    cpuS(() => {
      if (a?.hasherCreate && a.hashBlocks) a.hashBlocks(a.hasherCreate("sha256", new Uint8Array(0), 1), data, data.length / 4096, 4096, out);
      else for (let o = 0; o < data.length; o += 4096) createHash("sha256").update(data.subarray(o, o + 4096)).digest();
    });
  return { xts, sha };
}

/**
 * Rotation and encrypt-in-place again on a block device, as on a device in the field: a loop device with direct I/O
 * over a file in the bench's directory (root and losetup needed, else skipped). trustvol and cryptsetup both use
 * O_DIRECT there; dd is shown as the issue states it (through the page cache) and with O_DIRECT.
 */
function blockDeviceRuns(luks: string, plain: string, pw: string, dir: string): void {
  if (process.getuid?.() !== 0 || spawnSync("losetup", ["--version"]).status !== 0) return console.log("block device: skipped (needs root and losetup)");
  const img = join(dir, "loop.img");
  copyFileSync(luks, img);
  const at = spawnSync("losetup", ["-f", "--show", "--direct-io=on", img], { encoding: "utf8" });
  if (at.status !== 0) return console.log(`block device: skipped (losetup: ${at.stderr.trim()})`);
  const loop = at.stdout.trim();
  try {
    const fresh = (from: string) => {
      const r = spawnSync("dd", [`if=${from}`, `of=${loop}`, "bs=4M", "oflag=direct", "status=none"]);
      if (r.status !== 0) throw new Error(`dd onto ${loop} failed`);
    };
    const rows: [string, string, string[], string][] = [
      ["dd (page cache)", "dd", [`if=${loop}`, `of=${loop}`, "bs=4M", "conv=notrunc,fdatasync", "status=none"], luks],
      ["dd iflag=direct oflag=direct", "dd", [`if=${loop}`, `of=${loop}`, "bs=4M", "iflag=direct", "oflag=direct", "conv=notrunc,fdatasync", "status=none"], luks],
      ["cryptsetup reencrypt (rotation)", "cryptsetup", ["reencrypt", "--force-offline-reencrypt", "-q", "--resilience", "checksum", ...KDF, "--key-file", pw, loop], luks],
      ["trustvol reencrypt (rotation)", process.execPath, [TRUSTVOL_BIN, "reencrypt", "-q", "--resilience", "checksum", ...KDF, "--key-file", pw, loop], luks],
      ["cryptsetup reencrypt --encrypt (datashift)", "cryptsetup", ["reencrypt", "--encrypt", "--force-offline-reencrypt", "-q", "--reduce-device-size", "32M", ...KDF, "--key-file", pw, loop], plain],
      ["trustvol reencrypt --encrypt (datashift)", process.execPath, [TRUSTVOL_BIN, "reencrypt", "--encrypt", "-q", "--reduce-device-size", "32M", ...KDF, "--key-file", pw, loop], plain],
    ];
    const runs = new Map<string, Measured[]>(rows.map(([k]) => [k, []]));
    for (let r = 0; r < RUNS; r++)
      for (const [k, cmd, args, from] of rows) {
        fresh(from);
        runs.get(k)!.push(measure(cmd, args));
      }
    console.log(`block device (${loop}, loop with direct I/O over ${dir}; ${RUNS} rounds, medians):`);
    const med = new Map<string, Measured>();
    for (const [k] of rows) {
      const ms = [...runs.get(k)!].sort((a, b) => a.wall - b.wall);
      const m = ms[Math.floor((ms.length - 1) / 2)]!;
      med.set(k, m);
      console.log(`  ${k.padEnd(42)} ${m.wall.toFixed(2).padStart(7)} s wall ${m.cpu.toFixed(2).padStart(6)} s CPU  peak RSS ${m.rssMiB.toFixed(0).padStart(4)} MiB`);
    }
    const w = (i: number) => med.get(rows[i]![0])!.wall;
    console.log(`  rotation: trustvol ${(w(2) / w(3)).toFixed(2)}× cryptsetup, ${(w(0) / w(3)).toFixed(2)}× dd through the page cache, ${(w(1) / w(3)).toFixed(2)}× dd with O_DIRECT`);
    console.log(`  encrypt in place: trustvol ${(w(4) / w(5)).toFixed(2)}× cryptsetup, ${(w(0) / w(5)).toFixed(2)}× dd through the page cache, ${(w(1) / w(5)).toFixed(2)}× dd with O_DIRECT`);
  } finally {
    spawnSync("losetup", ["-d", loop]);
  }
}

/**
 * The median of BENCH_RUNS runs of bench/rotation-ideal.c on a fresh copy of the LUKS2 image (built with gcc against the
 * addon's source and Node's headers; skipped without them).
 */
function idealLoop(dir: string, prepare: () => void, work: string): Measured | null {
  const bin = join(dir, "rotation-ideal");
  const include = join(dirname(dirname(process.execPath)), "include", "node");
  const src = join(dirname(fileURLToPath(import.meta.url)), "rotation-ideal.c");
  const cc = spawnSync("gcc", ["-O3", "-std=gnu11", `-I${include}`, "-DNAPI_VERSION=8", "-DOPENSSL_API_COMPAT=30000", "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections", src, "-o", bin, "-lcrypto", "-lpthread"], { encoding: "utf8" });
  if (cc.status !== 0) {
    console.log(`  the ideal loop: skipped (gcc: ${(cc.stderr || String(cc.error)).trim().split("\n")[0]})`);
    return null;
  }
  const ms: Measured[] = [];
  for (let r = 0; r < RUNS; r++) {
    prepare();
    const out = spawnSync(bin, [work, join(dir, "ideal-area")], { encoding: "utf8" });
    if (out.status !== 0) throw new Error(`rotation-ideal failed: ${out.stderr}`);
    const [wall, cpu] = out.stdout.trim().split(" ").map(Number) as [number, number];
    ms.push({ wall, cpu, rssMiB: 0 });
  }
  return ms.sort((a, b) => a.wall - b.wall)[Math.floor((RUNS - 1) / 2)]!;
}

/** Seconds from exec to trustvol's first hotzone in a rotation (TRUSTVOL_TIMING's "engine: prepared"), best of 3. */
function firstHotzoneS(rotArgs: string[], prepare: () => void): number {
  const at: number[] = [];
  for (let r = 0; r < 3; r++) {
    prepare();
    const out = spawnSync(process.execPath, [TRUSTVOL_BIN, ...rotArgs], { encoding: "utf8", env: { ...process.env, TRUSTVOL_TIMING: "1" } });
    const m = /^trustvol-time (\d+) \d+ engine: prepared/m.exec(out.stderr);
    if (out.status === 0 && m) at.push(Number(m[1]) / 1000);
  }
  return at.length ? Math.min(...at) : 0;
}

function trustvolHasReencrypt(): boolean {
  const r = spawnSync(process.execPath, [TRUSTVOL_BIN, "reencrypt", "--help"], { encoding: "utf8" });
  return r.status === 0 && /resume-only/.test(r.stdout);
}

export default async function (): Promise<void> {
  const shmRoom = existsSync("/dev/shm") ? statfsSync("/dev/shm").bavail * statfsSync("/dev/shm").bsize : 0;
  const base = process.env.BENCH_DIR ?? (shmRoom > 4 * SIZE_MIB * MiB ? "/dev/shm" : tmpdir());
  const dir = mkdtempSync(join(base, "trustvol-bench-reenc-"));
  ensureBuilt("dist/cli/run.js");
  console.log(`working in ${base}; ${SIZE_MIB} MiB device, resilience checksum; ${RUNS} rounds, median (and best) of each; load ${loadavg()[0]!.toFixed(1)}`);
  try {
    const pw = join(dir, "pw");
    writeFileSync(pw, "bench", { mode: 0o600 });
    const plain = join(dir, "plain.img");
    const fd = openSync(plain, "w");
    const chunk = randomBytes(8 * MiB);
    for (let i = 0; i < SIZE_MIB / 8; i++) writeSync(fd, chunk);
    closeSync(fd);
    // A LUKS2 volume of the same size (its data is whatever was there: rotation speed does not depend on it).
    const luks = join(dir, "luks.img");
    copyFileSync(plain, luks);
    const f = spawnSync("cryptsetup", ["luksFormat", "-q", "--type", "luks2", ...KDF, "--key-file", pw, luks], { encoding: "utf8" });
    if (f.status !== 0) throw new Error(`cryptsetup luksFormat: ${f.stderr}`);
    spawnSync("sync");
    const work = join(dir, "work.img");
    const fresh = (from: string) => {
      rmSync(work, { force: true });
      copyFileSync(from, work);
      spawnSync("sync");
    };
    const ours = trustvolHasReencrypt();
    if (!ours) console.log("trustvol reencrypt is not available here (engine not merged): reference tools only");

    // Decryption needs a detached header in cryptsetup 2.6.1: format one over the plain image, decrypt back. (Not over
    // luks.img: a device that starts with another volume's LUKS header is refused under a detached header.)
    const hdr = join(dir, "hdr.img");
    const hdrWork = join(dir, "hdr-work.img");
    const fh = spawnSync("cryptsetup", ["luksFormat", "-q", "--type", "luks2", ...KDF, "--key-file", pw, "--header", hdr, plain], { encoding: "utf8" });
    if (fh.status !== 0) throw new Error(`cryptsetup luksFormat --header: ${fh.stderr}`);
    const freshHdr = () => {
      fresh(plain);
      rmSync(hdrWork, { force: true });
      copyFileSync(hdr, hdrWork);
    };
    const opens = (what: string) => () => {
      if (spawnSync("cryptsetup", ["open", "--test-passphrase", "--key-file", pw, work]).status !== 0) console.log(`  !! cryptsetup cannot open trustvol's ${what} volume`);
    };
    const tv = (...args: string[]) => [TRUSTVOL_BIN, ...args];
    const rotArgs = ["reencrypt", "-q", "--resilience", "checksum", ...KDF, "--key-file", pw, work];
    const encArgs = ["reencrypt", "--encrypt", "-q", "--reduce-device-size", "32M", ...KDF, "--key-file", pw, work];
    // A host setting, not trustvol's: Node parses the NODE_EXTRA_CA_CERTS bundle at every start (~50-100 ms here). A
    // device's units run without it (systemd passes no login environment), so rotation and --encrypt are shown both ways.
    const clean = { ...process.env };
    delete clean.NODE_EXTRA_CA_CERTS;
    const trials: Trial[] = [
      { key: "dd", what: "dd in-place read+write (floor)", prepare: () => fresh(luks), cmd: "dd", args: [`if=${work}`, `of=${work}`, "bs=4M", "conv=notrunc,fdatasync", "status=none"] },
      { key: "csRot", what: "cryptsetup reencrypt (rotation)", prepare: () => fresh(luks), cmd: "cryptsetup", args: ["reencrypt", "--force-offline-reencrypt", "-q", "--resilience", "checksum", ...KDF, "--key-file", pw, work] },
      { key: "tvRot", what: "trustvol reencrypt (rotation)", ours: true, prepare: () => fresh(luks), cmd: process.execPath, args: tv(...rotArgs), check: opens("rotated") },
      ...(process.env.NODE_EXTRA_CA_CERTS ? [{ key: "tvRotClean", what: "  the same, NODE_EXTRA_CA_CERTS unset", ours: true, prepare: () => fresh(luks), cmd: process.execPath, args: tv(...rotArgs), env: clean }] : []),
      { key: "csEnc", what: "cryptsetup reencrypt --encrypt (datashift)", prepare: () => fresh(plain), cmd: "cryptsetup", args: ["reencrypt", "--encrypt", "--force-offline-reencrypt", "-q", "--reduce-device-size", "32M", ...KDF, "--key-file", pw, work] },
      { key: "tvEnc", what: "trustvol reencrypt --encrypt (datashift)", ours: true, prepare: () => fresh(plain), cmd: process.execPath, args: tv(...encArgs), check: opens("encrypted") },
      ...(process.env.NODE_EXTRA_CA_CERTS ? [{ key: "tvEncClean", what: "  the same, NODE_EXTRA_CA_CERTS unset", ours: true, prepare: () => fresh(plain), cmd: process.execPath, args: tv(...encArgs), env: clean }] : []),
      { key: "csDec", what: "cryptsetup reencrypt --decrypt (--header)", prepare: freshHdr, cmd: "cryptsetup", args: ["reencrypt", "--decrypt", "--force-offline-reencrypt", "-q", "--header", hdrWork, "--key-file", pw, work] },
      { key: "tvDec", what: "trustvol reencrypt --decrypt (--header)", ours: true, prepare: freshHdr, cmd: process.execPath, args: tv("reencrypt", "--decrypt", "-q", "--header", hdrWork, "--key-file", pw, work) },
    ].filter((t) => ours || !t.ours);
    // Round-robin: every round runs each command once, so a noisy spell of the host (a shared VM's stolen time) hits
    // them alike; the table shows the median run of each (its CPU and RSS) and the best wall time.
    const runs = new Map<string, Measured[]>(trials.map((t) => [t.key, []]));
    for (let r = 0; r < RUNS; r++) {
      for (const t of trials) {
        t.prepare();
        runs.get(t.key)!.push(measure(t.cmd, t.args, t.env));
        if (r === 0) t.check?.();
      }
    }
    const med = new Map<string, Measured>();
    for (const t of trials) {
      const ms = [...runs.get(t.key)!].sort((a, b) => a.wall - b.wall);
      const m = { ...ms[Math.floor((ms.length - 1) / 2)]!, rssMiB: Math.max(...ms.map((x) => x.rssMiB)), best: ms[0]!.wall };
      med.set(t.key, m);
      console.log(`${t.what.padEnd(44)} ${m.wall.toFixed(2).padStart(7)} s wall (best ${m.best.toFixed(2)}) ${m.cpu.toFixed(2).padStart(6)} s CPU ${(m.cpu / (SIZE_MIB / 1024)).toFixed(2).padStart(6)} CPU-s/GiB ${(SIZE_MIB / m.wall).toFixed(0).padStart(6)} MiB/s  peak RSS ${m.rssMiB.toFixed(0).padStart(4)} MiB`);
    }
    const dd = med.get("dd")!, csRot = med.get("csRot")!, csEnc = med.get("csEnc")!, csDec = med.get("csDec")!;
    const tvRot = med.get("tvRot"), tvRotClean = med.get("tvRotClean"), tvEnc = med.get("tvEnc"), tvEncClean = med.get("tvEncClean"), tvDec = med.get("tvDec");
    if (tvEncClean) {
      const start = (env?: NodeJS.ProcessEnv) => Math.min(...[0, 1, 2].map(() => measure(process.execPath, ["-e", "0"], env).wall));
      console.log(`  (Node's own start here: ${(start() * 1000).toFixed(0)} ms with NODE_EXTRA_CA_CERTS=${process.env.NODE_EXTRA_CA_CERTS}, ${(start(clean) * 1000).toFixed(0)} ms without)`);
    }

    const x = (a: Measured, b: Measured) => `${(a.wall / b.wall).toFixed(2)}× (best ${(a.best! / b.best!).toFixed(2)}×)`;
    if (tvRot) {
      console.log(`rotation:         trustvol ${x(csRot, tvRot)} cryptsetup (target ≥ 2×), ${x(dd, tvRot)} dd (target ≥ 0.7×); CPU ${tvRot.cpu.toFixed(1)} s vs cryptsetup ${csRot.cpu.toFixed(1)} s`);
      if (tvRotClean) console.log(`                  without NODE_EXTRA_CA_CERTS: ${x(csRot, tvRotClean)} cryptsetup, ${x(dd, tvRotClean)} dd`);
    }
    if (tvEnc) {
      console.log(`encrypt in place: trustvol ${x(csEnc, tvEnc)} cryptsetup (target ≥ 2×), ${x(dd, tvEnc)} dd (target ≥ 0.7×); CPU ${tvEnc.cpu.toFixed(1)} s vs cryptsetup ${csEnc.cpu.toFixed(1)} s`);
      if (tvEncClean) console.log(`                  without NODE_EXTRA_CA_CERTS: ${x(csEnc, tvEncClean)} cryptsetup, ${x(dd, tvEncClean)} dd`);
    }
    if (tvDec) {
      console.log(`decrypt:          trustvol ${x(csDec, tvDec)} cryptsetup, ${x(dd, tvDec)} dd; CPU ${tvDec.cpu.toFixed(1)} s vs cryptsetup ${csDec.cpu.toFixed(1)} s`);
    }
    if (tvRot || tvEnc || tvDec) {
      const peak = Math.max(tvRot?.rssMiB ?? 0, tvEnc?.rssMiB ?? 0, tvDec?.rssMiB ?? 0);
      console.log(`trustvol peak RSS ${peak.toFixed(0)} MiB (target ≤ 128 MiB) ${peak <= 128 ? "ok" : "OVER"}`);
    }
    console.log(`cryptsetup vs dd: rotation ${x(dd, csRot)}, encrypt ${x(dd, csEnc)}, decrypt ${x(dd, csDec)}`);
    const fl = cpuFloor();
    // Rotation must at least decrypt, encrypt and checksum every byte; spread over every core at best.
    const rotCpu = SIZE_MIB * (2 / fl.xts + 1 / fl.sha);
    const cores = availableParallelism();
    const ddS = Math.min(dd.wall, dd.cpu);
    console.log(`CPU floor (one core, per CPU-second): AES-256-XTS ${fl.xts.toFixed(0)} MiB/s, SHA-256 ${fl.sha.toFixed(0)} MiB/s → rotation needs ≥ ${rotCpu.toFixed(2)} CPU-s of crypto+hashing alone, ≥ ${(rotCpu / cores).toFixed(2)} s wall on ${cores} idle cores = at most ${(ddS / (rotCpu / cores)).toFixed(2)}× dd before any I/O (dd's ${ddS.toFixed(2)} s: its CPU-seconds when the machine is loaded)`);
    // With I/O: the page-cache copies of a read and a write of the device cost what dd's CPU-seconds are; torn-write-safe
    // checksum rotation reads once and writes the data plus its parity (an eighth of it: 8 chunks per hotzone).
    const rotIo = rotCpu + dd.cpu * (0.5 + 0.5 * 1.125);
    console.log(`  with its I/O (1 read + 1⅛ writes of the device, at dd's ${dd.cpu.toFixed(2)} CPU-s per read+write): ≥ ${rotIo.toFixed(2)} CPU-s, ≥ ${(rotIo / cores).toFixed(2)} s wall = at most ${(ddS / (rotIo / cores)).toFixed(2)}× dd on ${cores} cores`);
    const ideal = idealLoop(dir, () => fresh(luks), work);
    if (ideal) {
      const startS = ours ? firstHotzoneS(rotArgs, () => fresh(luks)) : 0;
      const atMost = (w: number) => (ddS / w).toFixed(2);
      console.log(`  the ideal loop (bench/rotation-ideal.c: zero-copy, two balanced threads, no Node, not crash-safe): ${ideal.wall.toFixed(2)} s wall, ${ideal.cpu.toFixed(2)} CPU-s = at most ${atMost(ideal.wall)}× dd`);
      if (startS) console.log(`    + trustvol's ${(startS * 1000).toFixed(0)} ms from exec to its first hotzone (Node, unlock, init): at most ${atMost(ideal.wall + startS)}× dd`);
    }
    if (ours) blockDeviceRuns(luks, plain, pw, dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
