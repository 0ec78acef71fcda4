// A small LUKS2 image for token interop tests: pbkdf2 with 1000 iterations for speed, factory key in a 0600 file.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { run } from "../helpers/tools.js";

export interface LuksImage {
  img: string;
  keyFile: string;
}

export function makeLuksImage(dir: string, name = "img"): LuksImage {
  const img = join(dir, `${name}.luks`);
  const keyFile = join(dir, `${name}.key`);
  writeFileSync(keyFile, "factory passphrase", { mode: 0o600 });
  writeFileSync(img, Buffer.alloc(0));
  run("truncate", ["-s", "20M", img]);
  run("cryptsetup", ["luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--hash", "sha256", "--key-file", keyFile, img]);
  return { img, keyFile };
}

/** Does cryptsetup accept `passphrase` (given on stdin, never argv) for the image? */
export function passphraseOpens(img: string, passphrase: Uint8Array, keySlot?: number): boolean {
  const args = ["open", "--test-passphrase", "--key-file", "-", ...(keySlot === undefined ? [] : ["--key-slot", String(keySlot)]), img];
  return run("cryptsetup", args, { input: passphrase, check: false }).status === 0;
}

/** Add `passphrase` (stdin) as keyslot `slot`, unlocking with the factory key file. */
export function addKey(l: LuksImage, passphrase: Uint8Array, slot: number): void {
  run("cryptsetup", ["luksAddKey", "-q", "--key-file", l.keyFile, "--key-slot", String(slot), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", l.img, "-"], { input: passphrase });
}

export function importToken(img: string, json: string, tokenId: number): void {
  run("cryptsetup", ["token", "import", "--token-id", String(tokenId), img], { input: json });
}

export function exportToken(img: string, tokenId: number): string {
  return run("cryptsetup", ["token", "export", "--token-id", String(tokenId), img]).stdout.toString();
}
