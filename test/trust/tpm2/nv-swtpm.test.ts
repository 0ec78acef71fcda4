// NV commands and the NV policy steps against swtpm, tpm2-tools as the oracle: NV_DefineSpace / NV_Write / NV_Read /
// NV_ReadPublic / NV_UndefineSpace, then PolicyNV and PolicyOR + PolicyAuthorizeNV run on real policy sessions with the
// digest each step predicts offline.
import { test } from "node:test";
import assert from "node:assert/strict";
import { swtpmForFile } from "../../helpers/swtpm.js";
import { run } from "../../helpers/tools.js";
import { Tpm, SwtpmTransport } from "../../../src/trust/tpm2/index.js";
import * as C from "../../../src/trust/tpm2/commands.js";
import { TPM_ALG, TPM_RH } from "../../../src/trust/tpm2/constants.js";
import { TPMA_NV, nvName } from "../../../src/trust/tpm2/nv.js";
import { PolicyAuthValue, PolicyAuthorizeNV, PolicyNV, PolicyOR, PolicyPCR, TPM_EO, encodeNvPolicy, policyDigestOf, runPolicy } from "../../../src/trust/tpm2/policy.js";

const fx = swtpmForFile(["swtpm", "tpm2_nvread", "tpm2_nvreadpublic"]);
const owner = () => C.permanentHandle(TPM_RH.OWNER);

test("NV_DefineSpace / NV_Write / NV_Read / NV_ReadPublic: the name trustvol computes is the TPM's; tpm2_nvread reads what was written", async (t) => {
  if (!fx.ready(t)) return;
  const tpm = new Tpm(new SwtpmTransport({ path: fx.sw.sock }));
  const idx = 0x01500020;
  const pub = { nvIndex: idx, nameAlg: TPM_ALG.SHA256, attributes: TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA, authPolicy: Buffer.alloc(0), dataSize: 34 };
  await tpm.run(C.NV_DefineSpace, { authHandle: owner(), publicInfo: pub });
  const before = await tpm.run(C.NV_ReadPublic, { nvIndex: idx });
  assert.deepEqual(before.nvName, nvName(pub));
  const digest = Buffer.alloc(32, 0x5c);
  await tpm.run(C.NV_Write, { authHandle: owner(), nvIndex: { handle: idx, name: before.nvName }, data: encodeNvPolicy("sha256", digest) });
  const after = await tpm.run(C.NV_ReadPublic, { nvIndex: idx });
  assert.deepEqual(after.nvName, nvName({ ...pub, attributes: (pub.attributes | TPMA_NV.WRITTEN) >>> 0 }), "the name changes once written");
  const { data } = await tpm.run(C.NV_Read, { authHandle: owner(), nvIndex: { handle: idx, name: after.nvName }, size: 34, offset: 0 });
  assert.equal(data.toString("hex"), "000b" + digest.toString("hex"));
  assert.equal(run("tpm2_nvread", ["-C", "o", "-s", "34", `0x${idx.toString(16)}`], { env: fx.sw.env }).stdout.toString("hex"), data.toString("hex"));
  await tpm.run(C.NV_UndefineSpace, { authHandle: owner(), nvIndex: { handle: idx, name: after.nvName } });
  assert.notEqual(run("tpm2_nvreadpublic", [`0x${idx.toString(16)}`], { env: fx.sw.env, check: false }).status, 0);
});

test("policy sessions: PolicyNV, and PolicyOR + PolicyAuthorizeNV over an index holding the approved digest, equal their offline digests", async (t) => {
  if (!fx.ready(t)) return;
  const tpm = new Tpm(new SwtpmTransport({ path: fx.sw.sock }));
  // an index holding 8 bytes for PolicyNV
  const a = 0x01500021;
  const pa = { nvIndex: a, nameAlg: TPM_ALG.SHA256, attributes: TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE, authPolicy: Buffer.alloc(0), dataSize: 8 };
  await tpm.run(C.NV_DefineSpace, { authHandle: owner(), publicInfo: pa });
  await tpm.run(C.NV_Write, { authHandle: owner(), nvIndex: { handle: a, name: nvName(pa) }, data: Buffer.from("0102030405060708", "hex") });
  const aName = nvName({ ...pa, attributes: (pa.attributes | TPMA_NV.WRITTEN) >>> 0 });
  const nvStep = PolicyNV({ index: a, name: aName, auth: owner() }, Buffer.from("0506", "hex"), TPM_EO.EQ, 4);
  let s = await tpm.startSession({ type: "policy" });
  await runPolicy(tpm, s, [nvStep]);
  assert.deepEqual(await tpm.policyGetDigest(s), policyDigestOf("sha256", [nvStep]));
  await tpm.flush(s.handle);

  // the pcrlock shape: PolicyPCR variants under PolicyOR, the resulting digest stored in an index, PolicyAuthorizeNV
  const pcr16 = (await tpm.pcrRead("sha256", [16])).get(16)!;
  const branches = [Buffer.alloc(32, 1), pcr16].map((v) => PolicyPCR({ hash: "sha256", pcrs: [16] }, { values: new Map([[16, v]]) }).update("sha256", Buffer.alloc(32)));
  const or = PolicyOR(branches, [PolicyPCR({ hash: "sha256", pcrs: [16] })]);
  const approved = policyDigestOf("sha256", [or]);
  const b = 0x01500022;
  const pb = { nvIndex: b, nameAlg: TPM_ALG.SHA256, attributes: TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA, authPolicy: Buffer.alloc(0), dataSize: 34 };
  await tpm.run(C.NV_DefineSpace, { authHandle: owner(), publicInfo: pb });
  await tpm.run(C.NV_Write, { authHandle: owner(), nvIndex: { handle: b, name: nvName(pb) }, data: encodeNvPolicy("sha256", approved) });
  const bName = nvName({ ...pb, attributes: (pb.attributes | TPMA_NV.WRITTEN) >>> 0 });
  const steps = [PolicyAuthorizeNV({ index: b, name: bName, auth: owner() }, [or]), PolicyAuthValue()];
  s = await tpm.startSession({ type: "policy" });
  await runPolicy(tpm, s, steps);
  assert.deepEqual(await tpm.policyGetDigest(s), policyDigestOf("sha256", steps));
  await tpm.flush(s.handle);
  // PCR 16 moves to a value no branch allows: PolicyOR refuses
  await tpm.pcrExtend(16, "sha256", Buffer.alloc(32, 9));
  s = await tpm.startSession({ type: "policy" });
  await assert.rejects(runPolicy(tpm, s, steps), (e: unknown) => e instanceof Error && /PolicyOR/.test(e.message));
  await tpm.flush(s.handle);
});
