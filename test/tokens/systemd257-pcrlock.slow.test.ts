// systemd 257's pcrlock policies (systemd-pcrlock make-policy + systemd-cryptenroll --tpm2-pcrlock) both ways, from
// the Debian 13 root against a host swtpm: trustvol unlocks systemd's tokens (PolicyPCR + PolicyOR variants, then
// PolicyAuthorizeNV of the index), and systemd unseals what trustvol enrols against the same pcrlock.json.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { swtpmForFile } from "../helpers/swtpm.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { DEB13_WORK, deb13SwtpmDevice, needDebian13, runInDebian13 } from "../helpers/debian13.js";
import { addKey, exportToken, importToken, makeLuksImage, passphraseOpens } from "./luks-fixture.js";
import { createSystemdTpm2Token, decodeSystemdTpm2Token, encodeSystemdTpm2Token, unlockSystemdTpm2Token } from "../../src/tokens/systemd-tpm2.js";
import { decodePcrlockPolicy, encodePcrlockPolicy, pcrlockSuperPcrDigest } from "../../src/trust/tpm2/pcrlock.js";
import { Tpm, openTpm2Transport } from "../../src/trust/tpm2/index.js";
import * as C from "../../src/trust/tpm2/commands.js";
import { TrustvolError } from "../../src/util/errors.js";

const fx = swtpmForFile(["swtpm", "cryptsetup"]);
const isErr = (code: string, re: RegExp) => (e: unknown) => e instanceof TrustvolError && e.code === code && re.test(e.message);

/** A TCG crypto-agile event log holding only its Spec ID header (sha256): what a firmware without measurements leaves. */
function emptyEventLog(): Buffer {
  const spec = Buffer.alloc(64);
  let o = spec.write("Spec ID Event03\0", 0, "latin1");
  spec.writeUInt32LE(0, o); // platformClass
  o += 4;
  spec[o++] = 0; // specVersionMinor
  spec[o++] = 2; // specVersionMajor
  spec[o++] = 0; // specErrata
  spec[o++] = 2; // uintnSize
  spec.writeUInt32LE(1, o);
  o += 4;
  spec.writeUInt16LE(0x000b, o);
  spec.writeUInt16LE(32, o + 2);
  o += 4;
  spec[o++] = 0; // vendorInfoSize
  const hdr = Buffer.alloc(32); // TCG_PCClientPCREvent: PCR 0, EV_NO_ACTION, SHA-1 digest zero, event size
  hdr.writeUInt32LE(3, 4);
  hdr.writeUInt32LE(o, 28);
  return Buffer.concat([hdr, spec.subarray(0, o)]);
}

function deb13(t: import("node:test").TestContext) {
  if (!fx.ready(t)) return undefined;
  const root = needDebian13(t);
  if (!root) return undefined;
  const { tpmDir, device } = deb13SwtpmDevice(fx.sw.sock);
  // systemd-pcrlock reads the firmware log from securityfs: a private tmpfs there holds ours (mounts die with the command)
  writeFileSync(join(fx.dir, "eventlog"), emptyEventLog());
  const sh = (script: string, env: Record<string, string> = {}) =>
    runInDebian13(root, "sh", ["-c", `set -e; mount -t tmpfs none /sys/kernel/security; mkdir -p /sys/kernel/security/tpm0; cp ${DEB13_WORK}/eventlog /sys/kernel/security/tpm0/binary_bios_measurements; mkdir -p /run/systemd; ${script}`], {
      work: fx.dir, tpmDir, env: { SYSTEMD_TPM2_DEVICE: device, ...env },
    });
  return { device, sh };
}

const PL = "/usr/lib/systemd/systemd-pcrlock";
const tpmOf = () => new Tpm(openTpm2Transport(fx.sw.device));

