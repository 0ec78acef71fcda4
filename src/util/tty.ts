// The one terminal prompt for secrets (passphrases and PINs): echo goes off BEFORE the prompt is written, so nothing
// typed once the prompt is visible is ever echoed; the terminal's settings are restored whatever happens.
import { openSync, readSync, writeSync, closeSync, constants } from "node:fs";
import { spawnSync } from "node:child_process";
import { TrustvolError } from "./errors.js";
import { wipe } from "./secret.js";

export interface HiddenPromptOptions {
  /** Longest answer accepted, in bytes (cryptsetup: 512 characters for an interactive passphrase). */
  max: number;
  /** What to say when no terminal can be opened. */
  noTerminalHint: string;
}

function writeAll(fd: number, s: string): void {
  const b = Buffer.from(s);
  let off = 0;
  while (off < b.length) off += writeSync(fd, b, off);
}

/** Prompt on the controlling terminal with echo off; returns the answer (caller wipes it), without the newline. */
export function promptHidden(prompt: string, o: HiddenPromptOptions): Buffer {
  let fd: number;
  try {
    fd = openSync("/dev/tty", constants.O_RDWR | constants.O_NOCTTY);
  } catch {
    throw new TrustvolError("EUSAGE", "no terminal to prompt on", o.noTerminalHint);
  }
  // stty acts on its stdin: the terminal. Keys are read one at a time (no canonical mode, no signals) so ^C can
  // restore the terminal instead of killing the process with echo off.
  const stty = (args: string[]) => spawnSync("stty", args, { stdio: [fd, "pipe", "ignore"], encoding: "utf8" });
  const saved = stty(["-g"]);
  const restore = saved.status === 0 ? saved.stdout.trim() : undefined;
  const off = restore !== undefined ? stty(["-echo", "-icanon", "-isig", "min", "1", "time", "0"]) : undefined;
  if (!off || off.status !== 0) {
    if (restore) stty([restore]);
    closeSync(fd);
    throw new TrustvolError("EUSAGE", "cannot turn off echo on the terminal", o.noTerminalHint);
  }
  const out = Buffer.alloc(o.max + 1);
  const one = Buffer.alloc(1);
  let n = 0;
  try {
    writeAll(fd, prompt);
    for (;;) {
      if (readSync(fd, one, 0, 1, null) === 0) break;
      const c = one[0]!;
      if (c === 0x0a || c === 0x0d) break;
      if (c === 0x03) throw new TrustvolError("EUSAGE", "interrupted at the prompt");
      if (c === 0x04) {
        if (n === 0) break;
        continue;
      }
      if (c === 0x7f || c === 0x08) n = Math.max(0, n - 1);
      else if (c === 0x15) n = 0; // ^U: kill the line
      else if (n <= o.max) out[n++] = c;
    }
    if (n > o.max) throw new TrustvolError("EUSAGE", `the answer is longer than ${o.max} bytes`);
    const answer = Buffer.allocUnsafeSlow(n);
    out.copy(answer, 0, 0, n);
    return answer;
  } finally {
    wipe(out, one);
    stty([restore!]);
    try {
      writeAll(fd, "\n");
    } catch {
      /* the terminal went away */
    }
    closeSync(fd);
  }
}
