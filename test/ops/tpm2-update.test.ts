// OTA-transactional TPM re-enrolment on swtpm: stage a token for the predicted next chain, keep the old one, commit
// after the new chain booted (or abort) — through the CLI, and every write of each step swept with power cuts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { startSwtpm, type Swtpm } from "../helpers/swtpm.js";
import { PowerCut, PowerCutDevice, countWrites, type UnsyncedPolicy } from "../helpers/power-cut.js";
import { eventLog, firmwareEvents, makePe, replayIntoTpm, type FirmwareBoot } from "../helpers/boot-chain.js";
import { authenticodeHash, parseEventLog, predictFromLog } from "../../src/trust/tpm2/predict.js";
import { Tpm, openTpm2Transport } from "../../src/trust/tpm2/index.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { formatLuks2 } from "../../src/luks2/format.js";
import { LuksHandle } from "../../src/ops/volume.js";
import { enrollTpm2 } from "../../src/ops/enroll.js";
import { unlock } from "../../src/ops/unlock.js";
import { abortTpm2Update, commitTpm2Update, stageTpm2Update, updateTokens } from "../../src/ops/tpm2-update.js";
import { wipe } from "../../src/util/secret.js";

const ac = (pe: Buffer) => authenticodeHash("sha256", pe);
const bootA: FirmwareBoot = { vars: { PK: Buffer.from("PK"), KEK: Buffer.from("KEK"), db: Buffer.from("db-A"), dbx: Buffer.from("dbx") }, images: [makePe("shim"), makePe("uki-A")] };
const bootB: FirmwareBoot = { vars: { ...bootA.vars, db: Buffer.from("db-B") }, images: [bootA.images[0]!, makePe("uki-B", 32)] };

async function bootInto(sw: Swtpm, b: FirmwareBoot): Promise<void> {
  await sw.restart();
  await replayIntoTpm(new Tpm(openTpm2Transport(sw.device)), firmwareEvents(b, ac));
}
/** The PCR 4 and 7 values boot B will have, predicted from boot A's log. */
function predictedB(): Map<number, Buffer> {
  const log = parseEventLog(eventLog(firmwareEvents(bootA, ac)));
  const i = { log: log.events, bank: "sha256" as const, efiVars: new Map([["db", bootB.vars.db]]), peImages: bootB.images };
  return new Map([4, 7].map((p) => [p, predictFromLog(p, i)]));
}

