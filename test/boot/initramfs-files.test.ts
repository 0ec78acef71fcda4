// The files a provisioning config needs before the root is mounted (factory key, PIN files, PKCS#11 module, key
// descriptors) are listed by `trustvol boot files` and copied by the initramfs-tools hook: the hook's block is run
// here with stub copy_exec and a scratch DESTDIR (its /etc/trustvol paths pointed at a temp dir).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { tmpDir } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { bootFiles } from "../../src/boot/index.js";
import { initramfsFiles, parseProvisionConfig } from "../../src/provision/config.js";
import { fstabMountFor, initramfsNeeds, softhsmInitramfs, softhsmTokenDir, SOFTHSM_DEFAULT_TOKENDIR } from "../../src/boot/softhsm.js";
import { TrustvolError } from "../../src/util/errors.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The hook's part that copies what `trustvol boot files` lists, its /etc/trustvol paths pointed at `etc`. */
function hookBlock(hook: string, etc: string, filesArgs = ""): string {
  const start = hook.indexOf("# What provision.json and boot.conf");
  assert.ok(start > 0);
  return hook.slice(start, hook.indexOf("\nfi\n", start) + 4).replaceAll("/etc/trustvol/", `${etc}/`).replace("boot files $tv_args", `boot files $tv_args ${filesArgs}`);
}

function config(dir: string) {
  return {
    volumes: [
      { name: "root", device: "PARTLABEL=root", trust: { type: "tpm2", pin: { file: join(dir, "tpm.pin") } }, factory: { key_file: join(dir, "factory.key") }, recovery: { escrow: { public_key: join(dir, "fleet.pem"), output: "/boot/r-{uuid}.json" } } },
      { name: "home", device: "PARTLABEL=home", trust: { type: "pkcs11", module: join(dir, "libsofthsm2.so"), pin: { file: join(dir, "tpm.pin") }, create: true, so_pin: { file: join(dir, "so.pin") } } },
      { name: "data", device: "PARTLABEL=data", trust: { type: "trusted-key", source: "tpm", descriptor: join(dir, "data.tvkey") } },
    ],
  };
}

test("initramfsFiles: every file the initramfs stage reads, once, secrets marked", () => {
  const files = initramfsFiles(parseProvisionConfig(config("/cfg")));
  assert.deepEqual(files.map((f) => [f.kind, f.secret, f.path]), [
    ["file", true, "/cfg/factory.key"],
    ["file", true, "/cfg/tpm.pin"],
    ["file", false, "/cfg/fleet.pem"],
    ["library", false, "/cfg/libsofthsm2.so"],
    ["file", true, "/cfg/so.pin"],
    ["file", false, "/cfg/data.tvkey"],
  ]);
});

