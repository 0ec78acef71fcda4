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

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

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
  for (const f of ["factory.key", "tpm.pin", "fleet.pem", "libsofthsm2.so", "data.tvkey"]) writeFileSync(join(dir, f), f, { mode: 0o600 }); // so.pin missing
  const r0 = trustvol(["boot", "files", "--config", join(etc, "provision.json")]);
  assert.equal(r0.status, 0, r0.stderr);
  assert.match(r0.stdout, new RegExp(`^secret ${join(dir, "factory.key")}\\nsecret ${join(dir, "tpm.pin")}\\nfile ${join(dir, "fleet.pem")}\\nlibrary `));
  const hook = bootFiles(["initramfs-tools"], { packageDir: REPO, entry: "bin/trustvol.mjs", node: process.execPath })[0]!.content;
  const block = hook.slice(hook.indexOf("# What provision.json names"), hook.indexOf("\nfi\n", hook.indexOf("# What provision.json names")) + 4).replaceAll("/etc/trustvol/", `${etc}/`);
  const dest = join(dir, "initramfs");
  const run = () =>
    spawnSync("sh", ["-c", `copy_exec() { echo "copy_exec $1 $2" >> "${dir}/copied"; }\nTV_NODE='${process.execPath}'; TV_PKG='${REPO}'; TV_ENTRY=bin/trustvol.mjs; DESTDIR='${dest}'\n${block}`], { encoding: "utf8" });
  const r = run();
  assert.equal(r.status, 0, r.stderr);
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
  assert.match(bad.stderr, /provision\.json is not valid/);
});
