// Interop with Debian 13's systemd 257 (systemd-cryptenroll, its token plugins) and cryptsetup 2.7.5, run from the
// cached trixie root (test/helpers/debian13.ts) against a host swtpm reached through its bind-mounted socket.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, generateKeyPairSync } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { swtpmForFile } from "../helpers/swtpm.js";
import { run } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { DEB13_WORK, deb13SwtpmDevice, needDebian13, runInDebian13 } from "../helpers/debian13.js";
import { addKey, exportToken, importToken, makeLuksImage, passphraseOpens } from "./luks-fixture.js";
import { createSystemdTpm2Token, decodePcrSignatureJson, decodeSystemdTpm2Token, encodeSystemdTpm2Token, systemdTpm2PolicyDigest, unlockSystemdTpm2Token } from "../../src/tokens/systemd-tpm2.js";
import { decodeSerializedKeyHandle, encodeSerializedKeyHandle, primaryTemplateOf } from "../../src/trust/tpm2/esys-tr.js";
import { systemdSrkTemplate } from "../../src/trust/tpm2/srk.js";
import { encodePublicArea } from "../../src/trust/tpm2/structures.js";
import { Tpm, openTpm2Transport } from "../../src/trust/tpm2/index.js";
import * as C from "../../src/trust/tpm2/commands.js";
import { TrustvolError } from "../../src/util/errors.js";

// Exactly as systemd-cryptenroll 257.13 (Debian 13) wrote it here: swtpm, --tpm2-pcrs=7, no PIN.
const TOKEN_257 =
  '{"type":"systemd-tpm2","keyslots":["1"],"tpm2-blob":"AJ4AIGIjcRyinDYEszAqU8EBMStFefxo2jkQHHV+xTQH8VTAABDidb7+3Mlw/dTANmGrk0p6XHovapelspuJ9pO1xATomNNOpnZG9+Jf20HzqAYw38GIIbvl8KPUXRA2rjvYQ3Ro7fuRl5IGTZa+xniEWLKCc+1egqwhQKCgBpkw0GinEEsFiF6w0i4FhqniEEGkZ0oUiiSXEJKc8G0UowBOAAgACwAABBIAIItWgtgbKUNdCNeSeBUGEdx+WSOy/vzOaEoJV3tAEwqLABAAIHRKRBxaMXDuVcSIsM56oiGY+FDTAR0SrwdiV3Lm56zx","tpm2-pcrs":[7],"tpm2-pcr-bank":"sha256","tpm2-primary-alg":"ecc","tpm2-policy-hash":"8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b","tpm2_srk":"gQAAAQAiAAvio8H1ddmWvc80L01EBjajcfJomOUBivaWaFDTU/b4NgAAAAEAWgAjAAsAAwRyAAAABgCAAEMAEAADABAAIIjj5Vy1AVGr6Gl2jOkefA7ydDh2v90gNazvFCMUTx96ACBdl55+aKEG81X03otCiJ5aURX8FZ1Xvgziq8YaMqSMfQ=="}';

const isErr = (code: string, re: RegExp) => (e: unknown) => e instanceof TrustvolError && e.code === code && re.test(e.message);

test("257 token: tpm2_srk decodes (persistent 0x81000001, name checked), JSON round-trips byte for byte", () => {
  const t = decodeSystemdTpm2Token(TOKEN_257);
  assert.equal(t.srkKey!.handle, 0x81000001);
  assert.equal(t.pin, false);
  assert.equal(t.blobs.length, 1);
  assert.equal(encodeSystemdTpm2Token(t), TOKEN_257);
  assert.deepEqual(encodeSerializedKeyHandle(t.srkKey!), t.srk);
  // the SRK trustvol creates (--srk) has systemd's template
  assert.deepEqual(encodePublicArea(primaryTemplateOf(t.srkKey!.public)), encodePublicArea(systemdSrkTemplate("ecc")));
});

