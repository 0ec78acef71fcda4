// swtpm over a socket: the command channel (raw TPM 2.0 command/response bytes) over a unix socket or TCP, and the
// control channel (swtpm's ctrl protocol, see swtpm_ioctls(3): big-endian u32 command, payload; u32 result, payload).
import { connect, type Socket } from "node:net";
import { TrustvolError } from "../../util/errors.js";
import { MAX_RESPONSE, type Tpm2Transport } from "./transport.js";

export type SocketAddress = { path: string } | { host: string; port: number };

const describeAddr = (a: SocketAddress) => ("path" in a ? `unix socket ${a.path}` : `tcp ${a.host}:${a.port}`);

/** One request/response exchange on a fresh connection; `complete` says when the response is whole. */
function exchange(addr: SocketAddress, req: Buffer, complete: (got: Buffer) => number | undefined, timeoutMs: number, what: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock: Socket = "path" in addr ? connect({ path: addr.path }) : connect({ host: addr.host, port: addr.port });
    const chunks: Buffer[] = [];
    let total = 0;
    let done = false;
    const finish = (err: Error | null, value?: Buffer) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) {
        for (const c of chunks) c.fill(0);
        reject(err);
      } else resolve(value!);
    };
    const timer = setTimeout(
      () => finish(new TrustvolError("EDEVICE", `${what}: no answer from swtpm at ${describeAddr(addr)} within ${timeoutMs} ms`, "is swtpm running and not serving another client?")),
      timeoutMs,
    );
    sock.on("connect", () => sock.write(req));
    sock.on("data", (d: Buffer) => {
      chunks.push(d);
      total += d.length;
      if (total > MAX_RESPONSE) return finish(new TrustvolError("EDEVICE", `${what}: oversized response from swtpm`));
      const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, total);
      if (chunks.length > 1) {
        for (const c of chunks) c.fill(0);
        chunks.length = 0;
        chunks.push(all);
      }
      const want = complete(all);
      if (want !== undefined && total >= want) {
        const out = Buffer.allocUnsafeSlow(want);
        all.copy(out, 0, 0, want);
        all.fill(0);
        finish(null, out);
      }
    });
    sock.on("error", (e: NodeJS.ErrnoException) =>
      finish(new TrustvolError("EDEVICE", `${what}: cannot talk to swtpm at ${describeAddr(addr)}: ${e.code ?? e.message}`, "start swtpm, or check --tpm2-device / TRUSTVOL_TPM2_DEVICE", { cause: e })),
    );
    sock.on("end", () => finish(new TrustvolError("EDEVICE", `${what}: swtpm closed the connection mid-response`, "check the swtpm log")));
  });
}

/**
 * swtpm's command channel. Each command uses its own short connection, so other clients (tpm2-tools) can use the
 * same swtpm between our commands; swtpm has no resource manager, so transient handles persist across connections.
 */
export class SwtpmTransport implements Tpm2Transport {
  readonly hardwareBacked = false;
  readonly resourceManaged = false;
  readonly description: string;
  constructor(
    readonly addr: SocketAddress,
    private readonly timeoutMs = 30_000,
  ) {
    this.description = `swtpm (${describeAddr(addr)})`;
  }
  transmit(command: Buffer): Promise<Buffer> {
    return exchange(this.addr, command, (got) => (got.length >= 10 ? got.readUInt32BE(2) : undefined), this.timeoutMs, "TPM command");
  }
  async close(): Promise<void> {}
}

/** swtpm control-channel commands (CMD_* in swtpm's tpm_ioctl.h: the ioctl number + 1). */
export const SWTPM_CMD = {
  GET_CAPABILITY: 1,
  INIT: 2,
  SHUTDOWN: 3,
  GET_TPMESTABLISHED: 4,
  SET_LOCALITY: 5,
  CANCEL_TPM_CMD: 9,
  STORE_VOLATILE: 10,
  RESET_TPMESTABLISHED: 11,
  STOP: 14,
} as const;

export class SwtpmControl {
  constructor(
    readonly addr: SocketAddress,
    private readonly timeoutMs = 10_000,
  ) {}

  private async call(cmd: number, payload: Buffer, respLen: number): Promise<Buffer> {
    const req = Buffer.alloc(4 + payload.length);
    req.writeUInt32BE(cmd, 0);
    payload.copy(req, 4);
    const rsp = await exchange(this.addr, req, () => respLen, this.timeoutMs, `swtpm control command ${cmd}`);
    if (cmd !== SWTPM_CMD.GET_CAPABILITY) {
      const res = rsp.readUInt32BE(0);
      if (res !== 0) throw new TrustvolError("EDEVICE", `swtpm control command ${cmd} failed with TPM result 0x${res.toString(16)}`);
    }
    return rsp;
  }
  /** Bitmask of supported control commands (PTM_CAP_*). */
  async capabilities(): Promise<bigint> {
    return (await this.call(SWTPM_CMD.GET_CAPABILITY, Buffer.alloc(0), 8)).readBigUInt64BE(0);
  }
  /** CMD_INIT: (re)initialise the TPM — a power cycle / TPM_Init when it was running. Needs TPM2_Startup afterwards. */
  async init(deleteVolatile = false): Promise<void> {
    const p = Buffer.alloc(4);
    p.writeUInt32BE(deleteVolatile ? 1 : 0, 0);
    await this.call(SWTPM_CMD.INIT, p, 4);
  }
  /** CMD_STOP: power the TPM off without ending swtpm (CMD_INIT powers it on again). */
  async stop(): Promise<void> {
    await this.call(SWTPM_CMD.STOP, Buffer.alloc(0), 4);
  }
  /** CMD_SHUTDOWN: stop the TPM and make swtpm exit. */
  async shutdown(): Promise<void> {
    await this.call(SWTPM_CMD.SHUTDOWN, Buffer.alloc(0), 4);
  }
  async setLocality(loc: number): Promise<void> {
    const p = Buffer.alloc(4);
    p.writeUInt8(loc, 0);
    await this.call(SWTPM_CMD.SET_LOCALITY, p, 4);
  }
  async getEstablished(): Promise<boolean> {
    const r = await this.call(SWTPM_CMD.GET_TPMESTABLISHED, Buffer.alloc(0), 8);
    return r.readUInt8(4) !== 0;
  }
  async resetEstablished(locality = 3): Promise<void> {
    const p = Buffer.alloc(4);
    p.writeUInt8(locality, 0);
    await this.call(SWTPM_CMD.RESET_TPMESTABLISHED, p, 4);
  }
}
