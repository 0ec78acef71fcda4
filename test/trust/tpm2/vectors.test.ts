// Recorded TPM 2.0 vectors (vectors/tpm2-vectors.json, see vectors/generate.ts), checked without a TPM: KDFa, KDFe,
// the session HMAC both ways, parameter encryption in both directions, policy digests of every step, NV names.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createECDH } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { hashOf, kdfa, kdfe } from "../../../src/trust/tpm2/crypto.js";
import { AuthSession } from "../../../src/trust/tpm2/session.js";
import { TPM_SE, type HashName } from "../../../src/trust/tpm2/constants.js";
import { PolicyAuthValue, PolicyAuthorize, PolicyAuthorizeNV, PolicyNV, PolicyOR, PolicyPCR, PolicyPassword, policyDigestOf, type PolicyStep } from "../../../src/trust/tpm2/policy.js";
import { NV_PUBLIC_2B, nvName } from "../../../src/trust/tpm2/nv.js";
import { decode } from "../../../src/trust/tpm2/schema.js";
import { TpmReader } from "../../../src/trust/tpm2/marshal.js";
import { COMMANDS } from "../../../src/trust/tpm2/commands.js";

const V = JSON.parse(readFileSync(join(import.meta.dirname, "vectors", "tpm2-vectors.json"), "utf8"));
const h = (s: string) => Buffer.from(s, "hex");
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};

test("KDFa: the reference implementation's self-test vectors, every hash", () => {
  for (const v of V.kdfa) assert.equal(kdfa(v.hash, h(v.key), v.label, h(v.contextU), h(v.contextV), v.bits).toString("hex"), v.out, v.hash);
});

test("salted session recorded with swtpm: KDFe salt, KDFa session key, command and response HMAC, AES-CFB response decryption", () => {
  const s = V.session;
  // KDFe (ECDH salt): z from the ephemeral key and the TPM's point, then the salt the TPM derived too
  const ecdh = createECDH("prime256v1");
  ecdh.setPrivateKey(h(s.ephemeralPrivate));
  const z = ecdh.computeSecret(Buffer.concat([Buffer.from([4]), h(s.tpmPoint.x), h(s.tpmPoint.y)]));
  assert.equal(z.toString("hex"), s.z);
  const ex = ecdh.getPublicKey().subarray(1, 33);
  assert.equal(kdfe("sha256", z, "SECRET", ex, h(s.tpmPoint.x), 256).toString("hex"), s.salt);
  // KDFa("ATH") session key
  assert.equal(AuthSession.deriveSessionKey("sha256", Buffer.alloc(0), h(s.salt), h(s.nonceTPM0), h(s.nonceCaller0)).toString("hex"), s.sessionKey);

  const session = new AuthSession(0x02000000, TPM_SE.HMAC, "sha256", h(s.nonceTPM0), h(s.nonceCaller0), h(s.sessionKey), 128, s.command.attributes);
  session.prepare = () => void (session.nonceCaller = h(s.command.nonceCaller));
  session.prepare();
  // command HMAC: the bytes the TPM accepted (last TPM2B of the authorization area on the wire)
  const cpHashFor = (hash: HashName) => hashOf(hash, u32(s.command.cc), ...s.command.handleNames.map(h), h(s.command.parameters));
  const auth = session.commandAuth(cpHashFor, undefined, false);
  assert.ok(h(s.command.wire).includes(auth), "the command authorization equals the one sent to swtpm");
  // response: the TPM's HMAC verifies (responseAuth throws otherwise), then its encrypted parameter decrypts
  const rparams = h(s.response.parameters);
  const rpHashFor = (hash: HashName) => hashOf(hash, u32(0), u32(s.command.cc), rparams);
  session.responseAuth(rpHashFor, h(s.response.nonceTPM), s.response.attributes, h(s.response.hmac), undefined, false);
  const r = new TpmReader(rparams);
  const body = r.bytes(r.u16());
  assert.equal(session.paramCrypt(true, Buffer.from(body), undefined, false, "rsp").toString("hex"), s.response.plaintextParameter);
  assert.notEqual(Buffer.from(body).toString("hex"), s.response.plaintextParameter, "it was encrypted on the wire");
  // a flipped bit in the TPM's HMAC is refused
  const bad = h(s.response.hmac);
  bad[0]! ^= 1;
  const again = new AuthSession(0x02000000, TPM_SE.HMAC, "sha256", h(s.nonceTPM0), h(s.command.nonceCaller), h(s.sessionKey), 128, s.command.attributes);
  assert.throws(() => again.responseAuth(rpHashFor, h(s.response.nonceTPM), s.response.attributes, bad, undefined, false), /HMAC does not verify/);
});

