// Big-endian TPM 2.0 marshalling primitives (Part 1 §18 / Part 2 §4): a growable writer and a bounds-checked reader.
import { TrustvolError } from "../../util/errors.js";

export class TpmWriter {
  private buf: Buffer;
  private len = 0;
  constructor(initial = 256) {
    this.buf = Buffer.allocUnsafeSlow(initial);
  }
  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.allocUnsafeSlow(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf.fill(0); // may have held secrets (sensitive-create, auth values)
    this.buf = next;
  }
  u8(v: number): this {
    this.ensure(1);
    this.buf.writeUInt8(v, this.len);
    this.len += 1;
    return this;
  }
  u16(v: number): this {
    this.ensure(2);
    this.buf.writeUInt16BE(v, this.len);
    this.len += 2;
    return this;
  }
  u32(v: number): this {
    this.ensure(4);
    this.buf.writeUInt32BE(v >>> 0, this.len);
    this.len += 4;
    return this;
  }
  u64(v: bigint): this {
    this.ensure(8);
    this.buf.writeBigUInt64BE(v, this.len);
    this.len += 8;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }
  /** TPM2B_*: a u16 size then the bytes. */
  tpm2b(b: Uint8Array): this {
    if (b.length > 0xffff) throw new TrustvolError("EUSAGE", `TPM2B of ${b.length} bytes exceeds 65535`);
    return this.u16(b.length).bytes(b);
  }
  /** Writes a u16 size placeholder, runs fn, then patches the size (for TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE...). */
  sized(fn: (w: this) => void): this {
    this.ensure(2);
    const at = this.len;
    this.len += 2;
    fn(this);
    this.buf.writeUInt16BE(this.len - at - 2, at);
    return this;
  }
  get length(): number {
    return this.len;
  }
  /** A fresh Buffer holding the bytes; wipes the internal one. */
  finish(): Buffer {
    const out = Buffer.allocUnsafeSlow(this.len);
    this.buf.copy(out, 0, 0, this.len);
    this.buf.fill(0);
    return out;
  }
}

export class TpmReader {
  off = 0;
  constructor(readonly buf: Buffer, private readonly what = "TPM response") {}
  private need(n: number): void {
    if (this.off + n > this.buf.length)
      throw new TrustvolError("ECORRUPT", `${this.what} is truncated (need ${n} bytes at offset ${this.off} of ${this.buf.length})`, "the TPM or the sealed blob is damaged");
  }
  u8(): number {
    this.need(1);
    return this.buf.readUInt8(this.off++);
  }
  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16BE(this.off);
    this.off += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.off);
    this.off += 4;
    return v;
  }
  u64(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.off);
    this.off += 8;
    return v;
  }
  bytes(n: number): Buffer {
    this.need(n);
    const v = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }
  /** A copy (not a view) of a TPM2B body. */
  tpm2b(max = 0xffff): Buffer {
    const n = this.u16();
    if (n > max) throw new TrustvolError("ECORRUPT", `${this.what}: size ${n} exceeds ${max}`, "the TPM or the sealed blob is damaged");
    return Buffer.from(this.bytes(n));
  }
  /** Reads a u16 size, then parses exactly that many bytes with fn. */
  sized<T>(fn: (r: TpmReader) => T): T {
    const n = this.u16();
    const sub = new TpmReader(this.bytes(n), this.what);
    const v = fn(sub);
    sub.end();
    return v;
  }
  get remaining(): number {
    return this.buf.length - this.off;
  }
  end(): void {
    if (this.off !== this.buf.length) throw new TrustvolError("ECORRUPT", `${this.what}: ${this.buf.length - this.off} unexpected trailing bytes`, "the TPM or the sealed blob is damaged");
  }
}
