// The library API has the CLI's defaults: token keyslots use systemd's PBKDF2 (not a 1 GiB argon2id), unlock tries
// tokens in order with a PIN callback and falls back to a passphrase, token handlers are an extension point.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { startSwtpm } from "../helpers/swtpm.js";
import { formatLuks2, enrollTpm2, enrollRecovery, unlock, registerTokenHandler, enrollToken, LuksHandle, TrustvolError, MemoryBlockDevice, FileBlockDevice } from "../../src/index.js";

const FAST = { pbkdf: { type: "pbkdf2" as const, forceIterations: 1000 }, digestIterations: 1000 };

async function image(dir: string, name: string, pass: string): Promise<string> {
  const dev = new MemoryBlockDevice(17 * 1024 * 1024);
  await formatLuks2(dev, Buffer.from(pass), FAST);
  const p = join(dir, name);
  writeFileSync(p, dev.data);
  return p;
}

test("enrollTpm2 through the library writes systemd's pbkdf2 keyslot; unlock: tokens in order, PIN callback, fallback, one error per token", async (t) => {
  if (!needTools(t, "swtpm", "tpm2_pcrextend")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const img = await image(dir, "v.img", "factory");
  const a = await enrollTpm2(img, { unlock: { passphrase: Buffer.from("factory") }, tpm2Device: tpm.device });
  assert.deepEqual(a, { keyslot: 1, tokenId: 0, wipedKeyslots: [] });
  let pinAsked = 0;
  const b = await enrollTpm2(img, { unlock: { tokens: {} }, tpm2Device: tpm.device, pin: Buffer.from("1234") });
  assert.equal(b.tokenId, 1);
  const h = await LuksHandle.open(img, { readOnly: true });
  try {
    const kdf = h.luks2!.metadata.keyslots[String(a.keyslot)]!.kdf;
    assert.ok(kdf?.type === "pbkdf2", JSON.stringify(kdf));
    assert.deepEqual([kdf.hash, kdf.iterations], ["sha512", 1000]);
  } finally {
    await h.close();
  }
  // Token order: the PIN token first, its PIN from the callback (asked once, told which token needs it).
  const r = await unlock(img, {
    tokenOrder: [1, 0],
    tpm2Device: tpm.device,
    pin: ({ tokens }) => {
      pinAsked++;
      assert.deepEqual(tokens, [{ id: 1, type: "systemd-tpm2", unlocksWith: "TPM2" }]);
      return Buffer.from("1234");
    },
  });
  assert.deepEqual([r.tokenId, r.keyslot, pinAsked], [1, b.keyslot, 1]);
  r.volumeKey.fill(0);
  // A changed boot chain: both tokens refuse; the error names each token once, with its id; the passphrase still works.
  run("tpm2_pcrextend", [`7:sha256=${"11".repeat(32)}`], { env: tpm.env });
  await assert.rejects(unlock(img, { tokenOnly: true, tpm2Device: tpm.device, pin: Buffer.from("1234") }), (e: TrustvolError) => {
    assert.equal(e.code, "EPOLICY", e.message);
    assert.equal(e.message.match(/token 0\b/g)?.length, 1, e.message);
    assert.equal(e.message.match(/token 1\b/g)?.length, 1, e.message);
    return true;
  });
  const fb = await unlock(img, { tpm2Device: tpm.device, pin: Buffer.from("1234"), passphrase: async () => Buffer.from("factory") });
  assert.deepEqual([fb.keyslot, fb.tokenId], [0, undefined]);
});

test("enrollRecovery saves the key before enrolling it; a custom token handler unlocks through unlock()", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const img = await image(dir, "r.img", "factory");
  let saved: Buffer | undefined;
  const rec = await enrollRecovery(img, { unlock: { passphrase: Buffer.from("factory") }, save: (k) => void (saved = Buffer.from(k)) });
  assert.ok(saved && saved.equals(rec.recoveryKey));
  const u = await unlock(img, { passphrase: rec.recoveryKey });
  assert.equal(u.keyslot, rec.keyslot);
  // A failing save enrols nothing.
  await assert.rejects(enrollRecovery(img, { unlock: { passphrase: Buffer.from("factory") }, save: () => { throw new TrustvolError("EIO", "disk full"); } }), /disk full/);
  // Extension point: a token type of our own, declared to need no PIN.
  registerTokenHandler({ type: "x-test-static", unlocksWith: "a test secret", needsPin: () => false, passphrase: async (tok) => Buffer.from(String(tok["x-secret"])) });
  const dev = await FileBlockDevice.open(img);
  const h = await LuksHandle.fromDevices(dev);
  try {
    await enrollToken(h.luks2!, u.volumeKey, async (slot) => ({ tokenJson: { type: "x-test-static", keyslots: [String(slot)], "x-secret": "s3cret" }, passphrase: Buffer.from("s3cret") }));
  } finally {
    await dev.close();
  }
  const viaToken = await unlock(img, { tokenOnly: true, pin: () => assert.fail("no PIN is needed") });
  assert.equal(viaToken.tokenType, "x-test-static");
  const h2 = await LuksHandle.open(img, { readOnly: true });
  try {
    assert.equal(Object.keys(h2.luks2!.metadata.keyslots).length, 3, "factory, recovery, x-test-static: the failed save added nothing");
  } finally {
    await h2.close();
  }
});
