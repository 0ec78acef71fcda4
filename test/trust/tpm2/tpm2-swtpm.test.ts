// Tpm2TrustSource and the TPM 2.0 client against a real swtpm, with tpm2-tools as the oracle.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { hasTool, needTools, run, tmpDir } from "../../helpers/tools.js";
import { startSwtpm, type Swtpm } from "../../helpers/swtpm.js";
import { Tpm2TrustSource, Tpm, SwtpmControl, SwtpmTransport, openTpm2Transport, tapTransport, sealSecret, unsealSecret, computePolicyDigest, splitBlob, pinToAuthValue } from "../../../src/trust/tpm2/index.js";
import * as C from "../../../src/trust/tpm2/commands.js";
import { TPMA_OBJECT } from "../../../src/trust/tpm2/constants.js";
import { PasswordSession } from "../../../src/trust/tpm2/session.js";
import { TrustvolError } from "../../../src/util/errors.js";

const TOOLS = ["swtpm", "tpm2_createprimary", "tpm2_load", "tpm2_unseal", "tpm2_create", "tpm2_createpolicy", "tpm2_pcrread", "tpm2_startauthsession", "tpm2_policypcr", "tpm2_policyauthvalue", "tpm2_flushcontext", "tpm2_readpublic"];
let sw: Swtpm | undefined;
let tmp: { dir: string; cleanup: () => void };
let tpm: Tpm;

before(async () => {
  tmp = tmpDir();
  if (TOOLS.every(hasTool)) {
    sw = await startSwtpm();
    tpm = new Tpm(new SwtpmTransport({ path: sw!.sock }));
  }
});
after(async () => {
  await sw?.stop();
  tmp.cleanup();
});

function ready(t: import("node:test").TestContext): boolean {
  return needTools(t, ...TOOLS) && sw !== undefined;
}
const f = (n: string) => join(tmp.dir, n);
/** swtpm has no resource manager: drop whatever tpm2-tools left loaded. */
function flushTools(s: Swtpm) {
  for (const k of ["-t", "-l", "-s"]) run("tpm2_flushcontext", [k], { env: s.env, check: false });
}
async function expectCode(p: Promise<unknown>, code: string, re?: RegExp): Promise<TrustvolError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof TrustvolError, `expected TrustvolError, got ${String(e)}`);
    assert.equal(e.code, code, e.oneLine());
    if (re) assert.match(e.oneLine(), re);
    return e;
  }
  assert.fail(`expected ${code}`);
}

test("CreatePrimary (ECC P-256 and RSA-2048 SRK templates): same name as tpm2_createprimary", async (t) => {
  if (!ready(t)) return;
  for (const alg of ["ecc", "rsa"] as const) {
    const ours = await tpm.createStoragePrimary(alg);
    await tpm.flush(ours.handle);
    run("tpm2_createprimary", ["-Q", "-C", "o", "-g", "sha256", "-G", alg, "-c", f("p.ctx")], { env: sw!.env });
    run("tpm2_readpublic", ["-Q", "-c", f("p.ctx"), "-n", f("p.name")], { env: sw!.env });
    flushTools(sw!);
    assert.equal(ours.name.toString("hex"), readFileSync(f("p.name")).toString("hex"), alg);
  }
  // EvictControl: persist the SRK at 0x81000001, read it back with a verified name, evict it again
  const srk = await tpm.createStoragePrimary("ecc");
  try {
    await tpm.evictControl(srk, 0x81000001);
  } finally {
    await tpm.flush(srk.handle);
  }
  const persisted = await tpm.readPublicVerified(0x81000001);
  assert.deepEqual(persisted.name, srk.name);
  await tpm.evictControl(0x81000001, 0x81000001);
  await assert.rejects(tpm.readPublicVerified(0x81000001), /HANDLE/);
});

