// trustvol's side of the differential test (test/luks2/differential.slow.test.ts) as a long-lived child: one JSON
// request a line in ({ path, pwFile, doOpen }), one verdict a line out. The CLI runs in process (same argv parsing and
// exit codes as the shipped binary; its output goes through one global io, so one child judges one image at a time:
// the test runs a few children side by side). The checks every verdict must pass are made here and reported back.
import { createInterface } from "node:readline";
import { readFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { trustvolInProcess } from "./cli.js";

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

export interface JudgeVerdict {
  dump: boolean;
  open?: boolean;
  openRc?: number;
  err: string;
  /** A broken rule (internal error, a multi-line message, the file changed): the test fails on it. */
  problem?: string;
}

async function judge(path: string, pwFile: string, doOpen: boolean): Promise<JudgeVerdict> {
  const before = sha(readFileSync(path));
  const d = await trustvolInProcess(["dump", path]);
  const v: JudgeVerdict = { dump: d.status === 0, err: d.stderr.trim() };
  if (doOpen) {
    const o = await trustvolInProcess(["unlock", "--test", "--key-file", pwFile, path]);
    v.open = o.status === 0;
    v.openRc = o.status;
    if (o.status !== 0) v.err = o.stderr.trim();
  }
  for (const s of [d.stderr, v.err]) {
    if (/internal error/.test(s)) v.problem = `internal error: ${s}`;
    else if (s.trim().split("\n").length > 1) v.problem = `more than one line: ${s}`;
  }
  if (sha(readFileSync(path)) !== before) v.problem = "dump or unlock --test modified the file";
  return v;
}

if (process.argv[1] && /diff-judge\.[tj]s$/.test(process.argv[1])) {
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    const { path, pwFile, doOpen } = JSON.parse(line) as { path: string; pwFile: string; doOpen: boolean };
    let out: JudgeVerdict;
    try {
      out = await judge(path, pwFile, doOpen);
    } catch (e) {
      out = { dump: false, err: "", problem: `judge threw: ${(e as Error).stack ?? e}` };
    }
    process.stdout.write(JSON.stringify(out) + "\n");
  }
}