test("257 token: hostile tpm2_srk, pcrlock fields and blob arrays are refused with one clear error", () => {
  const o = JSON.parse(TOKEN_257);
  const srk = Buffer.from(o.tpm2_srk, "base64");
  const transient = Buffer.from(srk);
  transient.writeUInt32BE(0x80000001, 0);
  const wrongName = Buffer.from(srk);
  wrongName[10]! ^= 1;
  const notKey = Buffer.from(srk);
  notKey.writeUInt32BE(2, 40);
  const cases: [unknown, string, RegExp][] = [
    [{ ...o, tpm2_srk: transient.toString("base64") }, "ECORRUPT", /not a persistent handle/],
    [{ ...o, tpm2_srk: wrongName.toString("base64") }, "ECORRUPT", /name does not match/],
    [{ ...o, tpm2_srk: notKey.toString("base64") }, "ECORRUPT", /not a key/],
    [{ ...o, tpm2_srk: Buffer.concat([srk, Buffer.from([0])]).toString("base64") }, "ECORRUPT", /tpm2_srk/],
    [{ ...o, tpm2_srk: srk.subarray(0, 20).toString("base64") }, "ECORRUPT", /tpm2_srk/],
    [{ ...o, tpm2_pcrlock: "yes" }, "ECORRUPT", /boolean/],
    [{ ...o, tpm2_pcrlock_nv: "AAAA" }, "ECORRUPT", /tpm2_pcrlock_nv' without/],
    [{ ...o, tpm2_pcrlock: true, tpm2_pcrlock_nv: "AAAA" }, "ECORRUPT", /tpm2_pcrlock_nv/],
    [{ ...o, "tpm2-blob": [o["tpm2-blob"], o["tpm2-blob"]] }, "ECORRUPT", /2 blobs but 1 policy hashes/],
    [{ ...o, "tpm2-blob": [] }, "ECORRUPT", /1\.\.16/],
  ];
  for (const [input, code, re] of cases) assert.throws(() => decodeSystemdTpm2Token(input as Record<string, unknown>), isErr(code, re), JSON.stringify(input).slice(-80));
  assert.throws(() => decodeSerializedKeyHandle(Buffer.alloc(3)), isErr("ECORRUPT", /tpm2_srk/));
  // several blobs, each with its policy hash, are accepted and re-encoded as arrays
  const two = decodeSystemdTpm2Token({ ...o, "tpm2-blob": [o["tpm2-blob"], o["tpm2-blob"]], "tpm2-policy-hash": [o["tpm2-policy-hash"], o["tpm2-policy-hash"]] });
  assert.equal(two.blobs.length, 2);
  assert.ok(Array.isArray(JSON.parse(encodeSystemdTpm2Token(two))["tpm2-blob"]));
});

const fx = swtpmForFile(["swtpm", "cryptsetup"]);

function deb13(t: import("node:test").TestContext) {
  if (!fx.ready(t)) return undefined;
  const root = needDebian13(t);
  if (!root) return undefined;
  const { tpmDir, device } = deb13SwtpmDevice(fx.sw.sock);
  const sh = (cmd: string, args: string[], o: { env?: Record<string, string>; input?: string | Uint8Array; check?: boolean } = {}) => runInDebian13(root, cmd, args, { work: fx.dir, tpmDir, ...o });
  return { root, device, sh, w: (f: string) => `${DEB13_WORK}/${f}` };
}

const tpmOf = () => new Tpm(openTpm2Transport(fx.sw.device));

test("systemd-cryptenroll 257 --tpm2-pcrs=7 → trustvol unlocks under the persistent SRK, and after it was evicted", async (t) => {
  const d = deb13(t);
  if (!d) return;
  const l = makeLuksImage(fx.dir, "e257");
  d.sh("systemd-cryptenroll", [`--unlock-key-file=${d.w("e257.key")}`, `--tpm2-device=${d.device}`, "--tpm2-pcrs=7", d.w("e257.luks")]);
  const json = exportToken(l.img, 0);
  const tok = decodeSystemdTpm2Token(json);
  assert.equal(tok.srkKey?.handle, 0x81000001);
  assert.equal(encodeSystemdTpm2Token(tok), JSON.stringify(JSON.parse(json)));
  const tpm = tpmOf();
  const pass = await unlockSystemdTpm2Token(json, tpm);
  assert.ok(passphraseOpens(l.img, pass, 1));
  const cli = await trustvolInProcess(["unlock", "--test", "--token-only", "--tpm2-device", fx.sw.device, "--json", l.img]);
  assert.equal(cli.status, 0, cli.stderr);
  assert.equal(JSON.parse(cli.stdout).keyslot, 1);
  // systemd's SRK gone (e.g. evicted by another tool): the same key is recreated from the owner seed
  await tpm.evictControl(0x81000001, 0x81000001);
  assert.deepEqual(await unlockSystemdTpm2Token(json, tpm), pass);
  await tpm.pcrExtend(7, "sha256", Buffer.alloc(32, 0xaa));
  await assert.rejects(unlockSystemdTpm2Token(json, tpm), isErr("EPOLICY", /PCR 7 changed/));
  await fx.sw.restart();
});

test("systemd-cryptenroll 257 --tpm2-with-pin (salted PIN, tpm2_salt) → trustvol unlocks with the PIN only", async (t) => {
  const d = deb13(t);
  if (!d) return;
  const l = makeLuksImage(fx.dir, "p257");
  // test-only PIN: systemd-cryptenroll takes it from $NEWPIN when there is no terminal
  d.sh("systemd-cryptenroll", [`--unlock-key-file=${d.w("p257.key")}`, `--tpm2-device=${d.device}`, "--tpm2-pcrs=7", "--tpm2-with-pin=yes", d.w("p257.luks")], { env: { NEWPIN: "24680" } });
  const json = exportToken(l.img, 0);
  const tok = decodeSystemdTpm2Token(json);
  assert.equal(tok.pin, true);
  assert.equal(tok.salt?.length, 32);
  assert.equal(encodeSystemdTpm2Token(tok), JSON.stringify(JSON.parse(json)));
  const tpm = tpmOf();
  await tpm.run(C.DictionaryAttackLockReset, {});
  await assert.rejects(unlockSystemdTpm2Token(json, tpm), isErr("EBADPASS", /needs a PIN/));
  await assert.rejects(unlockSystemdTpm2Token(json, tpm, { pin: Buffer.from("1111") }), isErr("EBADPASS", /wrong TPM PIN/));
  const pass = await unlockSystemdTpm2Token(json, tpm, { pin: Buffer.from("24680") });
  assert.ok(passphraseOpens(l.img, pass, 1));
  await tpm.run(C.DictionaryAttackLockReset, {});
});

test("trustvol enrolls → systemd 257 unseals it (systemd-cryptenroll --unlock-tpm2-device), with and without PIN", async (t) => {
  const d = deb13(t);
  if (!d) return;
  const l = makeLuksImage(fx.dir, "t257");
  const tpm = tpmOf();
  await tpm.run(C.DictionaryAttackLockReset, {});
  for (const [slot, pin] of [[3, undefined], [4, "97531"]] as const) {
    const { tokenJson, passphrase } = await createSystemdTpm2Token(tpm, { pcrs: [7], keyslot: slot, ...(pin ? { pin: Buffer.from(pin) } : {}) });
    addKey(l, passphrase, slot);
    importToken(l.img, tokenJson, slot);
    // systemd unlocks with the TPM token alone, then enrolls a recovery key: proof it unsealed our blob
    const rk = d.sh("systemd-cryptenroll", [`--unlock-tpm2-device=${d.device}`, "--recovery-key", d.w("t257.luks")], { env: pin ? { PIN: pin } : {} }).stdout.toString().trim();
    assert.match(rk, /^([cbdefghijklnrtuv]{8}-){7}[cbdefghijklnrtuv]{8}$/);
    assert.ok(passphraseOpens(l.img, Buffer.from(rk)));
    const listed = d.sh("systemd-cryptenroll", [d.w("t257.luks")]).stdout.toString();
    assert.match(listed, new RegExp(`${slot}\\s+tpm2`));
    // the next round must prove the PIN token on its own
    run("cryptsetup", ["token", "remove", "--token-id", String(slot), l.img]);
  }
});

test("a token staged by tpm2 stage-update (\"trustvol-update\": \"staged\") is an ordinary token to systemd 257: it unseals it", async (t) => {
  const d = deb13(t);
  if (!d) return;
  const l = makeLuksImage(fx.dir, "st257");
  const tpm = tpmOf();
  const { tokenJson, passphrase } = await createSystemdTpm2Token(tpm, { pcrs: [7], keyslot: 5, srk: true });
  addKey(l, passphrase, 5);
  importToken(l.img, JSON.stringify({ ...JSON.parse(tokenJson), "trustvol-update": "staged" }), 0);
  const rk = d.sh("systemd-cryptenroll", [`--unlock-tpm2-device=${d.device}`, "--recovery-key", d.w("st257.luks")]).stdout.toString().trim();
  assert.match(rk, /^([cbdefghijklnrtuv]{8}-){7}[cbdefghijklnrtuv]{8}$/);
  assert.match(d.sh("systemd-cryptenroll", [d.w("st257.luks")]).stdout.toString(), /5\s+tpm2/);
});

test("systemd 257's token plugin (cryptsetup 2.7 --token-only) needs a kernel TPM: with only swtpm it says so", (t) => {
  const d = deb13(t);
  if (!d) return;
  const l = makeLuksImage(fx.dir, "plug");
  d.sh("systemd-cryptenroll", [`--unlock-key-file=${d.w("plug.key")}`, `--tpm2-device=${d.device}`, "--tpm2-pcrs=7", d.w("plug.luks")]);
  const r = d.sh("cryptsetup", ["open", "--test-passphrase", "--token-only", "--debug", d.w("plug.luks")], { check: false, env: { SYSTEMD_TPM2_DEVICE: d.device } });
  assert.notEqual(r.status, 0);
  assert.match(r.stdout.toString() + r.stderr, /TPM2 device not found/);
  assert.equal(exportToken(l.img, 0).includes("tpm2_srk"), true);
});

test("signed PCR policy with systemd 257 (systemd-measure sign, --tpm2-public-key): enrolled by either, unlocked by the other", async (t) => {
  const d = deb13(t);
  if (!d) return;
  const dir = fx.dir;
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  writeFileSync(join(dir, "pk.pem"), publicKey.export({ type: "spki", format: "pem" }));
  writeFileSync(join(dir, "sk.pem"), privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 }); // test-only signing key
  const sections: [string, string][] = [[".linux", "test kernel 6.12"], [".osrel", "ID=trustvol\n"], [".cmdline", "quiet\n"]];
  for (const [n, c] of sections) writeFileSync(join(dir, n.slice(1)), c);
  const sig = d.sh("/usr/lib/systemd/systemd-measure", ["sign", ...sections.map(([n]) => `--${n.slice(1)}=${d.w(n.slice(1))}`), `--private-key=${d.w("sk.pem")}`, `--public-key=${d.w("pk.pem")}`, "--bank=sha256", "--phase=enter-initrd"]).stdout.toString();
  writeFileSync(join(dir, "sig.json"), sig);
  assert.equal(decodePcrSignatureJson(sig)[0]!.pcrs.join(), "11");

  const tpm = tpmOf();
  const sha = (b: string | Buffer) => createHash("sha256").update(b).digest();
  const bootToInitrd = async () => {
    // what systemd-stub measures into PCR 11: each section's name (with NUL) and contents, then the phase
    for (const [n, c] of sections) {
      await tpm.pcrExtend(11, "sha256", sha(`${n}\0`));
      await tpm.pcrExtend(11, "sha256", sha(c));
    }
    await tpm.pcrExtend(11, "sha256", sha("enter-initrd"));
  };

  // systemd 257 enrolls → trustvol unlocks in the signed phase only
  await fx.sw.restart();
  const l = makeLuksImage(dir, "sig257");
  d.sh("systemd-cryptenroll", [`--unlock-key-file=${d.w("sig257.key")}`, `--tpm2-device=${d.device}`, `--tpm2-public-key=${d.w("pk.pem")}`, "--tpm2-public-key-pcrs=11", "--tpm2-pcrs=7", d.w("sig257.luks")]);
  const json = exportToken(l.img, 0);
  const tok = decodeSystemdTpm2Token(json);
  assert.deepEqual(tok.pubkeyPcrs, [11]);
  assert.ok(tok.srkKey);
  assert.equal(encodeSystemdTpm2Token(tok), JSON.stringify(JSON.parse(json)));
  assert.deepEqual(systemdTpm2PolicyDigest(tok, await tpm.pcrRead("sha256", [7])), tok.policyHash);
  await bootToInitrd();
  const pass = await unlockSystemdTpm2Token(json, tpm, { signature: sig });
  assert.ok(passphraseOpens(l.img, pass, 1));
  await tpm.pcrExtend(11, "sha256", sha("leave-initrd"));
  await assert.rejects(unlockSystemdTpm2Token(json, tpm, { signature: sig }), isErr("EPOLICY", /no signature approves/));

  // trustvol enrolls → systemd 257 unseals with the signature where systemd looks for it
  await fx.sw.restart();
  run("cryptsetup", ["token", "remove", "--token-id", "0", l.img]);
  const { tokenJson } = await createSystemdTpm2Token(tpm, { pcrs: [7], keyslot: 2, pubkey: readFileSync(join(dir, "pk.pem")), pubkeyPcrs: [11] }).then(async (c) => {
    addKey(l, c.passphrase, 2);
    return c;
  });
  importToken(l.img, tokenJson, 2);
  await bootToInitrd();
  const script = 'mkdir -p /run/systemd && cp /w/sig.json /run/systemd/tpm2-pcr-signature.json && exec "$@"';
  const rk = d.sh("sh", ["-c", script, "sh", "systemd-cryptenroll", `--unlock-tpm2-device=${d.device}`, "--recovery-key", d.w("sig257.luks")]).stdout.toString().trim();
  assert.ok(passphraseOpens(l.img, Buffer.from(rk)));
});

