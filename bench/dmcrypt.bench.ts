// dm-crypt sector engine throughput (MiB per CPU-second, one core) next to `openssl speed -evp aes-256-xts` run in the
// same invocation, with CPU-seconds per GiB and wall-clock MiB/s beside it; the ratios are what issue 15's targets are
// about (native ≥ 75 % of openssl at 512 B, ~90 % at 4 KiB; the fallback engine ≥ 1000 MiB/s at 4 KiB and ≥ 600 at
// 512 B, shown with each XTS XOR kernel: WebAssembly SIMD and TypeScript). The native rows also show both XTS
// implementations forced (EVP per sector / tweak-masked ECB) so the sector-size threshold in
// native/src/trustvol_native.c can be checked. Never asserted in tests.
//
// Each cell runs until this process has used BENCH_SECONDS CPU-seconds (not wall-clock: on a loaded machine a
// wall-clock second may hold a tenth of a CPU-second) and is repeated BENCH_REPS times; the median is printed with
// the range beside it. The load average is printed before and after: CPU-seconds on a busy 2-core box are inflated too
// (caches and the core shared with other processes), so compare rows of the same run.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { availableParallelism, loadavg } from "node:os";
import { createSectorCipher, nativeAvailable, type SectorCipher } from "../src/dmcrypt/index.js";
import { loadNative, NativeFlags, NativeIv } from "../src/dmcrypt/native.js";

const MiB = 1024 * 1024;
const BATCH = Number(process.env.BENCH_BATCH_KIB ?? 256) * 1024; // bytes per encrypt() call (a reencrypt/image-write hotspot)
const SECONDS = Number(process.env.BENCH_SECONDS ?? 1);
const REPS = Math.max(1, Number(process.env.BENCH_REPS ?? 3));

function openssl(bytes: number): number | null {
  const r = spawnSync("openssl", ["speed", "-evp", "aes-256-xts", "-bytes", String(bytes), "-seconds", "2"], { encoding: "utf8", timeout: 30_000 });
  if (r.status !== 0) return null;
  // last table line: "AES-256-XTS   1234567.89k" (units of 1000 bytes per second)
  const line = r.stdout.split("\n").reverse().find((l) => /^aes-256-xts\s/i.test(l.trim()));
  const m = line?.trim().match(/([\d.]+)k\s*$/);
  return m ? (Number(m[1]) * 1000) / MiB : null;
}

/**
 * MiB per CPU-second of this process: `openssl speed` divides by CPU user time too (unless -elapsed), so both sides
 * are measured the same way and a busy machine skews the ratio less than wall-clock would.
 */
interface Rate {
  /** MiB per CPU-second (median of the repetitions) */
  cpu: number;
  /** lowest and highest MiB per CPU-second of the repetitions */
  lo: number;
  hi: number;
  /** MiB per wall-clock second (of the median repetition) */
  wall: number;
  /** CPU-seconds measured in all */
  cpuSeconds: number;
}

type Crypt = (buf: Uint8Array, sector: number) => void;

const cpuNow = (): number => {
  const c = process.cpuUsage();
  return (c.user + c.system) / 1e6;
};

function measureFn(f: Crypt, sectorSize: number, reps = REPS): Rate {
  const buf = randomBytes(BATCH);
  let sector = 0;
  const step = BATCH / sectorSize;
  const w0 = cpuNow();
  while (cpuNow() - w0 < 0.15) f(buf, (sector += step)); // warm-up (JIT, caches)
  const runs: { cpu: number; wall: number; secs: number }[] = [];
  for (let r = 0; r < reps; r++) {
    let bytes = 0;
    const c0 = cpuNow();
    const t1 = performance.now();
    let used = 0;
    while ((used = cpuNow() - c0) < SECONDS) {
      for (let i = 0; i < 4; i++) f(buf, (sector += step));
      bytes += 4 * BATCH;
    }
    runs.push({ cpu: bytes / MiB / used, wall: bytes / MiB / ((performance.now() - t1) / 1000), secs: used });
  }
  runs.sort((a, b) => a.cpu - b.cpu);
  const mid = runs[runs.length >> 1]!;
  return { cpu: mid.cpu, lo: runs[0]!.cpu, hi: runs[runs.length - 1]!.cpu, wall: mid.wall, cpuSeconds: runs.reduce((a, r) => a + r.secs, 0) };
}

function measure(c: SectorCipher, dir: "encrypt" | "decrypt", reps = REPS): Rate {
  return measureFn(dir === "encrypt" ? c.encrypt : c.decrypt, c.sectorSize, reps);
}

/** A sector cipher with TRUSTVOL_JS_XTS set to xts while it is created (the JS engine reads it then). */
function cipherWith(xts: string | undefined, opts: Parameters<typeof createSectorCipher>[0]): SectorCipher {
  const before = process.env.TRUSTVOL_JS_XTS;
  if (xts) process.env.TRUSTVOL_JS_XTS = xts;
  try {
    return createSectorCipher(opts);
  } finally {
    if (before === undefined) delete process.env.TRUSTVOL_JS_XTS;
    else process.env.TRUSTVOL_JS_XTS = before;
  }
}

