// One entry point for "a LUKS thing on a path": LUKS2 (optionally with a detached header) or legacy LUKS1.
import { FileBlockDevice } from "../blockdev/file.js";
import type { BlockDevice } from "../blockdev/types.js";
import { CryptBlockDevice } from "../blockdev/crypt.js";
import { createSectorCipher } from "../dmcrypt/sector-cipher.js";
import { TrustvolError } from "../util/errors.js";
import { Luks2Volume } from "../luks2/volume.js";
import { probeLuksVersion } from "../luks2/header.js";
import { readLuks1Header, unlockLuks1, luks1Cipher, type Luks1Header } from "../luks1/luks1.js";

export interface DataArea {
  offset: number;
  length: number;
  sectorSize: number;
  cipher: string;
  ivTweak: bigint;
}

export class LuksHandle {
  private constructor(
    public readonly dataDev: BlockDevice,
    public readonly headerDev: BlockDevice,
    public readonly luks2: Luks2Volume | undefined,
    public readonly luks1: Luks1Header | undefined,
  ) {}

  get version(): 1 | 2 {
    return this.luks2 ? 2 : 1;
  }

  static async open(path: string, opts: { header?: string; readOnly?: boolean } = {}): Promise<LuksHandle> {
    const dataDev = await FileBlockDevice.open(path, { readOnly: opts.readOnly });
    let headerDev: BlockDevice = dataDev;
    try {
      if (opts.header) headerDev = await FileBlockDevice.open(opts.header, { readOnly: opts.readOnly });
      return await LuksHandle.fromDevices(dataDev, headerDev);
    } catch (e) {
      await dataDev.close().catch(() => {});
      if (headerDev !== dataDev) await headerDev.close().catch(() => {});
      throw e;
    }
  }

  static async fromDevices(dataDev: BlockDevice, headerDev: BlockDevice = dataDev): Promise<LuksHandle> {
    const v = await probeLuksVersion(headerDev);
    if (v === 1) return new LuksHandle(dataDev, headerDev, undefined, await readLuks1Header(headerDev));
    // Anything else goes through the LUKS2 reader: it also finds a valid secondary when the primary magic is gone.
    return new LuksHandle(dataDev, headerDev, await Luks2Volume.open(headerDev), undefined);
  }

  get uuid(): string {
    return this.luks2 ? this.luks2.uuid : this.luks1!.uuid;
  }

  requireLuks2(op: string): Luks2Volume {
    if (!this.luks2) throw new TrustvolError("EUNSUPPORTED", `${op} needs a LUKS2 volume; this is LUKS1`, "convert it with `cryptsetup convert --type luks2`");
    return this.luks2;
  }

  async unlock(passphrase: Uint8Array, opts: { slot?: number } = {}): Promise<{ volumeKey: Buffer; keyslot: number }> {
    if (this.luks2) return this.luks2.unlock(passphrase, opts);
    return unlockLuks1(this.headerDev, this.luks1!, passphrase, opts.slot);
  }

  dataArea(): DataArea {
    if (this.luks2) return this.luks2.dataArea(this.dataDev.size);
    const h = this.luks1!;
    const offset = this.headerDev === this.dataDev ? h.payloadOffset * 512 : 0;
    const len = this.dataDev.size - offset;
    if (len < 0) throw new TrustvolError("ETRUNCATED", "the device ends before the LUKS1 payload offset", "the image is truncated");
    return { offset, length: len - (len % 512), sectorSize: 512, cipher: luks1Cipher(h), ivTweak: 0n };
  }

  /** The decrypted data area as a BlockDevice (what the mapping would show). */
  decrypted(volumeKey: Uint8Array, opts: { readOnly?: boolean } = {}): CryptBlockDevice {
    if (this.luks2) this.luks2.checkRequirements("activate");
    const a = this.dataArea();
    const cipher = createSectorCipher({ cipher: a.cipher, key: volumeKey, sectorSize: a.sectorSize, ivOffset: a.ivTweak });
    return new CryptBlockDevice(this.dataDev, { offset: a.offset, length: a.length }, cipher, { readOnly: opts.readOnly ?? this.dataDev.readOnly });
  }

  async close(): Promise<void> {
    await this.dataDev.close();
    if (this.headerDev !== this.dataDev) await this.headerDev.close();
  }
}