test("several blobs (systemd 255+ arrays): the first that unseals wins; when none does, the first error", async (t) => {
  if (!fx.ready(t)) return;
  const tpm = tpmOf();
  const good = await createSystemdTpm2Token(tpm, { pcrs: [7], keyslot: 1 });
  const stale = await createSystemdTpm2Token(tpm, { pcrs: [7], keyslot: 1, pcrValues: new Map([[7, Buffer.alloc(32, 0xaa)]]) });
  const o = JSON.parse(good.tokenJson);
  const s = JSON.parse(stale.tokenJson);
  const both = { ...o, "tpm2-blob": [s["tpm2-blob"], o["tpm2-blob"]], "tpm2-policy-hash": [s["tpm2-policy-hash"], o["tpm2-policy-hash"]] };
  assert.deepEqual(await unlockSystemdTpm2Token(both, tpm), good.passphrase);
  await assert.rejects(unlockSystemdTpm2Token({ ...o, "tpm2-blob": [s["tpm2-blob"]], "tpm2-policy-hash": [s["tpm2-policy-hash"]] }, tpm), isErr("EPOLICY", /PCR 7 changed/));
  // a blob paired with another blob's policy hash is caught before the TPM is asked
  await assert.rejects(unlockSystemdTpm2Token({ ...o, "tpm2-blob": [o["tpm2-blob"]], "tpm2-policy-hash": [s["tpm2-policy-hash"]] }, tpm), isErr("ECORRUPT", /policy does not match/));
});

