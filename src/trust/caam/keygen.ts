// NXP CAAM black keys through the linux-imx `/dev/caam-keygen` misc device (the interface keyctl_caam's
// caam-keygen tool drives): CREATE makes a random (or given) key, returns it as a tagged black key plus a tagged
// blob; IMPORT turns a blob back into a black key in a later boot. Black keys go into the kernel keyring as
// `logon` keys and dm-crypt uses them with `capi:tk(cbc(aes))-plain`.
//
// struct caam_keygen_cmd (include/uapi/linux/caam_keygen.h; natural alignment, same on arm64 and 32-bit ARM EABI):
//   u8 key_enc_len @0, u8 key_mode_len @1, u16 key_value_len @2, u32 black_key_len @4,
//   u64 key_enc @8, u64 key_mode @16, u64 key_value @24, u64 black_key @32, u32 blob_len @40, u64 blob @48 → 56 bytes
// CREATE = _IOWR('K', 0, struct), IMPORT = _IOWR('K', 1, struct). The u64 fields carry user pointers. On failure
// the kernel writes a message into the blob buffer (create) or the black key buffer (import).
import { closeSync, existsSync, openSync, constants } from "node:fs";
import { TrustvolError, usage } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { errnoName, ioc, ioctlRaw, ioctlAvailable } from "../../dm/ioctl.js";
import { MAX_BLACK_KEY_SIZE, MAX_BLOB_SIZE, checkKeySize, decodeTag, type CaamKeyEncryption } from "./tag.js";

export const CAAM_KEYGEN_DEVICE = "/dev/caam-keygen";
export const CAAM_KEYGEN_CMD_SIZE = 56;
export const CAAM_KEYGEN_IOCTL_CREATE = ioc("rw", "K", 0, CAAM_KEYGEN_CMD_SIZE);
export const CAAM_KEYGEN_IOCTL_IMPORT = ioc("rw", "K", 1, CAAM_KEYGEN_CMD_SIZE);

export interface CaamCreateResult {
  /** Tagged black key: what goes into the keyring as a logon key (valid for this power cycle only). */
  blackKey: Buffer;
  /** Tagged blob: what is stored; only this SoC can import it. */
  blob: Buffer;
}

export interface CaamKeygen {
  readonly kind: "device" | "simulator";
  readonly description: string;
  create(enc: CaamKeyEncryption, key: { size: number } | { plaintext: Uint8Array }): Promise<CaamCreateResult>;
  import(blob: Uint8Array): Promise<Buffer>;
  close(): Promise<void>;
}

/** Lay out struct caam_keygen_cmd; returns the struct and the pointer slots for the addon. */
export function caamKeygenCmd(f: { keyEnc?: Buffer; keyMode?: Buffer; keyValue?: Buffer; blackKey: Buffer; blob: Buffer; keyValueLen?: number }) {
  const s = Buffer.alloc(CAAM_KEYGEN_CMD_SIZE);
  s.writeUInt8(f.keyEnc?.length ?? 0, 0);
  s.writeUInt8(f.keyMode?.length ?? 0, 1);
  s.writeUInt16LE(f.keyValueLen ?? f.keyValue?.length ?? 0, 2);
  s.writeUInt32LE(f.blackKey.length, 4);
  s.writeUInt32LE(f.blob.length, 40);
  const ptrs: [number, Uint8Array, 8][] = [];
  if (f.keyEnc) ptrs.push([8, f.keyEnc, 8]);
  if (f.keyMode) ptrs.push([16, f.keyMode, 8]);
  if (f.keyValue) ptrs.push([24, f.keyValue, 8]);
  ptrs.push([32, f.blackKey, 8], [48, f.blob, 8]);
  return { struct: s, pointers: ptrs };
}

function cString(b: Buffer): string {
  const z = b.indexOf(0);
  return b.subarray(0, z < 0 ? b.length : z).toString("latin1").replace(/[^\x20-\x7e]/g, "").trim();
}

/** The real device. Not run on hardware by the test suite (see README: what has and has not run on hardware). */
export class CaamKeygenDevice implements CaamKeygen {
  readonly kind = "device" as const;
  readonly description: string;
  private fd: number | undefined;

