// systemd-pkcs11 LUKS2 tokens: strict codec, and interop both ways with systemd 252 (cryptenroll + cryptsetup plugin)
// through SoftHSM2 and cryptsetup on an image file.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, truncateSync } from "node:fs";
import { join } from "node:path";
import { makeSoftHsm, softhsmModulePath, type SoftHsm, needSoftHsm } from "../helpers/softhsm.js";
import { run } from "../helpers/tools.js";
import {
  decodeSystemdPkcs11Token,
  encodeSystemdPkcs11Token,
  unlockSystemdPkcs11Token,
  createSystemdPkcs11Token,
  systemdPassphrase,
  SYSTEMD_PKCS11_KEYSLOT_PBKDF,
} from "../../src/tokens/systemd-pkcs11.js";
import { initToken, provisionKey } from "../../src/trust/pkcs11/setup.js";
import { TrustvolError } from "../../src/util/errors.js";

const KEY_B64 = Buffer.alloc(256, 7).toString("base64");
const SAMPLE = { type: "systemd-pkcs11", keyslots: ["1"], "pkcs11-uri": "pkcs11:token=lmp;object=luks", "pkcs11-key": KEY_B64 };

test("codec: encode is byte-for-byte systemd 252's JSON (field order), decode round-trips", () => {
  const enc = encodeSystemdPkcs11Token({ keyslots: [1], uri: "pkcs11:token=lmp;object=luks", encryptedKey: Buffer.alloc(256, 7) });
  assert.equal(JSON.stringify(enc), `{"type":"systemd-pkcs11","keyslots":["1"],"pkcs11-uri":"pkcs11:token=lmp;object=luks","pkcs11-key":"${KEY_B64}"}`);
  const dec = decodeSystemdPkcs11Token(enc);
  assert.deepEqual(dec.keyslots, ["1"]);
  assert.equal(dec.uri, "pkcs11:token=lmp;object=luks");
  assert.ok(dec.encryptedKey.equals(Buffer.alloc(256, 7)));
  assert.deepEqual(decodeSystemdPkcs11Token(JSON.stringify(SAMPLE)).keyslots, ["1"]);
  assert.equal(systemdPassphrase(Buffer.from([0xfb, 0xff])).toString(), "+/8=");
  assert.deepEqual(SYSTEMD_PKCS11_KEYSLOT_PBKDF, { type: "pbkdf2", hash: "sha512", iterations: 1000 });
});

test("codec: hostile JSON is rejected as ECORRUPT", () => {
  const bad: unknown[] = [
    null, 42, "not json", [], {},
    { ...SAMPLE, type: "systemd-tpm2" },
    { ...SAMPLE, keyslots: [] },
    { ...SAMPLE, keyslots: [1] },
    { ...SAMPLE, keyslots: ["01"] },
    { ...SAMPLE, keyslots: ["32"] },
    { ...SAMPLE, keyslots: ["-1"] },
    { ...SAMPLE, keyslots: ["1", "1"] },
    { ...SAMPLE, keyslots: "1" },
    { ...SAMPLE, "pkcs11-uri": 5 },
    { ...SAMPLE, "pkcs11-uri": "file:///etc/passwd" },
    { ...SAMPLE, "pkcs11-uri": "pkcs11:token=a b" },
    { ...SAMPLE, "pkcs11-uri": "pkcs11:token=a;bogus=1" },
    { ...SAMPLE, "pkcs11-uri": "pkcs11:token=%zz" },
    { ...SAMPLE, "pkcs11-uri": "pkcs11:" + "a".repeat(3000) },
    { ...SAMPLE, "pkcs11-key": "" },
    { ...SAMPLE, "pkcs11-key": "!!!!" },
    { ...SAMPLE, "pkcs11-key": "QUJD" },
    { ...SAMPLE, "pkcs11-key": Buffer.alloc(2048).toString("base64") },
    { ...SAMPLE, "pkcs11-key": KEY_B64 + "\n" },
    { type: "systemd-pkcs11", keyslots: ["1"], "pkcs11-uri": "pkcs11:token=lmp" },
  ];
  for (const j of bad) assert.throws(() => decodeSystemdPkcs11Token(j), (e: unknown) => e instanceof TrustvolError && e.code === "ECORRUPT", JSON.stringify(j)?.slice(0, 80));
  // pin-value never comes out of a header either
  assert.throws(() => decodeSystemdPkcs11Token({ ...SAMPLE, "pkcs11-uri": "pkcs11:token=lmp?pin-value=1234" }), (e: unknown) => e instanceof TrustvolError && !e.oneLine().includes("1234"));
  assert.throws(() => encodeSystemdPkcs11Token({ keyslots: [40], uri: "pkcs11:token=a", encryptedKey: Buffer.alloc(256) }), /bad keyslot/);
  assert.throws(() => encodeSystemdPkcs11Token({ keyslots: [1], uri: "pkcs11:token=a.b", encryptedKey: Buffer.alloc(256) }), /systemd refuses/);
});