test("offline PolicyPCR prediction == tpm2_createpolicy == TPM trial session", async (t) => {
  if (!ready(t)) return;
  await tpm.pcrExtend(16, "sha256", createHash("sha256").update("trustvol").digest());
  const vals = await tpm.pcrRead("sha256", [7, 16]);
  const ours = computePolicyDigest({ bank: "sha256", pcrs: [7, 16], pcrValues: vals, pin: false });
  run("tpm2_pcrread", ["-Q", "-o", f("pcr.bin"), "sha256:7,16"], { env: sw!.env });
  run("tpm2_createpolicy", ["-Q", "--policy-pcr", "-l", "sha256:7,16", "-f", f("pcr.bin"), "-L", f("pol.bin")], { env: sw!.env });
  flushTools(sw!);
  assert.equal(ours.toString("hex"), readFileSync(f("pol.bin")).toString("hex"));
  const trial = await tpm.startSession({ type: "trial", symmetric: false });
  try {
    await tpm.policyPCR(trial, { hash: "sha256", pcrs: [7, 16] });
    await tpm.policyAuthValue(trial);
    assert.equal((await tpm.policyGetDigest(trial)).toString("hex"), computePolicyDigest({ bank: "sha256", pcrs: [16, 7], pcrValues: vals, pin: true }).toString("hex"));
  } finally {
    await tpm.flush(trial.handle);
  }
});

