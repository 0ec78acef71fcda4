// The direction only a real kernel can test: systemd's own cryptsetup token plugin (which only looks for
// /dev/tpmrm0) unlocks a token that trustvol enrolled, and trustvol talks to the kernel's TPM resource manager.
import { test } from "node:test";
import assert from "node:assert/strict";
import { needGuest, runInGuest, guestCli } from "./harness.js";

test("guest /dev/tpmrm0: trustvol enroll tpm2 → systemd's plugin opens it; systemd-cryptenroll → trustvol opens it", { timeout: 15 * 60_000 }, async (t) => {
  if (!needGuest(t)) return;
  const tv = (...a: string[]) => guestCli(...a);
  const script = `
set -eu
cd /tmp
printf factory > f; chmod 600 f
truncate -s 20M a.img b.img
${tv("format", "--key-file", "f", "--key-slot", "31", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "a.img")}
${tv("enroll", "tpm2", "a.img", "--tpm2-device", "/dev/tpmrm0", "--pcrs", "7", "--key-file", "f", "--wipe-slot", "password")}
echo "== plugin"
cryptsetup open --test-passphrase --token-only -v a.img 2>&1
echo "== trustvol auto"
${tv("unlock", "--test", "--token-only", "--json", "a.img")}
echo "== systemd-cryptenroll"
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file f b.img
systemd-cryptenroll --unlock-key-file=f --tpm2-device=/dev/tpmrm0 --tpm2-pcrs=7 b.img 2>&1
${tv("unlock", "--test", "--token-only", "--tpm2-device", "/dev/tpmrm0", "--json", "b.img")}
echo "== pcr change"
tpm2_pcrextend -T device:/dev/tpmrm0 7:sha256=${"cd".repeat(32)}
if cryptsetup open --test-passphrase --token-only a.img 2>/dev/null; then echo "plugin-after-extend: opened"; else echo "plugin-after-extend: refused"; fi
${tv("unlock", "--test", "--token-only", "a.img")} 2>&1 || echo "trustvol-after-extend: rc=$?"
`;
  const r = await runInGuest({ script, srk: false, timeoutMs: 600_000 });
  t.diagnostic(`boot ${r.bootMs} ms, total ${r.totalMs} ms`);
  assert.equal(r.status, 0, `${r.stderr}\n${r.stdout}`);
  const out = r.stdout;
  assert.match(out, /== plugin\n[\s\S]*Key slot 0 unlocked/);
  assert.match(out, /== trustvol auto\n\{[\s\S]*"keyslot": 0/);
  assert.match(out, /== systemd-cryptenroll[\s\S]*"unlocked": true/);
  assert.match(out, /plugin-after-extend: refused/);
  assert.match(out, /trustvol: PCR 7 changed since enrollment[^\n]*\ntrustvol-after-extend: rc=3/);
});
