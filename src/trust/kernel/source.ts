// Kernel trusted keys as a trust source. The kernel never hands a trusted key's plaintext to user space, so a secret
// is sealed by letting dm-crypt — keyed by reference to a fresh trusted key (`:64:trusted:<desc>`) — encrypt one
// 512-byte sector: seal = write [len ‖ secret ‖ random padding] through the mapping and keep the ciphertext;
// unseal = load the trusted key from its blob, map the ciphertext, read the sector back. The plaintext exists only
// in our Buffers and in the kernel; the temporary file behind the loop device holds ciphertext only.
// Needs root, device-mapper, loop devices, losetup and dmsetup (the initramfs of a device that unlocks this way);
// all of it through src/dm/.
import { createHash } from "node:crypto";
import { closeSync, fsyncSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync, existsSync, constants } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TrustvolError, unsupported } from "../../util/errors.js";
import { dmCreate, dmRemove } from "../../dm/dmsetup.js";
import { loopAttach, type LoopHandle } from "../../dm/loop.js";
import { cryptTable } from "../../dm/table.js";
import { randomBytesBuf, wipe } from "../../util/secret.js";
import type { SealPolicy, SealedBlob, TrustSourceInfo } from "../types.js";
import { ensureKeyring, unlinkKey, type KeyctlOptions } from "./keyring.js";
import { createTrustedKey, detectTrustedSource, exportTrustedKey, loadTrustedKey, parseTrustedBlob, uniqueKeyDescription, type TrustedKeyOptions, type TrustedKeySource } from "./trusted.js";

const SECTOR = 512;
const MAX_SECRET = SECTOR - 2 - 32; // record: len u16 ‖ sha256(secret) ‖ secret ‖ random padding
const KEYRING = "trustvol";

export interface KernelTrustedSourceOptions {
  /** Default: detected (detectTrustedSource). */
  source?: TrustedKeySource;
  /** Per-source options for the sealing key (TPM 2.0: keyhandle is required). */
  keyOptions?: TrustedKeyOptions;
  keyctl?: KeyctlOptions;
}