test("sealed by trustvol → tpm2_load + tpm2_unseal under a PolicyPCR session", async (t) => {
  if (!ready(t)) return;
  const secret = Buffer.from(createHash("sha256").update("secret-1").digest());
  const s = await sealSecret(tpm, secret, { pcrs: [7], bank: "sha256" });
  const { privBytes, pubBytes } = splitBlob(s.blob);
  writeFileSync(f("o.priv"), privBytes);
  writeFileSync(f("o.pub"), pubBytes);
  const env = sw!.env;
  try {
    run("tpm2_createprimary", ["-Q", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", f("p.ctx")], { env });
    run("tpm2_flushcontext", ["-t"], { env }); // contexts live in files; swtpm has only 3 object slots
    run("tpm2_load", ["-Q", "-C", f("p.ctx"), "-u", f("o.pub"), "-r", f("o.priv"), "-c", f("o.ctx")], { env });
    run("tpm2_flushcontext", ["-t"], { env });
    run("tpm2_startauthsession", ["-Q", "--policy-session", "-S", f("s.ctx")], { env });
    run("tpm2_policypcr", ["-Q", "-S", f("s.ctx"), "-l", "sha256:7"], { env });
    const out = run("tpm2_unseal", ["-c", f("o.ctx"), "-p", `session:${f("s.ctx")}`], { env }).stdout;
    assert.deepEqual(out, secret);
  } finally {
    flushTools(sw!);
  }
});

test("sealed by trustvol with a PIN → tpm2_unseal under PolicyPCR + PolicyAuthValue", async (t) => {
  if (!ready(t)) return;
  const av = pinToAuthValue(Buffer.from("test-only PIN"));
  const secret = Buffer.alloc(32, 0x61);
  const s = await sealSecret(tpm, secret, { pcrs: [7], bank: "sha256", authValue: av });
  const { privBytes, pubBytes } = splitBlob(s.blob);
  writeFileSync(f("q.priv"), privBytes);
  writeFileSync(f("q.pub"), pubBytes);
  const env = sw!.env;
  try {
    run("tpm2_createprimary", ["-Q", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", f("p.ctx")], { env });
    run("tpm2_flushcontext", ["-t"], { env });
    run("tpm2_load", ["-Q", "-C", f("p.ctx"), "-u", f("q.pub"), "-r", f("q.priv"), "-c", f("q.ctx")], { env });
    run("tpm2_flushcontext", ["-t"], { env });
    run("tpm2_startauthsession", ["-Q", "--policy-session", "-S", f("s.ctx")], { env });
    run("tpm2_policypcr", ["-Q", "-S", f("s.ctx"), "-l", "sha256:7"], { env });
    run("tpm2_policyauthvalue", ["-Q", "-S", f("s.ctx")], { env });
    // tpm2-tools takes a session's password only inline (str:/hex:); this is a fixed test-only value
    const out = run("tpm2_unseal", ["-c", f("q.ctx"), "-p", `session:${f("s.ctx")}+hex:${av.toString("hex")}`], { env }).stdout;
    assert.deepEqual(out, secret);
  } finally {
    flushTools(sw!);
  }
});

test("sealed by tpm2_create -L policy → unsealed by trustvol", async (t) => {
  if (!ready(t)) return;
  const env = sw!.env;
  const secret = Buffer.from("tools-sealed secret, 32 bytes..!");
  try {
    run("tpm2_createprimary", ["-Q", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", f("p.ctx")], { env });
    run("tpm2_pcrread", ["-Q", "-o", f("pcr.bin"), "sha256:7"], { env });
    run("tpm2_createpolicy", ["-Q", "--policy-pcr", "-l", "sha256:7", "-f", f("pcr.bin"), "-L", f("pol.bin")], { env });
    run("tpm2_create", ["-Q", "-C", f("p.ctx"), "-g", "sha256", "-a", "fixedtpm|fixedparent", "-L", f("pol.bin"), "-u", f("t.pub"), "-r", f("t.priv"), "-i-"], { env, input: secret });
  } finally {
    flushTools(sw!);
  }
  const blob = Buffer.concat([readFileSync(f("t.priv")), readFileSync(f("t.pub"))]);
  const out = await unsealSecret(tpm, { blob, pcrs: [7], bank: "sha256", pin: false, policyHash: readFileSync(f("pol.bin")) });
  assert.deepEqual(out, secret);
});

test("TrustSource: PIN, PCR change, reboot (swtpm restart), power cycle via control channel", async (t) => {
  if (!ready(t)) return;
  const src = new Tpm2TrustSource({ device: sw!.device });
  const info = await src.describe();
  assert.equal(info.kind, "tpm2");
  assert.equal(info.hardwareBacked, false);
  assert.ok((info.details?.pcrBanks as string[]).includes("sha256"));

  const secret = await src.getRandom(32);
  const pin = Buffer.from("2468");
  const blob = await src.seal(secret, { pcrs: [7], pcrBank: "sha256", pin });
  assert.deepEqual(await src.unseal(blob, { pin }), secret);
  await expectCode(src.unseal(blob, {}), "EBADPASS", /needs a PIN/);

  const plain = await src.seal(secret, { pcrs: [7] });
  await src.tpm.pcrExtend(7, "sha256", createHash("sha256").update("evil bootloader").digest());
  await expectCode(src.unseal(plain), "EPOLICY", /PCR 7 changed since enrollment: the boot chain differs; use the recovery key and re-enroll/);

  await sw!.restart(); // reboot: PCRs back to zero, seeds kept
  assert.deepEqual(await src.unseal(plain), secret);

  await src.tpm.pcrExtend(7, "sha256", createHash("sha256").update("x").digest());
  await expectCode(src.unseal(plain), "EPOLICY", /PCR 7/);
  const ctrl = new SwtpmControl({ path: `${sw!.sock}.ctrl` });
  await src.tpm.run(C.Shutdown, { shutdownType: 0 }); // orderly, or the TPM counts the power loss as a DA failure
  await ctrl.init(); // TPM_Init: power cycle without restarting swtpm
  await src.tpm.startup();
  assert.deepEqual(await src.unseal(plain), secret);
  await src.close();
});

test("wrong PIN: clear error with attempts left, lockout reported as ELOCKOUT, reset, then the right PIN works", async (t) => {
  if (!ready(t)) return;
  const src = new Tpm2TrustSource({ device: sw!.device });
  await src.tpm.run(C.DictionaryAttackLockReset, {}); // earlier tests may have left failures counted
  const secret = Buffer.alloc(32, 0x5a);
  const blob = await src.seal(secret, { pcrs: [7], pin: Buffer.from("right") });
  const e = await expectCode(src.unseal(blob, { pin: Buffer.from("wrong") }), "EBADPASS", /wrong TPM PIN \(2 attempts left before the TPM locks out\); check the PIN/);
  assert.ok(!e.message.includes("right"));
  let locked = false;
  for (let i = 0; i < 4 && !locked; i++) {
    try {
      await src.unseal(blob, { pin: Buffer.from("wrong") });
    } catch (err) {
      locked = (err as TrustvolError).code === "ELOCKOUT";
    }
  }
  assert.ok(locked, "swtpm locks out after 3 bad auths");
  await src.tpm.run(C.DictionaryAttackLockReset, {});
  assert.equal((await src.tpm.lockoutInfo()).counter, 0);
  assert.deepEqual(await src.unseal(blob, { pin: Buffer.from("right") }), secret);
});

test("a blob from another TPM is refused as 'different TPM'", async (t) => {
  if (!ready(t)) return;
  const secret = Buffer.alloc(32, 3);
  const s = await sealSecret(tpm, secret, { pcrs: [7], bank: "sha256" });
  const other = await startSwtpm();
  try {
    const otherTpm = new Tpm(openTpm2Transport(other.device));
    await expectCode(unsealSecret(otherTpm, { ...s, pin: false }), "EPOLICY", /different TPM/);
  } finally {
    await other.stop();
  }
});

test("bus sniffing: neither the secret, its base64 nor the PIN cross the bus in clear", async (t) => {
  if (!ready(t)) return;
  const seen: Buffer[] = [];
  const tapped = tapTransport(new SwtpmTransport({ path: sw!.sock }), (_d, b) => seen.push(b));
  const src = new Tpm2TrustSource({ transport: tapped });
  const secret = Buffer.from(createHash("sha256").update("do not leak").digest());
  const pin = Buffer.from("13579");
  const blob = await src.seal(secret, { pcrs: [7], pin });
  const out = await src.unseal(blob, { pin });
  assert.deepEqual(out, secret);
  const bus = Buffer.concat(seen);
  assert.ok(bus.length > 1000);
  for (const needle of [secret, Buffer.from(secret.toString("base64")), pinToAuthValue(pin), pin, secret.subarray(0, 8), secret.subarray(24)])
    assert.equal(bus.indexOf(needle), -1, `leaked ${needle.toString("hex")}`);

  // control: without parameter encryption the same sniffer does see a secret
  seen.length = 0;
  const t2 = new Tpm(tapped);
  const open = await sealSecret(t2, secret, { pcrs: [], bank: "sha256", attributes: TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.userWithAuth });
  const primary = await t2.createStoragePrimary("ecc");
  const { priv, pubBytes } = splitBlob(open.blob);
  const obj = await t2.run(C.Load, { parentHandle: { handle: primary.handle, name: primary.name }, inPrivate: priv, inPublic: pubBytes });
  seen.length = 0;
  const { outData: clear } = await t2.run(C.Unseal, { itemHandle: { handle: obj.handle, name: obj.name } }, [new PasswordSession()]);
  await t2.flush(obj.handle);
  await t2.flush(primary.handle);
  assert.deepEqual(clear, secret);
  assert.notEqual(Buffer.concat(seen).indexOf(secret), -1, "the tap sees clear-text unseals");
});

test("swtpm over TCP (command + control channel)", async (t) => {
  if (!ready(t)) return;
  const s = await startSwtpm({ tcp: true });
  try {
    const saved = process.env.TRUSTVOL_TPM2_DEVICE;
    process.env.TRUSTVOL_TPM2_DEVICE = s.device; // "auto" honours the environment
    const src = new Tpm2TrustSource();
    if (saved === undefined) delete process.env.TRUSTVOL_TPM2_DEVICE;
    else process.env.TRUSTVOL_TPM2_DEVICE = saved;
    assert.match((await src.describe()).description, /swtpm \(tcp 127\.0\.0\.1:\d+\)/);
    const secret = Buffer.alloc(32, 0x11);
    const blob = await src.seal(secret, { pcrs: [7] });
    await src.tpm.pcrExtend(7, "sha256", Buffer.alloc(32, 1));
    await expectCode(src.unseal(blob), "EPOLICY");
    await src.tpm.run(C.Shutdown, { shutdownType: 0 });
    await new SwtpmControl({ host: "127.0.0.1", port: s.port + 1 }).init();
    await src.tpm.startup();
    assert.deepEqual(await src.unseal(blob), secret);
  } finally {
    await s.stop();
  }
});

test("PolicyAuthorize: sealed to a signing key, unsealed with a signed PCR policy (LoadExternal + VerifySignature)", async (t) => {
  if (!ready(t)) return;
  const { generateKeyPairSync, sign } = await import("node:crypto");
  const { TPM_ALG, TPM_ECC, TPMA_OBJECT: A } = await import("../../../src/trust/tpm2/constants.js");
  const { objectName } = await import("../../../src/trust/tpm2/structures.js");
  const { extendPolicyAuthorize, extendPolicyPCR, pcrCompositeDigest } = await import("../../../src/trust/tpm2/policy.js");
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwk = publicKey.export({ format: "jwk" });
  const keyPub = {
    type: TPM_ALG.ECC, nameAlg: TPM_ALG.SHA256, objectAttributes: A.sign | A.userWithAuth, authPolicy: Buffer.alloc(0), unique: Buffer.alloc(0),
    ecc: { symmetric: { algorithm: TPM_ALG.NULL }, scheme: { scheme: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 }, curveId: TPM_ECC.NIST_P256, kdf: { scheme: TPM_ALG.NULL } },
    eccPoint: { x: Buffer.from(jwk.x!, "base64url"), y: Buffer.from(jwk.y!, "base64url") },
  };
  const keyName = objectName(keyPub);
  const secret = Buffer.alloc(32, 0x77);
  const s = await sealSecret(tpm, secret, { pcrs: [], bank: "sha256", authPolicy: extendPolicyAuthorize("sha256", Buffer.alloc(32), keyName) });

  // The signer approves "PCR 7 has its current value"
  const approved = extendPolicyPCR("sha256", Buffer.alloc(32), { hash: "sha256", pcrs: [7] }, pcrCompositeDigest("sha256", "sha256", [7], await tpm.pcrRead("sha256", [7])));
  const rs = sign("sha256", approved, { key: privateKey, dsaEncoding: "ieee-p1363" });
  const runPolicy = async (tp: Tpm, session: import("../../../src/trust/tpm2/session.js").AuthSession) => {
    await tp.policyPCR(session, { hash: "sha256", pcrs: [7] });
    const key = await tp.run(C.LoadExternal, { inPublic: keyPub });
    try {
      assert.deepEqual(key.name, keyName);
      const aHash = createHash("sha256").update(approved).digest();
      const { validation: ticket } = await tp.run(C.VerifySignature, { keyHandle: { handle: key.handle, name: key.name }, digest: aHash, signature: { sigAlg: TPM_ALG.ECDSA, hash: "sha256", r: rs.subarray(0, 32), s: rs.subarray(32) } });
      await tp.run(C.PolicyAuthorize, { policySession: session.handle, approvedPolicy: approved, policyRef: Buffer.alloc(0), keySign: key.name, checkTicket: ticket });
    } finally {
      await tp.flushQuiet(key.handle);
    }
  };
  assert.deepEqual(await unsealSecret(tpm, { blob: s.blob, pcrs: [], bank: "sha256", pin: false, runPolicy }), secret);
  await tpm.pcrExtend(7, "sha256", Buffer.alloc(32, 9));
  await expectCode(unsealSecret(tpm, { blob: s.blob, pcrs: [], bank: "sha256", pin: false, runPolicy }), "EPOLICY");
  await sw!.restart();
});

test("PolicyPassword variant of the PIN policy unseals too (same digest as PolicyAuthValue)", async (t) => {
  if (!ready(t)) return;
  const av = pinToAuthValue(Buffer.from("pw"));
  const secret = Buffer.alloc(32, 0x66);
  const s = await sealSecret(tpm, secret, { pcrs: [7], bank: "sha256", authValue: av });
  const out = await unsealSecret(tpm, { blob: s.blob, pcrs: [7], bank: "sha256", pin: true, runPolicy: async (tp, session) => {
    await tp.policyPCR(session, { hash: "sha256", pcrs: [7] });
    await tp.policyPassword(session);
  } }, { authValue: av });
  assert.deepEqual(out, secret);
});
