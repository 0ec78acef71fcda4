// dm-verity on a real kernel: an ext4 image built and hashed on the host with `trustvol verity format`, then in one
// guest boot: `trustvol verity open` → mount -o ro → read files back → close (busy while mounted); a copy with one
// flipped byte in a file's data block opens, but reading the file fails with EIO (the kernel logs the corrupted block,
// `trustvol verity status` says corrupted) and `trustvol verity verify` names that block; a wrong root hash is refused before anything is created; a root hash
// signature from a certificate the kernel does not trust is refused by the kernel (clear error, nothing left behind);
// and veritysetup opens our hash tree. The FEC parity written by `verity format --fec-device` lets the kernel repair the
// flipped byte.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { detBytes } from "../verity/util.js";
import { needGuest, runInGuest, REPO_ROOT } from "./harness.js";

const SCRIPT = String.raw`
set -u
export DM_DISABLE_UDEV=1
S="$TRUSTVOL_VM_SCRATCH"
tv() { node "$TRUSTVOL_REPO/bin/trustvol.mjs" "$@"; }
res() { echo "@$1 $2"; }
msg() { echo "@$1-msg $(tr '\n' ' ' < "$2")"; }
ROOT=$(cat "$S/root.txt")
WRONG=$(cat "$S/wrong.txt")
mkdir -p /mnt/v

# 1. open, mount read-only, read back, close (refused while mounted)
tv verity open "$S/good.img" vgood "$S/good.hash" --root-hash-file "$S/root.txt" --json >"$S/open.json" 2>"$S/e"; res open $?; msg open "$S/e"
echo "@open-json $(tr -d '\n ' < "$S/open.json")"
echo "@table $(dmsetup table vgood)"
echo "@dmuuid $(dmsetup info -c --noheadings -o uuid vgood)"
mount -o ro /dev/mapper/vgood /mnt/v; res mount $?
cmp /mnt/v/hello.txt "$S/src/hello.txt"; res read-hello $?
cmp /mnt/v/payload.bin "$S/src/payload.bin"; res read-payload $?
touch /mnt/v/new 2>/dev/null; res write-refused $?
tv verity close vgood 2>"$S/e"; res close-busy $?; msg close-busy "$S/e"
umount /mnt/v
tv verity close vgood 2>"$S/e"; res close $?; msg close "$S/e"
dmsetup info vgood >/dev/null 2>&1; res gone $?
echo "@loops-after-close $(losetup -a | wc -l)"

# 2. one flipped byte in a data block: open succeeds, the read fails with EIO, verify names the block
tv verity open "$S/bad.img" vbad "$S/good.hash" "$ROOT" 2>"$S/e"; res open-bad $?; msg open-bad "$S/e"
mount -o ro /dev/mapper/vbad /mnt/v; res mount-bad $?
cmp /mnt/v/hello.txt "$S/src/hello.txt"; res read-hello-bad $?
cat /mnt/v/payload.bin >/dev/null 2>"$S/e"; res cat-bad $?; msg cat-bad "$S/e"
echo "@status-bad $(dmsetup status vbad | cut -d' ' -f3-)"
tv verity status vbad --json >"$S/st.json" 2>"$S/e"; res tv-status-bad $?; msg tv-status-bad "$S/e"
echo "@tv-status-bad-json $(tr -d '\n ' < "$S/st.json")"
echo "@dmesg-bad $(dmesg | grep -i 'verity' | grep -i 'corrupt' | tail -2 | tr '\n' ' ')"
umount /mnt/v
tv verity close vbad 2>"$S/e"; res close-bad $?; msg close-bad "$S/e"
tv verity verify "$S/bad.img" "$S/good.hash" "$ROOT" 2>"$S/e"; res verify-bad $?; msg verify-bad "$S/e"

# 2b. the same corrupted copy with the FEC parity from verity format --fec-device: the kernel repairs the block
tv verity open "$S/bad.img" vfec "$S/good.hash" "$ROOT" --fec-device "$S/good.fec" --fec-roots 2 2>"$S/e"; res open-fec $?; msg open-fec "$S/e"
echo "@table-fec $(dmsetup table vfec | cut -d' ' -f14-)"
mount -o ro /dev/mapper/vfec /mnt/v; res mount-fec $?
cmp /mnt/v/payload.bin "$S/src/payload.bin" 2>"$S/e"; res read-fec $?; msg read-fec "$S/e"
echo "@dmesg-fec $(dmesg | grep -i 'verity-fec' | tail -1)"
umount /mnt/v
tv verity close vfec 2>"$S/e"; res close-fec $?; msg close-fec "$S/e"

# 3. wrong root hash: refused, nothing created
tv verity open "$S/good.img" vwrong "$S/good.hash" "$WRONG" 2>"$S/e"; res open-wrong $?; msg open-wrong "$S/e"
dmsetup info vwrong >/dev/null 2>&1; res wrong-gone $?

# 4. root hash signature whose signer the kernel does not trust: the kernel refuses, no device, no key left
tv verity open "$S/good.img" vsig "$S/good.hash" "$ROOT" --root-hash-signature "$S/root.p7s" 2>"$S/e"; res open-sig $?; msg open-sig "$S/e"
dmsetup info vsig >/dev/null 2>&1; res sig-gone $?
echo "@sig-keys $(keyctl show @u 2>/dev/null | grep -c 'trustvol:verity')"
echo "@dmesg-sig $(dmesg | grep -iE 'verity|pkcs7|PKCS#7' | grep -viE 'corrupt' | tail -2 | tr '\n' ' ')"

# 5. veritysetup opens our hash tree
DL=$(losetup -f --show -r "$S/good.img"); HL=$(losetup -f --show -r "$S/good.hash")
veritysetup open "$DL" vs "$HL" "$ROOT" 2>"$S/e"; res vs-open $?; msg vs-open "$S/e"
mount -o ro /dev/mapper/vs /mnt/v && cmp /mnt/v/payload.bin "$S/src/payload.bin"; res vs-read $?
echo "@vs-status $(veritysetup status vs | grep -E '^ *status:' | tr -d ' ')"
echo "@vs-table $(dmsetup table vs)"
umount /mnt/v; veritysetup close vs; losetup -d "$DL" "$HL"
echo "@loops-end $(losetup -a | wc -l)"
echo "@dm-end $(dmsetup ls | grep -vc 'No devices')"
`;

