// clevis tpm2 pin: interop both ways with clevis 19 (which drives tpm2-tools) on a swtpm, plus codec checks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { run } from "../helpers/tools.js";
import { swtpmForFile } from "../helpers/swtpm.js";
import { addKey, exportToken, importToken, makeLuksImage, passphraseOpens } from "./luks-fixture.js";
import { base64urlAscii, clevisCompact, createClevisToken, decodeClevisToken, encodeClevisToken, unlockClevisToken } from "../../src/tokens/clevis.js";
import { Tpm, openTpm2Transport } from "../../src/trust/tpm2/index.js";
import { TrustvolError } from "../../src/util/errors.js";

const TOOLS = ["swtpm", "cryptsetup", "clevis", "clevis-luks-bind", "jose", "tpm2_createprimary"];
const fx = swtpmForFile(TOOLS);
const ready = fx.ready;

function bind(img: string, keyFile: string, cfg: string) {
  run("clevis", ["luks", "bind", "-y", "-k", keyFile, "-d", img, "tpm2", cfg], { env: fx.sw.env, timeoutMs: 120_000 });
}
function clevisPass(img: string, slot: number): Buffer {
  return run("clevis", ["luks", "pass", "-d", img, "-s", String(slot)], { env: fx.sw.env }).stdout;
}

test("clevis luks bind tpm2 (pcr 7, sha256) → trustvol unlock == clevis luks pass; PCR change refused", async (t) => {
  if (!ready(t)) return;
  const l = makeLuksImage(fx.dir, "a");
  bind(l.img, l.keyFile, '{"pcr_ids":"7","pcr_bank":"sha256"}');
  const json = exportToken(l.img, 0);
  const tok = decodeClevisToken(json);
  assert.deepEqual(tok.keyslots, [1]);
  assert.deepEqual(tok.jwe.tpm2.pcrIds, [7]);
  assert.equal(tok.jwe.tpm2.pcrBank, "sha256");
  const tpm = new Tpm(openTpm2Transport(fx.sw.device));
  const pass = await unlockClevisToken(json, tpm);
  assert.deepEqual(pass, clevisPass(l.img, 1));
  assert.ok(passphraseOpens(l.img, pass, 1));
  // the compact form clevis itself uses decrypts too
  assert.deepEqual(await unlockClevisToken(clevisCompact(tok.jwe), tpm), pass);

  await tpm.pcrExtend(7, "sha256", Buffer.alloc(32, 0x42));
  await assert.rejects(unlockClevisToken(json, tpm), /PCR 7 changed since enrollment/);
  await fx.sw.restart();
  assert.deepEqual(await unlockClevisToken(json, tpm), pass);
});

test("clevis defaults: no pcr_bank (sha1) and no PCRs at all", async (t) => {
  if (!ready(t)) return;
  const tpm = new Tpm(openTpm2Transport(fx.sw.device));
  const banks = (await tpm.pcrBanks()).filter((b) => b.pcrs.length).map((b) => b.hash);
  const l = makeLuksImage(fx.dir, "b");
  if (banks.includes("sha1")) {
    bind(l.img, l.keyFile, '{"pcr_ids":"7"}');
    const json = exportToken(l.img, 0);
    assert.equal(decodeClevisToken(json).jwe.tpm2.pcrBank, "sha1");
    assert.ok(passphraseOpens(l.img, await unlockClevisToken(json, tpm), 1));
  }
  bind(l.img, l.keyFile, "{}");
  const id = banks.includes("sha1") ? 1 : 0;
  const json2 = exportToken(l.img, id);
  assert.deepEqual(decodeClevisToken(json2).jwe.tpm2.pcrIds, []);
  const slot = decodeClevisToken(json2).keyslots[0]!;
  assert.ok(passphraseOpens(l.img, await unlockClevisToken(json2, tpm), slot));
});

