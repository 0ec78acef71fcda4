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
import { existsSync, accessSync as accessSyncFs, constants as fsConstants } from "node:fs";
import { createHash } from "node:crypto";
import { startSwtpm, type Swtpm } from "../../trust/tpm2/swtpm-process.js";
import { withTpm } from "../../ops/handlers.js";
import { enrollToken, unlockWithTokens, resolveWipeSlots } from "../../ops/tokens.js";
import { createSystemdTpm2Token } from "../../tokens/systemd-tpm2.js";

function accessSync(p: string): boolean {
  try {
    accessSyncFs(p, fsConstants.R_OK | fsConstants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function have(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

export function registerDemoCommand(program: Command): void {
  program
    .command("demo")
    .description("walk through the main job on an image file: build, encrypt, seal the key to the TPM, reboot, unlock unattended, refuse a changed boot chain")
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
        say(`sector engine: ${nativeAvailable() ? "native (Node's OpenSSL, N-API)" : "fallback over node:crypto"}`);

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

        step(2, "Encrypt it into a LUKS2 image with a factory passphrase (argon2id keyslot, aes-xts-plain64, sectors no larger than the file system's blocks)");
        const keyFile = join(dir, "factory-passphrase");
        atomicWriteFileSync(keyFile, pass, 0o600);
        const luks = join(dir, "rootfs.luks");
        const t0 = Date.now();
        const r = await encryptImage(plain, luks, pass, { pbkdf: { type: "argon2id", memoryKiB: 64 * 1024, forceIterations: 4, parallel: 2 }, label: "demo-root", force: true });
        say(`    ${luks}: LUKS2 volume ${r.uuid}, data at offset ${r.dataOffset}, ${r.sectorSize}-byte sectors, ${Date.now() - t0} ms`);
        const ct = readFileSync(luks);
        say(`    plaintext visible in the encrypted image? ${ct.includes(secretLine) ? "YES (bug!)" : "no"}`);

        step(3, "Check it with the reference tool");
        if (have("cryptsetup")) {
          const d = spawnSync("cryptsetup", ["open", "--test-passphrase", "--key-file", keyFile, luks], { encoding: "utf8" });
          say(`    cryptsetup open --test-passphrase: ${d.status === 0 ? "accepted" : `refused (${d.stderr.trim()})`}`);
        } else say("    cryptsetup not installed: skipped (apt-get install cryptsetup-bin)");

        step(4, "Seal the key to the TPM: a new keyslot whose passphrase only this TPM can unseal while PCR 7 (Secure Boot state) is unchanged; the factory passphrase is wiped");
        let swtpm: Swtpm | undefined;
        let device = "";
        if (existsSync("/dev/tpmrm0") && accessSync("/dev/tpmrm0")) {
          device = "/dev/tpmrm0";
          say("    using this machine's TPM: /dev/tpmrm0");
        } else if (have("swtpm")) {
          swtpm = await startSwtpm();
          device = swtpm.device;
          say(`    this machine has no TPM: started a PRIVATE SOFTWARE TPM (swtpm, state in ${swtpm.stateDir}) for the demo;`);
          say("    on a device the same commands use its real TPM (/dev/tpmrm0)");
        } else say("    no TPM and no swtpm installed (apt-get install swtpm): the sealed-key steps are skipped");
        try {
          if (device) {
            const h = await LuksHandle.open(luks);
            try {
              const { volumeKey } = await h.unlock(pass);
              const v = h.requireLuks2("enroll");
              const r = await withTpm({ tpm2Device: device }, (tpm) =>
                enrollToken(v, volumeKey, async (slot) => {
                  const t = await createSystemdTpm2Token(tpm, { keyslot: slot, pcrs: [7], bank: "sha256" });
                  return { tokenJson: JSON.parse(t.tokenJson) as Record<string, unknown>, passphrase: t.passphrase };
                }, { removeSlots: resolveWipeSlots(v, "password") }),
              );
              wipe(volumeKey);
              const wiped = r.removed;
              say(`    keyslot ${r.keyslot} + systemd-tpm2 token ${r.tokenId} (PCR 7, sha256 bank); factory passphrase keyslot ${wiped.join(",")} wiped`);
            } finally {
              await h.close();
            }
            if (have("cryptsetup")) {
              const d = spawnSync("cryptsetup", ["open", "--test-passphrase", "--key-file", keyFile, luks], { encoding: "utf8" });
              say(`    cryptsetup with the old factory passphrase: ${d.status === 0 ? "ACCEPTED (bug!)" : "refused, as it should be"}`);
            }

            step(5, swtpm ? "\"Reboot\": restart the TPM (PCRs reset to the same boot state), then unlock with nobody typing anything" : "Unlock with nobody typing anything");
            if (swtpm) await swtpm.restart();
            const h2 = await LuksHandle.open(luks, { readOnly: true });
            try {
              const u = await unlockWithTokens(h2, { tpm2Device: device });
              say(`    unlocked unattended through token ${u.tokenId} (${u.tokenType}), keyslot ${u.keyslot}`);
              const view = h2.decrypted(u.volumeKey, { readOnly: true });
              const sb = Buffer.alloc(1024);
              await view.read(sb, 1024);
              say(`    ext4 superblock magic 0x${sb.readUInt16LE(56).toString(16)} (0xef53 expected), label "${sb.subarray(120, 136).toString("latin1").replace(/\0+$/, "")}"`);
              await view.close();
              const back = join(dir, "rootfs.decrypted.img");
              await decryptImage(luks, back, { volumeKey: u.volumeKey }, { force: true });
              wipe(u.volumeKey);
              if (have("debugfs")) {
                const cat = spawnSync("debugfs", ["-R", "cat /etc/device.conf", back], { encoding: "utf8" });
                say(`    /etc/device.conf read back: "${cat.stdout.trim()}" ${cat.stdout.trim() === secretLine ? "(matches)" : "(MISMATCH)"}`);
              }
              say(`    decrypted image identical to the original: ${readFileSync(back).equals(readFileSync(plain)) ? "yes" : "NO"}`);
            } finally {
              await h2.close();
            }

            step(6, "Change the boot chain: extend PCR 7, as a different Secure Boot state would, and try again");
            if (swtpm) {
              await withTpm({ tpm2Device: device }, (tpm) => tpm.tpm.pcrExtend(7, "sha256", createHash("sha256").update("another bootloader").digest()));
              const h3 = await LuksHandle.open(luks, { readOnly: true });
              try {
                await unlockWithTokens(h3, { tpm2Device: device });
                say("    unlocked (bug!)");
              } catch (e) {
                say(`    refused: ${e instanceof TrustvolError ? e.oneLine() : String(e)}`);
              } finally {
                await h3.close();
              }
            } else say("    skipped on a real TPM (extending PCR 7 would change this machine's own boot state)");
          }
        } finally {
          await swtpm?.stop();
        }
        say("\nA copied disk yields nothing without this TPM; a changed boot chain gets nothing from it.");
      } finally {
        wipe(pass);
        if (!keep) rmSync(dir, { recursive: true, force: true });
      }
    });
}
