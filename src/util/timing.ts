// TRUSTVOL_TIMING=1: one stderr line per phase of a long operation, `trustvol-time <ms since the process started>
// <CPU ms of the process so far, all threads> <phase>` — where the time goes on a slow target (the QEMU tier, a
// device), with no profiler. Off: a no-op.
const on = process.env.TRUSTVOL_TIMING === "1";

export function mark(phase: string): void {
  if (!on) return;
  const c = process.cpuUsage();
  process.stderr.write(`trustvol-time ${performance.now().toFixed(0)} ${((c.user + c.system) / 1000).toFixed(0)} ${phase}\n`);
}