// ---- interop ------------------------------------------------------------------------------------------------

const PIN = "lmp-pin-4321";
const pin = () => ({ kind: "buffer" as const, pin: Buffer.from(PIN) });
let h: SoftHsm | undefined;

before(() => {
  if (!softhsmModulePath()) return;
  h = makeSoftHsm();
  initToken({ modulePath: h.modulePath, label: "lmp", soPin: { kind: "buffer", pin: Buffer.from("so-pin-8765") }, userPin: pin() });
  provisionKey({ uri: "pkcs11:token=lmp", modulePath: h.modulePath, pin: pin(), label: "luks", subject: "CN=LmP" });
});
after(() => h?.cleanup());

function haveAll(t: import("node:test").TestContext): boolean {
  return needSoftHsm(t, "cryptsetup", "systemd-cryptenroll");
}

/** A small LUKS2 image with a factory passphrase in keyslot 0 (cheap KDF: tests run on 2 cores). */
function makeImage(name: string): { img: string; keyFile: string } {
  const img = join(h!.dir, name);
  writeFileSync(img, "");
  truncateSync(img, 20 << 20);
  const keyFile = join(h!.dir, `${name}.key`);
  writeFileSync(keyFile, "factory-passphrase", { mode: 0o600 });
  run("cryptsetup", ["luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", keyFile, img], { timeoutMs: 60_000 });
  return { img, keyFile };
}

function dumpJson(img: string): { keyslots: Record<string, { kdf: { type: string; hash?: string; iterations?: number } }>; tokens: Record<string, unknown> } {
  return JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", img]).stdout.toString());
}

