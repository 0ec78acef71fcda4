// Boot tier, scenario 7 of issue 12: trustvol's dracut module (90trustvol, `trustvol boot install --dracut`). The boot
// image's root also holds dracut (dracut-core); scripts/boot-root.sh makes a second initramfs of the same root with
// the real `dracut` (generic, systemd inside: dracut-initqueue runs the module's initqueue/settled hook). A LUKS2 root
// provisioned on the host (TPM2, PCR 7) boots from it unattended. rd.luks=0: dracut's own crypt module would
// otherwise start systemd-cryptsetup on the same device and ask for a passphrase.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { tmpDir } from "../helpers/tools.js";
import { needBootImage, makeDisk, bootGuest, unexpectedMismatches, provisionOnHost } from "../helpers/boot.js";

let tmp: { dir: string; cleanup: () => void };
before(() => (tmp = tmpDir("trustvol-boot-dracut-")));
after(() => tmp?.cleanup());

test("dracut-built initramfs (module 90trustvol) unlocks a TPM2-sealed LUKS2 root unattended", { timeout: 1_800_000 }, async (t) => {
  const img = needBootImage(t);
  if (!img) return;
  const initrd = join(img.dir, "initrd-dracut.img");
  assert.ok(existsSync(initrd), `dracut made no initramfs in ${img.dir} (see scripts/boot-root.sh's output)`);
  const tpmState = join(tmp.dir, "tpm");
  const { luks, header } = await provisionOnHost(img, tmp.dir, tpmState);
  const disk = join(tmp.dir, "disk.img");
  makeDisk(disk, { root: luks, boot: { "trustvol/root-header.img": header } });

  const b = await bootGuest({ disk, img, initrd, tpmStateDir: tpmState, append: "rd.luks=0" });
  assert.ok(b.completed, "the boot reached the report service");
  assert.match(b.console, /dracut/i, "the initramfs is dracut's");
  assert.match(b.console, /trustvol: \/dev\/mapper\/root unlocked/);
  assert.doesNotMatch(b.console, /recovery key|Please enter passphrase/);
  assert.ok(b.report.includes("TVTEST-ROOT /dev/mapper/root"), b.report.join("\n"));
  assert.ok(b.report.some((l) => /^TVTEST-CRYPT root: aes-xts-plain64$/.test(l)), b.report.join("\n"));
  assert.deepEqual(unexpectedMismatches(b.report), []);
  t.diagnostic(`dracut initramfs ${img.sizes.initrd_dracut_bytes} bytes (initramfs-tools: ${img.sizes.initrd_bytes}); boot ${b.ms} ms host, root unlocked at ${b.unlockedAt}s uptime (trustvol hook ${b.unlockSeconds}s)`);
});
