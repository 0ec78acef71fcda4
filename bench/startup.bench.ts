// Start-up time (boot-critical): `trustvol --version`, `trustvol dump` and a TPM2 token unlock (swtpm) against
// `node -e ''`, `cryptsetup luksDump` and `cryptsetup open --test-passphrase` on the same keyslot,
// interleaved in one run so machine load hits all alike; wall-clock medians plus CPU time (user+sys, less load-bound;
// perf's task-clock where it works, else /usr/bin/time). `unlock` runs from dist/cli/boot-volume.js (src/cli/run.ts).
// Runs the CLI as an installed package does (`npm run build` first): the bundle dist/cli/run.js (what bin/trustvol.mjs
// picks), else tsc's dist/src/cli/run.js; TRUSTVOL_BENCH_ENTRY=dist/src/cli/run.js compares. bin/trustvol.mjs in a
// checkout also compares src/ and dist/ mtimes on every start (~20 ms of stat calls), which an installed package never does.
import { mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir, loadavg } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { spawnSync } from "node:child_process";
import { MemoryBlockDevice } from "../src/blockdev/memory.js";
import { formatLuks2 } from "../src/luks2/format.js";
import { LuksHandle } from "../src/ops/volume.js";
import { enrollTpm2 } from "../src/ops/enroll.js";
import { tokenHandler } from "../src/ops/tokens.js";
import { hasTool } from "../test/helpers/tools.js";
import { startSwtpm } from "../test/helpers/swtpm.js";

const ROUNDS = Number(process.env.STARTUP_BENCH_ROUNDS ?? 15);
const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bin = join(root, process.env.TRUSTVOL_BENCH_ENTRY ?? (existsSync(join(root, "dist/cli/run.js")) ? "dist/cli/run.js" : "dist/src/cli/run.js"));

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** How CPU time is measured: perf's task-clock (ns, all threads) where perf works, else /usr/bin/time (10 ms ticks). */
const cpuProbe: "perf" | "time" | undefined = (() => {
  const p = spawnSync("perf", ["stat", "-x,", "-e", "task-clock", "true"], { encoding: "utf8" });
  if (p.status === 0 && /,msec,task-clock/.test(p.stderr)) return "perf";
  return existsSync("/usr/bin/time") ? "time" : undefined;
})();

/**
 * The environment a boot runs in (initramfs, systemd units): this workplace's NODE_EXTRA_CA_CERTS makes every Node
 * start parse a 220 KB certificate bundle (~40 ms CPU) and NODE_OPTIONS may preload code; neither exists there.
 */
const BOOT_ENV = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== "NODE_EXTRA_CA_CERTS" && k !== "NODE_OPTIONS"));
const dropped = ["NODE_EXTRA_CA_CERTS", "NODE_OPTIONS"].filter((k) => process.env[k] !== undefined);

/** Wall ms and CPU ms (user+sys) of one run. */
function once(argv: string[]): { wall: number; cpu?: number } {
  const wrap = cpuProbe === "perf" ? ["perf", "stat", "-x,", "-e", "task-clock"] : cpuProbe === "time" ? ["/usr/bin/time", "-f", "CPU %U %S"] : [];
  const cmd = [...wrap, ...argv];
  const t0 = performance.now();
  const r = spawnSync(cmd[0]!, cmd.slice(1), { encoding: "utf8", env: BOOT_ENV });
  const wall = performance.now() - t0;
  if (r.status !== 0) throw new Error(`${argv.join(" ")} failed: ${r.stderr}`);
  const perf = /^([\d.]+),msec,task-clock/m.exec(r.stderr);
  if (perf) return { wall, cpu: Number(perf[1]) };
  const m = /CPU ([\d.]+) ([\d.]+)\s*$/.exec(r.stderr);
  return m ? { wall, cpu: (Number(m[1]) + Number(m[2])) * 1000 } : { wall };
}

