// Where a token PIN comes from: a file, stdin, an interactive prompt, or bytes the caller already holds.
// Never argv, never the environment, never a URI's pin-value. The caller wipes the returned buffer.
import { openSync, readSync, closeSync, fstatSync, constants } from "node:fs";
import { promptHidden } from "../../util/tty.js";
import { TrustvolError, usage } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";

export type PinSource =
  | { kind: "file"; path: string }
  | { kind: "stdin" }
  | { kind: "prompt"; prompt?: string }
  | { kind: "buffer"; pin: Uint8Array };

const MAX_PIN = 256;

function readAllFd(fd: number): Buffer {
  const chunks: Buffer[] = [];
  let total = 0;
  const chunk = Buffer.allocUnsafeSlow(512);
  try {
    for (;;) {
      let n: number;
      try {
        n = readSync(fd, chunk, 0, chunk.length, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "EAGAIN") continue;
        if ((e as NodeJS.ErrnoException).code === "EOF") break;
        throw e;
      }
      if (n === 0) break;
      total += n;
      if (total > MAX_PIN + 2) throw usage("PIN input is too long", `a PIN is at most ${MAX_PIN} bytes`);
      const c = Buffer.allocUnsafeSlow(n);
      chunk.copy(c, 0, 0, n);
      chunks.push(c);
    }
    const out = Buffer.allocUnsafeSlow(total);
    let off = 0;
    for (const c of chunks) off += c.copy(out, off);
    return out;
  } finally {
    wipe(chunk, ...chunks);
  }
}

/** Strip one trailing "\n" or "\r\n" (the way `echo PIN >file` or a shell here-string leaves it). */
function trimNewline(b: Buffer): Buffer {
  let end = b.length;
  if (end && b[end - 1] === 0x0a) end--;
  if (end && b[end - 1] === 0x0d) end--;
  if (end === b.length) return b;
  const out = Buffer.allocUnsafeSlow(end);
  b.copy(out, 0, 0, end);
  wipe(b);
  return out;
}

function checkPin(b: Buffer, from: string): Buffer {
  if (b.length === 0) {
    wipe(b);
    throw usage(`empty PIN from ${from}`, "give the token's user PIN");
  }
  if (b.includes(0)) {
    wipe(b);
    throw usage(`PIN from ${from} contains a NUL byte`);
  }
  return b;
}

function promptTty(prompt: string): Buffer {
  return promptHidden(prompt, { max: MAX_PIN, noTerminalHint: "give the PIN with --pin-file or on stdin (--pin-file -)" });
}

/** Read the PIN. Returns a fresh Buffer the caller must wipe. */
export function readPin(src: PinSource): Buffer {
  switch (src.kind) {
    case "buffer": {
      const b = Buffer.allocUnsafeSlow(src.pin.length);
      b.set(src.pin);
      return checkPin(b, "the caller");
    }
    case "file": {
      let fd: number;
      try {
        fd = openSync(src.path, constants.O_RDONLY);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === "ENOENT" || code === "ENOTDIR") throw new TrustvolError("ENOENT", `PIN file ${src.path} does not exist`, "check the --pin-file path");
        throw new TrustvolError("EUSAGE", `PIN file ${src.path} cannot be opened${code === "EACCES" ? " (permission denied)" : ""}`, "check the --pin-file path");
      }
      try {
        if (!fstatSync(fd).isFile() && !fstatSync(fd).isFIFO()) throw usage(`PIN file ${src.path} is not a regular file or pipe`, "give the path of a file holding the PIN");
        return checkPin(trimNewline(readAllFd(fd)), `file ${src.path}`);
      } finally {
        closeSync(fd);
      }
    }
    case "stdin":
      return checkPin(trimNewline(readAllFd(0)), "stdin");
    case "prompt":
      return checkPin(promptTty(src.prompt ?? "Token PIN: "), "the prompt");
  }
}

/** A URI's pin-source (RFC 7512 §2.4: a file: URI or a bare path) as a PinSource. */
export function pinSourceFromUri(pinSource: string): PinSource {
  if (pinSource.startsWith("file:")) {
    let p = pinSource.slice(5);
    if (p.startsWith("//")) p = p.slice(2); // file:///path -> /path (empty authority)
    return { kind: "file", path: p };
  }
  if (pinSource.startsWith("/")) return { kind: "file", path: pinSource };
  throw usage(`unsupported pin-source "${pinSource}"`, "use pin-source=file:/path/to/pin");
}
