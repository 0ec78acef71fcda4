// `image encrypt` of a 1 GiB random image next to a `dd` copy of the same file and `cryptsetup reencrypt --encrypt
// --force-offline-reencrypt` on the same input, all in this invocation (targets: ≥ 75 % of dd, ≥ 5× cryptsetup).
// Runs in /dev/shm when it has room (measures the tools, not this VM's shared disk; BENCH_DIR overrides), page-cache
// and durable (fdatasync) variants side by side. Override the size with BENCH_IMAGE_MIB. CPU-seconds per GiB beside
// wall-clock: this process's (all threads) for trustvol, /usr/bin/time's user+sys for the child tools.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, openSync, writeSync, closeSync, copyFileSync, statfsSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { encryptImage } from "../src/ops/image.js";

const MiB = 1024 * 1024;
const SIZE_MIB = Number(process.env.BENCH_IMAGE_MIB ?? 1024);

function timed(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return (performance.now() - t0) / 1000;
}
async function timedAsync(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const HAS_TIME = existsSync("/usr/bin/time");

/** Run a child tool; returns its user+sys CPU seconds (null without /usr/bin/time). */
function spawnTimed(cmd: string, args: string[]): { cpu: number | null; status: number | null; stderr: string } {
  const r = HAS_TIME ? spawnSync("/usr/bin/time", ["-f", "TVCPU %U %S", cmd, ...args], { encoding: "utf8" }) : spawnSync(cmd, args, { encoding: "utf8" });
  const m = /TVCPU ([\d.]+) ([\d.]+)/.exec(r.stderr ?? "");
  return { cpu: m ? Number(m[1]) + Number(m[2]) : null, status: r.status, stderr: r.stderr ?? "" };
}

export default async function (): Promise<void> {
  const shmRoom = existsSync("/dev/shm") ? statfsSync("/dev/shm").bavail * statfsSync("/dev/shm").bsize : 0;
  const base = process.env.BENCH_DIR ?? (shmRoom > 4 * SIZE_MIB * MiB ? "/dev/shm" : tmpdir());
  const dir = mkdtempSync(join(base, "trustvol-bench-image-"));
  console.log(`working in ${base}`);
  try {
    const input = join(dir, "in.img");
    const fd = openSync(input, "w");
    const chunk = randomBytes(8 * MiB);
    for (let i = 0; i < SIZE_MIB / 8; i++) writeSync(fd, chunk);
    closeSync(fd);
    spawnSync("sync"); // don't let the input's own write-back land on whoever runs first
    writeFileSync(join(dir, "pw"), "bench", { mode: 0o600 });
    const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
    const dd: number[] = [], ours: number[] = [], ddCache: number[] = [], oursCache: number[] = [];
    const cpuOurs: number[] = [], cpuDd: number[] = [];
    const run = async (sync: boolean) => {
      rmSync(join(dir, "dd.img"), { force: true });
      (sync ? dd : ddCache).push(timed(() => {
        const r = spawnTimed("dd", [`if=${input}`, `of=${join(dir, "dd.img")}`, "bs=4M", "status=none", ...(sync ? ["conv=fdatasync"] : [])]);
        if (!sync && r.cpu !== null) cpuDd.push(r.cpu);
      }));
      rmSync(join(dir, "dd.img"), { force: true });
      spawnSync("sync");
      rmSync(join(dir, "out.luks"), { force: true });
      const c0 = process.cpuUsage();
      (sync ? ours : oursCache).push(await timedAsync(() => encryptImage(input, join(dir, "out.luks"), Buffer.from("bench"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 }, digestIterations: 1000, sync })));
      const c = process.cpuUsage(c0);
      if (!sync) cpuOurs.push((c.user + c.system) / 1e6);
      rmSync(join(dir, "out.luks"), { force: true });
      spawnSync("sync");
    };
    for (let i = 0; i < rounds; i++) {
      await run(false);
      await run(true);
    }
    let cs: number | null = null;
    let cpuCs: number | null = null;
    if (spawnSync("sh", ["-c", "command -v cryptsetup"]).status === 0) {
      const work = join(dir, "cs.img");
      copyFileSync(input, work);
      cs = timed(() => {
        const r = spawnTimed("cryptsetup", ["reencrypt", "--encrypt", "-q", "--force-offline-reencrypt", "--type", "luks2", "--header", join(dir, "cs.hdr"), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", join(dir, "pw"), work]);
        if (r.status !== 0) throw new Error(`cryptsetup reencrypt failed: ${r.stderr}`);
        cpuCs = r.cpu;
      });
      spawnSync("sync");
    }
    const rate = (s: number) => SIZE_MIB / s;
    const d = median(dd), o = median(ours), dc = median(ddCache), oc = median(oursCache);
    console.log(`${SIZE_MIB} MiB random image, median of ${rounds} (wall clock); load ${(await import("node:os")).loadavg()[0]!.toFixed(1)}`);
    console.log(`page cache:  dd copy ${rate(dc).toFixed(0).padStart(6)} MiB/s   trustvol image encrypt ${rate(oc).toFixed(0).padStart(6)} MiB/s   ${(dc / oc * 100).toFixed(0)} % of dd (target ≥ 75 %)`);
    console.log(`durable:     dd copy ${rate(d).toFixed(0).padStart(6)} MiB/s   trustvol image encrypt ${rate(o).toFixed(0).padStart(6)} MiB/s   ${(d / o * 100).toFixed(0)} % of dd (both fdatasync)`);
    if (cs !== null) console.log(`cryptsetup reencrypt --encrypt (offline, durable) ${rate(cs).toFixed(0).padStart(6)} MiB/s   trustvol (durable) is ${(cs / o).toFixed(1)}× faster (target ≥ 5×)`);
    const gib = SIZE_MIB / 1024;
    const per = (x: number | null) => (x === null ? "n/a" : (x / gib).toFixed(2));
    console.log(`CPU-s per GiB (page cache):  trustvol image encrypt ${per(cpuOurs.length ? median(cpuOurs) : null)} (all threads)   dd ${per(cpuDd.length ? median(cpuDd) : null)}` +
      (cs !== null ? `   cryptsetup reencrypt ${per(cpuCs)}` : ""));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