test("systemd-pcrlock + systemd-cryptenroll 257 --tpm2-pcrlock → trustvol unlocks; a PCR 15 variant still unlocks, an unknown value does not", async (t) => {
  const d = deb13(t);
  if (!d) return;
  writeFileSync(join(fx.dir, "dA"), "variant A");
  writeFileSync(join(fx.dir, "dB"), "variant B");
  const l = makeLuksImage(fx.dir, "pl");
  // a component with two variants for PCR 15 (not reached yet in this "boot"): PCR 15 gets 3 allowed values → PolicyOR
  d.sh(
    [
      `mkdir -p /w/comp/870-test.pcrlock.d`,
      `${PL} lock-raw --pcr=15 --pcrlock=/w/comp/870-test.pcrlock.d/a.pcrlock /w/dA`,
      `${PL} lock-raw --pcr=15 --pcrlock=/w/comp/870-test.pcrlock.d/b.pcrlock /w/dB`,
      `${PL} make-policy --components=/w/comp --policy=/w/pcrlock.json --recovery-pin=hide`,
      `systemd-cryptenroll --unlock-key-file=/w/pl.key --tpm2-device=${d.device} --tpm2-pcrlock=/w/pcrlock.json /w/pl.luks`,
    ].join(" && "),
  );
  const policyFile = join(fx.dir, "pcrlock.json");
  const policy = decodePcrlockPolicy(readFileSync(policyFile));
  assert.equal(encodePcrlockPolicy(policy), readFileSync(policyFile, "utf8").trim(), "pcrlock.json round-trips byte for byte");
  assert.equal(policy.pcrValues.get(15)?.length, 3);
  const tpm = tpmOf();
  // what the index holds is the super-PCR digest trustvol computes (TPMT_HA: sha256 ‖ digest)
  const held = await tpm.run(C.NV_Read, { authHandle: C.permanentHandle(0x40000001), nvIndex: { handle: policy.nvIndex, name: policy.nv.name }, size: 34, offset: 0 });
  assert.equal(held.data.toString("hex"), "000b" + pcrlockSuperPcrDigest(policy).toString("hex"));

  const json = exportToken(l.img, 0);
  const tok = decodeSystemdTpm2Token(json);
  assert.equal(tok.pcrlock, true);
  assert.equal(tok.pcrlockNvKey?.handle, policy.nvIndex);
  assert.equal(encodeSystemdTpm2Token(tok), JSON.stringify(JSON.parse(json)), "257's pcrlock token re-encodes byte for byte");

  const pass = await unlockSystemdTpm2Token(json, tpm, { pcrlockPath: policyFile });
  assert.ok(passphraseOpens(l.img, pass, 1));
  const cli = await trustvolInProcess(["unlock", "--test", "--token-only", "--tpm2-device", fx.sw.device, "--tpm2-pcrlock", policyFile, "--json", l.img]);
  assert.equal(cli.status, 0, cli.stderr);
  // the boot reaches component 870 with variant A: PCR 15 takes one of the allowed values
  const a = JSON.parse(readFileSync(join(fx.dir, "comp/870-test.pcrlock.d/a.pcrlock"), "utf8")).records[0].digests.find((x: { hashAlg: string }) => x.hashAlg === "sha256").digest;
  await tpm.pcrExtend(15, "sha256", Buffer.from(a, "hex"));
  assert.deepEqual(await unlockSystemdTpm2Token(json, tpm, { pcrlock: policy }), pass);
  // a second measurement: no allowed value any more
  await tpm.pcrExtend(15, "sha256", Buffer.from(a, "hex"));
  await assert.rejects(unlockSystemdTpm2Token(json, tpm, { pcrlock: policy }), isErr("EPOLICY", /not one the pcrlock policy allows: PCR 15 \(sha256\) hold values pcrlock\.json does not list/));
  // the policy file is the administrator's: none given and none at systemd's paths → a clear error, nothing from the header
  await assert.rejects(unlockSystemdTpm2Token(json, tpm, { pcrlockPath: join(fx.dir, "missing.json") }), isErr("ENOKEY", /does not exist/));
  await fx.sw.restart();
});

test("trustvol enrols against systemd-pcrlock's policy → systemd-cryptenroll 257 unseals it; a policy for another index is refused", async (t) => {
  const d = deb13(t);
  if (!d) return;
  const l = makeLuksImage(fx.dir, "tp");
  d.sh(`${PL} make-policy --components=/w/comp --policy=/w/pcrlock2.json --recovery-pin=hide --force`);
  const policyFile = join(fx.dir, "pcrlock2.json");
  const policy = decodePcrlockPolicy(readFileSync(policyFile));
  const tpm = tpmOf();
  const { tokenJson, passphrase, token } = await createSystemdTpm2Token(tpm, { pcrs: [], keyslot: 2, pcrlock: policy });
  assert.deepEqual(Object.keys(JSON.parse(tokenJson)), ["type", "keyslots", "tpm2-blob", "tpm2-pcrs", "tpm2-primary-alg", "tpm2-policy-hash", "tpm2_pcrlock", "tpm2_srk", "tpm2_pcrlock_nv"]);
  assert.equal(token.policyHash.toString("hex"), decodeSystemdTpm2Token(tokenJson).policyHash.toString("hex"));
  addKey(l, passphrase, 2);
  importToken(l.img, tokenJson, 2);
  assert.deepEqual(await unlockSystemdTpm2Token(tokenJson, tpm, { pcrlock: policy }), passphrase);
  // systemd finds the policy at its own path (/run/systemd/pcrlock.json), unseals our blob and adds a recovery key
  const rk = d.sh(`cp /w/pcrlock2.json /run/systemd/pcrlock.json && systemd-cryptenroll --unlock-tpm2-device=${d.device} --recovery-key /w/tp.luks`).stdout.toString().trim();
  assert.match(rk, /^([cbdefghijklnrtuv]{8}-){7}[cbdefghijklnrtuv]{8}$/);
  // the policy of another NV index (the first test's): refused before the TPM is asked
  const first = decodePcrlockPolicy(readFileSync(join(fx.dir, "pcrlock.json")));
  assert.notEqual(first.nvIndex, policy.nvIndex);
  await assert.rejects(unlockSystemdTpm2Token(tokenJson, tpm, { pcrlock: first }), isErr("EPOLICY", /names NV index/));
});