test("CLI: stage-update → abort-update → stage again → reboot into the new chain → commit-update; old chain's token retired", async (t) => {
  if (!needTools(t, "swtpm", "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const sw = await startSwtpm();
  t.after(() => sw.stop());
  await bootInto(sw, bootA);
  const f = (n: string) => join(dir, n);
  const img = f("disk.img");
  writeFileSync(f("factory"), "factory-passphrase", { mode: 0o600 });
  run("truncate", ["-s", "20M", img]);
  assert.equal(trustvol(["format", "--key-file", f("factory"), "--key-slot", "31", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img]).status, 0);
  let r = trustvol(["enroll", "tpm2", img, "--tpm2-device", sw.device, "--pcrs", "4,7", "--key-file", f("factory"), "--wipe-slot", "password"]);
  assert.equal(r.status, 0, r.stderr);
  const spec = [...predictedB()].map(([p, v]) => `${p}:sha256=${v.toString("hex")}`).join(",");

  // stage: unattended (the current token opens the volume), the old token stays
  r = trustvol(["tpm2", "stage-update", img, "--pcrs", spec, "--tpm2-device", sw.device, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { version: 1, keyslot: 1, token: 1, staged: true });
  const tok1 = JSON.parse(run("cryptsetup", ["token", "export", "--token-id", "1", img]).stdout.toString());
  assert.equal(tok1["trustvol-update"], "staged");
  r = trustvol(["tpm2", "stage-update", img, "--pcrs", spec, "--tpm2-device", sw.device]);
  assert.equal(r.status, 7, r.stderr); // EBUSY
  assert.match(r.stderr, /^trustvol: an update is already staged \(token 1\); commit it/);
  // commit in the old chain: the staged token does not unseal → refused, nothing changed
  const before = readFileSync(img);
  r = trustvol(["tpm2", "commit-update", img, "--tpm2-device", sw.device]);
  assert.equal(r.status, 3, r.stderr);
  assert.match(r.stderr, /^trustvol: the staged token does not unlock in this boot/);
  assert.ok(readFileSync(img).equals(before));
  // abort: the staged token and its keyslot go
  r = trustvol(["tpm2", "abort-update", img, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { version: 1, committed_tokens: [], removed_tokens: [1], removed_keyslots: [1] });
  assert.equal(trustvol(["tpm2", "abort-update", img]).status, 0, "nothing staged: nothing to do");

  r = trustvol(["tpm2", "stage-update", img, "--pcrs", spec, "--tpm2-device", sw.device, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  await bootInto(sw, bootB);
  // before commit: the new chain unlocks through the staged token (a plain reader ignores the mark)
  r = trustvol(["unlock", "--test", "--token-only", "--tpm2-device", sw.device, "--json", img]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).keyslot, 1);
  assert.equal(run("cryptsetup", ["open", "--test-passphrase", "--token-only", "--token-id", "0", img], { check: false }).status !== 0, true);
  r = trustvol(["tpm2", "commit-update", img, "--tpm2-device", sw.device, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { version: 1, committed_tokens: [1], removed_tokens: [0], removed_keyslots: [0] });
  const dump = run("cryptsetup", ["luksDump", "--dump-json-metadata", img]).stdout.toString();
  const md = JSON.parse(dump);
  assert.deepEqual(Object.keys(md.tokens), ["1"]);
  assert.deepEqual(Object.keys(md.keyslots), ["1"]);
  assert.equal(md.tokens["1"]["trustvol-update"], undefined);
  assert.equal(trustvol(["unlock", "--test", "--token-only", "--tpm2-device", sw.device, img]).status, 0);
});

// ---------- power-cut sweep ----------

const FAST = { pbkdf: { type: "pbkdf2" as const, forceIterations: 1000 }, digestIterations: 1000 };
const DATA_OFFSET = 1 << 20;

type Shape = string; // tokens (id:staged?:keyslots) and keyslots, e.g. "0:c:0|1:s:1;0,1"
async function shape(img: Buffer): Promise<Shape> {
  const h = await LuksHandle.fromDevices(new MemoryBlockDevice(img));
  const v = h.requireLuks2("shape");
  const toks = Object.entries(v.metadata.tokens).map(([id, t]) => `${id}:${(t as unknown as Record<string, unknown>)["trustvol-update"] === "staged" ? "s" : "c"}:${t.keyslots.join(",")}`);
  return `${toks.join("|")};${Object.keys(v.metadata.keyslots).join(",")}`;
}
/** Does token `id` unseal on the TPM now and open the volume? */
async function tokenOpens(img: Buffer, sw: Swtpm, id: number): Promise<boolean> {
  try {
    wipe((await unlock(await LuksHandle.fromDevices(new MemoryBlockDevice(img)), { tokenOnly: true, tokenId: id, tpm2Device: sw.device })).volumeKey);
    return true;
  } catch {
    return false;
  }
}

async function sweep(label: string, image: Buffer, op: (h: LuksHandle) => Promise<unknown>, check: (img: Buffer, s: Shape) => Promise<void>): Promise<number> {
  const n = await countWrites(image, async (dev) => op(await LuksHandle.fromDevices(dev)));
  assert.ok(n >= 2, `${label}: ${n} writes`);
  for (let cut = 1; cut <= n; cut++)
    for (const unsynced of ["drop", "keep", "random"] as UnsyncedPolicy[]) {
      const dev = new PowerCutDevice(image, { cutAtWrite: cut, unsynced, seed: cut * 7 + 1 });
      await assert.rejects(op(await LuksHandle.fromDevices(dev)), PowerCut, `${label} cut ${cut}`);
      const after = dev.image();
      await check(after, await shape(after));
      // running the step again finishes it
      const again = new PowerCutDevice(after);
      await op(await LuksHandle.fromDevices(again));
      await check(again.image(), await shape(again.image()));
    }
  return n;
}

test("power cut at every write of stage-update, commit-update and abort-update: the state before or after, and a rerun finishes", async (t) => {
  if (!needTools(t, "swtpm")) return;
  const sw = await startSwtpm();
  t.after(() => sw.stop());
  await bootInto(sw, bootA);
  const dev = new MemoryBlockDevice(DATA_OFFSET + 65536);
  const { volumeKey } = await formatLuks2(dev, Buffer.from("factory"), { ...FAST, dataOffset: DATA_OFFSET, keyslotsSize: DATA_OFFSET - 2 * 16384 });
  t.after(() => wipe(volumeKey));
  const h0 = await LuksHandle.fromDevices(dev);
  await enrollTpm2(h0, { unlock: { volumeKey }, pcrs: [4, 7], keyslot: 1, tpm2Device: sw.device });
  const base = Buffer.from(dev.data);
  assert.equal(await shape(base), "0:c:1;0,1");
  const stageOp = (h: LuksHandle) => stageTpm2Update(h, { unlock: { volumeKey }, pcrs: [4, 7], pcrValues: predictedB(), keyslot: 2, tpm2Device: sw.device }).catch((e) => {
    // a rerun after a cut that already staged: refused as already staged, which is "finished"
    if (e instanceof Error && /already staged/.test(e.message)) return;
    throw e;
  });

  // stage (in boot A): the old token always unlocks; the staged one is there completely or not at all
  let nStage = 0;
  nStage = await sweep("stage", base, stageOp, async (img, s) => {
    assert.ok(s === "0:c:1;0,1" || s === "0:c:1|1:s:2;0,1,2", `stage: ${s}`);
    assert.ok(await tokenOpens(img, sw, 0), "the current chain's token still unlocks");
  });
  const staged = new PowerCutDevice(base);
  await stageOp(await LuksHandle.fromDevices(staged));
  const stagedImg = staged.image();
  assert.equal(await shape(stagedImg), "0:c:1|1:s:2;0,1,2");

  // abort (in boot A): before = staged, after = as before staging
  const nAbort = await sweep("abort", stagedImg, (h) => abortTpm2Update(h), async (img, s) => {
    assert.ok(s === "0:c:1|1:s:2;0,1,2" || s === "0:c:1;0,1", `abort: ${s}`);
    assert.ok(await tokenOpens(img, sw, 0));
  });

  // commit (in boot B): the staged/new token always unlocks the new chain
  await bootInto(sw, bootB);
  const nCommit = await sweep("commit", stagedImg, (h) => commitTpm2Update(h, { tpm2Device: sw.device }), async (img, s) => {
    assert.ok(s === "0:c:1|1:s:2;0,1,2" || s === "1:c:2;0,2", `commit: ${s}`);
    assert.ok(await tokenOpens(img, sw, 1), "the new chain's token unlocks at every cut");
  });
  t.diagnostic(`writes swept: stage ${nStage}, abort ${nAbort}, commit ${nCommit} (× drop/keep/random, each rerun)`);
  assert.equal(updateTokens((await LuksHandle.fromDevices(new MemoryBlockDevice(stagedImg))).requireLuks2("x")).staged.length, 1);
});
