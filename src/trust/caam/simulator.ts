// CaamSimulator — a SOFTWARE STAND-IN for NXP CAAM black keys and blobs, for tests on machines without an i.MX.
// It is NOT a root of trust: its "OTP master key" is a file. It refuses to run unless TRUSTVOL_CAAM_SIMULATOR=1
// (or the test runner's TRUSTVOL_TEST=1) is set, and everything it describes says "simulator".
//
// It mirrors the semantics /dev/caam-keygen offers, with the same tagged formats and sizes:
//  - a black key is the key encrypted under a per-power-cycle key (CAAM's JDKEK): valid only in the boot that made
//    it. Here: AES-256 under HMAC-SHA256(master, "jdkek" ‖ boot_id), ECB, or CCM with an 8-byte nonce and a 4-byte tag.
//  - a blob survives reboots and only opens on the device that made it (CAAM's OTPMK-derived blob KEK). Here: a
//    random blob key wrapped with AES-256-ECB under HMAC-SHA256(master, "blob-kek"), the key sealed with it by
//    AES-256-CCM (12-byte nonce, 16-byte tag): 32 + 12 + pad8(len) + 16 bytes = the real blob size.
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { TrustvolError } from "../../util/errors.js";
import { atomicWriteFileSync } from "../../util/atomic.js";
import { randomBytesBuf, wipe } from "../../util/secret.js";
import { TYPE_BLACK, TYPE_CCM, blackKeyLength, blobLength, checkKeySize, decodeTag, encodeTag, encryptionOf, type CaamKeyEncryption } from "./tag.js";
import type { CaamKeygen, CaamCreateResult } from "./keygen.js";

export const SIMULATOR_ENV = "TRUSTVOL_CAAM_SIMULATOR";

export function simulatorAllowed(): boolean {
  return process.env[SIMULATOR_ENV] === "1" || process.env.TRUSTVOL_TEST === "1";
}

export interface CaamSimulatorOptions {
  /** Directory holding the simulator's master key (created 0600 on first use). Stands for the SoC's fuses. */
  stateDir: string;
  /** Stands for the power cycle (default: /proc/sys/kernel/random/boot_id). */
  bootId?: string;
}

function currentBootId(): string {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "no-boot-id";
  }
}

function aesEcb(key: Buffer, data: Buffer, encrypt: boolean): Buffer {
  const c = encrypt ? createCipheriv("aes-256-ecb", key, null) : createDecipheriv("aes-256-ecb", key, null);
  c.setAutoPadding(false);
  return Buffer.concat([c.update(data), c.final()]);
}

export class CaamSimulator implements CaamKeygen {
  readonly kind = "simulator" as const;
  readonly description: string;
  private readonly master: Buffer;
  private readonly bootId: string;

  constructor(o: CaamSimulatorOptions) {
    if (!simulatorAllowed())
      throw new TrustvolError("EPOLICY", "the CAAM simulator is for tests only and protects nothing", `set ${SIMULATOR_ENV}=1 to use it anyway; on an i.MX use /dev/caam-keygen`);
    mkdirSync(o.stateDir, { recursive: true, mode: 0o700 });
    const f = join(o.stateDir, "simulated-otpmk.key");
    if (!existsSync(f)) atomicWriteFileSync(f, randomBytesBuf(32), 0o600);
    this.master = readFileSync(f);
    if (this.master.length !== 32) throw new TrustvolError("ECORRUPT", `${f} is not a 32-byte simulator master key`);
    this.bootId = o.bootId ?? currentBootId();
    this.description = `CAAM SIMULATOR (software, not hardware-backed; state ${o.stateDir})`;
  }

  private kek(label: string): Buffer {
    return createHmac("sha256", this.master).update(label).digest();
  }

  private blacken(enc: CaamKeyEncryption, red: Buffer): Buffer {
    const jdkek = this.kek(`jdkek:${this.bootId}`);
    try {
      if (enc === "ecb") {
        const padded = Buffer.alloc(blackKeyLength("ecb", red.length));
        red.copy(padded);
        try {
          return aesEcb(jdkek, padded, true);
        } finally {
          wipe(padded);
        }
      }
      const padded = Buffer.alloc(Math.ceil(red.length / 8) * 8);
      red.copy(padded);
      const nonce = randomBytes(8);
      const c = createCipheriv("aes-256-ccm", jdkek, nonce, { authTagLength: 4 });
      c.setAAD(Buffer.from("caam-black-ccm"), { plaintextLength: padded.length });
      const ct = Buffer.concat([c.update(padded), c.final()]);
      wipe(padded);
      return Buffer.concat([nonce, ct, c.getAuthTag()]);
    } finally {
      wipe(jdkek);
    }
  }

