// systemd-tpm2 LUKS2 tokens: codec against hostile JSON, and interop both ways with systemd-cryptenroll 252 /
// cryptsetup on a swtpm.
import { test } from "node:test";
import assert from "node:assert/strict";
import { IN_CI, run } from "../helpers/tools.js";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generateKeyPairSync } from "node:crypto";
import { swtpmForFile } from "../helpers/swtpm.js";
import { addKey, exportToken, importToken, makeLuksImage, passphraseOpens } from "./luks-fixture.js";
import {
  createSystemdTpm2Token, decodeSystemdTpm2Token, encodeSystemdTpm2Token, unlockSystemdTpm2Token, base64Ascii, systemdPinAuthValue, systemdTpm2PolicyDigest, decodePcrSignatureJson,
} from "../../src/tokens/systemd-tpm2.js";
import { createHash, pbkdf2Sync } from "node:crypto";
import { Tpm, openTpm2Transport } from "../../src/trust/tpm2/index.js";
import * as C from "../../src/trust/tpm2/commands.js";
import { TrustvolError } from "../../src/util/errors.js";

// Exactly as systemd-cryptenroll 252 wrote it here (swtpm, PCR 7 = 0).
const TOKEN_252 =
  '{"type":"systemd-tpm2","keyslots":["1"],"tpm2-blob":"AJ4AIK/J3N4tZ4ww948wIpJ+uaFNpk43fSTxUsuknJ+VVtKIABAC50IpXmu4HhB92NU72iiqw6U5gQNPb50MEa5TSl8cKeYMtortF5QzQHoerTF+kw4zHJ6BjyPl8OVbx3vZFZCTpL749a+LMvsAe/qSASzC7L5DAHgZfXyyrrouYySt6V+kvpUSP2WY98MBXpAM9bWCK5qTfjnTVFjIVgBOAAgACwAAABIAIItWgtgbKUNdCNeSeBUGEdx+WSOy/vzOaEoJV3tAEwqLABAAIDzwxDVgqI5bWQuNQMxcc+YIskdoUEsDHfOvSHA9gxEC","tpm2-pcrs":[7],"tpm2-pcr-bank":"sha256","tpm2-primary-alg":"ecc","tpm2-policy-hash":"8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b","tpm2-pin":false}';

test("decode/encode: systemd 252 JSON round-trips byte for byte", () => {
  const t = decodeSystemdTpm2Token(TOKEN_252);
  assert.deepEqual(t.keyslots, [1]);
  assert.deepEqual(t.pcrs, [7]);
  assert.equal(t.pcrBank, "sha256");
  assert.equal(t.primaryAlg, "ecc");
  assert.equal(t.pin, false);
  assert.equal(t.blob.length, 0x9e + 2 + 0x4e + 2);
  assert.equal(encodeSystemdTpm2Token(t), TOKEN_252);
});

test("decode accepts newer systemd spellings (underscores, single-element arrays) and defaults", () => {
  const o = JSON.parse(TOKEN_252);
  const newer: Record<string, unknown> = { type: o.type, keyslots: o.keyslots, tpm2_blob: [o["tpm2-blob"]], tpm2_pcrs: o["tpm2-pcrs"], tpm2_pcr_bank: "sha256", tpm2_primary_alg: "ecc", tpm2_policy_hash: [o["tpm2-policy-hash"]], tpm2_pin: true, tpm2_pubkey_pcrs: [] };
  const t = decodeSystemdTpm2Token(newer);
  assert.equal(t.pin, true);
  assert.deepEqual(t.blob, decodeSystemdTpm2Token(TOKEN_252).blob);
  const old = { ...o };
  delete old["tpm2-pcr-bank"];
  delete old["tpm2-primary-alg"];
  delete old["tpm2-pin"];
  const d = decodeSystemdTpm2Token(old);
  assert.equal(d.pcrBank, "sha256");
  assert.equal(d.primaryAlg, "ecc");
});

