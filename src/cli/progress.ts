// A progress bar on a terminal (stderr), silent otherwise; `--json` callers get none.
export function progressBar(label: string, enabled = process.stderr.isTTY === true): { update: (done: number, total: number) => void; end: () => void } {
  if (!enabled) return { update: () => {}, end: () => {} };
  const t0 = Date.now();
  let last = 0;
  const fmt = (n: number) => (n >= 1 << 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`);
  const draw = (done: number, total: number) => {
    const frac = total ? done / total : 1;
    const width = 30;
    const fill = Math.round(frac * width);
    const secs = (Date.now() - t0) / 1000;
    const rate = secs > 0 ? done / secs : 0;
    const eta = rate > 0 ? Math.round((total - done) / rate) : 0;
    process.stderr.write(`\r${label} [${"#".repeat(fill)}${".".repeat(width - fill)}] ${(frac * 100).toFixed(1).padStart(5)}% ${fmt(done)}/${fmt(total)} ${(rate / 2 ** 20).toFixed(0)} MiB/s ETA ${Math.floor(eta / 60)}:${String(eta % 60).padStart(2, "0")}  `);
  };
  return {
    update(done, total) {
      const now = Date.now();
      if (now - last < 100 && done < total) return;
      last = now;
      draw(done, total);
    },
    end() {
      process.stderr.write("\n");
    },
  };
}