test("the hook copies what `trustvol boot files` lists, warns for secrets and missing files, refuses a bad config", (t) => {
  const { dir, cleanup } = tmpDir("trustvol-hookfiles-");
  t.after(cleanup);
  const etc = join(dir, "etc");
  mkdirSync(etc);
  writeFileSync(join(etc, "provision.json"), JSON.stringify(config(dir)));
  writeFileSync(join(etc, "boot.conf"), "TRUSTVOL_NAME=root\n");
  for (const f of ["factory.key", "tpm.pin", "fleet.pem", "libsofthsm2.so", "data.tvkey"]) writeFileSync(join(dir, f), f, { mode: 0o600 }); // so.pin missing
  // SoftHSM (the "home" volume's module): its config and the token directory's partition
  writeFileSync(join(dir, "softhsm2.conf"), "directories.tokendir = /boot/softhsm/tokens/\nobjectstore.backend = file\n");
  writeFileSync(join(dir, "fstab"), "PARTLABEL=root / ext4 defaults 0 1\nPARTLABEL=tvboot /boot ext4 defaults,nofail 0 0\n");
  const hsm = ["--softhsm-conf", join(dir, "softhsm2.conf"), "--fstab", join(dir, "fstab")];
  const r0 = trustvol(["boot", "files", "--config", join(etc, "provision.json"), ...hsm]);
  assert.equal(r0.status, 0, r0.stderr);
  assert.match(r0.stdout, new RegExp(`^secret ${join(dir, "factory.key")}\\nsecret ${join(dir, "tpm.pin")}\\nfile ${join(dir, "fleet.pem")}\\nlibrary `));
  const hook = bootFiles(["initramfs-tools"], { packageDir: REPO, entry: "bin/trustvol.mjs", node: process.execPath })[0]!.content;
  const block = hookBlock(hook, etc, hsm.join(" "));
  const dest = join(dir, "initramfs");
  const run = () =>
    spawnSync("sh", ["-c", `copy_exec() { echo "copy_exec $1 $2" >> "${dir}/copied"; }\nTV_NODE='${process.execPath}'; TV_PKG='${REPO}'; TV_ENTRY=bin/trustvol.mjs; DESTDIR='${dest}'\n${block}`], { encoding: "utf8" });
  const r = run();
  assert.equal(r.status, 0, r.stderr);
  assert.equal(readFileSync(join(dest, etc, "mounts"), "utf8"), "PARTLABEL=tvboot /boot ext4\n", "the token store is mounted by the boot script");
  assert.match(readFileSync(join(dest, dir, "softhsm2.conf"), "utf8"), /tokendir = \/boot\/softhsm\/tokens\//);
  for (const f of ["factory.key", "tpm.pin", "fleet.pem", "data.tvkey"]) {
    assert.equal(readFileSync(join(dest, dir, f), "utf8"), f);
    assert.equal(statSync(join(dest, dir, f)).mode & 0o777, 0o600, `${f} keeps its mode`);
  }
  assert.equal(existsSync(join(dest, dir, "libsofthsm2.so")), false, "a module goes through copy_exec (with its libraries)");
  assert.equal(readFileSync(join(dir, "copied"), "utf8"), `copy_exec ${join(dir, "libsofthsm2.so")} ${join(dir, "libsofthsm2.so")}\n`);
  assert.match(r.stderr, new RegExp(`${join(dir, "factory.key")} copied into the initramfs: readable by anyone who has the boot partition`));
  assert.match(r.stderr, new RegExp(`${join(dir, "so.pin")} \\(named by provision.json\\) is missing`));
  assert.doesNotMatch(r.stderr, /fleet\.pem copied/);
  // A broken config stops the initramfs build (better than an initramfs that cannot provision).
  writeFileSync(join(etc, "provision.json"), JSON.stringify({ volumes: [{ name: "r", device: "/d", trust: { type: "tpm3" } }] }));
  const bad = run();
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /the initramfs cannot hold what \S+provision\.json or boot\.conf needs/);
});

