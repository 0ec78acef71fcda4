// Online re-encryption (issue 11), guest tier: key rotation of the same mounted ext4 volume in the same QEMU guest
// (real kernel, dm-crypt under TCG), side by side in one run: `trustvol reencrypt` (online: the device is open) vs
// `cryptsetup reencrypt --active-name` (2.6.1, online), each with its default hotzone and checksum resilience, the
// same fast keyslot KDF. Throughput = data area / wall time of the command. Target: ≥ 1.0× cryptsetup.
// BENCH_ONLINE_MIB sets the volume size (default 256, the volume; the data area is 16 MiB less),
// BENCH_ONLINE_ROUNDS the rounds (default 2; each round rotates with both tools). Beside wall time: each command's
// CPU-seconds in the guest (user+sys, bash `times`) and trustvol's own phases (TRUSTVOL_TIMING=1, summed over the
// rounds). Skips without the QEMU tier.
// trustvol runs as an installed package runs it: dist/cli/run.js (rebuilt first when src/ is newer). From a checkout,
// bin/trustvol.mjs first walks src/ to compare mtimes — over the guest's 9p root under TCG that alone took 3-8 s.
// TRUSTVOL_DM_IOCTL=0 measures the dmsetup fallback.
import { join, dirname } from "node:path";
import { loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { ensureBuilt } from "./built.js";
import { hasTool } from "../test/helpers/tools.js";
import { VM_TOOLS, findGuestKernel, runInGuest } from "../test/vm/harness.js";

const REPO = join(dirname(fileURLToPath(import.meta.url)), "..");
const SIZE = Number(process.env.BENCH_ONLINE_MIB ?? 256);
const ROUNDS = Number(process.env.BENCH_ONLINE_ROUNDS ?? 2);

const script = `
set -u
cd /tmp
export DM_DISABLE_UDEV=1
KDF="--pbkdf pbkdf2 --pbkdf-force-iterations 1000"
printf 'bench pass' > pass; chmod 600 pass
truncate -s ${SIZE}M v.img
cryptsetup luksFormat -q --type luks2 $KDF --key-file pass v.img
L=$(losetup -f --show v.img)
cryptsetup open --key-file pass $L vol && mkfs.ext4 -q /dev/mapper/vol && mkdir -p /mnt/v && mount /dev/mapper/vol /mnt/v
dd if=/dev/urandom of=/mnt/v/fill bs=1M count=$(( ${SIZE} / 2 )) status=none; sync
now() { cut -d' ' -f1 /proc/uptime; }
for round in $(seq 1 ${ROUNDS}); do
  t0=$(now); ( TRUSTVOL_TIMING=1 node ${REPO}/dist/cli/run.js reencrypt --key-file pass $KDF $L 2>tv.err >/dev/null || echo "trustvol_failed=1"; times > cpu ); t1=$(now); echo "trustvol_cpu=$(tail -1 cpu)"
  echo "trustvol_s=$(echo "$t1 - $t0" | bc)"; grep -v '^trustvol-time' tv.err >&2; grep '^trustvol-time' tv.err
  t0=$(now); ( cryptsetup reencrypt --active-name vol --key-file pass $KDF $L >/dev/null || echo "cryptsetup_failed=1"; times > cpu ); t1=$(now); echo "cryptsetup_cpu=$(tail -1 cpu)"
  echo "cryptsetup_s=$(echo "$t1 - $t0" | bc)"
done
t0=$(now); node -e 0; t1=$(now); echo "node_start_s=$(echo "$t1 - $t0" | bc)"
umount /mnt/v; cryptsetup close vol
`;

export default async function bench(): Promise<void> {
  if (!VM_TOOLS.every(hasTool) || !findGuestKernel()) {
    console.log("skipped: the QEMU tier is not available (tools or TRUSTVOL_GUEST_KERNEL)");
    return;
  }
  ensureBuilt("dist/cli/run.js");
  const load0 = loadavg().map((l) => l.toFixed(1)).join(" ");
  const r = await runInGuest({ script, tpm: false, timeoutMs: 1_800_000, env: { TRUSTVOL_DM_IOCTL: process.env.TRUSTVOL_DM_IOCTL ?? "" } });
  if (r.status !== 0) throw new Error(`guest failed (${r.status}): ${r.stderr}\n${r.stdout}`);
  const vals = (k: string) => [...r.stdout.matchAll(new RegExp(`^${k}=([0-9.]+)$`, "gm"))].map((m) => Number(m[1]));
  if (/_failed=1/.test(r.stdout)) throw new Error(`a run failed: ${r.stderr}\n${r.stdout}`);
  const data = (SIZE - 16) * 1024 * 1024;
  const tv = vals("trustvol_s"), cs = vals("cryptsetup_s");
  // bash `times` (to a file: in a pipeline it would run in a subshell of its own), last line: the children's "XmY.YYYs XmY.YYYs" (user, sys)
  const cpu = (k: string) =>
    [...r.stdout.matchAll(new RegExp(`^${k}_cpu=(\\d+)m([0-9.]+)s (\\d+)m([0-9.]+)s$`, "gm"))].map((m) => (Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) * 60 + Number(m[4])).toFixed(1));
  const best = (a: number[]) => Math.min(...a);
  const mbs = (s: number) => (data / s / 1e6).toFixed(1);
  const load = loadavg().map((l) => l.toFixed(1)).join(" ");
  console.log(`online key rotation of a mounted ${SIZE} MiB ext4 volume (data ${SIZE - 16} MiB), QEMU TCG guest, best of ${tv.length}; host load average now ${load} (before: ${load0}):`);
  console.log(`| tool | wall s (each round) | guest CPU-s user+sys (each round) | MB/s (best) |`);
  console.log(`|---|---|---|---|`);
  console.log(`| trustvol reencrypt (online) | ${tv.join(", ")} | ${cpu("trustvol").join(", ")} | ${mbs(best(tv))} |`);
  console.log(`| cryptsetup reencrypt --active-name | ${cs.join(", ")} | ${cpu("cryptsetup").join(", ")} | ${mbs(best(cs))} |`);
  console.log(`ratio trustvol / cryptsetup throughput: ${(best(cs) / best(tv)).toFixed(2)}× (target ≥ 1.0×); node start in the guest ${vals("node_start_s")[0]} s is part of trustvol's time`);
  // trustvol's phases (TRUSTVOL_TIMING marks: each interval is charged to the mark that ends it), summed over rounds
  const phases = new Map<string, [number, number]>();
  let prev: [number, number] | undefined;
  for (const m of r.stdout.matchAll(/^trustvol-time (\d+) (\d+) (.*)$/gm)) {
    const t: [number, number] = [Number(m[1]), Number(m[2])];
    const what = m[3]!.replace(/^hotzone \d+\+\d+: /, "hotzone: ").replace(/ \(.*\)$/, "").replace(/, hotzone \d+$/, "");
    if (what === "cli") prev = undefined;
    const p = phases.get(what) ?? [0, 0];
    phases.set(what, [p[0] + t[0] - (prev?.[0] ?? 0), p[1] + t[1] - (prev?.[1] ?? 0)]);
    prev = t;
  }
  console.log(`trustvol phases, wall s / CPU-s of the process summed over ${tv.length} rounds (each interval ends at the named point; "cli" = process start to the CLI's first line):`);
  console.log([...phases].map(([k, v]) => `${k} ${(v[0] / 1000).toFixed(1)}/${(v[1] / 1000).toFixed(1)}`).join(" · "));
}