/** Run one 512-byte sector through dm-crypt keyed by the trusted key `desc`. */
function kernelCrypt(desc: string, op: "encrypt" | "decrypt", input: Buffer): Buffer {
  const dir = mkdtempSync(join(existsSync("/run") ? "/run" : tmpdir(), "trustvol-kc-"));
  const file = join(dir, "sector");
  const name = `trustvol-kc-${desc.replace(/[^0-9a-z]/gi, "").slice(-16)}`;
  let loop: LoopHandle | undefined;
  let mapped = false;
  try {
    writeFileSync(file, op === "decrypt" ? input : Buffer.alloc(SECTOR), { mode: 0o600 });
    loop = loopAttach(file);
    dmCreate(name, cryptTable({ sectors: 1, cipher: "aes-xts-plain64", key: { size: 64, type: "trusted", description: desc }, device: loop.device }), {}, { cipher: "aes-xts-plain64", keyType: "trusted" });
    mapped = true;
    loop.release();
    const dev = `/dev/mapper/${name}`;
    if (op === "encrypt") {
      const fd = openSync(dev, constants.O_WRONLY);
      try {
        writeSync(fd, input, 0, SECTOR, 0);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      dmRemove(name);
      mapped = false;
      loop.detach();
      loop = undefined;
      return readFileSync(file);
    }
    const out = Buffer.allocUnsafeSlow(SECTOR);
    const fd = openSync(dev, constants.O_RDONLY);
    try {
      if (readSync(fd, out, 0, SECTOR, 0) !== SECTOR) throw new TrustvolError("EIO", "short read from the dm-crypt mapping");
    } finally {
      closeSync(fd);
    }
    return out;
  } finally {
    if (mapped) try { dmRemove(name); } catch { /* best effort on the error path */ }
    if (loop) try { loop.detach(); } catch { /* autoclear or already gone */ }
    rmSync(dir, { recursive: true, force: true });
  }
}

export class KernelTrustedSource {
  readonly kind = "kernel-trusted" as const;
  private readonly source: TrustedKeySource;
  private readonly tpmVersion: 1 | 2;
  private readonly opts: KernelTrustedSourceOptions;

  constructor(opts: KernelTrustedSourceOptions = {}) {
    const d = detectTrustedSource();
    const source = opts.source ?? d.source;
    if (!source) throw new TrustvolError("EDEVICE", "no trust source for kernel trusted keys", "boot with trusted.source=tpm|tee|caam|dcp on a kernel with CONFIG_TRUSTED_KEYS");
    this.source = source;
    this.tpmVersion = d.tpmVersion ?? 2;
    this.opts = opts;
  }

  async describe(): Promise<TrustSourceInfo> {
    return {
      kind: this.kind,
      description: `kernel trusted keys (trusted.source=${this.source}${this.source === "tpm" ? `, TPM ${this.tpmVersion}.0` : ""})`,
      hardwareBacked: true, // a software TPM in front of the kernel looks the same from here
      details: { source: this.source, ...(this.source === "tpm" ? { tpmVersion: this.tpmVersion } : {}), keyOptions: { keyhandle: this.opts.keyOptions?.keyhandle, hash: this.opts.keyOptions?.hash } },
    };
  }

  /** The kernel CSPRNG (fed by the TPM/CAAM hwrng when one is registered). */
  async getRandom(n: number): Promise<Buffer> {
    return randomBytesBuf(n);
  }

  async seal(secret: Uint8Array, policy?: SealPolicy): Promise<SealedBlob> {
    if (policy?.pcrs?.length || policy?.pin) throw unsupported("kernel trusted keys take a TPM policy as keyOptions.policydigest, not SealPolicy pcrs/pin");
    if (secret.length > MAX_SECRET) throw new TrustvolError("EUSAGE", `secret is ${secret.length} bytes; at most ${MAX_SECRET} can be sealed this way`);
    const ring = ensureKeyring(KEYRING, "@u", this.opts.keyctl);
    const desc = uniqueKeyDescription("trustvol-seal");
    const id = createTrustedKey(desc, 64, this.opts.keyOptions ?? {}, ring, { source: this.source, tpmVersion: this.tpmVersion, keyctl: this.opts.keyctl });
    const record = randomBytesBuf(SECTOR);
    try {
      const keyBlob = exportTrustedKey(id, this.opts.keyctl);
      record.writeUInt16LE(secret.length, 0);
      createHash("sha256").update(secret).digest().copy(record, 2);
      record.set(secret, 34);
      const ct = kernelCrypt(desc, "encrypt", record);
      const len = Buffer.alloc(4);
      len.writeUInt32LE(keyBlob.length);
      return { kind: this.kind, data: Buffer.concat([len, keyBlob, ct]), meta: { source: this.source, cipher: "aes-xts-plain64", sector: SECTOR, keyhandle: this.opts.keyOptions?.keyhandle } };
    } finally {
      wipe(record);
      unlinkKey(id, ring, this.opts.keyctl);
    }
  }

  async unseal(blob: SealedBlob): Promise<Buffer> {
    if (blob.kind !== this.kind) throw new TrustvolError("EUSAGE", `not a kernel-trusted blob (${blob.kind})`);
    const data = Buffer.from(blob.data);
    const n = data.length >= 4 ? data.readUInt32LE(0) : -1;
    if (n <= 0 || data.length !== 4 + n + SECTOR) throw new TrustvolError("ECORRUPT", "kernel-trusted sealed blob is damaged (length fields do not add up)");
    const keyBlob = parseTrustedBlob(data.subarray(4, 4 + n));
    const ring = ensureKeyring(KEYRING, "@u", this.opts.keyctl);
    const desc = uniqueKeyDescription("trustvol-unseal");
    const { keyhandle, keyauth, blobauth, policyhandle, pcrlock } = this.opts.keyOptions ?? {};
    const loadOpts: TrustedKeyOptions = this.source === "tpm" ? { keyhandle, keyauth, blobauth, policyhandle, pcrlock } : {};
    const id = loadTrustedKey(desc, keyBlob, loadOpts, ring, { source: this.source, tpmVersion: this.tpmVersion, keyctl: this.opts.keyctl });
    let plain: Buffer | undefined;
    try {
      plain = kernelCrypt(desc, "decrypt", data.subarray(4 + n));
      const len = plain.readUInt16LE(0);
      const out = Buffer.allocUnsafeSlow(Math.min(len, MAX_SECRET));
      plain.copy(out, 0, 34, 34 + out.length);
      if (len > MAX_SECRET || !createHash("sha256").update(out).digest().equals(plain.subarray(2, 34))) {
        wipe(out);
        throw new TrustvolError("ENOKEY", "the kernel-trusted sealed blob did not decrypt to a valid record", "the blob was sealed with another key or is damaged");
      }
      return out;
    } finally {
      wipe(plain);
      unlinkKey(id, ring, this.opts.keyctl);
    }
  }

  async close(): Promise<void> {}
}
