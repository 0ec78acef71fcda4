// systemd-pkcs11 and systemd-recovery tokens both ways with Debian 13's systemd 257 and cryptsetup 2.7.5 (trixie
// root): one SoftHSM2 token directory seen by the host (trustvol, pkcs11js) and by the root (bound at /w).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { makeSoftHsm, needSoftHsm, softhsmModulePath, type SoftHsm } from "../helpers/softhsm.js";
import { DEB13_WORK, needDebian13, runInDebian13 } from "../helpers/debian13.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { addKey, exportToken, importToken, makeLuksImage, passphraseOpens } from "./luks-fixture.js";
import { createSystemdPkcs11Token, decodeSystemdPkcs11Token, encodeSystemdPkcs11Token, unlockSystemdPkcs11Token } from "../../src/tokens/systemd-pkcs11.js";
import { initToken, provisionKey } from "../../src/trust/pkcs11/setup.js";
import { isRecoveryKey } from "../../src/tokens/systemd-recovery.js";

const PIN = "lmp-pin-2570";
const pin = () => ({ kind: "buffer" as const, pin: Buffer.from(PIN) });
let h: SoftHsm | undefined;

before(() => {
  if (!softhsmModulePath()) return;
  h = makeSoftHsm();
  initToken({ modulePath: h.modulePath, label: "lmp", soPin: { kind: "buffer", pin: Buffer.from("so-pin-8765") }, userPin: pin() });
  provisionKey({ uri: "pkcs11:token=lmp", modulePath: h.modulePath, pin: pin(), label: "luks", subject: "CN=LmP" });
  // the same token directory, as the trixie root sees it
  writeFileSync(join(h.dir, "softhsm2-deb13.conf"), `directories.tokendir = ${DEB13_WORK}/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
});
after(() => h?.cleanup());

function setup(t: import("node:test").TestContext) {
  if (!needSoftHsm(t, "cryptsetup")) return undefined;
  const root = needDebian13(t);
  if (!root) return undefined;
  const sh = (cmd: string, args: string[], o: { env?: Record<string, string>; input?: string; check?: boolean } = {}) =>
    runInDebian13(root, cmd, args, { work: h!.dir, ...o, env: { SOFTHSM2_CONF: `${DEB13_WORK}/softhsm2-deb13.conf`, ...(o.env ?? {}) } });
  return { sh, w: (f: string) => `${DEB13_WORK}/${f}` };
}

test("systemd-cryptenroll 257 --pkcs11-token-uri → trustvol unlocks; the JSON round-trips", async (t) => {
  const s = setup(t);
  if (!s) return;
  const l = makeLuksImage(h!.dir, "p11a");
  // test-only PIN: systemd-cryptenroll takes it from $PIN when there is no terminal
  const r = s.sh("systemd-cryptenroll", [`--unlock-key-file=${s.w("p11a.key")}`, "--pkcs11-token-uri=pkcs11:token=lmp", s.w("p11a.luks")], { env: { PIN } });
  assert.match(r.stderr, /New PKCS#11 token enrolled as key slot 1/);
  const json = exportToken(l.img, 0);
  const tok = decodeSystemdPkcs11Token(JSON.parse(json));
  assert.deepEqual(tok.keyslots, ["1"]);
  assert.equal(JSON.stringify(encodeSystemdPkcs11Token(tok)), JSON.stringify(JSON.parse(json)));
  const pass = await unlockSystemdPkcs11Token(JSON.parse(json), { pin: pin() });
  assert.ok(passphraseOpens(l.img, pass, 1));
});

test("trustvol systemd-pkcs11 token → cryptsetup 2.7.5 with systemd 257's plugin unlocks it (PIN on stdin)", async (t) => {
  const s = setup(t);
  if (!s) return;
  const l = makeLuksImage(h!.dir, "p11b");
  const { tokenJson, passphrase } = await createSystemdPkcs11Token({ uri: "pkcs11:token=lmp;object=luks", keyslot: 3, pin: pin() });
  addKey(l, passphrase, 3);
  passphrase.fill(0);
  importToken(l.img, JSON.stringify(tokenJson), 0);
  const r = s.sh("cryptsetup", ["open", "--test-passphrase", "--token-only", "--token-id", "0", "-v", s.w("p11b.luks")], { input: `${PIN}\n`, check: false });
  assert.equal(r.status, 0, r.stderr + r.stdout.toString());
  assert.match(r.stdout.toString(), /Key slot 3 unlocked/);
  const bad = s.sh("cryptsetup", ["open", "--test-passphrase", "--token-only", "--token-id", "0", s.w("p11b.luks")], { input: "0000\n", check: false });
  assert.notEqual(bad.status, 0);
  assert.match(s.sh("systemd-cryptenroll", [s.w("p11b.luks")]).stdout.toString(), /3\s+pkcs11/);
});

test("recovery keys both ways with systemd-cryptenroll 257", async (t) => {
  const s = setup(t);
  if (!s) return;
  const l = makeLuksImage(h!.dir, "rk");
  const rk = s.sh("systemd-cryptenroll", [`--unlock-key-file=${s.w("rk.key")}`, "--recovery-key", s.w("rk.luks")]).stdout.toString().trim();
  assert.ok(isRecoveryKey(Buffer.from(rk)));
  assert.equal(exportToken(l.img, 0).trim(), '{"type":"systemd-recovery","keyslots":["1"]}');
  writeFileSync(join(h!.dir, "rk.txt"), rk, { mode: 0o600 });
  let r = await trustvolInProcess(["unlock", "--test", "--key-file", join(h!.dir, "rk.txt"), l.img]);
  assert.equal(r.status, 0, r.stderr);
  // trustvol's recovery key: systemd 257 lists it as such and unlocks with it
  r = await trustvolInProcess(["enroll", "recovery", l.img, "--key-file", l.keyFile, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const mine = JSON.parse(r.stdout) as { recovery_key: string; keyslot: number };
  assert.match(s.sh("systemd-cryptenroll", [s.w("rk.luks")]).stdout.toString(), new RegExp(`${mine.keyslot}\\s+recovery`));
  writeFileSync(join(h!.dir, "rk2.txt"), mine.recovery_key, { mode: 0o600 });
  s.sh("cryptsetup", ["open", "--test-passphrase", "--key-slot", String(mine.keyslot), "--key-file", s.w("rk2.txt"), s.w("rk.luks")]);
});
