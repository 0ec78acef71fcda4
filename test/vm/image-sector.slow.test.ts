// `image encrypt` outputs mount on a real kernel: a default mkfs.ext4 of a small image (1024-byte blocks) and a
// squashfs, encrypted on the host, then `cryptsetup open` + `mount` + a file read back in the guest. Control: the same
// ext4 behind 4096-byte dm-crypt sectors is refused by the kernel ("bad block size"), which is what trustvol now avoids.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { needGuest, runInGuest, REPO_ROOT } from "./harness.js";

const SCRIPT = String.raw`
set -u
export DM_DISABLE_UDEV=1
S="$TRUSTVOL_VM_SCRATCH"
res() { echo "@$1 $2"; }
mkdir -p /mnt/v
for n in ext4 squashfs; do
  cp "$S/$n.luks" /tmp/$n.luks
  cryptsetup open --key-file "$S/pw" /tmp/$n.luks v$n 2>"$S/e"; res open-$n $?
  echo "@ss-$n $(blockdev --getss /dev/mapper/v$n)"
  mount -o ro /dev/mapper/v$n /mnt/v 2>"$S/e"; res mount-$n $?; echo "@mount-$n-msg $(tr '\n' ' ' < "$S/e")"
  echo "@read-$n $(cat /mnt/v/hello.txt)"
  umount /mnt/v; cryptsetup close v$n
done
# Control: the same ext4 behind 4096-byte sectors (made here with cryptsetup) does not mount.
truncate -s 24M /tmp/ctl.img
cryptsetup luksFormat -q --type luks2 --sector-size 4096 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file "$S/pw" /tmp/ctl.img; res ctl-format $?
cryptsetup open --key-file "$S/pw" /tmp/ctl.img vctl; res ctl-open $?
dd if="$S/plain.ext4" of=/dev/mapper/vctl bs=1M conv=fsync status=none; res ctl-copy $?
mount -o ro /dev/mapper/vctl /mnt/v 2>/dev/null; res ctl-mount $?
echo "@ctl-dmesg $(dmesg | grep -i 'bad block size' | tail -1)"
cryptsetup close vctl
`;

function facts(out: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const l of out.split("\n")) {
    const x = /^@(\S+)\s?(.*)$/.exec(l);
    if (x) m.set(x[1]!, x[2]!.trim());
  }
  return m;
}

test("image encrypt picks sectors the kernel can mount: default small ext4 (1024-byte blocks) and squashfs", { timeout: 20 * 60_000 }, async (t) => {
  if (!needTools(t, "mkfs.ext4", "mksquashfs", "blkid")) return;
  if (!needGuest(t)) return;
  const { dir, cleanup } = tmpDir("trustvol-vm-sector-");
  t.after(cleanup);
  const src = join(dir, "src");
  mkdirSync(src);
  writeFileSync(join(src, "hello.txt"), "hello through dm-crypt\n");
  writeFileSync(join(dir, "pw"), "sector-size pass", { mode: 0o600 });
  const plain = join(dir, "plain.ext4");
  run("mkfs.ext4", ["-q", "-F", "-d", src, "-E", "root_owner=0:0", plain, "8M"]); // default options: 1024-byte blocks
  assert.match(run("blkid", ["-p", "-o", "export", plain]).stdout.toString(), /^BLOCK_SIZE=1024$/m);
  const squash = join(dir, "plain.squashfs");
  run("mksquashfs", [src, squash, "-noappend", "-quiet", "-all-root"]);
  const want: Record<string, number> = { ext4: 1024, squashfs: 4096 };
  for (const [name, input] of [["ext4", plain], ["squashfs", squash]] as const) {
    const r = trustvol(["image", "encrypt", input, join(dir, `${name}.luks`), "--key-file", join(dir, "pw"), "--offset", String(2 << 20), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--no-progress", "--json"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).sector_size, want[name], r.stdout);
  }

  const g = await runInGuest({ script: SCRIPT, scratchDir: dir, tpm: false, timeoutMs: 400_000, cwd: REPO_ROOT });
  t.diagnostic(`guest: boot ${g.bootMs} ms, total ${g.totalMs} ms`);
  assert.equal(g.status, 0, `guest failed (${g.status}): ${g.stderr}\n${g.stdout}`);
  const f = facts(g.stdout);
  const show = `\n${g.stdout}\n${g.stderr}`;
  for (const name of ["ext4", "squashfs"]) {
    assert.equal(f.get(`open-${name}`), "0", `open ${name}${show}`);
    assert.equal(f.get(`ss-${name}`), String(want[name]), `dm-crypt sector size of ${name}${show}`);
    assert.equal(f.get(`mount-${name}`), "0", `mount ${name}: ${f.get(`mount-${name}-msg`)}${show}`);
    assert.equal(f.get(`read-${name}`), "hello through dm-crypt", `read back from ${name}${show}`);
  }
  assert.equal(f.get("ctl-open"), "0", `control open${show}`);
  assert.equal(f.get("ctl-copy"), "0", `control copy${show}`);
  assert.notEqual(f.get("ctl-mount"), "0", `control: a 1024-byte-block ext4 on 4096-byte sectors must not mount${show}`);
  assert.match(f.get("ctl-dmesg") ?? "", /bad block size 1024/, show);
});