test("systemd-cryptenroll → trustvol: our unlock yields the keyslot passphrase", async (t) => {
  if (!haveAll(t)) return;
  const { img, keyFile } = makeImage("sd2tv.img");
  // Test-only: systemd-cryptenroll 252 takes the PIN only from $PIN or a prompt (a throw-away PIN on a throw-away token).
  const r = run("systemd-cryptenroll", [`--unlock-key-file=${keyFile}`, "--pkcs11-token-uri=pkcs11:token=lmp", img], {
    env: { ...h!.env, PIN },
    timeoutMs: 60_000,
  });
  assert.match(r.stderr, /New PKCS#11 token enrolled as key slot 1/);
  const exported = run("cryptsetup", ["token", "export", "--token-id", "0", img]).stdout.toString();
  const tok = decodeSystemdPkcs11Token(JSON.parse(exported));
  assert.deepEqual(tok.keyslots, ["1"]);
  assert.equal(tok.uri, "pkcs11:token=lmp");
  assert.equal(tok.encryptedKey.length, 256);
  // Our encoder reproduces systemd's JSON exactly.
  assert.equal(JSON.stringify(encodeSystemdPkcs11Token(tok)), JSON.stringify(JSON.parse(exported)));
  const meta = dumpJson(img);
  assert.deepEqual(meta.keyslots["1"]!.kdf, { ...meta.keyslots["1"]!.kdf, type: "pbkdf2", hash: "sha512", iterations: 1000 });

  const pass = await unlockSystemdPkcs11Token(JSON.parse(exported), { pin: pin() });
  assert.equal(pass.length, 172, "base64 of 128 bytes");
  assert.match(pass.toString(), /^[A-Za-z0-9+/]+=*$/);
  const ok = run("cryptsetup", ["open", "--test-passphrase", "--key-slot", "1", "--key-file", "-", img], { input: pass, check: false });
  assert.equal(ok.status, 0, ok.stderr);
  pass.fill(0);

  // Wrong PIN → EBADPASS, image untouched.
  await assert.rejects(unlockSystemdPkcs11Token(exported, { pin: { kind: "buffer", pin: Buffer.from("0000") } }), (e: unknown) => e instanceof TrustvolError && e.code === "EBADPASS");
});

test("trustvol → systemd: cryptsetup's systemd-pkcs11 plugin unlocks our token (PIN on stdin)", async (t) => {
  if (!haveAll(t)) return;
  const { img, keyFile } = makeImage("tv2sd.img");
  const { tokenJson, passphrase } = await createSystemdPkcs11Token({ uri: "pkcs11:token=lmp;object=luks", keyslot: 3, pin: pin() });
  assert.deepEqual(Object.keys(tokenJson), ["type", "keyslots", "pkcs11-uri", "pkcs11-key"]);
  assert.deepEqual(tokenJson.keyslots, ["3"]);
  assert.equal(passphrase.length, 172);
  // What the lead's engine will do: keyslot 3 with pbkdf2/sha512/1000 and that passphrase, then the token.
  const pf = join(h!.dir, "newpass");
  writeFileSync(pf, passphrase, { mode: 0o600 });
  passphrase.fill(0);
  run("cryptsetup", ["luksAddKey", "--batch-mode", "--key-file", keyFile, "--key-slot", "3", "--pbkdf", "pbkdf2", "--hash", "sha512", "--pbkdf-force-iterations", "1000", img, pf]);
  const jf = join(h!.dir, "token.json");
  writeFileSync(jf, JSON.stringify(tokenJson));
  run("cryptsetup", ["token", "import", "--json-file", jf, "--token-id", "0", img]);
  assert.deepEqual(run("cryptsetup", ["token", "export", "--token-id", "0", img]).stdout.toString().trim(), JSON.stringify(tokenJson));

  const r = run("cryptsetup", ["open", "--test-passphrase", "--token-only", "--token-id", "0", "-v", img], { env: h!.env, input: `${PIN}\n`, check: false, timeoutMs: 60_000 });
  assert.equal(r.status, 0, r.stderr + r.stdout.toString());
  assert.match(r.stdout.toString(), /Key slot 3 unlocked/);
  // And our own unlock agrees.
  const again = await unlockSystemdPkcs11Token(tokenJson, { pin: pin() });
  assert.equal(run("cryptsetup", ["open", "--test-passphrase", "--key-slot", "3", "--key-file", "-", img], { input: again, check: false }).status, 0);
  // The plugin with a wrong PIN fails (and does not hang).
  const bad = run("cryptsetup", ["open", "--test-passphrase", "--token-only", "--token-id", "0", img], { env: h!.env, input: "0000\n", check: false, timeoutMs: 60_000 });
  assert.notEqual(bad.status, 0);
});

test("createSystemdPkcs11Token: URI normalisation and refusals", async (t) => {
  if (!needSoftHsm(t)) return;
  const pf = h!.pinFile(PIN);
  const a = await createSystemdPkcs11Token({ uri: `pkcs11:token=lmp;object=luks;type=cert?pin-source=file:${pf}`, keyslot: 2 });
  assert.equal(a.tokenJson["pkcs11-uri"], "pkcs11:token=lmp;object=luks;type=private", "pin-source stripped, type=cert → private");
  assert.equal((await unlockSystemdPkcs11Token(a.tokenJson, { pin: { kind: "file", path: pf } })).toString(), a.passphrase.toString());
  await assert.rejects(createSystemdPkcs11Token({ uri: "pkcs11:token=lmp?pin-value=1", keyslot: 1 }), /pin-value/);
  await assert.rejects(createSystemdPkcs11Token({ uri: "pkcs11:token=lmp", keyslot: 32 }), /bad keyslot/);
  await assert.rejects(createSystemdPkcs11Token({ uri: "pkcs11:token=absent", keyslot: 1 }), (e: unknown) => e instanceof TrustvolError && e.code === "EDEVICE");
  await assert.rejects(createSystemdPkcs11Token({ uri: "pkcs11:token=lmp;object=gone", keyslot: 1 }), (e: unknown) => e instanceof TrustvolError && e.code === "ENOKEY" && /recovery key/.test(e.oneLine()));
});
