// File images and block devices through one fd; block devices report their size via seek-to-end.
import { open, type FileHandle } from "node:fs/promises";
import { constants, statSync, readFileSync, fdatasyncSync, writeSync } from "node:fs";
import { TrustvolError } from "../util/errors.js";
import type { BlockDevice } from "./types.js";
import { DIRECT_ALIGN, isAlignedBuffer } from "./aligned.js";

/** Smallest read or write that goes through the O_DIRECT descriptor (smaller ones, the header's, stay buffered). */
export const DIRECT_MIN = 64 << 10;

/** Largest write inlineSmallIo keeps on the calling thread (a LUKS2 header copy is 16 KiB–4 MiB; its binary part 4 KiB). */
const INLINE_MAX = 64 << 10;

/** What a path is when it is neither an image file nor a block device ("a FIFO"), else undefined. */
function unusableKind(st: { isFIFO(): boolean; isCharacterDevice(): boolean; isDirectory(): boolean; isSocket(): boolean; isFile(): boolean; isBlockDevice(): boolean }): string | undefined {
  if (st.isFile() || st.isBlockDevice()) return undefined;
  return st.isDirectory() ? "a directory" : st.isFIFO() ? "a FIFO" : st.isCharacterDevice() ? "a character device" : st.isSocket() ? "a socket" : "not a regular file";
}

/**
 * Refuse, before anything is read or written, a path that cannot hold a volume: missing (unless allowMissing),
 * a directory, FIFO, character device or socket. Opening a FIFO could block forever, so this only stats.
 */
export function checkVolumePath(path: string, o: { allowMissing?: boolean; createHint?: string } = {}): "missing" | "ok" {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") {
      if (o.allowMissing) return "missing";
      throw new TrustvolError("ENOENT", `${path} does not exist`, o.createHint ?? "check the path");
    }
    if (code === "EACCES") throw new TrustvolError("EDEVICE", `${path}: permission denied`, "run as root or fix its permissions");
    throw new TrustvolError("EIO", `${path} cannot be examined`, "check the path");
  }
  const kind = unusableKind(st);
  if (kind) throw new TrustvolError("EUSAGE", `${path} is ${kind}, not an image file or a block device`, "name an image file or a block device");
  return "ok";
}

export class FileBlockDevice implements BlockDevice {
  /** The O_DIRECT descriptor, opened at the first large aligned transfer; resolves null where it is refused. */
  private direct: Promise<FileHandle | null> | undefined;
  /** Set when O_DIRECT is not used (an image file by default) or was refused: everything through the page cache. */
  private directOff: boolean;
  private _directBytes = 0;

  private constructor(
    private readonly fh: FileHandle,
    public readonly name: string,
    public readonly readOnly: boolean,
    private _size: number,
    public readonly isBlockDevice: boolean,
    directIo: boolean | undefined,
  ) {
    const env = process.env.TRUSTVOL_DIRECT_IO;
    this.directOff = env === "0" || !(directIo ?? (env === "1" || isBlockDevice));
  }

