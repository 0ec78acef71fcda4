// Where passphrases come from: a key file, stdin, or a terminal prompt — never argv or the environment.
import { openSync, readSync, closeSync, fstatSync, constants } from "node:fs";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { promptHidden } from "../util/tty.js";
import { io } from "./io.js";

/** cryptsetup 2.6.1's compiled-in maximum key file size (`cryptsetup --help`: "Maximum keyfile size: 8192kB"). */
export const MAX_KEYFILE = 8 * 1024 * 1024;
/** cryptsetup's maximum interactive passphrase length. */
const MAX_PROMPTED = 512;

let stdinConsumed = false;

/** Each CLI invocation may read stdin once (in-process callers run several invocations). */
export function resetStdinState(): void {
  stdinConsumed = false;
}

function claimStdin(): void {
  if (stdinConsumed) throw new TrustvolError("EUSAGE", "standard input can supply only one secret", "put the other one in a key file");
  stdinConsumed = true;
}

const MiB = (n: number) => (n % (1024 * 1024) === 0 ? `${n / 1024 / 1024} MiB` : `${n} bytes`);

/** One read, retried on EAGAIN (a non-blocking stdin); 0 at the end. */
function readSome(fd: number, b: Buffer, off: number, len: number, pos: number | null): number {
  for (;;) {
    try {
      return readSync(fd, b, off, len, pos);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "EAGAIN") continue;
      if (code === "EOF") return 0;
      throw e;
    }
  }
}

/**
 * Read at most `limit` bytes after skipping `offset` (sequentially: pipes and devices cannot seek). Returns the bytes
 * and whether more were available, never holding more than limit + 1 bytes in memory.
 */
function readBounded(fd: number, offset: number, limit: number, seekable: boolean): { data: Buffer; more: boolean; skipped: boolean } {
  const chunk = Buffer.allocUnsafeSlow(64 * 1024);
  const parts: Buffer[] = [];
  let pos = 0; // bytes consumed from the start
  try {
    if (!seekable) {
      while (pos < offset) {
        const n = readSome(fd, chunk, 0, Math.min(chunk.length, offset - pos), null);
        if (n === 0) return { data: Buffer.alloc(0), more: false, skipped: false };
        pos += n;
      }
    } else pos = offset;
    let total = 0;
    for (;;) {
      const want = Math.min(chunk.length, limit + 1 - total);
      if (want <= 0) break;
      const n = readSome(fd, chunk, 0, want, seekable ? pos : null);
      if (n === 0) break;
      pos += n;
      const c = Buffer.allocUnsafeSlow(n);
      chunk.copy(c, 0, 0, n);
      parts.push(c);
      total += n;
    }
    const data = Buffer.allocUnsafeSlow(Math.min(total, limit));
    let off = 0;
    for (const c of parts) off += c.copy(data, off, 0, Math.min(c.length, data.length - off));
    return { data, more: total > limit, skipped: true };
  } finally {
    wipe(chunk, ...parts);
  }
}

function openKeyFile(path: string): number {
  try {
    return openSync(path, constants.O_RDONLY | constants.O_NOCTTY);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") throw new TrustvolError("ENOENT", `key file ${path} does not exist`, "check the --key-file path");
    if (code === "EACCES" || code === "EPERM") throw new TrustvolError("EUSAGE", `key file ${path} is not readable (permission denied)`, "run as a user that may read it");
    throw new TrustvolError("EUSAGE", `cannot open key file ${path}`, "check the --key-file path");
  }
}

/**
 * Read a key file as cryptsetup does: all bytes (no newline stripping) up to 8 MiB unless --keyfile-size says how
 * many, after --keyfile-offset bytes; "-" is stdin. Pipes and devices (/dev/zero) are read with the same cap.
 */
export function readKeyFile(path: string, opts: { offset?: number; size?: number } = {}): Buffer {
  const offset = opts.offset ?? 0;
  const limit = opts.size ?? MAX_KEYFILE;
  let fd: number;
  if (path === "-") {
    claimStdin();
    fd = 0;
  } else fd = openKeyFile(path);
  const name = path === "-" ? "on standard input" : path;
  let r: { data: Buffer; more: boolean; skipped: boolean };
  let looseMode = false;
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw new TrustvolError("EUSAGE", `key file ${name} is a directory`, "give the path of a file");
    looseMode = path !== "-" && st.isFile() && (st.mode & 0o044) !== 0;
    if (st.isFile() && offset > st.size) throw new TrustvolError("EUSAGE", `key file ${name} is shorter than --keyfile-offset ${offset}`, "check --keyfile-offset");
    if (opts.size === undefined && st.isFile() && st.size - offset > MAX_KEYFILE)
      throw new TrustvolError("EUSAGE", `key file ${name} is larger than ${MiB(MAX_KEYFILE)} (cryptsetup's maximum)`, "give --keyfile-size N to use only its first N bytes");
    try {
      r = readBounded(fd, offset, limit, st.isFile());
    } catch (e) {
      if (e instanceof TrustvolError) throw e;
      const code = (e as NodeJS.ErrnoException).code;
      throw new TrustvolError("EUSAGE", `cannot read key file ${name}${code === "EISDIR" ? ": it is a directory" : ""}`, "give the path of a readable file");
    }
  } finally {
    if (fd !== 0) closeSync(fd);
  }
  const { data, more, skipped } = r;
  if (!skipped) throw new TrustvolError("EUSAGE", `key file ${name} is shorter than --keyfile-offset ${offset}`, "check --keyfile-offset");
  if (opts.size === undefined && more) {
    wipe(data);
    throw new TrustvolError("EUSAGE", `key file ${name} is larger than ${MiB(MAX_KEYFILE)} (cryptsetup's maximum)`, "give --keyfile-size N to use only its first N bytes");
  }
  if (opts.size !== undefined && data.length < opts.size) {
    wipe(data);
    throw new TrustvolError("EUSAGE", `key file ${name} has fewer than ${opts.size} bytes${offset ? ` after offset ${offset}` : ""}`, "check --keyfile-size and --keyfile-offset");
  }
  if (!data.length) throw new TrustvolError("EUSAGE", `key file ${name} is empty`);
  // Warned only once the key is read, so a refusal stays a single line.
  if (looseMode) io.err(`trustvol: warning: key file ${path} is readable by other users (chmod 600 it)\n`);
  return data;
}