  constructor(readonly path = CAAM_KEYGEN_DEVICE) {
    if (notLittleEndian()) throw new TrustvolError("EUNSUPPORTED", "CAAM keygen support assumes a little-endian CPU");
    if (!existsSync(path)) throw new TrustvolError("EDEVICE", `${path} does not exist`, "needs an i.MX kernel with CONFIG_CRYPTO_DEV_FSL_CAAM_KEYGEN (linux-imx) and the CAAM job ring driver");
    if (!ioctlAvailable()) throw new TrustvolError("EUNSUPPORTED", "talking to /dev/caam-keygen needs the trustvol native addon", "build it with `npm run build:native`");
    this.fd = openSync(path, constants.O_RDWR);
    this.description = `NXP CAAM (${path})`;
  }

  private call(request: number, cmd: ReturnType<typeof caamKeygenCmd>, msgBuf: Buffer, what: string): void {
    if (this.fd === undefined) throw new TrustvolError("EINTERNAL", "CAAM keygen device is closed");
    const r = ioctlRaw(this.fd, request, cmd.struct, cmd.pointers);
    if (r < 0) {
      const msg = cString(msgBuf);
      const code = errnoName(-r);
      throw new TrustvolError(code === "ENOTTY" ? "EUNSUPPORTED" : "EDEVICE", `CAAM ${what} failed (${code}${msg ? `: ${msg}` : ""})`, code === "ENOTTY" ? "this /dev/caam-keygen speaks another ioctl interface (kernel/keyctl_caam version mismatch?)" : "check dmesg for the CAAM job ring error");
    }
  }

  async create(enc: CaamKeyEncryption, key: { size: number } | { plaintext: Uint8Array }): Promise<CaamCreateResult> {
    if (enc !== "ecb" && enc !== "ccm") throw usage(`CAAM key encryption must be ecb or ccm, got ${enc}`);
    const keyEnc = Buffer.from(`${enc}\0`);
    const random = "size" in key;
    const keyMode = Buffer.from(random ? "-s\0" : "-t\0");
    let keyValue: Buffer;
    let keyValueLen: number;
    if (random) {
      checkKeySize(key.size);
      keyValue = Buffer.from(`${key.size}\0`);
      keyValueLen = keyValue.length - 1; // like caam-keygen: the length without the terminator
    } else {
      checkKeySize(key.plaintext.length);
      keyValue = Buffer.from(key.plaintext);
      keyValueLen = keyValue.length;
    }
    const blackKey = Buffer.alloc(MAX_BLACK_KEY_SIZE);
    const blob = Buffer.alloc(MAX_BLOB_SIZE);
    const cmd = caamKeygenCmd({ keyEnc, keyMode, keyValue, keyValueLen, blackKey, blob });
    try {
      this.call(CAAM_KEYGEN_IOCTL_CREATE, cmd, blob, "key creation");
      const bkLen = cmd.struct.readUInt32LE(4);
      const blobLen = cmd.struct.readUInt32LE(40);
      const out = { blackKey: Buffer.from(blackKey.subarray(0, bkLen)), blob: Buffer.from(blob.subarray(0, blobLen)) };
      decodeTag(out.blackKey, "black key from CAAM");
      decodeTag(out.blob, "blob from CAAM");
      return out;
    } finally {
      wipe(keyValue, blackKey);
    }
  }

  async import(blobIn: Uint8Array): Promise<Buffer> {
    decodeTag(blobIn, "blob");
    const blob = Buffer.from(blobIn);
    const blackKey = Buffer.alloc(MAX_BLACK_KEY_SIZE);
    const cmd = caamKeygenCmd({ blackKey, blob });
    try {
      this.call(CAAM_KEYGEN_IOCTL_IMPORT, cmd, blackKey, "blob import");
      return Buffer.from(blackKey.subarray(0, cmd.struct.readUInt32LE(4)));
    } finally {
      wipe(blackKey);
    }
  }

  async close(): Promise<void> {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

function notLittleEndian(): boolean {
  return new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1;
}