  /**
   * `directIo`: large aligned transfers through O_DIRECT — by default on block devices only (TRUSTVOL_DIRECT_IO=1: on
   * image files too, =0: never). An image file is usually in the page cache (just built or copied): buffered, a 1 GiB
   * rotation on ext4 took 1.34–1.41 s against 1.85–1.98 s direct, and 2.0 s against 2.2 s from a cold cache.
   */
  static async open(path: string, opts: { readOnly?: boolean; create?: boolean; directIo?: boolean } = {}): Promise<FileBlockDevice> {
    const readOnly = opts.readOnly ?? false;
    let flags = readOnly ? constants.O_RDONLY : constants.O_RDWR;
    if (opts.create) flags |= constants.O_CREAT;
    checkVolumePath(path, { allowMissing: !!opts.create });
    let fh: FileHandle;
    try {
      fh = await open(path, flags, 0o600);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code === "ENOENT") throw new TrustvolError("ENOENT", `${path}: no such file or device`, "check the path");
      if (err.code === "EACCES" || err.code === "EPERM")
        throw new TrustvolError("EDEVICE", `${path}: permission denied`, readOnly ? "run as a user who can read it" : "run as root or fix its permissions");
      if (err.code === "EROFS") throw new TrustvolError("EDEVICE", `${path}: read-only file system`);
      if (err.code === "EISDIR") throw new TrustvolError("EUSAGE", `${path} is a directory, not an image file or a block device`, "name an image file or a block device");
      throw new TrustvolError("EIO", `${path} cannot be opened`, "check the path, and that nothing else holds it exclusively");
    }
    const st = await fh.stat();
    const kind = unusableKind(st);
    if (kind) {
      await fh.close();
      throw new TrustvolError("EUSAGE", `${path} is ${kind}, not an image file or a block device`, "name an image file or a block device");
    }
    let size = st.size;
    const isBlk = st.isBlockDevice();
    if (isBlk) size = blockDeviceSize(path);
    return new FileBlockDevice(fh, path, readOnly, size, isBlk, opts.directIo);
  }

  /**
   * Small writes (≤ INLINE_MAX: headers, metadata) and flush() run on the calling thread instead of libuv's pool. For a
   * loop with nothing else to do meanwhile (offline re-encryption commits every hotzone): a pool round trip costs
   * ~0.15 ms on a VM, more than a 16 KiB write, and the loop would wait for the fdatasync anyway. Off by default.
   */
  inlineSmallIo = false;

  get size(): number {
    return this._size;
  }

  /** Whether `other` is this same file or block device (another path, a symlink, a loop device over the file). */
  async sameStorage(other: BlockDevice): Promise<boolean> {
    if (other === this) return true;
    if (!(other instanceof FileBlockDevice)) return false;
    const [a, b] = await Promise.all([this.fh.stat(), other.fh.stat()]);
    return sameStorageStats(a, b);
  }

  /** The OS file descriptor, for workers that read the same file in parallel (positional reads only). */
  get fd(): number {
    return this.fh.fd;
  }

  /**
   * Whether large aligned transfers (offset, length and the buffer's address multiples of DIRECT_ALIGN, the buffer from
   * alignedBuffer()) go through a second descriptor opened with O_DIRECT: no copy through the page cache. Buffered and
   * direct I/O on one file are coherent (a direct read writes dirty cached pages back first, a direct write drops the
   * cached pages it covers); durability is unchanged: O_DIRECT is not a flush, flush() still syncs the file.
   */
  get directIo(): boolean {
    return !this.directOff;
  }

  /** Bytes read or written through the O_DIRECT descriptor so far (tests, timing marks). */
  get directBytes(): number {
    return this._directBytes;
  }

  /**
   * The O_DIRECT descriptor for a native copy of [off, off+len) (positional transfers from its own 4 KiB-aligned
   * buffers, e.g. the data shift's fused copy), or null: use `fd`. Only when direct I/O is on and the range is
   * 4 KiB-aligned; a transfer the device refuses (EINVAL) must be redone through `fd` after `directRefused()`.
   */
  async directFdFor(off: number, len: number): Promise<number | null> {
    if (this.directOff || off % DIRECT_ALIGN || len % DIRECT_ALIGN || len < DIRECT_MIN) return null;
    return (await this.directHandle())?.fd ?? null;
  }

  /** A direct transfer was refused (EINVAL): everything through the page cache from now on. */
  directRefused(): void {
    this.directOff = true;
  }

  /** The O_DIRECT handle for this transfer, or null: buffered I/O. */
  private async directFor(buf: Uint8Array, offset: number): Promise<FileHandle | null> {
    if (this.directOff || buf.length < DIRECT_MIN || offset % DIRECT_ALIGN || buf.length % DIRECT_ALIGN || !isAlignedBuffer(buf)) return null;
    return this.directHandle();
  }

  /** The O_DIRECT handle, opened once, or null when direct I/O is off or was refused. */
  private async directHandle(): Promise<FileHandle | null> {
    // Reopened through /proc/self/fd: the same open file whatever has happened to the path since.
    this.direct ??= open(`/proc/self/fd/${this.fh.fd}`, (this.readOnly ? constants.O_RDONLY : constants.O_RDWR) | constants.O_DIRECT).catch(() => {
      this.directOff = true; // e.g. EINVAL: tmpfs before Linux 6.6, some FUSE and network file systems
      return null;
    });
    const d = await this.direct;
    return this.directOff ? null : d;
  }

  /** One positional transfer of all of buf, direct when it can be; an EINVAL from O_DIRECT turns it off and retries buffered. */
  private async transfer(kind: "read" | "write", buf: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const part = buf.subarray(done);
      const d = await this.directFor(part, offset + done);
      let n: number;
      try {
        n = kind === "read" ? (await (d ?? this.fh).read(part, 0, part.length, offset + done)).bytesRead : (await (d ?? this.fh).write(part, 0, part.length, offset + done)).bytesWritten;
      } catch (e) {
        // The file system took the O_DIRECT open but not this transfer (e.g. a larger logical block size): buffered
        if (!d || (e as NodeJS.ErrnoException).code !== "EINVAL") throw e;
        this.directOff = true;
        continue;
      }
      if (d) this._directBytes += n;
      if (n === 0 && kind === "read") throw new TrustvolError("ETRUNCATED", `${this.name}: unexpected end of data at ${offset + done}`, "the file or device is shorter than its contents say: check it was not truncated or replaced, restore its size, then run the command again");
      done += n;
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this._size)
      throw new TrustvolError("ETRUNCATED", `${this.name}: read of ${buf.length} bytes at ${offset} is past the end (${this._size} bytes)`, "the image is truncated or the wrong device");
    await this.transfer("read", buf, offset);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    if (this.readOnly) throw new TrustvolError("EDEVICE", `${this.name}: opened read-only`);
    if (this.isBlockDevice && offset + buf.length > this._size)
      throw new TrustvolError("ENOSPC", `${this.name}: write past the end of the device`);
    if (this.inlineSmallIo && buf.length <= INLINE_MAX) for (let done = 0; done < buf.length; ) done += writeSync(this.fh.fd, buf, done, buf.length - done, offset + done);
    else await this.transfer("write", buf, offset);
    if (offset + buf.length > this._size) this._size = offset + buf.length;
  }

  async truncate(size: number): Promise<void> {
    if (this.isBlockDevice) throw new TrustvolError("EUNSUPPORTED", `${this.name}: cannot resize a block device`);
    await this.fh.truncate(size);
    this._size = size;
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    if (this.inlineSmallIo) fdatasyncSync(this.fh.fd);
    else await this.fh.datasync();
  }

  async close(): Promise<void> {
    const d = await this.direct?.catch(() => null);
    this.direct = undefined;
    this.directOff = true;
    try {
      await d?.close();
    } finally {
      await this.fh.close();
    }
  }
}

