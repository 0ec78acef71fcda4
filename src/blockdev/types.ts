// The one I/O edge: everything that touches a disk goes through a BlockDevice (file image, block device, memory).

export interface BlockDevice {
  /** Size in bytes (for block devices, the device size; for files, the file size). */
  readonly size: number;
  readonly readOnly: boolean;
  /** Human name for messages (path or "memory"). */
  readonly name: string;
  /** Read exactly buf.length bytes at offset; throws ETRUNCATED past the end. */
  read(buf: Uint8Array, offset: number): Promise<void>;
  /** Write all of buf at offset (files may grow; block devices may not). */
  write(buf: Uint8Array, offset: number): Promise<void>;
  /** Make previous writes durable (fdatasync). */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** Read a fresh Buffer of len bytes at offset. */
export async function readAt(dev: BlockDevice, offset: number, len: number): Promise<Buffer> {
  const b = Buffer.alloc(len);
  await dev.read(b, offset);
  return b;
}
