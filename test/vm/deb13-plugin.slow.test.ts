// systemd 257's cryptsetup token plugin only finds a kernel TPM (/sys/class/tpmrm): in the guest, the Debian 13 root
// (visible through the host root share) is entered with chroot, so cryptsetup 2.7.5 + systemd 257's plugin meet
// /dev/tpmrm0 and unlock what trustvol enrolled; and systemd-cryptenroll 257 enrolls for trustvol to unlock.
import { test } from "node:test";
import assert from "node:assert/strict";
import { needGuest, runInGuest, guestCli, shq } from "./harness.js";
import { needDebian13 } from "../helpers/debian13.js";

test("guest /dev/tpmrm0 with the Debian 13 root: systemd 257's plugin opens trustvol's token; systemd-cryptenroll 257 → trustvol", { timeout: 15 * 60_000 }, async (t) => {
  if (!needGuest(t)) return;
  const root = needDebian13(t);
  if (!root) return;
  const tv = (...a: string[]) => guestCli(...a);
  const script = `
set -eu
R=${shq(root)}
cd /tmp
printf factory > f; chmod 600 f
truncate -s 20M a.img b.img
${tv("format", "--key-file", "f", "--key-slot", "31", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "a.img")}
${tv("enroll", "tpm2", "a.img", "--tpm2-device", "/dev/tpmrm0", "--pcrs", "7", "--key-file", "f", "--wipe-slot", "password")}
mkdir -p "$R/w"
mount --bind /tmp "$R/w"; mount --rbind /dev "$R/dev"; mount -t proc proc "$R/proc"; mount -t sysfs sysfs "$R/sys"
mount -t tmpfs tmpfs "$R/run"; mount -t tmpfs tmpfs "$R/tmp"
in13() { chroot "$R" "$@"; }
echo "== versions"
in13 cryptsetup --version; in13 systemd-cryptenroll --version | head -1
echo "== plugin 257"
in13 cryptsetup open --test-passphrase --token-only -v /w/a.img 2>&1
echo "== systemd-cryptenroll 257"
in13 cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file /w/f /w/b.img
in13 systemd-cryptenroll --unlock-key-file=/w/f --tpm2-device=/dev/tpmrm0 --tpm2-pcrs=7 /w/b.img 2>&1
in13 cryptsetup token export --token-id 0 /w/b.img; echo
${tv("unlock", "--test", "--token-only", "--tpm2-device", "/dev/tpmrm0", "--json", "b.img")}
echo "== plugin 257 own"
in13 cryptsetup open --test-passphrase --token-only -v /w/b.img 2>&1
echo "== pcr change"
tpm2_pcrextend -T device:/dev/tpmrm0 7:sha256=${"cd".repeat(32)}
if in13 cryptsetup open --test-passphrase --token-only /w/a.img 2>/dev/null; then echo "plugin-after-extend: opened"; else echo "plugin-after-extend: refused"; fi
umount "$R/tmp" "$R/run" "$R/sys" "$R/proc"; umount -l "$R/dev"; umount "$R/w"
`;
  const r = await runInGuest({ script, srk: false, timeoutMs: 600_000 });
  t.diagnostic(`boot ${r.bootMs} ms, total ${r.totalMs} ms`);
  assert.equal(r.status, 0, `${r.stderr}\n${r.stdout}`);
  const out = r.stdout;
  assert.match(out, /cryptsetup 2\.7\.\d+[\s\S]*systemd 257/);
  assert.match(out, /== plugin 257\n[\s\S]*Key slot 0 unlocked/);
  assert.match(out, /"tpm2_srk":/);
  assert.match(out, /== systemd-cryptenroll 257[\s\S]*"unlocked": true/);
  assert.match(out, /== plugin 257 own\n[\s\S]*Key slot 1 unlocked/);
  assert.match(out, /plugin-after-extend: refused/);
});
