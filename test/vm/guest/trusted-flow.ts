// Guest side of test/vm/trusted-keys.slow.test.ts: the seed flow (trusted key → sealed blob on disk → reboot → load →
// dm-crypt with `:64:trusted:kmk`), driven through src/trust/kernel. Runs inside the QEMU guest:
//   node --import tsx test/vm/guest/trusted-flow.ts <phase> <dir>
// phases: boot1 | boot2 | other-tpm | blank-tpm. Prints one JSON line (the facts the host test checks).
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { TrustvolError } from "../../../src/util/errors.js";
import { ensureKeyring, pipeKey, showKeyring, unlinkKey } from "../../../src/trust/kernel/keyring.js";
import { createTrustedKey, detectTrustedSource, loadTrustedKeyFile, saveTrustedKeyBlob } from "../../../src/trust/kernel/trusted.js";
import { KernelTrustedSource } from "../../../src/trust/kernel/source.js";
import { atomicWriteFileSync } from "../../../src/util/atomic.js";
import { createHash } from "node:crypto";
import { createEncryptedKey, loadEncryptedKeyFile, parseEncryptedBlob, saveEncryptedKeyBlob } from "../../../src/trust/kernel/encrypted.js";

const [phase, dir] = process.argv.slice(2) as [string, string];
const KH = 0x81000001;
const blobFile = join(dir, "kmk.blob");
const ekFile = join(dir, "ek.blob");
const disk = join(dir, "disk.img");
const MESSAGE = "written in boot 1 through :64:trusted:kmk";