const load = () => `load average ${loadavg().map((l) => l.toFixed(2)).join(" ")}`;
const fmt = (n: number | null) => (n === null ? "     n/a" : n.toFixed(0).padStart(8));
const pct = (a: number, b: number | null) => (b ? `${((100 * a) / b).toFixed(0).padStart(4)} %` : "   n/a");

const perGiB = (r: Rate) => (1024 / r.cpu).toFixed(3).padStart(7);

export default async function (): Promise<void> {
  console.log(load());
  const ref = { 4096: openssl(4096), 512: openssl(512) } as Record<number, number | null>;
  const key = randomBytes(64);
  const rows: { name: string; backend: "native" | "js"; xts?: string }[] = [
    ...(nativeAvailable() ? [{ name: "native", backend: "native" as const }] : []),
    { name: "js+wasm", backend: "js", xts: "wasm" },
    { name: "js only", backend: "js", xts: "js" },
  ];
  if (!nativeAvailable()) console.log("(native addon not built or disabled: `npm run build:native`)");
  console.log(`aes-xts-plain64, 512-bit key, ${BATCH / 1024} KiB per call, ${SECONDS} CPU-s per cell × ${REPS} (median, range), one core`);
  console.log("js+wasm: the fallback engine with its XOR passes in WebAssembly SIMD (the default); js only: TRUSTVOL_JS_XTS=js");
  console.log("MiB per CPU-second (enc [lo-hi] / dec), CPU-s per GiB and wall-clock MiB/s of encryption, openssl speed in the same run");
  console.log("backend  sector   encrypt [  lo-hi  ]  decrypt  CPU-s/GiB  wall MiB/s   openssl  enc/openssl  CPU-s used");
  for (const row of rows) {
    for (const ss of [4096, 512]) {
      const c = cipherWith(row.xts, { cipher: "aes-xts-plain64", key, sectorSize: ss, backend: row.backend });
      const e = measure(c, "encrypt");
      const d = measure(c, "decrypt");
      c.dispose();
      const range = `[${e.lo.toFixed(0).padStart(4)}-${e.hi.toFixed(0).padEnd(4)}]`;
      console.log(
        `${row.name.padEnd(7)} ${String(ss).padStart(6)}  ${fmt(e.cpu)} ${range} ${fmt(d.cpu)}    ${perGiB(e)}  ${fmt(e.wall)}   ${fmt(ref[ss])}  ${pct(e.cpu, ref[ss])}      ${(e.cpuSeconds + d.cpuSeconds).toFixed(1).padStart(5)}`,
      );
    }
  }
  const a = loadNative();
  if (a) {
    console.log("native XTS implementations forced (encrypt, MiB per CPU-second): EVP per sector | tweak-masked ECB");
    for (const ss of [512, 1024, 2048, 4096]) {
      const row = [NativeFlags.xtsEvp, NativeFlags.xtsEcb].map((flags) => {
        const h = a.create("AES-256-XTS", key, null, NativeIv.plain64, ss / 512, ss, flags);
        const r = measureFn((b, s) => a.crypt(h, b, true, BigInt(s * (ss / 512))), ss, 1);
        a.destroy(h);
        return r.cpu;
      });
      console.log(`native ${String(ss).padStart(6)}  ${fmt(row[0]!)} | ${fmt(row[1]!)}`);
    }
  }
  if (nativeAvailable()) {
    console.log("native encryptAsync, 4 MiB per call split over the thread pool: wall-clock MiB/s, CPU-s per GiB (all threads)");
    const cores = availableParallelism();
    for (const ss of [4096, 512]) {
      const c = createSectorCipher({ cipher: "aes-xts-plain64", key, sectorSize: ss, backend: "native" });
      const cells: string[] = [];
      for (const threads of [1, Math.min(cores, 4)]) {
        const buf = randomBytes(4 * MiB);
        let sector = 0;
        const step = buf.length / ss;
        for (let i = 0; i < 8; i++) await c.encryptAsync!(buf, (sector += step), threads); // warm-up
        let bytes = 0;
        const cpu0 = process.cpuUsage();
        const t0 = performance.now();
        while (performance.now() - t0 < SECONDS * 1000) {
          await c.encryptAsync!(buf, (sector += step), threads);
          bytes += buf.length;
        }
        const wall = (performance.now() - t0) / 1000;
        const cpu = process.cpuUsage(cpu0);
        cells.push(`${threads} thread${threads > 1 ? "s" : " "} ${fmt(bytes / MiB / wall)} MiB/s ${((cpu.user + cpu.system) / 1e6 / (bytes / MiB / 1024)).toFixed(3)} CPU-s/GiB`);
      }
      c.dispose();
      console.log(`native ${String(ss).padStart(6)}  ${cells.join("   ")}`);
    }
  }
  console.log("aes-cbc-essiv:sha256, 256-bit key, 4096-byte sectors");
  for (const backend of rows.filter((r) => r.xts !== "js").map((r) => r.backend)) {
    const c = createSectorCipher({ cipher: "aes-cbc-essiv:sha256", key: key.subarray(0, 32), sectorSize: 4096, backend });
    const e = measure(c, "encrypt", 1);
    const d = measure(c, "decrypt", 1);
    c.dispose();
    console.log(`${backend.padEnd(7)} ${"4096".padStart(6)}  ${fmt(e.cpu)} ${fmt(d.cpu)}    ${perGiB(e)}  ${fmt(e.wall)}`);
  }
  console.log(load());
}