test("decode rejects hostile or damaged tokens with clear errors", () => {
  const o = JSON.parse(TOKEN_252);
  const cases: [unknown, string, RegExp][] = [
    ["not json", "ECORRUPT", /not valid JSON/],
    ["[]", "ECORRUPT", /not a JSON object/],
    [{ ...o, type: "clevis" }, "ECORRUPT", /expected "systemd-tpm2"/],
    [{ ...o, keyslots: ["01"] }, "ECORRUPT", /keyslot/],
    [{ ...o, keyslots: [1] }, "ECORRUPT", /keyslot/],
    [{ ...o, keyslots: ["32"] }, "ECORRUPT", /keyslot/],
    [{ ...o, "tpm2-blob": "!!!" }, "ECORRUPT", /base64/],
    [{ ...o, "tpm2-blob": "AAAA" }, "ECORRUPT", /truncated/],
    [{ ...o, "tpm2-blob": Buffer.concat([decodeSystemdTpm2Token(TOKEN_252).blob, Buffer.from([0])]).toString("base64") }, "ECORRUPT", /trailing/],
    [{ ...o, "tpm2-pcrs": [24] }, "ECORRUPT", /PCR index/],
    [{ ...o, "tpm2-pcrs": [7, 7] }, "ECORRUPT", /duplicate/],
    [{ ...o, "tpm2-pcrs": ["7"] }, "ECORRUPT", /PCR index/],
    [{ ...o, "tpm2-pcrs": [1.5] }, "ECORRUPT", /PCR index/],
    [{ ...o, "tpm2-pcr-bank": "md5" }, "ECORRUPT", /bank/],
    [{ ...o, "tpm2-primary-alg": "dsa" }, "ECORRUPT", /primary/],
    [{ ...o, "tpm2-policy-hash": "xyz" }, "ECORRUPT", /hex/],
    [{ ...o, "tpm2-pin": "yes" }, "ECORRUPT", /boolean/],
    [{ ...o, tpm2_blob: o["tpm2-blob"] }, "ECORRUPT", /both/],
    [{ ...o, "tpm2-blob": [o["tpm2-blob"], o["tpm2-blob"]] }, "ECORRUPT", /2 blobs but 1 policy hashes/],
    [{ ...o, tpm2_pubkey: "AAAA", tpm2_pubkey_pcrs: [11] }, "ECORRUPT", /not a PEM public key/],
    [{ ...o, tpm2_pubkey_pcrs: [11] }, "ECORRUPT", /without 'tpm2_pubkey'/],
    [{ ...o, tpm2_srk: "AAAA" }, "ECORRUPT", /tpm2_srk/],
    [{ ...o, "tpm2-pcrs": undefined }, "ECORRUPT", /missing 'tpm2-pcrs'/],
    [JSON.stringify({ ...o, pad: "x".repeat(70000) }), "ECORRUPT", /too large/],
  ];
  for (const [input, code, re] of cases) {
    assert.throws(
      () => decodeSystemdTpm2Token(input as string),
      (e: unknown) => e instanceof TrustvolError && e.code === code && re.test(e.message),
      `${JSON.stringify(input).slice(0, 80)} → ${code}`,
    );
  }
});

test("base64Ascii matches Buffer base64 for every tail length", () => {
  for (const n of [0, 1, 2, 3, 31, 32, 33]) {
    const b = Buffer.from(Array.from({ length: n }, (_, i) => (i * 37 + 11) & 255));
    assert.equal(base64Ascii(b).toString("ascii"), b.toString("base64"));
  }
});

test("PIN → authValue: 252 = sha256(PIN); salted (tpm2_salt) = sha256(base64(PBKDF2-SHA256(PIN, salt, 10000)))", () => {
  // systemd's own PBKDF2 test vector (test-tpm2.c) pins the iteration count
  assert.equal(pbkdf2Sync(Buffer.from("\0pass", "latin1"), Buffer.from("mysa\0lt", "latin1"), 10000, 32, "sha256").subarray(0, 8).toString("hex"), "e30712beeef55d18");
  assert.deepEqual(systemdPinAuthValue(Buffer.from("1234")), createHash("sha256").update("1234").digest());
  const salt = Buffer.alloc(32, 5);
  const b64 = pbkdf2Sync("1234", salt, 10000, 32, "sha256").toString("base64");
  assert.deepEqual(systemdPinAuthValue(Buffer.from("1234"), salt), createHash("sha256").update(b64).digest());
});