function sh(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { input, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout.trim();
}

function withCryptMapping<T>(fn: (dev: string) => T): T {
  const loop = sh("losetup", ["-f", "--show", disk]);
  try {
    const sectors = sh("blockdev", ["--getsz", loop]);
    // the kernel finds the key by type and description in the keyrings dmsetup can search (@u is linked from @us)
    sh("dmsetup", ["create", "tvcrypt", "--table", `0 ${sectors} crypt aes-xts-plain64 :64:trusted:kmk 0 ${loop} 0`]);
    try {
      return fn("/dev/mapper/tvcrypt");
    } finally {
      sh("dmsetup", ["remove", "tvcrypt"]);
    }
  } finally {
    sh("losetup", ["-d", loop]);
  }
}

function errorFacts(fn: () => unknown): { code?: string; message?: string; hint?: string } {
  try {
    fn();
    return {};
  } catch (e) {
    if (e instanceof TrustvolError) return { code: e.code, message: e.message, hint: e.hint ?? "" };
    return { code: "not-a-TrustvolError", message: String(e) };
  }
}

const out: Record<string, unknown> = { phase, source: detectTrustedSource() };
const sealedFile = join(dir, "sealed.bin");
const testSecret = () => createHash("sha256").update("trustvol test secret (not a real one)").digest();
const ring = ensureKeyring("trustvol-test", "@u");

if (phase === "boot1") {
  mkdirSync(dir, { recursive: true });
  const t0 = Date.now();
  const id = createTrustedKey("kmk", 64, { keyhandle: KH, hash: "sha256" }, ring);
  out.newMs = Date.now() - t0;
  saveTrustedKeyBlob(id, blobFile);
  out.blobMode = (statSync(blobFile).mode & 0o777).toString(8);
  out.blobBytes = statSync(blobFile).size;
  // encrypted key wrapped by the trusted key
  const ek = createEncryptedKey("ek", { master: { type: "trusted", description: "kmk" }, length: 32 }, ring);
  saveEncryptedKeyBlob(ek, ekFile);
  out.ekMaster = parseEncryptedBlob(readFileSync(ekFile)).master;
  out.ekMode = (statSync(ekFile).mode & 0o777).toString(8);
  // the seed 000 flow: ext4 on dm-crypt keyed by the trusted key
  sh("truncate", ["-s", "16M", disk]);
  const mnt = "/tmp/tvmnt";
  mkdirSync(mnt, { recursive: true });
  const t1 = Date.now();
  withCryptMapping((dev) => {
    sh("mkfs.ext4", ["-q", dev]);
    sh("mount", [dev, mnt]);
    sh("sh", ["-c", `printf '%s' "$1" > ${mnt}/f && sync`, "sh", MESSAGE]);
    sh("umount", [mnt]);
  });
  out.cryptMs = Date.now() - t1;
  out.keys = showKeyring(ring).map((k) => `${k.type}:${k.description}`);
  // the TrustSource: seal a secret through dm-crypt keyed by a fresh trusted key
  const src = new KernelTrustedSource({ keyOptions: { keyhandle: KH, hash: "sha256" } });
  const t2 = Date.now();
  const sealed = await src.seal(testSecret());
  out.sealMs = Date.now() - t2;
  atomicWriteFileSync(sealedFile, sealed.data);
  out.sealedBytes = sealed.data.length;
  out.sealedContainsSecret = Buffer.from(sealed.data).includes(testSecret());
  out.info = await src.describe();
} else if (phase === "boot2") {
  const t0 = Date.now();
  const id = loadTrustedKeyFile("kmk", blobFile, { keyhandle: KH }, ring);
  out.loadMs = Date.now() - t0;
  out.pipeIdentical = pipeKey(id).equals(readFileSync(blobFile));
  const ek = loadEncryptedKeyFile("ek", ekFile, ring);
  out.ekIdentical = pipeKey(ek).equals(readFileSync(ekFile));
  const mnt = "/tmp/tvmnt";
  mkdirSync(mnt, { recursive: true });
  out.readBack = withCryptMapping((dev) => {
    sh("mount", ["-o", "ro", dev, mnt]);
    try {
      return readFileSync(join(mnt, "f"), "utf8");
    } finally {
      sh("umount", [mnt]);
    }
  });
  out.plaintextOnDisk = readFileSync(disk).includes(Buffer.from(MESSAGE));
  // without the trusted key the encrypted key cannot be loaded
  unlinkKey(ek, ring);
  unlinkKey(id, ring);
  out.ekWithoutMaster = errorFacts(() => loadEncryptedKeyFile("ek", ekFile, ring));
  const src = new KernelTrustedSource({ keyOptions: { keyhandle: KH } });
  const t3 = Date.now();
  const secret = await src.unseal({ kind: "kernel-trusted", data: readFileSync(sealedFile), meta: {} });
  out.unsealMs = Date.now() - t3;
  out.unsealed = secret.equals(testSecret());
  const damaged = readFileSync(sealedFile);
  damaged[damaged.length - 512 + 40]! ^= 1; // inside the secret (XTS garbles just that 16-byte block)
  try {
    await src.unseal({ kind: "kernel-trusted", data: damaged, meta: {} });
    out.damaged = {};
  } catch (e) {
    out.damaged = { code: (e as TrustvolError).code };
  }
} else if (phase === "other-tpm") {
  // a different TPM (its own seeds, its own storage primary at the same handle) must refuse the blob
  out.load = errorFacts(() => loadTrustedKeyFile("kmk", blobFile, { keyhandle: KH }, ring));
  try {
    await new KernelTrustedSource({ keyOptions: { keyhandle: KH } }).unseal({ kind: "kernel-trusted", data: readFileSync(sealedFile), meta: {} });
    out.unseal = {};
  } catch (e) {
    out.unseal = { code: (e as TrustvolError).code };
  }
} else if (phase === "blank-tpm") {
  out.hasParent = existsSync("/dev/tpmrm0") && spawnSync("tpm2_readpublic", ["-T", "device:/dev/tpmrm0", "-c", "0x81000001"], { stdio: "ignore" }).status === 0;
  out.create = errorFacts(() => createTrustedKey("kmk2", 32, { keyhandle: KH }, ring));
  out.load = errorFacts(() => loadTrustedKeyFile("kmk", blobFile, { keyhandle: KH }, ring));
} else {
  throw new Error(`unknown phase ${phase}`);
}
console.log(JSON.stringify(out));