test("trustvol enroll tpm2 --srk (systemd 257's shape: persistent SRK, salted PIN) → systemd 257 unseals it and shares the SRK", async (t) => {
  const d = deb13(t);
  if (!d) return;
  const tpm = tpmOf();
  await tpm.evictControl(0x81000001, 0x81000001).catch(() => {}); // start without an SRK: trustvol creates it
  await tpm.run(C.DictionaryAttackLockReset, {});
  const l = makeLuksImage(fx.dir, "srk");
  writeFileSync(join(fx.dir, "srk.pin"), "13579", { mode: 0o600 });
  let r = await trustvolInProcess(["enroll", "tpm2", l.img, "--tpm2-device", fx.sw.device, "--pcrs", "7", "--srk", "--with-pin", "--pin-file", join(fx.dir, "srk.pin"), "--key-file", l.keyFile, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const slot = JSON.parse(r.stdout).keyslot as number;
  const json = exportToken(l.img, 0);
  assert.deepEqual(Object.keys(JSON.parse(json)), ["type", "keyslots", "tpm2-blob", "tpm2-pcrs", "tpm2-pcr-bank", "tpm2-primary-alg", "tpm2-policy-hash", "tpm2-pin", "tpm2_salt", "tpm2_srk"]);
  const tok = decodeSystemdTpm2Token(json);
  assert.equal(tok.srkKey?.handle, 0x81000001);
  r = await trustvolInProcess(["unlock", "--test", "--token-only", "--tpm2-device", fx.sw.device, "--pin-file", join(fx.dir, "srk.pin"), "--json", l.img]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).keyslot, slot);
  // systemd 257 unseals it with the PIN, then enrolls its own token under the same SRK
  const rk = d.sh("systemd-cryptenroll", [`--unlock-tpm2-device=${d.device}`, "--recovery-key", d.w("srk.luks")], { env: { PIN: "13579" } }).stdout.toString().trim();
  assert.ok(passphraseOpens(l.img, Buffer.from(rk)));
  d.sh("systemd-cryptenroll", [`--unlock-key-file=${d.w("srk.key")}`, `--tpm2-device=${d.device}`, "--tpm2-pcrs=0+7", d.w("srk.luks")]);
  const theirs = decodeSystemdTpm2Token(exportToken(l.img, 2));
  assert.deepEqual(theirs.srk, tok.srk);
  await tpm.run(C.DictionaryAttackLockReset, {});
});