const TOOLS = ["swtpm", "cryptsetup", "systemd-cryptenroll", "tpm2_flushcontext"];
const fx = swtpmForFile(TOOLS);
const ready = fx.ready;

test("systemd-cryptenroll 252 --tpm2-pcrs=7 → trustvol unlocks; cryptsetup accepts the passphrase", async (t) => {
  if (!ready(t)) return;
  const l = makeLuksImage(fx.dir, "a");
  run("systemd-cryptenroll", [`--unlock-key-file=${l.keyFile}`, `--tpm2-device=${fx.sw.device}`, "--tpm2-pcrs=7", l.img], { env: fx.sw.env });
  const json = exportToken(l.img, 0);
  const tpm = new Tpm(openTpm2Transport(fx.sw.device));
  const pass = await unlockSystemdTpm2Token(json, tpm);
  assert.equal(pass.length, 44);
  assert.ok(passphraseOpens(l.img, pass, 1));
  assert.ok(!passphraseOpens(l.img, Buffer.from("wrong"), 1));

  await tpm.pcrExtend(7, "sha256", Buffer.alloc(32, 0xaa));
  await assert.rejects(unlockSystemdTpm2Token(json, tpm), /PCR 7 changed since enrollment: the boot chain differs/);
  await fx.sw.restart();
  assert.deepEqual(await unlockSystemdTpm2Token(json, tpm), pass);
});

test("systemd-cryptenroll 252 --tpm2-with-pin=yes (NEWPIN) → trustvol unlocks with the PIN, refuses a wrong one", async (t) => {
  if (!ready(t)) return;
  const l = makeLuksImage(fx.dir, "b");
  run("systemd-cryptenroll", [`--unlock-key-file=${l.keyFile}`, `--tpm2-device=${fx.sw.device}`, "--tpm2-pcrs=0+7", "--tpm2-with-pin=yes", l.img], { env: { ...fx.sw.env, NEWPIN: "8642" }, timeoutMs: 60_000 });
  const json = exportToken(l.img, 0);
  assert.equal(decodeSystemdTpm2Token(json).pin, true);
  const tpm = new Tpm(openTpm2Transport(fx.sw.device));
  await tpm.run(C.DictionaryAttackLockReset, {});
  await assert.rejects(unlockSystemdTpm2Token(json, tpm), (e: unknown) => e instanceof TrustvolError && e.code === "EBADPASS" && /needs a PIN/.test(e.message));
  await assert.rejects(unlockSystemdTpm2Token(json, tpm, { pin: Buffer.from("1111") }), (e: unknown) => e instanceof TrustvolError && e.code === "EBADPASS" && /wrong TPM PIN/.test(e.message));
  const pass = await unlockSystemdTpm2Token(json, tpm, { pin: Buffer.from("8642") });
  assert.ok(passphraseOpens(l.img, pass, 1));
  await tpm.run(C.DictionaryAttackLockReset, {});
});

test("trustvol createSystemdTpm2Token → luksAddKey + token import → luksDump shows it, unlock opens it", async (t) => {
  if (!ready(t)) return;
  const l = makeLuksImage(fx.dir, "c");
  const tpm = new Tpm(openTpm2Transport(fx.sw.device));
  for (const [slot, pin] of [[3, undefined], [4, Buffer.from("97531")]] as const) {
    const { tokenJson, passphrase } = await createSystemdTpm2Token(tpm, { pcrs: [7], bank: "sha256", keyslot: slot, ...(pin ? { pin } : {}) });
    addKey(l, passphrase, slot);
    importToken(l.img, tokenJson, slot);
    const back = exportToken(l.img, slot);
    assert.deepEqual(JSON.parse(back), JSON.parse(tokenJson));
    const again = await unlockSystemdTpm2Token(back, tpm, pin ? { pin } : {});
    assert.deepEqual(again, passphrase);
    assert.ok(passphraseOpens(l.img, again, slot));
  }
  const dump = run("cryptsetup", ["luksDump", l.img]).stdout.toString();
  assert.match(dump, /3: systemd-tpm2/);
  assert.match(dump, /4: systemd-tpm2/);
  // systemd-cryptenroll itself recognises the enrollments
  const list = run("systemd-cryptenroll", [l.img], { env: fx.sw.env }).stdout.toString();
  assert.match(list, /3\s+tpm2/);
  assert.match(list, /4\s+tpm2/);
});