/** The passphrase line from a non-terminal stdin: up to the first newline, at most 8 MiB (cryptsetup's rule). */
function readStdinLine(): Buffer {
  claimStdin();
  const { data, more } = readBounded(0, 0, MAX_KEYFILE, false);
  const nl = data.indexOf(0x0a);
  if (more && nl < 0) {
    wipe(data);
    throw new TrustvolError("EUSAGE", `passphrase on standard input is longer than ${MiB(MAX_KEYFILE)}`);
  }
  const line = Buffer.allocUnsafeSlow(nl >= 0 ? nl : data.length);
  data.copy(line, 0, 0, line.length);
  wipe(data);
  return line;
}

/** Prompt on the terminal with echo off (the shared implementation used for PINs too). */
function promptTty(prompt: string): Buffer {
  return promptHidden(prompt, { max: MAX_PROMPTED, noTerminalHint: "use --key-file FILE (or - for stdin)" });
}

/** --keyfile-offset / --keyfile-size as given on the command line (cryptsetup's spelling). */
export function keyFileLimits(o: Record<string, unknown>): { keyfileOffset?: number; keyfileSize?: number } {
  return { keyfileOffset: o.keyfileOffset as number | undefined, keyfileSize: o.keyfileSize as number | undefined };
}

/** --new-keyfile-offset / --new-keyfile-size for the new passphrase's key file. */
export function newKeyFileLimits(o: Record<string, unknown>): { keyfileOffset?: number; keyfileSize?: number } {
  return { keyfileOffset: o.newKeyfileOffset as number | undefined, keyfileSize: o.newKeyfileSize as number | undefined };
}

/** True when a passphrase would be prompted for on the terminal (so a wrong one may be retried). */
export function willPrompt(keyFile: unknown): boolean {
  return !keyFile && !!process.stdin.isTTY;
}

/**
 * Ask for a passphrase and try it; a wrong one typed at the terminal is asked again, `tries` times in all (cryptsetup's
 * --tries, default 3). Key files and stdin get one try. Each passphrase is wiped after its attempt.
 */
export async function withPassphraseTries<T>(
  opts: { keyFile?: string; prompt: string; tries?: number; keyfileOffset?: number; keyfileSize?: number },
  attempt: (pass: Buffer) => Promise<T>,
): Promise<T> {
  const tries = willPrompt(opts.keyFile) ? Math.max(1, opts.tries ?? 3) : 1;
  for (let i = 1; ; i++) {
    const pass = await getPassphrase(opts);
    try {
      return await attempt(pass);
    } catch (e) {
      if (i >= tries || !(e instanceof TrustvolError) || e.code !== "EBADPASS") throw e;
      io.err(`trustvol: ${e.message}\n`);
    } finally {
      wipe(pass);
    }
  }
}

/** A passphrase from: --key-file, else a terminal prompt, else one line of stdin (cryptsetup's rules). */
export async function getPassphrase(opts: { keyFile?: string; prompt: string; verify?: boolean; keyfileOffset?: number; keyfileSize?: number }): Promise<Buffer> {
  if (opts.keyFile) return readKeyFile(opts.keyFile, { offset: opts.keyfileOffset, size: opts.keyfileSize });
  if (process.stdin.isTTY) {
    const p = promptTty(opts.prompt);
    if (!p.length) throw new TrustvolError("EUSAGE", "empty passphrase");
    if (opts.verify) {
      let q: Buffer;
      try {
        q = promptTty("Verify passphrase: ");
      } catch (e) {
        p.fill(0);
        throw e;
      }
      const same = p.equals(q);
      q.fill(0);
      if (!same) {
        p.fill(0);
        throw new TrustvolError("EUSAGE", "passphrases do not match");
      }
    }
    return p;
  }
  const line = readStdinLine();
  if (!line.length) throw new TrustvolError("EUSAGE", "no passphrase given", "use --key-file FILE (or - for stdin), or run on a terminal");
  return line;
}
