// In the QEMU guest, through the kernel's /dev/tpmrm0, across reboots of one device (same swtpm state): predict the PCR
// value an update's measurement will give, stage a token for it beside the current one, "update" (the measurement
// happens in a later boot), unlock unattended with the staged token, commit the update (the old token goes).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { needGuest, runInGuest, guestCli } from "./harness.js";

test("guest: predict → stage-update → reboot into the updated chain → unattended unlock → commit-update", { timeout: 20 * 60_000 }, async (t) => {
  if (!needGuest(t)) return;
  const state = mkdtempSync(join(tmpdir(), "tv-upd-tpm-"));
  const scratch = mkdtempSync(join(tmpdir(), "tv-upd-scratch-"));
  t.after(() => {
    rmSync(state, { recursive: true, force: true });
    rmSync(scratch, { recursive: true, force: true });
  });
  const tv = (...a: string[]) => guestCli(...a);
  const x = createHash("sha256").update("kernel 6.13 of the update").digest("hex");
  // Image files live in the guest's /tmp (9p confuses cryptsetup's probing); they travel between boots via scratch.
  const boot1 = `
set -eu
cd /tmp
printf factory > f; chmod 600 f
truncate -s 20M a.img
${tv("format", "--key-file", "f", "--key-slot", "31", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "a.img")}
${tv("enroll", "tpm2", "a.img", "--tpm2-device", "/dev/tpmrm0", "--pcrs", "7,8", "--key-file", "f", "--wipe-slot", "password")}
PRED=$(${tv("tpm2", "predict", "--tpm2-device", "/dev/tpmrm0", "--pcrs", "8", "--extend", `8=${x}`)})
echo "predicted $PRED"
${tv("tpm2", "stage-update", "a.img", "--tpm2-device", "/dev/tpmrm0", "--json")} --pcrs "7,$PRED"
${tv("unlock", "--test", "--token-only", "--json", "a.img")}
cp a.img "$TRUSTVOL_VM_SCRATCH/a.img"
`;
  let r = await runInGuest({ script: boot1, tpmStateDir: state, scratchDir: scratch, srk: false, timeoutMs: 600_000 });
  t.diagnostic(`boot 1: ${r.bootMs} ms to script, ${r.totalMs} ms total`);
  assert.equal(r.status, 0, `${r.stderr}\n${r.stdout}`);
  assert.match(r.stdout, /predicted 8:sha256=[0-9a-f]{64}/);
  assert.match(r.stdout, /"staged": true/);
  assert.match(r.stdout, /"keyslot": 0/, "boot 1 (old chain) unlocks with the current token");

  const boot2 = `
set -eu
cd /tmp
cp "$TRUSTVOL_VM_SCRATCH/a.img" a.img
echo "== before update"
${tv("tpm2", "commit-update", "a.img", "--tpm2-device", "/dev/tpmrm0")} 2>&1 || echo "commit-before: rc=$?"
tpm2_pcrextend -T device:/dev/tpmrm0 8:sha256=${x}
echo "== after update"
${tv("unlock", "--test", "--token-only", "--json", "a.img")}
${tv("tpm2", "commit-update", "a.img", "--tpm2-device", "/dev/tpmrm0", "--json")}
cryptsetup luksDump a.img | grep -c systemd-tpm2 | sed 's/^/tpm2-tokens: /'
${tv("unlock", "--test", "--token-only", "--json", "a.img")}
`;
  r = await runInGuest({ script: boot2, tpmStateDir: state, scratchDir: scratch, srk: false, timeoutMs: 600_000 });
  assert.equal(r.status, 0, `${r.stderr}\n${r.stdout}`);
  const out = r.stdout;
  assert.match(out, /the staged token does not unlock in this boot[^\n]*\ncommit-before: rc=3/);
  assert.match(out, /== after update\n\{[\s\S]*"keyslot": 1/);
  assert.match(out, /"committed_tokens": \[\s*1\s*\][\s\S]*"removed_tokens": \[\s*0\s*\]/);
  assert.match(out, /tpm2-tokens: 1/);
});