type StorageStats = Pick<import("node:fs").Stats, "dev" | "ino" | "rdev" | "isBlockDevice">;

/** Whether two stat results name the same storage: one inode, one block device, or a loop device and its backing file. */
export function sameStorageStats(a: StorageStats, b: StorageStats): boolean {
  if (a.isBlockDevice() && b.isBlockDevice()) return a.rdev === b.rdev;
  if (!a.isBlockDevice() && !b.isBlockDevice()) return a.dev === b.dev && a.ino === b.ino;
  const [blk, file] = a.isBlockDevice() ? [a, b] : [b, a];
  const backing = loopBackingFile(blk.rdev);
  if (!backing) return false;
  try {
    const st = statSync(backing);
    return st.dev === file.dev && st.ino === file.ino;
  } catch {
    return false;
  }
}

/** Two paths naming the same storage (sameStorageStats); a path that cannot be stat'ed names nothing. */
export function sameStoragePaths(a: string, b: string): boolean {
  try {
    return sameStorageStats(statSync(a), statSync(b));
  } catch {
    return false;
  }
}

const majorMinor = (rdev: number) => `${Math.floor(rdev / 256) & 0xfff}:${(rdev & 0xff) | ((rdev >> 12) & 0xfff00)}`;

/** The file a loop device reads (sysfs; the kernel appends " (deleted)" to a removed one), or undefined. */
function loopBackingFile(rdev: number): string | undefined {
  try {
    return readFileSync(`/sys/dev/block/${majorMinor(rdev)}/loop/backing_file`, "utf8").trim().replace(/ \(deleted\)$/, "") || undefined;
  } catch {
    return undefined;
  }
}

function blockDeviceSize(path: string): number {
  // /sys/class/block/<name>/size counts 512-byte sectors; avoids an ioctl binding for BLKGETSIZE64.
  const st = statSync(path);
  try {
    const txt = readFileSync(`/sys/dev/block/${majorMinor(st.rdev)}/size`, "utf8");
    return Number(txt.trim()) * 512;
  } catch {
    throw new TrustvolError("EDEVICE", `${path}: cannot determine block device size`);
  }
}

