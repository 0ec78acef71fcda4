// A TPM character device: /dev/tpmrm0 (kernel resource manager, preferred) or /dev/tpm0 (raw, exclusive).
import { open, type FileHandle } from "node:fs/promises";
import { TrustvolError } from "../../util/errors.js";
import { MAX_RESPONSE, type Tpm2Transport } from "./transport.js";

export class DeviceTransport implements Tpm2Transport {
  readonly hardwareBacked = true;
  readonly resourceManaged: boolean;
  readonly description: string;
  private fh: FileHandle | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly path: string) {
    this.resourceManaged = /tpmrm\d+$/.test(path);
    this.description = path;
  }

  private async handle(): Promise<FileHandle> {
    if (this.fh) return this.fh;
    try {
      this.fh = await open(this.path, "r+");
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const hint = err.code === "EACCES" ? "run as root or add the user to the 'tss' group" : err.code === "EBUSY" ? "another process holds the raw TPM; use /dev/tpmrm0" : "check that the TPM driver is loaded";
      throw new TrustvolError("EDEVICE", `cannot open TPM device ${this.path}: ${err.code ?? err.message}`, hint, { cause: e });
    }
    return this.fh;
  }

  transmit(command: Buffer): Promise<Buffer> {
    // The kernel handles one command per open file at a time; serialise ours.
    const run = this.queue.then(async () => {
      const fh = await this.handle();
      const { bytesWritten } = await fh.write(command, 0, command.length, null);
      if (bytesWritten !== command.length) throw new TrustvolError("EDEVICE", `short write to ${this.path}`);
      const buf = Buffer.allocUnsafeSlow(MAX_RESPONSE);
      try {
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (bytesRead < 10) throw new TrustvolError("EDEVICE", `short TPM response from ${this.path} (${bytesRead} bytes)`);
        const size = buf.readUInt32BE(2);
        if (size !== bytesRead) throw new TrustvolError("EDEVICE", `TPM response size mismatch from ${this.path}`);
        return Buffer.from(buf.subarray(0, bytesRead));
      } finally {
        buf.fill(0);
      }
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = undefined;
    await fh?.close();
  }
}
