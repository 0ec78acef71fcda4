// Key rotation of a TPM-enrolled volume, unattended: `reencrypt --token-only` gets the keyslot passphrase from the
// systemd-tpm2 token, re-creates the keyslot for the new volume key, and the device stays TPM-enrolled.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { startSwtpm } from "../helpers/swtpm.js";

/** A 20 MiB LUKS2 image with a passphrase keyslot (in a key file) and a TPM2 token (PCR 7) on swtpm, both kept. */
async function enrolledImage(t: TestContext): Promise<{ img: string; keyFile: string; tpm: { device: string } } | undefined> {
  if (!needTools(t, "swtpm", "cryptsetup")) return undefined;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const img = join(dir, "disk.img");
  const keyFile = join(dir, "pass");
  writeFileSync(keyFile, "a passphrase", { mode: 0o600 });
  writeFileSync(img, Buffer.alloc(20 << 20));
  let r = await trustvolInProcess(["format", "--key-file", keyFile, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img]);
  assert.equal(r.status, 0, r.stderr);
  r = await trustvolInProcess(["enroll", "tpm2", img, "--tpm2-device", tpm.device, "--pcrs", "7", "--key-file", keyFile]);
  assert.equal(r.status, 0, r.stderr);
  return { img, keyFile, tpm };
}

test("TPM-enrolled volume: reencrypt --token-only rotates the volume key; the token still unlocks; the old key is gone", async (t) => {
  if (!needTools(t, "swtpm", "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const img = join(dir, "disk.img");
  const factory = join(dir, "factory");
  writeFileSync(factory, "factory-passphrase", { mode: 0o600 });
  writeFileSync(img, Buffer.alloc(20 << 20)); // format refuses a missing path
  let r = await trustvolInProcess(["format", "--key-file", factory, "--key-slot", "31", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img]);
  assert.equal(r.status, 0, r.stderr);
  run("truncate", ["-s", "20M", img]);
  r = await trustvolInProcess(["enroll", "tpm2", img, "--tpm2-device", tpm.device, "--pcrs", "7", "--key-file", factory, "--wipe-slot", "password"]);
  assert.equal(r.status, 0, r.stderr);
  const digestBefore = JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", img]).stdout.toString()).digests["0"].digest;
  r = await trustvolInProcess(["reencrypt", img, "--token-only", "--tpm2-device", tpm.device, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout) as { state: string; keyslots: number[] };
  assert.equal(res.state, "finished");
  const m = JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", img]).stdout.toString());
  assert.deepEqual(Object.keys(m.keyslots), res.keyslots.map(String));
  assert.deepEqual(Object.values(m.tokens).map((x) => (x as { keyslots: string[] }).keyslots), [res.keyslots.map(String)]);
  assert.notEqual(Object.values(m.digests).map((d) => (d as { digest: string }).digest)[0], digestBefore, "a new volume key");
  r = await trustvolInProcess(["unlock", "--test", "--token-only", "--tpm2-device", tpm.device, "--json", img]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).keyslot, res.keyslots[0]);
});

test("TPM-enrolled volume with a recovery passphrase: reencrypt --key-file keeps both keyslots, the token's through the TPM", async (t) => {
  const v = await enrolledImage(t);
  if (!v) return;
  const { img, keyFile: recovery, tpm } = v;
  // (before, a key file turned the tokens off: the TPM's keyslot did "not open with this passphrase" unless -S dropped it)
  let r = await trustvolInProcess(["reencrypt", img, "--key-file", recovery, "--tpm2-device", tpm.device, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout) as { state: string; keyslots: number[] };
  assert.equal(res.keyslots.length, 2, "both keyslots carried over");
  const m = JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", img]).stdout.toString());
  assert.equal(Object.keys(m.keyslots).length, 2);
  assert.equal(Object.keys(m.tokens).length, 1);
  r = await trustvolInProcess(["unlock", "--test", "--token-only", "--tpm2-device", tpm.device, "--json", img]);
  assert.equal(r.status, 0, r.stderr);
  run("cryptsetup", ["open", "--test-passphrase", "--key-file", recovery, img]);
});

test("repair recovers a crashed hotzone through the TPM2 token alone (--token-only), as open and --resume-only do", async (t) => {
  const v = await enrolledImage(t);
  if (!v) return;
  const { img, tpm } = v;
  const { LuksHandle } = await import("../../src/ops/volume.js");
  const plaintext = async () => {
    const h = await LuksHandle.open(img, { readOnly: true });
    try {
      const d = h.decrypted((await h.unlock(Buffer.from("a passphrase"))).volumeKey);
      const b = Buffer.alloc(d.size);
      await d.read(b, 0);
      return b;
    } finally {
      await h.close();
    }
  };
  const plain = await plaintext();
  // a journal rotation cut inside a hotzone (PowerCutDevice): the state a crash leaves
  const { PowerCutDevice, PowerCut } = await import("../helpers/power-cut.js");
  const { MemoryBlockDevice } = await import("../../src/blockdev/memory.js");
  const { Luks2Volume } = await import("../../src/luks2/volume.js");
  const { reencryptStatus } = await import("../../src/luks2/reencrypt-metadata.js");
  const { reencrypt, tokenKeyslotPassphrases } = await import("../../src/ops/reencrypt.js");
  const image = readFileSync(img);
  const tokens = await tokenKeyslotPassphrases((await Luks2Volume.open(new MemoryBlockDevice(Buffer.from(image)))).metadata, { tpm2Device: tpm.device });
  let crashed: Buffer | undefined;
  for (let cut = 8; !crashed && cut < 200; cut++) {
    const pc = new PowerCutDevice(image, { cutAtWrite: cut, unsynced: "keep", seed: cut });
    await reencrypt(pc, { passphrase: Buffer.from("a passphrase"), keyslotPassphrases: tokens.passphrases, pbkdf: { type: "pbkdf2", forceIterations: 1000 }, resilience: "journal", hotzoneSize: 1 << 20 }).catch((e) => assert.ok(e instanceof PowerCut, String(e)));
    const cut1 = pc.image();
    if (reencryptStatus((await Luks2Volume.open(new MemoryBlockDevice(Buffer.from(cut1)))).metadata) === "crash") crashed = cut1;
  }
  assert.ok(crashed, "a cut inside a hotzone");
  writeFileSync(img, crashed);
  let r = await trustvolInProcess(["repair", img, "--token-only", "--tpm2-device", tpm.device, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).reencryption_recovered, true);
  r = await trustvolInProcess(["reencrypt", img, "--resume-only", "--token-only", "--tpm2-device", tpm.device]);
  assert.equal(r.status, 0, r.stderr);
  assert.ok((await plaintext()).equals(plain), "0 bytes lost");
});
