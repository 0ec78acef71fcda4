// verity format of a 1 GiB random image: trustvol (worker threads) vs `veritysetup format`, run alternately in this
// invocation; medians of a few rounds, same salt and UUID, root hashes must agree. The image is cached before timing.
import { mkdtempSync, rmSync, openSync, writeSync, closeSync, readFileSync, unlinkSync, existsSync } from "node:fs";
import { tmpdir, loadavg } from "node:os";
import { join } from "node:path";
import { randomFillSync } from "node:crypto";
import { spawnSync } from "node:child_process";
import { FileBlockDevice } from "../src/blockdev/file.js";
import { verityFormat } from "../src/verity/index.js";

const SIZE = Number(process.env.VERITY_BENCH_MIB ?? 1024) * 1048576;
const ROUNDS = Number(process.env.VERITY_BENCH_ROUNDS ?? 3);
const SALT = "5eed0123456789abcdef00112233445566778899aabbccddeeff0011223344ff";
const UUID = "0f3b6a4e-9c1d-4e8a-b2f7-5d6c7e8f9a01";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

export default async function (): Promise<void> {
  const has = spawnSync("sh", ["-c", "command -v veritysetup"], { stdio: "ignore" }).status === 0;
  const dir = mkdtempSync(join(tmpdir(), "trustvol-verity-bench-"));
  try {
    const data = join(dir, "data.img");
    const fd = openSync(data, "w", 0o600);
    const chunk = Buffer.allocUnsafe(16 << 20);
    for (let off = 0; off < SIZE; off += chunk.length) {
      randomFillSync(chunk);
      writeSync(fd, chunk, 0, Math.min(chunk.length, SIZE - off));
    }
    closeSync(fd);
    readFileSync(data); // into the page cache, so both tools read from memory

    const mib = SIZE / 1048576;
    const ours: number[] = [];
    const ref: number[] = [];
    const cpuOurs: number[] = [];
    const cpuRef: number[] = [];
    const hasTime = existsSync("/usr/bin/time");
    let rootOurs = "";
    let rootRef = "";
    for (let r = 0; r < ROUNDS; r++) {
      if (has) {
        const h = join(dir, "hash-ref.img");
        if (existsSync(h)) unlinkSync(h);
        const args = ["format", data, h, `--salt=${SALT}`, `--uuid=${UUID}`];
        const t0 = performance.now();
        const p = hasTime
          ? spawnSync("/usr/bin/time", ["-f", "CPU %U %S", "veritysetup", ...args], { encoding: "utf8" })
          : spawnSync("veritysetup", args, { encoding: "utf8" });
        ref.push(mib / ((performance.now() - t0) / 1000));
        if (p.status !== 0) throw new Error(`veritysetup format failed: ${p.stderr}`);
        const cm = /CPU ([\d.]+) ([\d.]+)/.exec(p.stderr);
        if (cm) cpuRef.push(Number(cm[1]) + Number(cm[2]));
        rootRef = /Root hash:\s+([0-9a-f]+)/.exec(p.stdout)?.[1] ?? "";
      }
      const h = join(dir, "hash-ours.img");
      if (existsSync(h)) unlinkSync(h);
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      const dd = await FileBlockDevice.open(data, { readOnly: true });
      const hd = await FileBlockDevice.open(h, { create: true });
      const res = await verityFormat(dd, hd, { salt: Buffer.from(SALT, "hex"), uuid: UUID });
      await hd.close();
      await dd.close();
      ours.push(mib / ((performance.now() - t0) / 1000));
      const c = process.cpuUsage(c0); // all threads of this process, workers included
      cpuOurs.push((c.user + c.system) / 1e6);
      rootOurs = res.rootHash.toString("hex");
    }
    if (has && rootOurs !== rootRef) throw new Error(`root hashes differ: trustvol ${rootOurs}, veritysetup ${rootRef}`);
    if (has && !readFileSync(join(dir, "hash-ours.img")).equals(readFileSync(join(dir, "hash-ref.img")))) throw new Error("hash devices differ");
    const o = median(ours);
    const load = loadavg()[0]!.toFixed(2);
    console.log(`verity format, ${mib} MiB random image, sha256 4096/4096, median of ${ROUNDS} (load average ${load}: other jobs skew the ratio)`);
    console.log(`  trustvol     ${o.toFixed(0).padStart(6)} MiB/s   (runs: ${ours.map((x) => x.toFixed(0)).join(", ")})`);
    if (has) {
      const v = median(ref);
      console.log(`  veritysetup  ${v.toFixed(0).padStart(6)} MiB/s   (runs: ${ref.map((x) => x.toFixed(0)).join(", ")})`);
      console.log(`  ratio        ${(o / v).toFixed(2)}x  (target >= 1.5x); hash devices byte-identical`);
      if (cpuRef.length) console.log(`  CPU seconds  trustvol ${median(cpuOurs).toFixed(2)} (all threads), veritysetup ${median(cpuRef).toFixed(2)}`);
    } else console.log("  veritysetup not installed: no reference");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