test("pcrlock + PIN: systemd-cryptenroll 257's token field order (tpm2_pcrlock, tpm2_salt, tpm2_srk, tpm2_pcrlock_nv) byte for byte, both ways", async (t) => {
  const d = deb13(t);
  if (!d) return;
  // the second test's policy (its NV index still holds it; PCRs unchanged since)
  const policyFile = join(fx.dir, "pcrlock2.json");
  const policy = decodePcrlockPolicy(readFileSync(policyFile));
  const tpm = tpmOf();
  await tpm.run(C.DictionaryAttackLockReset, {});
  const l = makeLuksImage(fx.dir, "plpin");
  // test-only PIN: systemd-cryptenroll takes it from $NEWPIN when there is no terminal
  d.sh(`systemd-cryptenroll --unlock-key-file=/w/plpin.key --tpm2-device=${d.device} --tpm2-pcrlock=/w/pcrlock2.json --tpm2-with-pin=yes /w/plpin.luks`, { NEWPIN: "13579" });
  const json = exportToken(l.img, 0);
  const keys257 = Object.keys(JSON.parse(json));
  assert.deepEqual(keys257, ["type", "keyslots", "tpm2-blob", "tpm2-pcrs", "tpm2-primary-alg", "tpm2-policy-hash", "tpm2-pin", "tpm2_pcrlock", "tpm2_salt", "tpm2_srk", "tpm2_pcrlock_nv"]);
  const tok = decodeSystemdTpm2Token(json);
  assert.equal(tok.pin, true);
  assert.equal(tok.pcrlock, true);
  assert.equal(encodeSystemdTpm2Token(tok), JSON.stringify(JSON.parse(json)), "257's pcrlock + PIN token re-encodes byte for byte");
  await assert.rejects(unlockSystemdTpm2Token(json, tpm, { pcrlock: policy }), isErr("EBADPASS", /needs a PIN/));
  const pass = await unlockSystemdTpm2Token(json, tpm, { pcrlock: policy, pin: Buffer.from("13579") });
  assert.ok(passphraseOpens(l.img, pass, 1));
  // trustvol's own pcrlock + PIN token: the same fields in the same order, and systemd unseals it with the PIN
  const { tokenJson, passphrase } = await createSystemdTpm2Token(tpm, { pcrs: [], keyslot: 2, pcrlock: policy, pin: Buffer.from("8642") });
  assert.deepEqual(Object.keys(JSON.parse(tokenJson)), keys257);
  const l2 = makeLuksImage(fx.dir, "plpin2");
  addKey(l2, passphrase, 2);
  importToken(l2.img, tokenJson, 0);
  const rk = d.sh(`cp /w/pcrlock2.json /run/systemd/pcrlock.json && systemd-cryptenroll --unlock-tpm2-device=${d.device} --recovery-key /w/plpin2.luks`, { PIN: "8642" }).stdout.toString().trim();
  assert.match(rk, /^([cbdefghijklnrtuv]{8}-){7}[cbdefghijklnrtuv]{8}$/);
  await tpm.run(C.DictionaryAttackLockReset, {});
});

