// Kernel trusted keys on a real kernel with a (software) TPM 2.0: seal in boot 1, reboot against the same TPM state,
// load in boot 2, dm-crypt data written with the key read back; another TPM and a blank TPM refuse with clear errors.
// Each phase is one guest boot running test/vm/guest/trusted-flow.ts through src/trust/kernel.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { mkdirSync } from "node:fs";
import { tmpDir } from "../helpers/tools.js";
import { GUEST_DIR, needGuest, runInGuest, type GuestRunResult } from "./harness.js";

function facts(r: GuestRunResult): Record<string, any> {
  assert.equal(r.status, 0, `guest failed (${r.status}): ${r.stderr}\n${r.stdout}`);
  const line = r.stdout.trim().split("\n").pop()!;
  return JSON.parse(line);
}

test("trusted keys: new → blob file → reboot → load; dm-crypt :64:trusted:kmk across boots; other/blank TPM refuse", { timeout: 40 * 60_000 }, async (t) => {
  if (!needGuest(t)) return;
  const { dir, cleanup } = tmpDir("trustvol-tk-");
  t.after(cleanup);
  const tpmState = join(dir, "tpm");
  const data = join(dir, "data");
  mkdirSync(data);
  const flow = join(GUEST_DIR, "trusted-flow.ts");
  const boot = (phase: string, tpmStateDir: string, srk: boolean) =>
    runInGuest({ scriptPath: flow, args: [phase, data], tpmStateDir, srk, scratchDir: data, timeoutMs: 180_000 });

  const b1 = await boot("boot1", tpmState, true);
  const f1 = facts(b1);
  t.diagnostic(`boot1: boot ${b1.bootMs} ms, total ${b1.totalMs} ms, new ${f1.newMs} ms, dm-crypt+mkfs ${f1.cryptMs} ms`);
  assert.deepEqual(f1.source, { source: "tpm", how: "cmdline", tpmVersion: 2 });
  assert.equal(f1.blobMode, "600");
  assert.ok(f1.blobBytes > 100, `blob ${f1.blobBytes} bytes`);
  assert.equal(f1.ekMode, "600");
  assert.deepEqual(f1.ekMaster, { type: "trusted", description: "kmk" });
  assert.ok(f1.keys.includes("trusted:kmk") && f1.keys.includes("encrypted:ek"));
  assert.equal(f1.sealedContainsSecret, false);
  assert.equal(f1.info.kind, "kernel-trusted");
  t.diagnostic(`TrustSource seal ${f1.sealMs} ms, ${f1.sealedBytes} bytes`);

  const b2 = await boot("boot2", tpmState, true); // same swtpm state: a reboot of the same device
  const f2 = facts(b2);
  t.diagnostic(`boot2: boot ${b2.bootMs} ms, total ${b2.totalMs} ms, load ${f2.loadMs} ms`);
  assert.equal(f2.pipeIdentical, true, "keyctl pipe of the reloaded key = the stored blob");
  assert.equal(f2.ekIdentical, true);
  assert.equal(f2.readBack, "written in boot 1 through :64:trusted:kmk");
  assert.equal(f2.plaintextOnDisk, false);
  assert.equal(f2.ekWithoutMaster.code, "ENOKEY", JSON.stringify(f2.ekWithoutMaster));
  assert.equal(f2.unsealed, true, "TrustSource.unseal after reboot returns the sealed secret");
  assert.equal(f2.damaged.code, "ENOKEY", "a flipped ciphertext bit is detected");
  t.diagnostic(`TrustSource unseal ${f2.unsealMs} ms`);

  const b3 = await boot("other-tpm", join(dir, "tpm-other"), true);
  const f3 = facts(b3);
  assert.equal(f3.load.code, "ENOKEY", JSON.stringify(f3.load));
  assert.match(f3.load.message, /TPM refused to unseal/);
  assert.match(f3.load.hint, /another TPM/);
  assert.equal(f3.unseal.code, "ENOKEY");

  const b4 = await boot("blank-tpm", join(dir, "tpm-blank"), false);
  const f4 = facts(b4);
  assert.equal(f4.hasParent, false);
  assert.equal(f4.create.code, "EDEVICE", JSON.stringify(f4.create));
  assert.match(f4.create.message, /refused to seal a trusted key under 0x81000001/);
  assert.match(f4.create.hint, /tpm2_evictcontrol/);
  assert.ok(["ENOKEY", "EDEVICE"].includes(f4.load.code), JSON.stringify(f4.load));
});
