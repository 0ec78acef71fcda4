// trustvol open/close on a real kernel (QEMU + swtpm, two boots of one device): the seed 000 flow end to end through
// the CLI, trusted-key volumes, LUKS2 both ways with cryptsetup (ext4 files read back), an `image encrypt` output
// mounted through dm-crypt, clear refusals, the CAAM simulator path as far as a kernel without CAAM allows, doctor,
// and the native ioctl wrapper. Guest side: test/vm/guest/open-flow.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { mkdirSync } from "node:fs";
import { tmpDir } from "../helpers/tools.js";
import { GUEST_DIR, needGuest, runInGuest, type GuestRunResult } from "./harness.js";

function facts(r: GuestRunResult): Record<string, any> {
  assert.equal(r.status, 0, `guest failed (${r.status}): ${r.stderr}\n${r.stdout}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}

test("trustvol open/close: seed 000 across two boots, LUKS2 vs cryptsetup both ways, image encrypt, CAAM simulator, doctor", { timeout: 20 * 60_000 }, async (t) => {
  if (!needGuest(t)) return;
  const { dir, cleanup } = tmpDir("trustvol-open-");
  t.after(cleanup);
  const tpm = join(dir, "tpm");
  const data = join(dir, "data");
  mkdirSync(data);
  const flow = join(GUEST_DIR, "open-flow.ts");
  const boot = (phase: string) => runInGuest({ scriptPath: flow, args: [phase, data], tpmStateDir: tpm, srk: true, scratchDir: data, timeoutMs: 240_000 });

  const b1 = await boot("boot1");
  const f = facts(b1);
  t.diagnostic(`boot1: boot ${b1.bootMs} ms, total ${b1.totalMs} ms; ${JSON.stringify(f.timings)}`);
  // seed 000
  assert.equal(f.kmkBlobMode, "600");
  assert.match(f.seedTable, /^0 65536 crypt aes-cbc-plain :32:trusted:kmk 0 \/dev\/loop\d+ 0$/);
  assert.match(f.seedDmTable, /:32:trusted:kmk/);
  assert.equal(f.seedLoopAutoclear, true, "loop devices are set to autoclear through the ioctl");
  assert.equal(f.seedClose.loop_detached, true);
  // trusted-key volume
  assert.equal(f.tvDescriptorMode, "600");
  assert.equal(f.tvDescriptorHasBlob, true);
  assert.match(f.tvTable, /crypt aes-xts-plain64 :64:trusted:trustvol-tv-[0-9a-f]+ 0 \/dev\/loop\d+ 0 1 sector_size:4096$/);
  assert.equal(f.tvKeyUnlinked, true);
  assert.equal(f.tvKeysLeft, 0);
  // LUKS2 interop
  assert.match(f.luksTable, /^0 \d+ crypt aes-xts-plain64 :64:logon:trustvol:[0-9a-f-]+-[0-9a-f]{8} 0 \/dev\/loop\d+ 32768 1 sector_size:4096$/);
  assert.equal(f.luksKeyUnlinked, true);
  assert.equal(f.luksLogonKeysLeft, 0, "the volume key is unlinked from the keyring once dm-crypt holds it");
  assert.doesNotMatch(f.luksDmTableShowkeys, /[0-9a-f]{64}/, "no hex key in the live table");
  assert.match(f.luksDmUuid, /^CRYPT-LUKS2-[0-9a-f]{32}-tva$/);
  assert.match(f.cryptsetupStatus, /is active/);
  assert.equal(f.trustvolImageByCryptsetup, "made by trustvol");
  assert.equal(f.cryptsetupImageByTrustvol, "made by cryptsetup");
  assert.match(f.cryptsetupTable, /:64:logon:trustvol:/);
  assert.equal(f.imageEncryptReadBack, "from image encrypt");
  // refusals
  assert.equal(f.noCipher.code, 6, JSON.stringify(f.noCipher));
  assert.match(f.noCipher.err, /does not offer the cipher serpent-xts-plain64/);
  assert.equal(f.noKey.code, 3, JSON.stringify(f.noKey));
  assert.match(f.noKey.err, /no trusted key "absent"/);
  assert.equal(f.wrongPass.code, 3);
  assert.equal(f.closeMissing, 5);
  assert.equal(f.loopsLeft, "", "failed opens detach their loop devices");
  assert.equal(f.mappingsLeft.trim(), "No devices found");
  assert.equal(f.logonKeysLeftAtEnd, 0);
  // CAAM simulator
  assert.deepEqual({ ...f.caamKeygen, backend: undefined }, { blackKeySize: 36, blobSize: 96, mode: "600", backend: undefined });
  assert.match(f.caamKeygen.backend, /SIMULATOR/);
  assert.match(f.caamDryTable, /^0 8192 crypt capi:tk\(cbc\(aes\)\)-plain :36:logon:trustvol-caam:caamvol 0 \S+c\.img 0$/);
  assert.equal(f.caamLogonSerial, true);
  assert.match(f.caamLogonDescribe, /^logon;.*;logkey:$/);
  assert.notEqual(f.caamLogonPipe, 0, "logon keys cannot be read back");
  assert.equal(f.caamOpen.code, 6, JSON.stringify(f.caamOpen));
  assert.match(f.caamOpen.err, /tk\(cbc\(aes\)\)/);
  assert.equal(f.caamLoopsLeft, "");
  // doctor
  assert.equal(f.doctor.tpm.version, 2);
  assert.equal(f.doctor.dmCrypt, "yes");
  assert.equal(f.doctor.trustedTpm, "yes");
  assert.equal(f.doctor.source, "tpm");
  assert.equal(f.doctor.secureBoot, "unknown");
  assert.equal(f.doctor.tmp.fstype, "tmpfs");
  assert.ok(f.doctor.findings.includes("warning:secureboot.unknown"), JSON.stringify(f.doctor));
  t.diagnostic(`doctor in the guest: exit ${f.doctor.code}, ${JSON.stringify(f.doctor.findings)}`);
  // native ioctl with an embedded user pointer
  assert.deepEqual(f.blkpg, { ret: 0, start: "2048" });

  const b2 = await boot("boot2"); // same swtpm state: a reboot of the same device
  const g = facts(b2);
  t.diagnostic(`boot2: boot ${b2.bootMs} ms, total ${b2.totalMs} ms; ${JSON.stringify(g.timings)}`);
  assert.equal(g.seedReadBack, "This is a test of full disk encryption on i.MX");
  assert.equal(g.seedPlaintextOnDisk, false);
  assert.equal(g.seedWithoutKey.code, 3);
  assert.match(g.seedWithoutKey.err, /trustvol trusted load kmk/);
  assert.equal(g.tvReadBack, "trusted volume, boot 1");
  assert.deepEqual(g.caamImported, { size: 36, differsFromBoot1: true, sameRedKey: true });
  assert.equal(g.caamStaleBlackKey, "different key", "a black key from boot 1 is useless in boot 2");
  assert.equal(g.loopsLeft, "");
});
