// Records test/trust/tpm2/vectors/tpm2-vectors.json once, from the reference implementation (swtpm/libtpms) and
// tpm2-tools. Not a test: `npx tsx test/trust/tpm2/vectors/generate.ts` on a host with swtpm and tpm2-tools.
// The vectors test (../vectors.test.ts) then runs without a TPM.
import { createECDH, createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { run, tmpDir } from "../../../helpers/tools.js";
import { startSwtpm } from "../../../helpers/swtpm.js";
import { Tpm, SwtpmTransport, tapTransport } from "../../../../src/trust/tpm2/index.js";
import * as C from "../../../../src/trust/tpm2/commands.js";
import { TPMA_SESSION, TPM_ALG, TPM_CC, TPM_RH, TPM_SE } from "../../../../src/trust/tpm2/constants.js";
import { kdfa, kdfe } from "../../../../src/trust/tpm2/crypto.js";
import { AuthSession } from "../../../../src/trust/tpm2/session.js";
import { TpmReader } from "../../../../src/trust/tpm2/marshal.js";
import { NV_PUBLIC_2B, TPMA_NV, nvName } from "../../../../src/trust/tpm2/nv.js";
import { encode } from "../../../../src/trust/tpm2/schema.js";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const det = (label: string, n = 32) => createHash("sha256").update(`trustvol vector ${label}`).digest().subarray(0, n);

const tmp = tmpDir();
const sw = await startSwtpm();
const f = (n: string) => join(tmp.dir, n);
const tools = (cmd: string, args: string[], input?: Buffer) => run(cmd, args, { env: sw.env, ...(input ? { input } : {}) });
const flushTools = () => {
  for (const k of ["-t", "-l", "-s"]) run("tpm2_flushcontext", [k], { env: sw.env, check: false });
};
/** A trial session run through `steps` by tpm2-tools; returns the policy digest file contents after each -L. */
function trial(steps: (s: string) => void): void {
  tools("tpm2_startauthsession", ["-S", f("s.ctx")]);
  try {
    steps(f("s.ctx"));
  } finally {
    tools("tpm2_flushcontext", [f("s.ctx")]);
  }
}
const read = (n: string) => hex(readFileSync(f(n)));

const out: Record<string, unknown> = {
  about:
    "TPM 2.0 test vectors, recorded once by test/trust/tpm2/vectors/generate.ts: KDFa from the reference implementation's self-test data (libtpms KdfTestData.h); policy digests computed by tpm2-tools 5.4 on swtpm trial sessions; a salted HMAC session with response parameter encryption exchanged with swtpm (the TPM produced nonceTPM, the response HMAC and the ciphertext), and command parameter encryption through it (NV_Write the TPM decrypted; NV_Read gave back the plaintext).",
  kdfa: [
    { source: "TPM 2.0 reference implementation self-test (KdfTestData.h)", hash: "sha1", key: "271fa08bbdc5060ec3dfa928ff9b73123a12da0c", label: "KDFSELFTESTLABEL", contextU: "ce244f395dca7391", contextV: "da504031ddf12e83", bits: 160, out: "55b5a7184aa07423c47dae766c26a2377d7cf851" },
    { source: "TPM 2.0 reference implementation self-test (KdfTestData.h)", hash: "sha256", key: "271fa08bbdc5060ec3dfa928ff9b73123a12da0c", label: "KDFSELFTESTLABEL", contextU: "ce244f395dca7391", contextV: "da504031ddf12e83", bits: 160, out: "bb0259e1c8ba607e6a2cd704b69a902e9ade84c4" },
    { source: "TPM 2.0 reference implementation self-test (KdfTestData.h)", hash: "sha384", key: "271fa08bbdc5060ec3dfa928ff9b73123a12da0c", label: "KDFSELFTESTLABEL", contextU: "ce244f395dca7391", contextV: "da504031ddf12e83", bits: 160, out: "1dce70c9113eb2dba47bd9cfc72bf46f45b09312" },
    { source: "TPM 2.0 reference implementation self-test (KdfTestData.h)", hash: "sha512", key: "271fa08bbdc5060ec3dfa928ff9b73123a12da0c", label: "KDFSELFTESTLABEL", contextU: "ce244f395dca7391", contextV: "da504031ddf12e83", bits: 160, out: "8be2c1b85b78569b9fa759f5857c56d684810fd3" },
  ],
};

// ---------- policy digests (tpm2-tools on trial sessions) ----------
const policies: Record<string, unknown>[] = [];
const pcr0 = det("pcr0");
const pcr7 = det("pcr7");
writeFileSync(f("pcrs.bin"), Buffer.concat([pcr0, pcr7]));
trial((s) => {
  tools("tpm2_policypcr", ["-Q", "-S", s, "-l", "sha256:0,7", "-f", f("pcrs.bin"), "-L", f("pcr.pol")]);
  tools("tpm2_policyauthvalue", ["-Q", "-S", s, "-L", f("pcr-auth.pol")]);
});
policies.push({ tool: "tpm2_policypcr -l sha256:0,7 -f VALUES", steps: [{ kind: "PolicyPCR", bank: "sha256", pcrs: [0, 7], values: { 0: hex(pcr0), 7: hex(pcr7) } }], digest: read("pcr.pol") });
policies.push({
  tool: "tpm2_policypcr + tpm2_policyauthvalue",
  steps: [{ kind: "PolicyPCR", bank: "sha256", pcrs: [0, 7], values: { 0: hex(pcr0), 7: hex(pcr7) } }, { kind: "PolicyAuthValue" }],
  digest: read("pcr-auth.pol"),
});
trial((s) => tools("tpm2_policyauthvalue", ["-Q", "-S", s, "-L", f("auth.pol")]));
policies.push({ tool: "tpm2_policyauthvalue", steps: [{ kind: "PolicyAuthValue" }], digest: read("auth.pol") });
trial((s) => tools("tpm2_policypassword", ["-Q", "-S", s, "-L", f("pw.pol")]));
policies.push({ tool: "tpm2_policypassword", steps: [{ kind: "PolicyPassword" }], digest: read("pw.pol") });

// PolicyAuthorize with a key loaded from PEM (its name) and a policyRef
run("openssl", ["genrsa", "-out", f("k.pem"), "2048"]);
run("openssl", ["rsa", "-in", f("k.pem"), "-pubout", "-out", f("k.pub.pem")]);
tools("tpm2_loadexternal", ["-Q", "-C", "o", "-G", "rsa", "-u", f("k.pub.pem"), "-c", f("k.ctx"), "-n", f("k.name")]);
flushTools();
writeFileSync(f("ref.bin"), det("policyRef", 16));
trial((s) => tools("tpm2_policyauthorize", ["-Q", "-S", s, "-L", f("authz.pol"), "-i", f("pcr.pol"), "-q", f("ref.bin"), "-n", f("k.name")]));
policies.push({ tool: "tpm2_policyauthorize -i pcr.pol -q REF -n KEYNAME", steps: [{ kind: "PolicyAuthorize", keyName: read("k.name"), policyRef: hex(det("policyRef", 16)) }], digest: read("authz.pol") });

// PolicyOR over the PCR policy and the PCR+authvalue policy
trial((s) => {
  tools("tpm2_policypcr", ["-Q", "-S", s, "-l", "sha256:0,7", "-f", f("pcrs.bin")]);
  tools("tpm2_policyor", ["-Q", "-S", s, "-L", f("or.pol"), "-l", `sha256:${f("pcr.pol")},${f("pcr-auth.pol")},${f("auth.pol")}`]);
});
policies.push({ tool: "tpm2_policyor -l sha256:pcr.pol,pcr-auth.pol,auth.pol", steps: [{ kind: "PolicyOR", branches: [read("pcr.pol"), read("pcr-auth.pol"), read("auth.pol")] }], digest: read("or.pol") });

// NV indexes: PolicyAuthorizeNV (index holds a TPMT_HA, as systemd-pcrlock's) and PolicyNV
const nvA = "0x01500016";
tools("tpm2_nvdefine", ["-Q", nvA, "-C", "o", "-s", "34", "-a", "ownerread|ownerwrite|authread|authwrite|no_da"]);
tools("tpm2_nvwrite", ["-Q", nvA, "-C", "o", "-i", "-"], Buffer.concat([Buffer.from([0, 0x0b]), Buffer.from(read("or.pol"), "hex")]));
const nvPublicOf = (idx: string) => {
  tools("tpm2_nvreadpublic", [idx]); // warms nothing; the name comes from the TPM below
  return tools("tpm2_nvreadpublic", [idx]).stdout.toString();
};
const nameA = /name: ([0-9a-f]+)/.exec(nvPublicOf(nvA))![1]!;
trial((s) => tools("tpm2_policyauthorizenv", ["-Q", "-S", s, "-L", f("authnv.pol"), "-C", nvA, nvA]));
policies.push({ tool: `tpm2_policyauthorizenv ${nvA}`, steps: [{ kind: "PolicyAuthorizeNV", nvName: nameA }], digest: read("authnv.pol") });

const nvB = "0x01500017";
tools("tpm2_nvdefine", ["-Q", nvB, "-C", "o", "-s", "8", "-a", "ownerread|ownerwrite|authread|authwrite"]);
tools("tpm2_nvwrite", ["-Q", nvB, "-C", "o", "-i", "-"], Buffer.from("0102030405060708", "hex"));
const nameB = /name: ([0-9a-f]+)/.exec(nvPublicOf(nvB))![1]!;
writeFileSync(f("opb.bin"), Buffer.from("0304", "hex"));
trial((s) => tools("tpm2_policynv", ["-Q", "-S", s, "-L", f("nv.pol"), "-C", nvB, "-i", f("opb.bin"), "--offset", "2", nvB, "eq"]));
policies.push({ tool: `tpm2_policynv ${nvB} eq --offset 2`, steps: [{ kind: "PolicyNV", nvName: nameB, operandB: "0304", offset: 2, operation: 0 }], digest: read("nv.pol") });
out.policies = policies;

// NV names: the TPM's name for each index against the public area we describe
const tpm = new Tpm(new SwtpmTransport({ path: sw.sock }));
const nv = [];
for (const idx of [nvA, nvB]) {
  const r = await tpm.run(C.NV_ReadPublic, { nvIndex: Number(idx) });
  nv.push({ nvPublic: hex(r.nvPublic.bytes), name: hex(r.nvName) });
}
out.nvNames = nv;
flushTools();

// ---------- salted HMAC session, response parameter encryption ----------
const primary = await tpm.createStoragePrimary("ecc");
const ecdh = createECDH("prime256v1");
ecdh.setPrivateKey(det("ephemeral"));
const ephPub = ecdh.getPublicKey();
const qx = primary.public.eccPoint!.x;
const qy = primary.public.eccPoint!.y;
const z = ecdh.computeSecret(Buffer.concat([Buffer.from([4]), qx, qy]));
const ex = ephPub.subarray(1, 33);
const ey = ephPub.subarray(33, 65);
const salt = kdfe("sha256", z, "SECRET", ex, qx, 256);
const encSalt = Buffer.concat([Buffer.from([0, 32]), ex, Buffer.from([0, 32]), ey]);
const nonceCaller0 = det("nonceCaller0");
const started = await tpm.run(C.StartAuthSession, {
  tpmKey: { handle: primary.handle, name: primary.name }, bind: TPM_RH.NULL, nonceCaller: nonceCaller0, encryptedSalt: encSalt,
  sessionType: TPM_SE.HMAC, symmetric: { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB }, authHash: "sha256",
});
const sessionKey = kdfa("sha256", salt, "ATH", started.nonceTPM, nonceCaller0, 256);
const trialS = await tpm.startSession({ type: "trial" });
await tpm.policyAuthValue(trialS);
const seen: { dir: string; bytes: Buffer }[] = [];
const tapped = new Tpm(tapTransport(tpm.transport, (dir, bytes) => seen.push({ dir, bytes })));
const attrs = TPMA_SESSION.continueSession | TPMA_SESSION.encrypt;
const b = new AuthSession(started.handle, TPM_SE.HMAC, "sha256", started.nonceTPM, nonceCaller0, Buffer.from(sessionKey), 128, attrs);
const nonceCaller1 = det("nonceCaller1");
b.prepare = () => void (b.nonceCaller = Buffer.from(nonceCaller1));
const { policyDigest } = await tapped.run(C.PolicyGetDigest, { policySession: trialS.handle }, [b]);
const rsp = seen.find((x) => x.dir === "rsp")!.bytes;
const cmd = seen.find((x) => x.dir === "cmd")!.bytes;
const r = new TpmReader(rsp);
r.u16(), r.u32(), r.u32();
const rparams = Buffer.from(r.bytes(r.u32()));
const rspNonce = r.tpm2b();
const rspAttrs = r.u8();
const rspHmac = r.tpm2b();
out.session = {
  about: "StartAuthSession(HMAC, salted to an ECC P-256 primary, AES-128-CFB, sha256), then PolicyGetDigest of a trial session after PolicyAuthValue with this session attached (continueSession|encrypt, not authorising)",
  ephemeralPrivate: hex(det("ephemeral")), tpmPoint: { x: hex(qx), y: hex(qy) }, z: hex(z), salt: hex(salt), encryptedSalt: hex(encSalt),
  nonceCaller0: hex(nonceCaller0), nonceTPM0: hex(started.nonceTPM), sessionKey: hex(sessionKey),
  command: { cc: TPM_CC.PolicyGetDigest, handleNames: [trialS.handle.toString(16).padStart(8, "0")], parameters: "", nonceCaller: hex(nonceCaller1), attributes: attrs, wire: hex(cmd) },
  response: { wire: hex(rsp), parameters: hex(rparams), nonceTPM: hex(rspNonce), attributes: rspAttrs, hmac: hex(rspHmac), plaintextParameter: hex(policyDigest) },
};

// ---------- command parameter encryption: NV_Write through the same salted session (decrypt) ----------
// The session authorises an NV index with its own authValue, so the command's encryption key is sessionKey ‖ authValue.
// What the TPM decrypted is read back in the clear (NV_Read, password session): the ciphertext on the wire is right.
const nvAuth = Buffer.from("trustvol nv vector auth");
const nvIdx = 0x01500030;
const nvPub = { nvIndex: nvIdx, nameAlg: TPM_ALG.SHA256, attributes: TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA, authPolicy: Buffer.alloc(0), dataSize: 32 };
await tpm.run(C.NV_DefineSpace, { authHandle: C.permanentHandle(TPM_RH.OWNER), auth: nvAuth, publicInfo: nvPub });
const nvNameBefore = nvName(nvPub);
const plaintext = det("nv plaintext");
const nonceTPMBeforeWrite = Buffer.from(b.nonceTPM);
const nonceCaller2 = det("nonceCaller2");
b.attributes = TPMA_SESSION.continueSession | TPMA_SESSION.decrypt;
b.prepare = () => void (b.nonceCaller = Buffer.from(nonceCaller2));
seen.length = 0;
const nvRef = { handle: nvIdx, name: nvNameBefore, authValue: nvAuth };
await tapped.run(C.NV_Write, { authHandle: nvRef, nvIndex: { handle: nvIdx, name: nvNameBefore }, data: plaintext }, [b]);
const wcmd = seen.find((x) => x.dir === "cmd")!.bytes;
const wrsp = seen.find((x) => x.dir === "rsp")!.bytes;
const wr = new TpmReader(wcmd);
wr.u16(), wr.u32(), wr.u32(), wr.u32(), wr.u32();
wr.bytes(wr.u32()); // authorization area
const wparams = Buffer.from(wr.bytes(wr.remaining));
const rr = new TpmReader(wrsp);
rr.u16(), rr.u32();
const wrc = rr.u32();
rr.bytes(rr.u32()); // no response parameters
const wNonce = rr.tpm2b();
const wAttrs = rr.u8();
const wHmac = rr.tpm2b();
const written = nvName({ ...nvPub, attributes: (nvPub.attributes | TPMA_NV.WRITTEN) >>> 0 });
const back = await tpm.run(C.NV_Read, { authHandle: { handle: nvIdx, name: written, authValue: nvAuth }, nvIndex: { handle: nvIdx, name: written }, size: 32, offset: 0 });
if (!back.data.equals(plaintext) || wrc !== 0) throw new Error("the TPM did not store the plaintext");
out.commandEncryption = {
  about: "NV_Write(authHandle = nvIndex, authorised by its authValue) through the salted session above with decrypt set: the TPM decrypted the data parameter (AES-128-CFB, key sessionKey ‖ authValue, nonceNewer = nonceCaller) and NV_Read gave back the plaintext",
  nvPublic: hex(encode(NV_PUBLIC_2B, nvPub)), nvAuth: hex(nvAuth), nvName: hex(nvNameBefore),
  nonceTPM: hex(nonceTPMBeforeWrite), nonceCaller: hex(nonceCaller2), attributes: b.attributes, cc: TPM_CC.NV_Write,
  plaintext: hex(plaintext), wire: hex(wcmd), parameters: hex(wparams),
  response: { wire: hex(wrsp), nonceTPM: hex(wNonce), attributes: wAttrs, hmac: hex(wHmac) },
  nvReadBack: hex(back.data),
};
await tpm.run(C.NV_UndefineSpace, { authHandle: C.permanentHandle(TPM_RH.OWNER), nvIndex: { handle: nvIdx, name: written } });

await tpm.flushQuiet(started.handle);
await tpm.flushQuiet(trialS.handle);
await tpm.flushQuiet(primary.handle);
await tpm.transport.close();
await sw.stop();
tmp.cleanup();
writeFileSync(join(import.meta.dirname, "tpm2-vectors.json"), JSON.stringify(out, null, 2) + "\n");
console.log("wrote tpm2-vectors.json");