const MEASURE = "/usr/lib/systemd/systemd-measure";

test("signed PCR policy (252 --tpm2-public-key + systemd-measure sign): unlock in the signed boot phase only", async (t) => {
  if (!ready(t)) return;
  if (!existsSync(MEASURE)) {
    if (IN_CI) throw new Error(`${MEASURE} missing in CI`);
    t.skip("no systemd-measure");
    return;
  }
  const d = fx.dir;
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  writeFileSync(join(d, "pk.pem"), publicKey.export({ type: "spki", format: "pem" }));
  writeFileSync(join(d, "sk.pem"), privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 }); // test-only signing key
  const sections: [string, string, string][] = [[".linux", "linux", "test kernel"], [".osrel", "osrel", "ID=trustvol\n"], [".cmdline", "cmdline", "quiet\n"]];
  for (const [, f, c] of sections) writeFileSync(join(d, f), c);
  const sig = run(MEASURE, ["sign", ...sections.map(([n, f]) => `--${n.slice(1)}=${join(d, f)}`), `--private-key=${join(d, "sk.pem")}`, `--public-key=${join(d, "pk.pem")}`, "--bank=sha256", "--phase=enter-initrd", `--tpm2-device=${fx.sw.device}`], { env: fx.sw.env }).stdout.toString();
  assert.equal(decodePcrSignatureJson(sig)[0]!.pcrs.join(), "11");

  const tpm = new Tpm(openTpm2Transport(fx.sw.device));
  const sha = (b: string | Buffer) => createHash("sha256").update(b).digest();
  const bootToInitrd = async () => {
    // what systemd-stub measures into PCR 11: each section's name (with NUL) and contents, then the phase
    for (const [n, , c] of sections) {
      await tpm.pcrExtend(11, "sha256", sha(`${n}\0`));
      await tpm.pcrExtend(11, "sha256", sha(c));
    }
    await tpm.pcrExtend(11, "sha256", sha("enter-initrd"));
  };

  const l = makeLuksImage(fx.dir, "s");
  run("systemd-cryptenroll", [`--unlock-key-file=${l.keyFile}`, `--tpm2-device=${fx.sw.device}`, `--tpm2-public-key=${join(d, "pk.pem")}`, "--tpm2-public-key-pcrs=11", "--tpm2-pcrs=7", l.img], { env: fx.sw.env });
  const json = exportToken(l.img, 0);
  const tok = decodeSystemdTpm2Token(json);
  assert.deepEqual(tok.pubkeyPcrs, [11]);
  assert.equal(encodeSystemdTpm2Token(tok), JSON.stringify(JSON.parse(json)));
  assert.deepEqual(systemdTpm2PolicyDigest(tok, await tpm.pcrRead("sha256", [7])), tok.policyHash);

  await fx.sw.restart();
  await bootToInitrd();
  const pass = await unlockSystemdTpm2Token(json, tpm, { signature: sig });
  assert.ok(passphraseOpens(l.img, pass, 1));

  await tpm.pcrExtend(11, "sha256", sha("leave-initrd"));
  await assert.rejects(unlockSystemdTpm2Token(json, tpm, { signature: sig }), (e: unknown) => e instanceof TrustvolError && e.code === "EPOLICY" && /no signature approves/.test(e.message));

  // trustvol enrolls the same kind of token; systemd's policy digest rules, our unlock
  await fx.sw.restart();
  const { tokenJson, passphrase } = await createSystemdTpm2Token(tpm, { pcrs: [7], keyslot: 2, pubkey: readFileSync(join(d, "pk.pem")), pubkeyPcrs: [11] });
  addKey(l, passphrase, 2);
  importToken(l.img, tokenJson, 2);
  await bootToInitrd();
  assert.deepEqual(await unlockSystemdTpm2Token(exportToken(l.img, 2), tpm, { signature: sig }), passphrase);
  await assert.rejects(unlockSystemdTpm2Token(tokenJson, tpm), /no signature file|signature/);
});
