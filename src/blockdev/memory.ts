// In-memory device for tests and for staging headers before they touch a disk.
import { TrustvolError } from "../util/errors.js";
import type { BlockDevice } from "./types.js";

export class MemoryBlockDevice implements BlockDevice {
  readonly name = "memory";
  data: Buffer;
  constructor(sizeOrData: number | Uint8Array, public readonly readOnly = false, private readonly growable = true) {
    this.data = typeof sizeOrData === "number" ? Buffer.alloc(sizeOrData) : Buffer.from(sizeOrData);
  }
  get size(): number {
    return this.data.length;
  }
  async read(buf: Uint8Array, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.data.length)
      throw new TrustvolError("ETRUNCATED", `memory: read of ${buf.length} bytes at ${offset} is past the end (${this.data.length} bytes)`);
    buf.set(this.data.subarray(offset, offset + buf.length));
  }
  async write(buf: Uint8Array, offset: number): Promise<void> {
    if (this.readOnly) throw new TrustvolError("EDEVICE", "memory: read-only");
    const end = offset + buf.length;
    if (end > this.data.length) {
      if (!this.growable) throw new TrustvolError("ENOSPC", "memory: write past the end");
      const n = Buffer.alloc(end);
      this.data.copy(n);
      this.data = n;
    }
    this.data.set(buf, offset);
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