export default async function (): Promise<void> {
  if (!existsSync(bin)) throw new Error("build first: npm run build");
  const dir = mkdtempSync(join(tmpdir(), "trustvol-startup-bench-"));
  try {
    const dev = new MemoryBlockDevice(17 * 1024 * 1024);
    await formatLuks2(dev, Buffer.from("bench"), { pbkdf: { type: "pbkdf2", forceIterations: 1000 }, digestIterations: 1000 });
    const img = join(dir, "v.img");
    writeFileSync(img, dev.data);
    const env = process.env;
    const cases: { name: string; argv: string[] }[] = [
      { name: "node -e ''", argv: [process.execPath, "-e", ""] },
      { name: "trustvol --version", argv: [process.execPath, bin, "--version"] },
      { name: "trustvol dump", argv: [process.execPath, bin, "dump", img] },
    ];
    const hasCryptsetup = spawnSync("sh", ["-c", "command -v cryptsetup"], { stdio: "ignore", env }).status === 0;
    if (hasCryptsetup) cases.push({ name: "cryptsetup luksDump", argv: ["cryptsetup", "luksDump", img] });
    // Unlock through a TPM2 token (swtpm) against cryptsetup opening the same keyslot with its passphrase.
    // (No `cryptsetup open --token-only` line: systemd's token plugins find only a kernel TPM, /dev/tpmrm0, not swtpm;
    // the guest tier measures that comparison — README, "Boot-time latency". The TPM work is ~18 ms of ours.)
    let stopTpm: (() => Promise<void>) | undefined;
    if (hasCryptsetup && hasTool("swtpm")) {
      const tpm = await startSwtpm();
      stopTpm = () => tpm.stop();
      const r = await enrollTpm2(img, { unlock: { passphrase: Buffer.from("bench") }, tpm2Device: tpm.device, pcrs: [7] });
      const h = await LuksHandle.open(img, { readOnly: true });
      const pass = await tokenHandler("systemd-tpm2")!.passphrase(h.luks2!.metadata.tokens[String(r.tokenId)]!, { tpm2Device: tpm.device }).finally(() => h.close());
      writeFileSync(join(dir, "slot.pass"), pass, { mode: 0o600 });
      pass.fill(0);
      cases.push({ name: "trustvol unlock --test --token-only (TPM2)", argv: [process.execPath, bin, "unlock", "--test", "--token-only", "--tpm2-device", tpm.device, img] });
      cases.push({ name: "cryptsetup open --test-passphrase (same slot)", argv: ["cryptsetup", "open", "--test-passphrase", "--key-slot", String(r.keyslot), "--key-file", join(dir, "slot.pass"), img] });
    }
    const wall = new Map<string, number[]>(cases.map((c) => [c.name, []]));
    const cpu = new Map<string, number[]>(cases.map((c) => [c.name, []]));
    for (const c of cases) once(c.argv); // warm the page cache (and the compile cache on Node >= 22)
    for (let r = 0; r < ROUNDS; r++) {
      for (const c of cases) {
        const t = once(c.argv);
        wall.get(c.name)!.push(t.wall);
        if (t.cpu !== undefined) cpu.get(c.name)!.push(t.cpu);
      }
    }
    const nodeWall = median(wall.get("node -e ''")!);
    const nodeCpu = cpu.get("node -e ''")!.length ? median(cpu.get("node -e ''")!) : undefined;
    const csOpen = cpu.get("cryptsetup open --test-passphrase (same slot)");
    const csOpenWall = wall.get("cryptsetup open --test-passphrase (same slot)");
    console.log(`node ${process.version}, ${ROUNDS} interleaved rounds, load average ${loadavg()[0]!.toFixed(2)}, CLI entry ${bin.slice(root.length + 1)}, CPU from ${cpuProbe === "perf" ? "perf task-clock" : cpuProbe === "time" ? "/usr/bin/time (10 ms ticks)" : "nowhere"}${dropped.length ? `; run without ${dropped.join(", ")} (absent at boot)` : ""}`);
    // CPU (user+sys of the process) is what load inflates least; wall is what a boot waits for.
    console.log("| command | wall median ms | wall over node -e '' | CPU median ms | CPU over node -e '' |");
    console.log("|---|---:|---:|---:|---:|");
    for (const c of cases) {
      const w = median(wall.get(c.name)!);
      const cp = cpu.get(c.name)!;
      const ours = c.argv[0] === process.execPath;
      const cpuOver = ours && cp.length && nodeCpu !== undefined ? `+${(median(cp) - nodeCpu).toFixed(0)}` : "";
      console.log(`| ${c.name} | ${w.toFixed(0)} | ${ours ? `+${(w - nodeWall).toFixed(0)}` : ""} | ${cp.length ? median(cp).toFixed(1) : "n/a"} | ${cpuOver} |`);
    }
    const tv = cases.find((c) => c.name.startsWith("trustvol unlock"));
    if (tv && csOpenWall) {
      const dw = median(wall.get(tv.name)!) - median(csOpenWall);
      const dc = csOpen?.length && cpu.get(tv.name)!.length ? median(cpu.get(tv.name)!) - median(csOpen) : undefined;
      console.log(`TPM2 token unlock over cryptsetup open --test-passphrase: wall +${dw.toFixed(0)} ms${dc !== undefined ? `, CPU +${dc.toFixed(0)} ms` : ""}`);
    }
    console.log("goals (issue 13): --version ≤ node + 30 ms, dump ≤ node + 60 ms, TPM2 token unlock ≤ cryptsetup's + 100 ms");
    await stopTpm?.();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
