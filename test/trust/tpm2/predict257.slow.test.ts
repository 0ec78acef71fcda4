// PCR prediction against systemd 257's own tools in the Debian 13 root: the Authenticode hash of an EFI binary
// (systemd-pcrlock lock-pe records it for PCR 4), PCR 11 of a UKI (systemd-measure calculate), and the replay of a
// firmware event log (systemd-pcrlock log) against trustvol's replay and next-boot prediction.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { hasTool, needTools, tmpDir } from "../../helpers/tools.js";
import { trustvolInProcess } from "../../helpers/cli.js";
import { DEB13_WORK, deb13SwtpmDevice, needDebian13, runInDebian13 } from "../../helpers/debian13.js";
import { eventLog, firmwareEvents, makePe, type FirmwareBoot } from "../../helpers/boot-chain.js";
import { startSwtpm } from "../../helpers/swtpm.js";
import { authenticodeHash, parseEventLog, predictFromLog } from "../../../src/trust/tpm2/predict.js";

test("Authenticode of EFI binaries equals systemd-pcrlock lock-pe's record (every bank; with trailing data)", (t) => {
  if (!needTools(t, "unshare")) return;
  const root = needDebian13(t);
  if (!root) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  for (const [name, pe] of [["a.efi", makePe("a")], ["b.efi", makePe("b", 200)]] as const) {
    writeFileSync(join(dir, name), pe);
    runInDebian13(root, "/usr/lib/systemd/systemd-pcrlock", ["lock-pe", "--pcr=4", `--pcrlock=${DEB13_WORK}/${name}.pcrlock`, `${DEB13_WORK}/${name}`], { work: dir });
    const rec = JSON.parse(readFileSync(join(dir, `${name}.pcrlock`), "utf8")).records[0];
    assert.equal(rec.pcr, 4);
    for (const d of rec.digests as { hashAlg: "sha1" | "sha256" | "sha384" | "sha512"; digest: string }[]) assert.equal(authenticodeHash(d.hashAlg, pe).toString("hex"), d.digest, `${name} ${d.hashAlg}`);
  }
});

test("tpm2 predict PCR 11 equals systemd-measure calculate (phase enter-initrd)", async (t) => {
  if (!hasTool("unshare")) return t.skip("unshare");
  const root = needDebian13(t);
  if (!root) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  writeFileSync(join(dir, "linux"), makePe("kernel"));
  writeFileSync(join(dir, "osrel"), "ID=trustvol\nVERSION_ID=2\n");
  writeFileSync(join(dir, "cmdline"), "root=/dev/mapper/root ro\n");
  writeFileSync(join(dir, "initrd"), Buffer.alloc(5000, 3));
  const sd = runInDebian13(root, "/usr/lib/systemd/systemd-measure", ["calculate", "--bank=sha256", "--phase=enter-initrd", ...["linux", "osrel", "cmdline", "initrd"].map((s) => `--${s}=${DEB13_WORK}/${s}`)], { work: dir }).stdout.toString();
  const want = /11:sha256=([0-9a-f]{64})/i.exec(sd)?.[1];
  assert.ok(want, sd);
  // systemd-measure 257 does not pad the PE kernel to SizeOfImage (258 does; the stub measures the padding)
  const r = await trustvolInProcess(["tpm2", "predict", "--no-linux-padding", ...["linux", "osrel", "cmdline", "initrd"].flatMap((s) => [`--${s}`, join(dir, s)])]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), `11:sha256=${want!.toLowerCase()}`);
});

test("event log replay and the next-boot prediction equal systemd-pcrlock 257's own replay of the logs (PCR 4 and 7)", async (t) => {
  if (!needTools(t, "unshare", "swtpm")) return;
  const root = needDebian13(t);
  if (!root) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const sw = await startSwtpm();
  t.after(() => sw.stop());
  const { tpmDir, device } = deb13SwtpmDevice(sw.sock);
  const ac = (pe: Buffer) => authenticodeHash("sha256", pe);
  const bootA: FirmwareBoot = { vars: { PK: Buffer.from("PK"), KEK: Buffer.from("KEK"), db: Buffer.from("db-A"), dbx: Buffer.from("dbx") }, images: [makePe("shim"), makePe("uki-A")] };
  const bootB: FirmwareBoot = { vars: { ...bootA.vars, db: Buffer.from("db-B") }, images: [bootA.images[0]!, makePe("uki-B", 96)] };
  /** systemd-pcrlock's calculated PCR values for a firmware log (read from a private securityfs mount). */
  const systemdReplay = (log: Buffer): Map<number, string> => {
    writeFileSync(join(dir, "log"), log);
    const out = runInDebian13(root, "sh", ["-c", `mount -t tmpfs none /sys/kernel/security; mkdir -p /sys/kernel/security/tpm0; cp ${DEB13_WORK}/log /sys/kernel/security/tpm0/binary_bios_measurements; /usr/lib/systemd/systemd-pcrlock log --json=short 2>/dev/null`], { work: dir, tpmDir, env: { SYSTEMD_TPM2_DEVICE: device } }).stdout.toString();
    return new Map((JSON.parse(out).pcrs as { pcr: number; calculatedSHA256: string }[]).map((p) => [p.pcr, p.calculatedSHA256]));
  };
  const logA = eventLog(firmwareEvents(bootA, ac));
  const a = parseEventLog(logA);
  const sdA = systemdReplay(logA);
  for (const pcr of [4, 7]) assert.equal(predictFromLog(pcr, { log: a.events, bank: "sha256" }).toString("hex"), sdA.get(pcr), `replay of PCR ${pcr}`);
  // predicted from boot A's log with the update's inputs = what systemd computes from boot B's actual log
  const sdB = systemdReplay(eventLog(firmwareEvents(bootB, ac)));
  const i = { log: a.events, bank: "sha256" as const, efiVars: new Map([["db", bootB.vars.db]]), peImages: bootB.images };
  for (const pcr of [4, 7]) assert.equal(predictFromLog(pcr, i).toString("hex"), sdB.get(pcr), `prediction of PCR ${pcr}`);
  assert.notEqual(sdA.get(7), sdB.get(7));
});