test("pcrlock and PCR 7 together (systemd-cryptenroll 257 --tpm2-pcrs=7 with a pcrlock policy): same fields, same policy, both ways", async (t) => {
  const d = deb13(t);
  if (!d) return;
  const policy = decodePcrlockPolicy(readFileSync(join(fx.dir, "pcrlock2.json")));
  const tpm = tpmOf();
  const l = makeLuksImage(fx.dir, "plpcr");
  d.sh(`systemd-cryptenroll --unlock-key-file=/w/plpcr.key --tpm2-device=${d.device} --tpm2-pcrs=7 --tpm2-pcrlock=/w/pcrlock2.json /w/plpcr.luks`);
  const json = exportToken(l.img, 0);
  const keys257 = Object.keys(JSON.parse(json));
  assert.deepEqual(keys257, ["type", "keyslots", "tpm2-blob", "tpm2-pcrs", "tpm2-pcr-bank", "tpm2-primary-alg", "tpm2-policy-hash", "tpm2_pcrlock", "tpm2_srk", "tpm2_pcrlock_nv"]);
  const tok = decodeSystemdTpm2Token(json);
  assert.deepEqual(tok.pcrs, [7]);
  assert.equal(encodeSystemdTpm2Token(tok), JSON.stringify(JSON.parse(json)));
  const pass = await unlockSystemdTpm2Token(json, tpm, { pcrlock: policy });
  assert.ok(passphraseOpens(l.img, pass, 1));
  const { tokenJson, passphrase, token } = await createSystemdTpm2Token(tpm, { pcrs: [7], keyslot: 2, pcrlock: policy });
  assert.deepEqual(Object.keys(JSON.parse(tokenJson)), keys257);
  assert.equal(token.policyHash.toString("hex"), tok.policyHash.toString("hex"), "the same policy digest as systemd's (pcrlock step, then PolicyPCR 7)");
  const l2 = makeLuksImage(fx.dir, "plpcr2");
  addKey(l2, passphrase, 2);
  importToken(l2.img, tokenJson, 0);
  const rk = d.sh(`cp /w/pcrlock2.json /run/systemd/pcrlock.json && systemd-cryptenroll --unlock-tpm2-device=${d.device} --recovery-key /w/plpcr2.luks`).stdout.toString().trim();
  assert.match(rk, /^([cbdefghijklnrtuv]{8}-){7}[cbdefghijklnrtuv]{8}$/);
});

test("a stale pcrlock.json (make-policy ran again, same NV index, other values): refused as stale, not as a PCR change", async (t) => {
  const d = deb13(t);
  if (!d) return;
  const stale = decodePcrlockPolicy(readFileSync(join(fx.dir, "pcrlock2.json")));
  const json = exportToken(join(fx.dir, "tp.luks"), 2);
  const tpm = tpmOf();
  assert.ok((await unlockSystemdTpm2Token(json, tpm, { pcrlock: stale })).length, "unlocks before the policy changes");
  // the policy now also allows a PCR 14 variant: systemd rewrites the same index
  writeFileSync(join(fx.dir, "dC"), "variant C");
  d.sh(`mkdir -p /w/comp3/860-x.pcrlock.d && ${PL} lock-raw --pcr=14 --pcrlock=/w/comp3/860-x.pcrlock.d/c.pcrlock /w/dC && ${PL} make-policy --components=/w/comp3 --policy=/w/pcrlock2.json --recovery-pin=hide --force`);
  const fresh = decodePcrlockPolicy(readFileSync(join(fx.dir, "pcrlock2.json")));
  assert.equal(fresh.nvIndex, stale.nvIndex);
  assert.notEqual(pcrlockSuperPcrDigest(fresh).toString("hex"), pcrlockSuperPcrDigest(stale).toString("hex"));
  await assert.rejects(unlockSystemdTpm2Token(json, tpm, { pcrlock: stale }), isErr("EPOLICY", /does not match what NV index 0x[0-9a-f]+ holds: the file is stale/));
  assert.ok((await unlockSystemdTpm2Token(json, tpm, { pcrlock: fresh })).length, "the fresh file unlocks");
});

test("hostile pcrlock.json and pcrlock token fields: one clear error each", () => {
  const base = {
    pcrBank: "sha256",
    pcrValues: [{ pcr: 15, values: ["00".repeat(32)] }],
    nvIndex: 1,
    nvHandle: "AAAA",
    nvPublic: "AAAA",
    srkHandle: "AAAA",
    pinPublic: "AAAA",
    pinPrivate: "AAAA",
  };
  const cases: [unknown, RegExp][] = [
    ["{", /not valid JSON/],
    [{ ...base, pcrBank: "md5" }, /pcrBank/],
    [{ ...base, pcrValues: [{ pcr: 24, values: [] }] }, /invalid PCR index/],
    [{ ...base, pcrValues: [{ pcr: 15, values: ["00"] }] }, /not a sha256 digest/],
    [{ ...base, pcrValues: [{ pcr: 15, values: Array.from({ length: 9 }, (_, i) => i.toString(16).padStart(64, "0")) }] }, /at most 8/],
    [{ ...base, pcrValues: [{ pcr: 15, values: ["00".repeat(32)] }, { pcr: 15, values: ["00".repeat(32)] }] }, /twice/],
    [{ ...base, nvIndex: 0x81000001 }, /nvIndex/],
    [{ ...base, nvIndex: 0x01000001, nvPublic: "!!" }, /nvPublic/],
  ];
  for (const [input, re] of cases) assert.throws(() => decodePcrlockPolicy(input as Record<string, unknown>), isErr("ECORRUPT", re), String(re));
  const tok = { type: "systemd-tpm2", keyslots: ["1"], "tpm2-pcrs": [], "tpm2-policy-hash": "00".repeat(32) };
  assert.throws(() => decodeSystemdTpm2Token({ ...tok, "tpm2-blob": "AAAA", tpm2_pcrlock: "yes" }), isErr("ECORRUPT", /./));
});
