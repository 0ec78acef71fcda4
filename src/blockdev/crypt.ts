// The decrypted view of a dm-crypt/LUKS data segment as a BlockDevice: what /dev/mapper/<name> shows, without
// device-mapper. Unaligned access does read-modify-write of whole sectors, exactly like a filesystem on dm-crypt would see.
import type { BlockDevice } from "./types.js";
import type { SectorCipher } from "../dmcrypt/sector-cipher.js";
import { TrustvolError } from "../util/errors.js";

export interface CryptSegment {
  offset: number; // byte offset of the segment on the backing device
  length: number; // bytes, multiple of sectorSize
}

export class CryptBlockDevice implements BlockDevice {
  readonly readOnly: boolean;
  readonly name: string;
  private readonly ss: number;
  constructor(
    private readonly backing: BlockDevice,
    private readonly seg: CryptSegment,
    private readonly cipher: SectorCipher,
    opts: { readOnly?: boolean } = {},
  ) {
    this.ss = cipher.sectorSize;
    this.readOnly = opts.readOnly ?? backing.readOnly;
    this.name = `${backing.name} (decrypted)`;
    if (seg.length % this.ss) throw new TrustvolError("EINTERNAL", "segment length is not a multiple of the sector size");
  }
  get size(): number {
    return this.seg.length;
  }

  private check(len: number, offset: number): void {
    if (offset < 0 || offset + len > this.seg.length) throw new TrustvolError("ETRUNCATED", `${this.name}: access of ${len} bytes at ${offset} is past the end (${this.seg.length})`);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.check(buf.length, offset);
    if (!buf.length) return;
    const first = Math.floor(offset / this.ss);
    const last = Math.floor((offset + buf.length - 1) / this.ss);
    const aligned = offset % this.ss === 0 && buf.length % this.ss === 0;
    const tmp = aligned ? buf : new Uint8Array((last - first + 1) * this.ss);
    await this.backing.read(tmp, this.seg.offset + first * this.ss);
    this.cipher.decrypt(tmp, first);
    if (!aligned) buf.set(tmp.subarray(offset - first * this.ss, offset - first * this.ss + buf.length));
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    if (this.readOnly) throw new TrustvolError("EDEVICE", `${this.name}: opened read-only`);
    this.check(buf.length, offset);
    if (!buf.length) return;
    const first = Math.floor(offset / this.ss);
    const last = Math.floor((offset + buf.length - 1) / this.ss);
    const tmp = new Uint8Array((last - first + 1) * this.ss);
    if (offset % this.ss !== 0 || buf.length % this.ss !== 0) {
      await this.backing.read(tmp, this.seg.offset + first * this.ss);
      this.cipher.decrypt(tmp, first);
    }
    tmp.set(buf, offset - first * this.ss);
    this.cipher.encrypt(tmp, first);
    await this.backing.write(tmp, this.seg.offset + first * this.ss);
  }

  async flush(): Promise<void> {
    await this.backing.flush();
  }
  async close(): Promise<void> {
    this.cipher.dispose();
  }
}
