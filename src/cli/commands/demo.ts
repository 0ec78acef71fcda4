// `trustvol demo`: the main job end to end on an image file, narrated — build an ext4 image, encrypt it to LUKS2,
// prove the ciphertext hides it, reopen it and read the file back. Later steps seal the key to a trust source.
import { io } from "../io.js";
import type { Command } from "commander";
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { atomicWriteFileSync } from "../../util/atomic.js";
import { encryptImage, decryptImage } from "../../ops/image.js";
import { LuksHandle } from "../../ops/volume.js";
import { nativeAvailable } from "../../dmcrypt/sector-cipher.js";

function have(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

export function registerDemoCommand(program: Command): void {
  program
    .command("demo")
    .description("walk through the main job on an image file: build, encrypt, verify with cryptsetup, reopen, read back")
    .option("--dir <dir>", "work directory to keep (default: a temporary one, removed afterwards)")
    .action(async (o: Record<string, unknown>) => {
      const keep = !!o.dir;
      const dir = (o.dir as string | undefined) ?? mkdtempSync(join(tmpdir(), "trustvol-demo-"));
      mkdirSync(dir, { recursive: true });
      const say = (s: string) => io.out(`${s}\n`);
      const step = (n: number, s: string) => say(`\n[${n}] ${s}`);
      const pass = Buffer.from(randomBytes(24).toString("base64url"));
      try {
        say(`trustvol demo — work directory ${dir}${keep ? "" : " (removed at the end)"}`);
        say(`sector engine: ${nativeAvailable() ? "native (Node's OpenSSL, N-API)" : "pure TypeScript fallback"}`);

        step(1, "Build a small ext4 root file system image, as a CI pipeline would (mkfs.ext4 -d, no root needed)");
        const content = join(dir, "rootfs");
        mkdirSync(join(content, "etc"), { recursive: true });
        const secretLine = `device-secret-${randomBytes(6).toString("hex")}`;
        writeFileSync(join(content, "etc", "device.conf"), `${secretLine}\n`);
        const plain = join(dir, "rootfs.img");
        if (!have("mkfs.ext4")) throw new TrustvolError("ENOENT", "mkfs.ext4 is not installed", "apt-get install e2fsprogs");
        const mk = spawnSync("mkfs.ext4", ["-q", "-F", "-L", "demo-root", "-d", content, plain, "16M"], { encoding: "utf8" });
        if (mk.status !== 0) throw new TrustvolError("EIO", `mkfs.ext4 failed: ${mk.stderr.trim()}`);
        say(`    ${plain}: 16 MiB ext4 with /etc/device.conf = "${secretLine}"`);

        step(2, "Encrypt it into a LUKS2 image with a factory passphrase (argon2id keyslot, aes-xts-plain64, 4096-byte sectors)");
        const keyFile = join(dir, "factory-passphrase");
        atomicWriteFileSync(keyFile, pass, 0o600);
        const luks = join(dir, "rootfs.luks");
        const t0 = Date.now();
        const r = await encryptImage(plain, luks, pass, { pbkdf: { type: "argon2id", memoryKiB: 64 * 1024, forceIterations: 4, parallel: 2 }, label: "demo-root", force: true });
        say(`    ${luks}: LUKS2 volume ${r.uuid}, data at offset ${r.dataOffset}, ${Date.now() - t0} ms`);
        const ct = readFileSync(luks);
        say(`    plaintext visible in the encrypted image? ${ct.includes(secretLine) ? "YES (bug!)" : "no"}`);

        step(3, "Check it with the reference tool");
        if (have("cryptsetup")) {
          const d = spawnSync("cryptsetup", ["open", "--test-passphrase", "--key-file", keyFile, luks], { encoding: "utf8" });
          say(`    cryptsetup open --test-passphrase: ${d.status === 0 ? "accepted" : `refused (${d.stderr.trim()})`}`);
        } else say("    cryptsetup not installed: skipped (apt-get install cryptsetup-bin)");

        step(4, "Reopen: unlock with the passphrase and read the file system back through the decrypted view");
        const h = await LuksHandle.open(luks, { readOnly: true });
        try {
          const { volumeKey, keyslot } = await h.unlock(pass);
          say(`    keyslot ${keyslot} unlocked`);
          const view = h.decrypted(volumeKey, { readOnly: true });
          const sb = Buffer.alloc(1024);
          await view.read(sb, 1024);
          say(`    ext4 superblock magic 0x${sb.readUInt16LE(56).toString(16)} (0xef53 expected), label "${sb.subarray(120, 136).toString("latin1").replace(/\0+$/, "")}"`);
          await view.close();
          wipe(volumeKey);
        } finally {
          await h.close();
        }
        const back = join(dir, "rootfs.decrypted.img");
        await decryptImage(luks, back, { passphrase: pass }, { force: true });
        if (have("debugfs")) {
          const cat = spawnSync("debugfs", ["-R", "cat /etc/device.conf", back], { encoding: "utf8" });
          say(`    /etc/device.conf read back: "${cat.stdout.trim()}" ${cat.stdout.trim() === secretLine ? "(matches)" : "(MISMATCH)"}`);
        }
        say(`    decrypted image identical to the original: ${readFileSync(back).equals(readFileSync(plain)) ? "yes" : "NO"}`);
        say("\nNext on a device: seal the key to its TPM / TEE / PKCS#11 token so it unlocks with nobody typing a passphrase.");
      } finally {
        wipe(pass);
        if (!keep) rmSync(dir, { recursive: true, force: true });
      }
    });
}
