// PCR prediction and enrolment against predicted values on swtpm: a firmware boot (Secure Boot variables in PCR 7,
// loaded images in PCR 4) is replayed into the TPM with its event log; `tpm2 predict` gives the values an update
// (new db, new UKI) will produce; `enroll tpm2 --pcrs 4:sha256=…,7:sha256=…` seals to them before that boot exists.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { startSwtpm } from "../helpers/swtpm.js";
import { eventLog, firmwareEvents, makePe, replayIntoTpm, type FirmwareBoot } from "../helpers/boot-chain.js";
import { authenticodeHash, parseEventLog, predictFromLog } from "../../src/trust/tpm2/predict.js";
import { Tpm, openTpm2Transport } from "../../src/trust/tpm2/index.js";
import { TrustvolError } from "../../src/util/errors.js";

const ac = (pe: Buffer) => authenticodeHash("sha256", pe);
const bootA: FirmwareBoot = { vars: { PK: Buffer.from("PK-A"), KEK: Buffer.from("KEK-A"), db: Buffer.from("db-A"), dbx: Buffer.from("dbx-A") }, images: [makePe("shim"), makePe("uki-A", 64)] };
const bootB: FirmwareBoot = { vars: { ...bootA.vars, db: Buffer.from("db-B (vendor cert rotated)") }, images: [bootA.images[0]!, makePe("uki-B", 128)] };

test("event log: parsed and replayed; hostile logs refused with one error", () => {
  const log = eventLog(firmwareEvents(bootA, ac));
  const p = parseEventLog(log);
  assert.equal(p.algorithms.get(0x000b), 32);
  assert.equal(p.events.length, 12);
  for (const bad of [log.subarray(0, 40), Buffer.concat([log.subarray(0, 60), Buffer.from([0xff, 0, 0, 0])]), Buffer.alloc(100)])
    assert.throws(() => parseEventLog(bad), (e: unknown) => e instanceof TrustvolError && e.code === "ECORRUPT");
  // the Authenticode hash skips CheckSum: changing it changes nothing, changing a section byte does
  const pe = makePe("x");
  const cs = Buffer.from(pe);
  cs.writeUInt32LE(1, 0x80 + 24 + 64);
  assert.deepEqual(ac(cs), ac(pe));
  const sec = Buffer.from(pe);
  sec[0x500]! ^= 1;
  assert.notDeepEqual(ac(sec), ac(pe));
  assert.throws(() => predictFromLog(4, { log: p.events, bank: "sha256", peImages: [pe] }), /more than 1 loaded image/);
});

test("predict the next boot (new db, new UKI), enroll against it, reboot into it, unlock unattended", async (t) => {
  if (!needTools(t, "swtpm", "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const sw = await startSwtpm();
  t.after(() => sw.stop());
  const f = (n: string) => join(dir, n);
  const evA = firmwareEvents(bootA, ac);
  writeFileSync(f("logA"), eventLog(evA));
  await replayIntoTpm(new Tpm(openTpm2Transport(sw.device)), evA);

  // no substitution: the replay is the TPM's current state
  let r = trustvol(["tpm2", "predict", "--eventlog", f("logA"), "--pcrs", "4,7", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const now = await new Tpm(openTpm2Transport(sw.device)).pcrRead("sha256", [4, 7]);
  const j = JSON.parse(r.stdout) as { version: number; pcrs: { pcr: number; bank: string; value: string }[] };
  assert.equal(j.version, 1);
  assert.deepEqual(j.pcrs, [{ pcr: 4, bank: "sha256", value: now.get(4)!.toString("hex") }, { pcr: 7, bank: "sha256", value: now.get(7)!.toString("hex") }]);

  // the update: a new db (PCR 7) and a new UKI (PCR 4), predicted from the current log
  writeFileSync(f("db-B"), bootB.vars.db);
  writeFileSync(f("shim.efi"), bootB.images[0]!);
  writeFileSync(f("uki-B.efi"), bootB.images[1]!);
  r = trustvol(["tpm2", "predict", "--eventlog", f("logA"), "--efi-var", `db=${f("db-B")}`, "--pe", f("shim.efi"), "--pe", f("uki-B.efi")]);
  assert.equal(r.status, 0, r.stderr);
  const predicted = r.stdout.trim();
  assert.match(predicted, /^4:sha256=[0-9a-f]{64},7:sha256=[0-9a-f]{64}$/);

  const img = f("disk.img");
  writeFileSync(f("factory"), "factory-passphrase", { mode: 0o600 });
  run("truncate", ["-s", "20M", img]);
  assert.equal(trustvol(["format", "--key-file", f("factory"), "--key-slot", "31", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img]).status, 0);
  r = trustvol(["enroll", "tpm2", img, "--tpm2-device", sw.device, "--pcrs", "4,7", "--key-file", f("factory"), "--json"]);
  assert.equal(r.status, 0, r.stderr);
  r = trustvol(["enroll", "tpm2", img, "--tpm2-device", sw.device, "--pcrs", predicted, "--key-file", f("factory"), "--json"]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { version: 1, keyslot: 1, token: 1, wiped_keyslots: [] });
  const unlock = (token: number) => trustvol(["unlock", "--test", "--token-only", "--token-id", String(token), "--tpm2-device", sw.device, "--json", img]);
  assert.equal(unlock(0).status, 0, "today's chain unlocks with today's token");
  assert.notEqual(unlock(1).status, 0, "the next chain's token does not unlock today");

  // reboot into the updated chain
  await sw.restart();
  await replayIntoTpm(new Tpm(openTpm2Transport(sw.device)), firmwareEvents(bootB, ac));
  r = unlock(1);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).keyslot, 1);
  assert.notEqual(unlock(0).status, 0, "the old chain's token no longer unlocks");
  // a wrong value: refused with one line
  r = trustvol(["enroll", "tpm2", img, "--tpm2-device", sw.device, "--pcrs", "7:sha256=abcd", "--key-file", f("factory")]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /^trustvol: --pcrs: PCR 7: a sha256 value has 64 hex digits, not 4/);
  assert.equal(createHash("sha256").update(bootB.vars.db).digest().length, 32);
});

test("predict --extend: a known measurement on top of the TPM's current value equals the PCR after it", async (t) => {
  if (!needTools(t, "swtpm")) return;
  const sw = await startSwtpm();
  t.after(() => sw.stop());
  const tpm = new Tpm(openTpm2Transport(sw.device));
  await tpm.pcrExtend(9, "sha256", Buffer.alloc(32, 1));
  const x = createHash("sha256").update("the update's measurement").digest("hex");
  const r = trustvol(["tpm2", "predict", "--tpm2-device", sw.device, "--extend", `9=${x}`, "--extend", `9=${x}`]);
  assert.equal(r.status, 0, r.stderr);
  await tpm.pcrExtend(9, "sha256", Buffer.from(x, "hex"));
  await tpm.pcrExtend(9, "sha256", Buffer.from(x, "hex"));
  assert.equal(r.stdout.trim(), `9:sha256=${(await tpm.pcrRead("sha256", [9])).get(9)!.toString("hex")}`);
  assert.equal(trustvol(["tpm2", "predict", "--extend", "9=abcd"]).status, 2);
});
