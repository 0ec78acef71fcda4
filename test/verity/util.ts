// Shared bits for the verity tests: deterministic data images, running veritysetup, opening images.
import { writeFileSync, readFileSync } from "node:fs";
import { createHash, createCipheriv } from "node:crypto";
import { FileBlockDevice } from "../../src/blockdev/file.js";
import { run } from "../helpers/tools.js";

/** Pseudo-random but reproducible bytes (AES-CTR keystream keyed by the seed), so failures can be replayed. */
export function detBytes(n: number, seed: string): Buffer {
  const key = createHash("sha256").update(seed).digest().subarray(0, 16);
  return createCipheriv("aes-128-ctr", key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

export function writeImage(path: string, n: number, seed: string): void {
  writeFileSync(path, detBytes(n, seed));
}

export interface VsFormatArgs {
  salt?: string; // hex or "-"
  uuid?: string;
  dataBlockSize?: number;
  hashBlockSize?: number;
  hash?: string;
  format?: 0 | 1;
  noSuperblock?: boolean;
  hashOffset?: number;
  dataBlocks?: number;
}

export function vsArgs(a: VsFormatArgs): string[] {
  const r: string[] = [];
  if (a.salt !== undefined) r.push(`--salt=${a.salt}`);
  if (a.uuid) r.push(`--uuid=${a.uuid}`);
  if (a.dataBlockSize) r.push(`--data-block-size=${a.dataBlockSize}`);
  if (a.hashBlockSize) r.push(`--hash-block-size=${a.hashBlockSize}`);
  if (a.hash) r.push(`--hash=${a.hash}`);
  if (a.format !== undefined) r.push(`--format=${a.format}`);
  if (a.noSuperblock) r.push("--no-superblock");
  if (a.hashOffset) r.push(`--hash-offset=${a.hashOffset}`);
  if (a.dataBlocks) r.push(`--data-blocks=${a.dataBlocks}`);
  return r;
}

/** `veritysetup format`; returns the root hash hex it prints. */
export function vsFormat(data: string, hash: string, a: VsFormatArgs): string {
  const out = run("veritysetup", ["format", data, hash, ...vsArgs(a)]).stdout.toString();
  const m = /Root hash:\s+([0-9a-f]+)/.exec(out);
  if (!m) throw new Error(`no root hash in veritysetup output: ${out}`);
  return m[1]!;
}

/** `veritysetup verify`; returns status and the stderr lines. */
export function vsVerify(data: string, hash: string, root: string, a: VsFormatArgs = {}): { status: number; stderr: string } {
  const r = run("veritysetup", ["verify", data, hash, root, ...vsArgs({ ...a, uuid: undefined })], { check: false });
  return { status: r.status, stderr: r.stderr };
}

export async function openRO(path: string): Promise<FileBlockDevice> {
  return FileBlockDevice.open(path, { readOnly: true });
}
export async function openRW(path: string): Promise<FileBlockDevice> {
  return FileBlockDevice.open(path, { create: true });
}

export function sha(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

export function flipByte(path: string, offset: number): void {
  const b = readFileSync(path);
  b[offset] = b[offset]! ^ 0x5a;
  writeFileSync(path, b);
}
