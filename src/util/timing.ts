// TRUSTVOL_TIMING=1: one stderr line per phase of a long operation, `trustvol-time <ms since the process started>
// <phase>` — where the time goes on a slow target (the QEMU tier, a device), with no profiler. Off: a no-op.
const on = process.env.TRUSTVOL_TIMING === "1";

export function mark(phase: string): void {
  if (on) process.stderr.write(`trustvol-time ${performance.now().toFixed(0)} ${phase}\n`);
}