function facts(out: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const l of out.split("\n")) {
    const x = /^@(\S+)\s?(.*)$/.exec(l);
    if (x) m.set(x[1]!, x[2]!.trim());
  }
  return m;
}

test("verity open/close on a real kernel: ext4 mounts read-only, a flipped byte gives EIO, wrong root hash and untrusted signature refused, veritysetup agrees", { timeout: 40 * 60_000 }, async (t) => {
  if (!needTools(t, "mkfs.ext4", "openssl", "veritysetup")) return;
  if (!needGuest(t)) return;
  const { dir, cleanup } = tmpDir("trustvol-vm-verity-");
  t.after(cleanup);
  const src = join(dir, "src");
  mkdirSync(src);
  writeFileSync(join(src, "hello.txt"), "hello from a dm-verity protected ext4\n");
  const payload = detBytes(256 * 1024, "verity-guest-payload");
  writeFileSync(join(src, "payload.bin"), payload);
  const img = join(dir, "good.img");
  run("mkfs.ext4", ["-q", "-F", "-b", "4096", "-d", src, "-E", "root_owner=0:0", img, "8M"]);
  const r = trustvol(["verity", "format", img, join(dir, "good.hash"), "--root-hash-file", join(dir, "root.txt"), "--fec-device", join(dir, "good.fec"), "--fec-roots", "2"]);
  assert.equal(r.status, 0, r.stderr);
  const root = readFileSync(join(dir, "root.txt"), "latin1");
  assert.match(root, /^[0-9a-f]{64}$/);
  assert.match(r.stdout, new RegExp(`^Root hash:\\s+${root}$`, "m"));
  writeFileSync(join(dir, "wrong.txt"), root.slice(0, -1) + (root.endsWith("0") ? "1" : "0"));

  // Corrupt copy: one byte in the middle of payload.bin's data (found by content, 4 KiB aligned in ext4).
  const image = readFileSync(img);
  const probe = payload.subarray(128 * 1024, 128 * 1024 + 4096);
  const at = image.indexOf(probe);
  assert.ok(at > 0 && at % 4096 === 0, `payload block found at ${at}`);
  const flipAt = at + 1234;
  image[flipAt] = image[flipAt]! ^ 0x01;
  writeFileSync(join(dir, "bad.img"), image);
  const badBlock = Math.floor(flipAt / 4096);

  // A signature the guest kernel cannot trust (self-signed test certificate, not in its builtin/secondary keyring).
  run("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", join(dir, "sig.key"), "-out", join(dir, "sig.pem"), "-subj", "/CN=trustvol untrusted verity signer", "-days", "2"]);
  const s = trustvol(["verity", "sign", "--root-hash-file", join(dir, "root.txt"), "--signing-key", join(dir, "sig.key"), "--cert", join(dir, "sig.pem"), "-o", join(dir, "root.p7s")]);
  assert.equal(s.status, 0, s.stderr);

  const g = await runInGuest({ script: SCRIPT, scratchDir: dir, tpm: false, timeoutMs: 400_000, cwd: REPO_ROOT });
  t.diagnostic(`guest: boot ${g.bootMs} ms, total ${g.totalMs} ms`);
  assert.equal(g.status, 0, `guest failed (${g.status}): ${g.stderr}\n${g.stdout}`);
  const m = facts(g.stdout);
  const f = { get: (k: string): string => m.get(k) ?? `<missing @${k}>` };
  const show = `\n${g.stdout}\n${g.stderr}`;

  // 1. open / mount / read / close
  assert.equal(f.get("open"), "0", `open: ${f.get("open-msg")}${show}`);
  const oj = JSON.parse(f.get("open-json"));
  assert.equal(oj.device, "/dev/mapper/vgood");
  assert.equal(oj.status, "verified");
  assert.equal(oj.loops.length, 2);
  assert.match(r.stdout, /^FEC RS roots:\s+2$/m);
  assert.match(f.get("table"), new RegExp(`^0 16384 verity 1 7:\\d+ 7:\\d+ 4096 4096 2048 1 sha256 ${root} [0-9a-f]{64}$`), "kernel table");
  assert.match(f.get("dmuuid"), /^TRUSTVOL-VERITY-[0-9a-f]{32}-vgood$/);
  assert.equal(f.get("mount"), "0");
  assert.equal(f.get("read-hello"), "0");
  assert.equal(f.get("read-payload"), "0");
  assert.notEqual(f.get("write-refused"), "0", "the verity device is read-only");
  assert.equal(f.get("close-busy"), "7", `close while mounted exits 7 (busy)${show}`);
  assert.match(f.get("close-busy-msg"), /vgood is in use\b.*unmount it first/);
  assert.equal(f.get("close"), "0", f.get("close-msg"));
  assert.notEqual(f.get("gone"), "0", "the mapping is gone");
  assert.equal(f.get("loops-after-close"), "0", "close detached the loop devices open attached");

  // 2. corruption
  assert.equal(f.get("open-bad"), "0", `a corrupted data block does not stop open: ${f.get("open-bad-msg")}`);
  assert.equal(f.get("mount-bad"), "0");
  assert.equal(f.get("read-hello-bad"), "0", "other files still read");
  assert.notEqual(f.get("cat-bad"), "0", "reading the corrupted file fails");
  assert.match(f.get("cat-bad-msg"), /Input\/output error/);
  assert.match(f.get("status-bad"), /verity C$/, "dm status reports corruption");
  assert.equal(f.get("tv-status-bad"), "0", f.get("tv-status-bad-msg"));
  const st = JSON.parse(f.get("tv-status-bad-json"));
  assert.equal(st.status, "corrupted", "trustvol verity status reports the kernel's corruption verdict");
  assert.equal(st.root_hash, root);
  assert.equal(st.loops.length, 2);
  assert.match(f.get("dmesg-bad"), new RegExp(`data block ${badBlock} is corrupted`), `kernel log: ${f.get("dmesg-bad")}`);
  assert.equal(f.get("close-bad"), "0", f.get("close-bad-msg"));
  assert.equal(f.get("verify-bad"), "4", "verify exits 4 (corrupt)");
  assert.match(f.get("verify-bad-msg"), new RegExp(`verification failed at position ${badBlock * 4096} of data device .*bad\\.img \\(data block ${badBlock}\\)`));

  // 2b. FEC repairs the flipped byte
  assert.equal(f.get("open-fec"), "0", f.get("open-fec-msg"));
  const fecBlocks = 2048 + statSync(join(dir, "good.hash")).size / 4096 - 1; // data blocks + hash blocks after the superblock
  const tf = f.get("table-fec");
  assert.match(tf, /^8 /, tf);
  for (const kv of [/use_fec_from_device 7:\d+/, / fec_start 0\b/, new RegExp(` fec_blocks ${fecBlocks}\\b`), / fec_roots 2\b/]) assert.match(tf, kv, `FEC table options: ${tf}`);
  assert.equal(f.get("mount-fec"), "0");
  assert.equal(f.get("read-fec"), "0", `the corrupted file reads back intact through FEC: ${f.get("read-fec-msg")}`);
  assert.match(f.get("dmesg-fec"), /verity-fec: .*: FEC \d+: corrected 1 errors/, f.get("dmesg-fec"));
  assert.equal(f.get("close-fec"), "0", f.get("close-fec-msg"));

  // 3. wrong root hash
  assert.equal(f.get("open-wrong"), "4", `wrong root hash exits 4: ${f.get("open-wrong-msg")}`);
  assert.match(f.get("open-wrong-msg"), /root hash [0-9a-f]{64} does not match the hash tree on .*good\.hash/);
  assert.notEqual(f.get("wrong-gone"), "0");

  // 4. untrusted signature
  assert.equal(f.get("open-sig"), "3", `untrusted signature exits 3 (refused): ${f.get("open-sig-msg")}`);
  assert.match(f.get("open-sig-msg"), /the kernel refused the root hash signature for vsig: .*(Required key not available|Key was rejected)/);
  assert.match(f.get("open-sig-msg"), /trusted keyring/);
  assert.notEqual(f.get("sig-gone"), "0");
  assert.equal(f.get("sig-keys"), "0", "the signature key is not left in the user keyring");
  t.diagnostic(`kernel on the signature: ${f.get("dmesg-sig")}`);

  // 5. veritysetup
  assert.equal(f.get("vs-open"), "0", f.get("vs-open-msg"));
  assert.equal(f.get("vs-read"), "0");
  assert.equal(f.get("vs-status"), "status:verified");
  const strip = (tb: string) => tb.replace(/ 7:\d+ 7:\d+ /, " <data> <hash> ");
  assert.equal(strip(f.get("table")), strip(f.get("vs-table")), "our dm table = veritysetup's for the same image");
  assert.equal(f.get("loops-end"), "0");
  assert.equal(f.get("dm-end"), "0");
});
