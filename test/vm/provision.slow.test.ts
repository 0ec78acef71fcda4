// `trustvol provision --stage initramfs` on a real kernel (the paths the host tier skips): a plain ext4 virtio disk is
// encrypted in place, sealed to the TPM (PCR 7), opened as /dev/mapper/root and its file system grown back to fill
// the mapping; the files read back through dm-crypt. Boot 2 (same TPM, same disk): provisioned, only opened.
// The boot integration (initramfs hook, systemd units, a real Debian root) is branch `boot`'s.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, tmpDir } from "../helpers/tools.js";
import { needGuest, runInGuest, guestCli, REPO_ROOT } from "./harness.js";
import { makeExt4 } from "../ops/provision-fixture.js";

const script = (cfg: string) => String.raw`
set -u
export DM_DISABLE_UDEV=1
${guestCli("provision", "--config", cfg, "--json", "--no-progress")} > /tmp/report.json 2>/tmp/err; echo "@rc $?"
echo "@report $(tr '\n' ' ' < /tmp/report.json)"
echo "@err $(tr '\n' ' ' < /tmp/err)"
echo "@mapped $(test -b /dev/mapper/root && echo yes)"
mkdir -p /mnt/r && mount -o ro /dev/mapper/root /mnt/r; echo "@mount $?"
echo "@sums $(cd /mnt/r && sha256sum a.bin b.bin c.txt | awk '{print $2 "=" $1}' | tr '\n' ' ')"
echo "@fsblocks $(dumpe2fs -h /dev/mapper/root 2>/dev/null | awk -F: '/^Block count/ {gsub(/ /,"",$2); print $2}')"
echo "@mapbytes $(blockdev --getsize64 /dev/mapper/root)"
umount /mnt/r
${guestCli("close", "root")} ; echo "@close $?"
`;

function facts(out: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const l of out.split("\n")) {
    const x = /^@(\S+)\s?(.*)$/.exec(l);
    if (x) m.set(x[1]!, x[2]!.trim());
  }
  return m;
}

test("provision on a real kernel: plain ext4 disk → encrypted in place, TPM2-sealed, opened, fs grown; boot 2 just opens", { timeout: 30 * 60_000 }, async (t) => {
  if (!needTools(t, "mkfs.ext4", "resize2fs", "dumpe2fs")) return;
  if (!needGuest(t)) return;
  const { dir, cleanup } = tmpDir("trustvol-vm-provision-");
  t.after(cleanup);
  const { path: img, files } = makeExt4(dir, "disk.img", 24);
  const cfg = join(dir, "provision.json");
  writeFileSync(cfg, JSON.stringify({ volumes: [{ name: "root", device: "/dev/vda", trust: { type: "tpm2", pcrs: [7], device: "/dev/tpmrm0" }, encrypt_plain: true, reduce_device_size: "4M", posture: { secure_boot: "warn", setup_mode: "ignore", huk: "ignore" } }] }));
  const want = Object.entries(files).map(([n, h]) => `${n}=${h}`).sort().join(" ");
  const tpm = join(dir, "tpm");
  const boot = () => runInGuest({ script: script(cfg), disks: [img], tpmStateDir: tpm, scratchDir: dir, timeoutMs: 900_000, cwd: REPO_ROOT });
  for (const [n, steps] of [[1, ["shrink-fs", "encrypt", "enroll", "open"]], [2, ["open"]]] as const) {
    const g = await boot();
    t.diagnostic(`boot ${n}: boot ${g.bootMs} ms, total ${g.totalMs} ms`);
    assert.equal(g.status, 0, `guest failed (${g.status}): ${g.stderr}\n${g.stdout}`);
    const f = facts(g.stdout);
    const show = `\n${g.stdout}\n${g.stderr}`;
    assert.equal(f.get("rc"), "0", `provision exit${show}`);
    const rep = JSON.parse(f.get("report")!).volumes[0];
    assert.deepEqual(rep.steps, steps, show);
    assert.equal(rep.state, "provisioned");
    assert.equal(rep.mapped, "/dev/mapper/root");
    assert.equal(f.get("mapped"), "yes", show);
    assert.equal(f.get("mount"), "0", show);
    assert.equal(f.get("sums")!.split(" ").sort().join(" "), want, `files through dm-crypt${show}`);
    // grown back: the file system fills the mapped device (24 MiB - 2 MiB data offset)
    assert.equal(Number(f.get("fsblocks")) * 4096, Number(f.get("mapbytes")), `fs grown to the mapping${show}`);
    assert.equal(Number(f.get("mapbytes")), 22 * 1024 * 1024, show);
    assert.equal(f.get("close"), "0", show);
  }
});
