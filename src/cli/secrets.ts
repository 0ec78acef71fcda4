// Where passphrases come from: a key file, stdin, or a terminal prompt — never argv or the environment.
import { readFileSync, openSync, readSync, closeSync, fstatSync } from "node:fs";
import { TrustvolError } from "../util/errors.js";

const MAX_KEYFILE = 8 * 1024 * 1024; // cryptsetup's default --keyfile-size limit

let stdinConsumed = false;

/** Each CLI invocation may read stdin once (in-process callers run several invocations). */
export function resetStdinState(): void {
  stdinConsumed = false;
}

function readAllStdin(): Buffer {
  if (stdinConsumed) throw new TrustvolError("EUSAGE", "standard input can supply only one secret", "put the other one in a key file");
  stdinConsumed = true;
  const chunks: Buffer[] = [];
  const b = Buffer.alloc(65536);
  let total = 0;
  for (;;) {
    let n: number;
    try {
      n = readSync(0, b, 0, b.length, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EAGAIN") continue;
      if ((e as NodeJS.ErrnoException).code === "EOF") break;
      throw e;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(b.subarray(0, n)));
    total += n;
    if (total > MAX_KEYFILE) {
      for (const c of chunks) c.fill(0);
      b.fill(0);
      throw new TrustvolError("EUSAGE", "key material on stdin is larger than 8 MiB");
    }
  }
  b.fill(0);
  const out = Buffer.concat(chunks);
  for (const c of chunks) c.fill(0);
  return out;
}

/** Read a key file exactly as cryptsetup does (all bytes, no newline stripping); "-" is stdin. */
export function readKeyFile(path: string, opts: { offset?: number; size?: number } = {}): Buffer {
  let data: Buffer;
  if (path === "-") data = readAllStdin();
  else {
    let fd: number;
    try {
      fd = openSync(path, "r");
    } catch (e) {
      throw new TrustvolError("ENOENT", `cannot read key file ${path}: ${(e as NodeJS.ErrnoException).code ?? "error"}`);
    }
    try {
      const st = fstatSync(fd);
      if (st.isFile() && st.size > MAX_KEYFILE) throw new TrustvolError("EUSAGE", `key file ${path} is larger than 8 MiB`);
      data = readFileSync(fd);
    } finally {
      closeSync(fd);
    }
  }
  const off = opts.offset ?? 0;
  const end = opts.size !== undefined ? off + opts.size : data.length;
  if (end > data.length) {
    data.fill(0);
    throw new TrustvolError("EUSAGE", "key file is shorter than the requested size");
  }
  const out = Buffer.from(data.subarray(off, end));
  data.fill(0);
  if (!out.length) throw new TrustvolError("EUSAGE", `key file ${path} is empty`);
  return out;
}

/** Prompt on the terminal with echo off. */
async function promptTty(prompt: string): Promise<Buffer> {
  const fd = openSync("/dev/tty", "r+");
  const { ReadStream, WriteStream } = await import("node:tty");
  const input = new ReadStream(fd);
  const output = new WriteStream(fd);
  output.write(prompt);
  input.setRawMode(true);
  const bytes: number[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      input.on("data", (d: Buffer) => {
        try {
          for (const c of d) {
            if (c === 0x0d || c === 0x0a) return resolve();
            if (c === 0x03) return reject(new TrustvolError("EUSAGE", "interrupted"));
            if (c === 0x7f || c === 0x08) bytes.pop();
            else bytes.push(c);
          }
        } finally {
          d.fill(0); // a pasted passphrase arrives in one chunk
        }
      });
    });
  } finally {
    input.setRawMode(false);
    output.write("\n");
    input.destroy();
    output.destroy();
  }
  const out = Buffer.from(bytes);
  bytes.fill(0);
  return out;
}

/** A passphrase from: --key-file, else a terminal prompt, else one line of stdin (cryptsetup's rules). */
export async function getPassphrase(opts: { keyFile?: string; prompt: string; verify?: boolean; keyfileOffset?: number; keyfileSize?: number }): Promise<Buffer> {
  if (opts.keyFile) return readKeyFile(opts.keyFile, { offset: opts.keyfileOffset, size: opts.keyfileSize });
  if (process.stdin.isTTY) {
    const p = await promptTty(opts.prompt);
    if (!p.length) throw new TrustvolError("EUSAGE", "empty passphrase");
    if (opts.verify) {
      const q = await promptTty("Verify passphrase: ").catch((e) => {
        p.fill(0);
        throw e;
      });
      const same = p.equals(q);
      q.fill(0);
      if (!same) {
        p.fill(0);
        throw new TrustvolError("EUSAGE", "passphrases do not match");
      }
    }
    return p;
  }
  const all = readAllStdin();
  const nl = all.indexOf(0x0a);
  const line = Buffer.from(nl >= 0 ? all.subarray(0, nl) : all);
  all.fill(0);
  if (!line.length) throw new TrustvolError("EUSAGE", "no passphrase given", "use --key-file FILE (or - for stdin), or run on a terminal");
  return line;
}