  /** Test-only: the red key inside a black key made in this boot (real CAAM never reveals it). */
  revealBlackKeyForTests(tagged: Uint8Array): Buffer {
    const { header, object } = decodeTag(tagged, "black key");
    const jdkek = this.kek(`jdkek:${this.bootId}`);
    try {
      if (encryptionOf(header.type) === "ecb") return aesEcb(jdkek, Buffer.from(object), false).subarray(0, header.redKeyLen);
      const nonce = object.subarray(0, 8);
      const tag = object.subarray(object.length - 4);
      const d = createDecipheriv("aes-256-ccm", jdkek, nonce, { authTagLength: 4 });
      d.setAuthTag(tag);
      d.setAAD(Buffer.from("caam-black-ccm"), { plaintextLength: object.length - 12 });
      try {
        return Buffer.concat([d.update(object.subarray(8, object.length - 4)), d.final()]).subarray(0, header.redKeyLen);
      } catch {
        throw new TrustvolError("ENOKEY", "this black key was not made in this boot (simulated JDKEK changed)", "import the key again from its blob");
      }
    } finally {
      wipe(jdkek);
    }
  }

  private seal(red: Buffer, type: number): Buffer {
    const blobKek = this.kek("blob-kek");
    const bk = randomBytesBuf(32);
    const padded = Buffer.alloc(Math.ceil(red.length / 8) * 8);
    red.copy(padded);
    try {
      const wrapped = aesEcb(blobKek, bk, true);
      const nonce = randomBytes(12);
      const c = createCipheriv("aes-256-ccm", bk, nonce, { authTagLength: 16 });
      const aad = Buffer.alloc(8);
      aad.writeUInt32LE(type, 0);
      aad.writeUInt32LE(red.length, 4);
      c.setAAD(aad, { plaintextLength: padded.length });
      const ct = Buffer.concat([c.update(padded), c.final()]);
      const obj = Buffer.concat([wrapped, nonce, ct, c.getAuthTag()]);
      if (obj.length !== blobLength(red.length)) throw new TrustvolError("EINTERNAL", "simulator blob size mismatch");
      return encodeTag({ type, redKeyLen: red.length }, obj);
    } finally {
      wipe(blobKek, bk, padded);
    }
  }

  private unseal(blob: Uint8Array): { red: Buffer; type: number } {
    const { header, object } = decodeTag(blob, "blob");
    if (object.length !== blobLength(header.redKeyLen)) throw new TrustvolError("ECORRUPT", `blob is ${object.length} bytes; a ${header.redKeyLen}-byte key needs ${blobLength(header.redKeyLen)}`);
    const blobKek = this.kek("blob-kek");
    const bk = aesEcb(blobKek, Buffer.from(object.subarray(0, 32)), false);
    try {
      const nonce = object.subarray(32, 44);
      const ct = object.subarray(44, object.length - 16);
      const d = createDecipheriv("aes-256-ccm", bk, nonce, { authTagLength: 16 });
      d.setAuthTag(object.subarray(object.length - 16));
      const aad = Buffer.alloc(8);
      aad.writeUInt32LE(header.type, 0);
      aad.writeUInt32LE(header.redKeyLen, 4);
      d.setAAD(aad, { plaintextLength: ct.length });
      let padded: Buffer;
      try {
        padded = Buffer.concat([d.update(ct), d.final()]);
      } catch {
        throw new TrustvolError("ENOKEY", "the blob does not open on this (simulated) CAAM", "it was made on another device, or it is damaged");
      }
      const red = Buffer.from(padded.subarray(0, header.redKeyLen));
      wipe(padded);
      return { red, type: header.type };
    } finally {
      wipe(blobKek, bk);
    }
  }

  async create(enc: CaamKeyEncryption, key: { size: number } | { plaintext: Uint8Array }): Promise<CaamCreateResult> {
    const red = "size" in key ? (checkKeySize(key.size), randomBytesBuf(key.size)) : Buffer.from(key.plaintext);
    checkKeySize(red.length);
    const type = TYPE_BLACK | (enc === "ccm" ? TYPE_CCM : 0);
    try {
      const blackKey = encodeTag({ type, redKeyLen: red.length }, this.blacken(enc, red));
      return { blackKey, blob: this.seal(red, type) };
    } finally {
      wipe(red);
    }
  }

  async import(blob: Uint8Array): Promise<Buffer> {
    const { red, type } = this.unseal(blob);
    try {
      return encodeTag({ type, redKeyLen: red.length }, this.blacken(encryptionOf(type), red));
    } finally {
      wipe(red);
    }
  }

  async close(): Promise<void> {
    wipe(this.master);
  }
}