test("trustvol createClevisToken → luksAddKey + token import → clevis luks pass returns the passphrase", async (t) => {
  if (!ready(t)) return;
  const l = makeLuksImage(fx.dir, "c");
  const tpm = new Tpm(openTpm2Transport(fx.sw.device));
  for (const [slot, opts] of [
    [5, { pcrIds: [7], pcrBank: "sha256" as const }],
    [6, { pcrIds: [0, 7], pcrBank: "sha256" as const, key: "rsa" as const }],
    [7, {}],
  ] as const) {
    const { tokenJson, passphrase } = await createClevisToken(tpm, { keyslot: slot, ...opts });
    addKey(l, passphrase, slot);
    importToken(l.img, tokenJson, slot);
    assert.deepEqual(clevisPass(l.img, slot), passphrase, `slot ${slot}`);
    assert.deepEqual(await unlockClevisToken(exportToken(l.img, slot), tpm), passphrase);
  }
  const list = run("clevis", ["luks", "list", "-d", l.img], { env: fx.sw.env }).stdout.toString();
  assert.match(list, /5: tpm2 '\{"hash":"sha256","key":"ecc","pcr_bank":"sha256","pcr_ids":"7"\}'/);
});

test("codec: hostile JWEs are refused; tampering is detected", async (t) => {
  const header = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const jwe = (prot: string) => ({ type: "clevis", keyslots: ["1"], jwe: { protected: prot, encrypted_key: "", iv: "AAAAAAAAAAAAAAAA", ciphertext: "AA", tag: "AAAAAAAAAAAAAAAAAAAAAA" } });
  const cases: [unknown, string, RegExp][] = [
    ["a.b.c", "ECORRUPT", /5 parts/],
    [{ type: "systemd-tpm2", keyslots: [], jwe: {} }, "ECORRUPT", /expected "clevis"/],
    [jwe(header({ alg: "RSA-OAEP", enc: "A256GCM" })), "EUNSUPPORTED", /alg/],
    [jwe(header({ alg: "dir", enc: "A128CBC-HS256" })), "EUNSUPPORTED", /enc/],
    [jwe(header({ alg: "dir", enc: "A256GCM", clevis: { pin: "tang", tang: {} } })), "EUNSUPPORTED", /tang/],
    [jwe(header({ alg: "dir", enc: "A256GCM", clevis: { pin: "tpm2", tpm2: { hash: "md5" } } })), "ECORRUPT", /hash/],
    [jwe(header({ alg: "dir", enc: "A256GCM", clevis: { pin: "tpm2", tpm2: { pcr_ids: "7,99", jwk_pub: "", jwk_priv: "" } } })), "ECORRUPT", /PCR id/],
    [jwe(header({ alg: "dir", enc: "A256GCM", clevis: { pin: "tpm2", tpm2: { jwk_pub: "AAAA", jwk_priv: "AAAA" } } })), "ECORRUPT", /truncated|trailing/],
    [jwe("!!"), "ECORRUPT", /protected/],
  ];
  for (const [input, code, re] of cases)
    assert.throws(() => decodeClevisToken(input as string), (e: unknown) => e instanceof TrustvolError && e.code === code && re.test(e.message), JSON.stringify(input).slice(0, 100));

  for (let n = 0; n < 34; n++) {
    const b = Buffer.from(Array.from({ length: n }, (_, i) => (i * 89 + 7) & 255));
    assert.equal(base64urlAscii(b).toString("ascii"), b.toString("base64url"));
  }

  if (!ready(t)) return;
  const tpm = new Tpm(openTpm2Transport(fx.sw.device));
  const { tokenJson, passphrase } = await createClevisToken(tpm, { keyslot: 2, pcrIds: [7], pcrBank: "sha256", passphrase: Buffer.from("given passphrase") });
  assert.equal(passphrase.toString(), "given passphrase");
  const tok = decodeClevisToken(tokenJson);
  assert.equal(encodeClevisToken(tok), tokenJson);
  tok.jwe.ciphertext[0]! ^= 1;
  await assert.rejects(unlockClevisToken(encodeClevisToken(tok), tpm), /does not authenticate/);
});
