// Progress on stderr: a bar on a terminal (fitted to its width: 80-column serial consoles), JSON lines for programs
// (--progress-json), nothing otherwise; `--json` callers get no bar.
export type ProgressMode = "bar" | "json" | "none";

/** The mode a command's options ask for: --progress-json, else a bar on a terminal unless --no-progress / --json. */
export function progressMode(o: Record<string, unknown>): ProgressMode {
  if (o.progressJson) return "json";
  return o.progress !== false && !o.json && process.stderr.isTTY === true ? "bar" : "none";
}

export function progressBar(label: string, mode: ProgressMode | boolean = process.stderr.isTTY === true): { update: (done: number, total: number) => void; end: () => void } {
  const m: ProgressMode = mode === true ? "bar" : mode === false ? "none" : mode;
  if (m === "none") return { update: () => {}, end: () => {} };
  const t0 = Date.now();
  let last = 0;
  if (m === "json") {
    // One object per line, at most one a second plus the last: {"progress":"Encrypting","done":…,"total":…,"percent":…}
    return {
      update(done, total) {
        const now = Date.now();
        if (now - last < 1000 && done < total) return;
        last = now;
        process.stderr.write(`${JSON.stringify({ progress: label, done, total, percent: total ? Math.round((done / total) * 1000) / 10 : 100 })}\n`);
      },
      end() {},
    };
  }
  const fmt = (n: number) => (n >= 1 << 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`);
  const draw = (done: number, total: number) => {
    const cols = process.stderr.columns || 80;
    const frac = total ? done / total : 1;
    const secs = (Date.now() - t0) / 1000;
    const rate = secs > 0 ? done / secs : 0;
    const eta = rate > 0 ? Math.round((total - done) / rate) : 0;
    const pct = `${(frac * 100).toFixed(1).padStart(5)}%`;
    const sizes = ` ${fmt(done)}/${fmt(total)}`;
    const speed = ` ${(rate / 2 ** 20).toFixed(0)} MiB/s ETA ${Math.floor(eta / 60)}:${String(eta % 60).padStart(2, "0")}`;
    // Drop the least useful fields first so the line never wraps (a wrapped \r line scrolls a serial console).
    let tail = `${pct}${sizes}${speed}`;
    if (label.length + tail.length + 14 > cols) tail = `${pct}${sizes}`;
    if (label.length + tail.length + 14 > cols) tail = pct;
    const width = Math.max(5, Math.min(30, cols - 1 - label.length - tail.length - 4));
    const fill = Math.round(frac * width);
    const line = `${label} [${"#".repeat(fill)}${".".repeat(width - fill)}] ${tail}`.slice(0, cols - 1);
    process.stderr.write(`\r${line.padEnd(cols - 1)}`);
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