test("SoftHSM as the PKCS#11 module: its config and the token directory's partition (from fstab) go into the initramfs; a token on the root is refused", (t) => {
  const { dir, cleanup } = tmpDir("trustvol-softhsm-initrd-");
  t.after(cleanup);
  const conf = join(dir, "softhsm2.conf"), fstab = join(dir, "fstab");
  const mod = "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so";
  writeFileSync(conf, "# SoftHSM v2 configuration file\ndirectories.tokendir = /boot/softhsm/tokens/\nobjectstore.backend = file\n");
  writeFileSync(fstab, "# <fs> <mp> <type>\nPARTLABEL=root / ext4 defaults 0 1\nPARTLABEL=tvboot /boot ext4 defaults,nofail 0 0\nPARTLABEL=efi /boot/efi vfat umask=0077 0 1\n/swap none swap sw 0 0\n");
  const r = softhsmInitramfs(mod, { conf, fstab });
  assert.deepEqual(r.mount, { spec: "PARTLABEL=tvboot", mountpoint: "/boot", fstype: "ext4", why: "PKCS#11 token store (/boot/softhsm/tokens/)" });
  assert.equal(softhsmTokenDir("directories.tokendir=/x/y\n"), "/x/y");
  assert.equal(softhsmTokenDir("# directories.tokendir = /z\n"), SOFTHSM_DEFAULT_TOKENDIR);
  assert.equal(fstabMountFor("/boot/efi/t", readFileSync(fstab, "utf8"))!.mountpoint, "/boot/efi", "the longest mount point");
  assert.equal(fstabMountFor("/bootx/t", readFileSync(fstab, "utf8"))!.mountpoint, "/", "a path prefix is not a mount point");
  // OP-TEE's libckteec: no config, nothing mounted; the module itself as a library
  const ck = initramfsNeeds(undefined, ["/usr/lib/libckteec.so.0"], { softhsmConf: conf, fstab });
  assert.deepEqual(ck, { files: [{ path: "/usr/lib/libckteec.so.0", kind: "library", why: "PKCS#11 module", secret: false }], mounts: [] });
  const hs = initramfsNeeds(undefined, [mod], { softhsmConf: conf, fstab });
  assert.deepEqual(hs.files.map((f) => f.path), [mod, conf]);
  assert.equal(hs.mounts.length, 1);
  // refusals: one line, naming what is wrong
  const one = (f: () => unknown, re: RegExp) => assert.throws(f, (e: Error) => e instanceof TrustvolError && re.test(e.message) && !e.message.includes("\n"));
  writeFileSync(conf, "objectstore.backend = file\n"); // default tokendir /var/lib/softhsm/tokens/: on the root
  one(() => softhsmInitramfs(mod, { conf, fstab }), /directories\.tokendir \/var\/lib\/softhsm\/tokens\/ is on the root file system: the initramfs cannot read the PKCS#11 token/);
  writeFileSync(conf, "directories.tokendir = tokens\n");
  one(() => softhsmInitramfs(mod, { conf, fstab }), /directories\.tokendir "tokens" is not an absolute path/);
  writeFileSync(conf, "directories.tokendir = /boot/t\n");
  writeFileSync(fstab, "LABEL=$(reboot) /boot ext4 defaults 0 0\n");
  one(() => softhsmInitramfs(mod, { conf, fstab }), /the spec "\$\(reboot\)"|has characters the boot script does not accept/);
  one(() => softhsmInitramfs(mod, { conf: join(dir, "none.conf"), fstab }), /none\.conf \(SoftHSM config\) is not readable: ENOENT/);
  // the CLI: boot.conf's module alone (no provision.json), and a refusal exits 2 with one line
  writeFileSync(fstab, "PARTLABEL=tvboot /boot ext4 defaults 0 0\n");
  const ok = trustvol(["boot", "files", "--config", "/nonexistent/none.json", "--pkcs11-module", mod, "--softhsm-conf", conf, "--fstab", fstab]);
  assert.notEqual(ok.status, 0, "an explicit --config must exist");
  const cli = trustvol(["boot", "files", "--pkcs11-module", mod, "--softhsm-conf", conf, "--fstab", fstab], { env: { ...process.env } });
  if (!existsSync("/etc/trustvol/provision.json")) {
    assert.equal(cli.status, 0, cli.stderr);
    assert.equal(cli.stdout, `library ${mod}\nfile ${conf}\nmount PARTLABEL=tvboot /boot ext4\n`);
  }
  writeFileSync(fstab, "PARTLABEL=root / ext4 defaults 0 1\n");
  const bad = trustvol(["boot", "files", "--pkcs11-module", mod, "--softhsm-conf", conf, "--fstab", fstab]);
  assert.equal(bad.status, 2);
  assert.equal(bad.stderr.trim().split("\n").length <= 2, true, bad.stderr);
  assert.match(bad.stderr, /is on the root file system/);
});

test("the hook with boot.conf's SoftHSM module and no provision.json: module, config and the token store's mount", (t) => {
  const { dir, cleanup } = tmpDir("trustvol-hook-softhsm-");
  t.after(cleanup);
  const etc = join(dir, "etc");
  mkdirSync(etc);
  const mod = join(dir, "libsofthsm2.so");
  writeFileSync(mod, "elf");
  writeFileSync(join(etc, "boot.conf"), `TRUSTVOL_NAME=root\nTRUSTVOL_PKCS11_MODULE=${mod}\n`);
  writeFileSync(join(dir, "softhsm2.conf"), "directories.tokendir = /boot/softhsm/tokens/\n");
  writeFileSync(join(dir, "fstab"), "PARTLABEL=tvboot /boot ext4 defaults,nofail 0 0\n");
  const hook = bootFiles(["initramfs-tools"], { packageDir: REPO, entry: "bin/trustvol.mjs", node: process.execPath })[0]!.content;
  const block = hookBlock(hook, etc, `--softhsm-conf ${join(dir, "softhsm2.conf")} --fstab ${join(dir, "fstab")}`);
  const dest = join(dir, "initramfs");
  const r = spawnSync("sh", ["-c", `copy_exec() { echo "copy_exec $1 $2" >> "${dir}/copied"; }\nTV_NODE='${process.execPath}'; TV_PKG='${REPO}'; TV_ENTRY=bin/trustvol.mjs; DESTDIR='${dest}'\n${block}`], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(readFileSync(join(dir, "copied"), "utf8"), `copy_exec ${mod} ${mod}\n`);
  assert.equal(readFileSync(join(dest, dir, "softhsm2.conf"), "utf8"), "directories.tokendir = /boot/softhsm/tokens/\n");
  assert.equal(readFileSync(join(dest, etc, "mounts"), "utf8"), "PARTLABEL=tvboot /boot ext4\n");
});
