// Fixtures for the provisioning tests: small ext4 images with files of known checksums (mkfs.ext4 -d), and a way to
// read the decrypted file system back (library decryption, then debugfs) without device-mapper.
import { mkdirSync, writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createHash, randomBytes } from "node:crypto";
import { run } from "../helpers/tools.js";
import type { BlockDevice } from "../../src/blockdev/types.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { LuksHandle } from "../../src/ops/volume.js";
import { unlockWithTokens, type TokenUnlockContext } from "../../src/ops/tokens.js";
import { readExtSuperblock } from "../../src/ops/provision.js";

export const MiB = 1 << 20;
export const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** An ext4 image of `sizeMiB` holding a few files; returns the file checksums by name. */
export function makeExt4(dir: string, name: string, sizeMiB: number, label = "otaroot"): { path: string; files: Record<string, string> } {
  const content = join(dir, `${name}.content`);
  mkdirSync(content, { recursive: true });
  const files: Record<string, string> = {};
  for (const [f, n] of [["a.bin", 200_000], ["b.bin", 700_000], ["c.txt", 1234]] as const) {
    const data = randomBytes(n);
    writeFileSync(join(content, f), data);
    files[f] = sha(data);
  }
  const path = join(dir, name);
  run("truncate", ["-s", `${sizeMiB}M`, path]);
  run("mkfs.ext4", ["-q", "-F", "-L", label, "-b", "4096", "-d", content, path]);
  return { path, files };
}

/** The file system inside a LUKS2 device (unlocked through its tokens), as bytes. */
export async function decryptedFs(dev: BlockDevice, ctx: TokenUnlockContext): Promise<Buffer> {
  const h = await LuksHandle.fromDevices(dev);
  const { volumeKey } = await unlockWithTokens(h, ctx);
  try {
    const c = h.decrypted(volumeKey, { readOnly: true });
    const buf = Buffer.alloc(c.size);
    await c.read(buf, 0);
    return buf;
  } finally {
    volumeKey.fill(0);
  }
}

/** Checksums of the named files of an ext4 image (debugfs), after a read-only fsck. */
export async function fsChecksums(dir: string, fsImage: Buffer, names: string[]): Promise<Record<string, string>> {
  const sb = await readExtSuperblock(new MemoryBlockDevice(fsImage));
  if (!sb) throw new Error("no ext4 superblock in the decrypted data");
  const p = join(dir, `fsck-${randomBytes(4).toString("hex")}.img`);
  writeFileSync(p, fsImage.subarray(0, sb.blocks * sb.blockSize));
  run("e2fsck", ["-f", "-n", p]);
  const out: Record<string, string> = {};
  for (const n of names) {
    const dst = join(dir, `dump-${n}`);
    run("debugfs", ["-R", `dump /${n} ${dst}`, p]);
    out[n] = sha(readFileSync(dst));
  }
  return out;
}