test("command parameter encryption recorded with swtpm: NV_Write's data encrypted with sessionKey ‖ authValue, the TPM accepted it and stored the plaintext", () => {
  const s = V.session;
  const c = V.commandEncryption;
  const session = new AuthSession(0x02000000, TPM_SE.HMAC, "sha256", h(c.nonceTPM), h(c.nonceCaller), h(s.sessionKey), 128, c.attributes);
  const nvAuth = h(c.nvAuth);
  // the index authorises itself: its authValue enters the key; nonceNewer = nonceCaller for a command (Part 1 §21.3)
  const enc = session.paramCrypt(false, h(c.plaintext), nvAuth, true, "cmd");
  const params = h(c.parameters);
  assert.equal(params.readUInt16BE(0), enc.length);
  assert.equal(params.subarray(2, 2 + enc.length).toString("hex"), enc.toString("hex"), "trustvol's ciphertext is the one the TPM decrypted");
  assert.ok(h(c.wire).includes(params), "the parameters are those sent to swtpm");
  assert.notEqual(enc.toString("hex"), c.plaintext, "encrypted on the wire");
  // a key without the authValue (the rule for a session that does not authorise) gives other bytes
  assert.notEqual(session.paramCrypt(false, h(c.plaintext), nvAuth, false, "cmd").toString("hex"), enc.toString("hex"));
  // and decrypting the wire bytes in the command direction gives the plaintext back; the response direction does not
  assert.equal(session.paramCrypt(true, enc, nvAuth, true, "cmd").toString("hex"), c.plaintext);
  assert.notEqual(session.paramCrypt(true, enc, nvAuth, true, "rsp").toString("hex"), c.plaintext);
  // the command HMAC over cpHash of the encrypted parameters is the one on the wire (names: the index twice)
  const cpHashFor = (hash: HashName) => hashOf(hash, u32(c.cc), h(c.nvName), h(c.nvName), params);
  assert.ok(h(c.wire).includes(session.commandAuth(cpHashFor, nvAuth, true)));
  // the TPM's response HMAC verifies (it accepted the authorisation), and what NV_Read gave back is the plaintext
  session.responseAuth((hash: HashName) => hashOf(hash, u32(0), u32(c.cc), Buffer.alloc(0)), h(c.response.nonceTPM), c.response.attributes, h(c.response.hmac), nvAuth, true);
  assert.equal(c.nvReadBack, c.plaintext);
});

function stepOf(d: Record<string, any>): PolicyStep {
  switch (d.kind) {
    case "PolicyPCR":
      return PolicyPCR({ hash: d.bank, pcrs: d.pcrs }, { values: new Map(Object.entries(d.values as Record<string, string>).map(([k, v]) => [Number(k), h(v)])) });
    case "PolicyAuthValue":
      return PolicyAuthValue();
    case "PolicyPassword":
      return PolicyPassword();
    case "PolicyAuthorize":
      return PolicyAuthorize(h(d.keyName), h(d.policyRef));
    case "PolicyOR":
      return PolicyOR((d.branches as string[]).map(h));
    case "PolicyAuthorizeNV":
      return PolicyAuthorizeNV({ index: 0, name: h(d.nvName) });
    case "PolicyNV":
      return PolicyNV({ index: 0, name: h(d.nvName) }, h(d.operandB), d.operation, d.offset);
  }
  throw new Error(`unknown step ${d.kind}`);
}

test("policy digests: every step kind equals tpm2-tools on swtpm", () => {
  const kinds = new Set<string>();
  for (const p of V.policies) {
    const steps = p.steps.map(stepOf);
    for (const s of steps) kinds.add(s.kind);
    assert.equal(policyDigestOf("sha256", steps).toString("hex"), p.digest, p.tool);
  }
  assert.deepEqual([...kinds].sort(), ["PolicyAuthValue", "PolicyAuthorize", "PolicyAuthorizeNV", "PolicyNV", "PolicyOR", "PolicyPCR", "PolicyPassword"]);
});

test("NV names: nameAlg ‖ H(TPMS_NV_PUBLIC) equals the TPM's, and the public area round-trips", () => {
  for (const v of V.nvNames) {
    const pub = decode(NV_PUBLIC_2B, h(v.nvPublic), "TPM2B_NV_PUBLIC");
    assert.equal(nvName(pub).toString("hex"), v.name);
  }
});

test("command descriptions: authorised handles first, encryptable first parameters are TPM2Bs", () => {
  for (const [name, d] of Object.entries(COMMANDS)) {
    assert.ok(d.authHandles >= 0, name);
    assert.equal(typeof d.cc, "number", name);
  }
  assert.equal(COMMANDS.Create.encCommand, true);
  assert.equal(COMMANDS.Unseal.encResponse, true);
  assert.equal(COMMANDS.PCR_Read.encResponse, false);
  assert.equal(COMMANDS.NV_Write.authHandles, 1);
  assert.equal(COMMANDS.PolicyAuthorizeNV.authHandles, 1);
});
