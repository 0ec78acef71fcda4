// Generated boot files: valid shell, the promised paths and options, one-line refusals of bad input.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, readlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bootConf, bootFiles, crypttabLine, installBootFiles, runtimeLayout } from "../../src/boot/index.js";
import { TrustvolError } from "../../src/util/errors.js";
import { trustvolInProcess } from "../helpers/cli.js";

const layout = { packageDir: "/usr/lib/node_modules/trustvol", entry: "bin/trustvol.mjs", node: "/usr/bin/node" };

test("every generated shell file parses (sh -n; bash -n for dracut's module-setup)", () => {
  for (const f of bootFiles(["initramfs-tools", "dracut"], layout)) {
    const shell = f.path.endsWith("module-setup.sh") ? "bash" : "sh";
    const r = spawnSync(shell, ["-n"], { input: f.content, encoding: "utf8" });
    assert.equal(r.status, 0, `${f.path}: ${r.stderr}`);
    assert.equal(f.mode, 0o755);
  }
});

test("the initramfs-tools hook copies node, the package and its native modules with copy_exec", () => {
  const [hook, localTop] = bootFiles(["initramfs-tools"], layout);
  assert.equal(hook!.path, "/etc/initramfs-tools/hooks/trustvol");
  assert.match(hook!.content, /copy_exec "\$\(readlink -f "\$TV_NODE"\)" \/usr\/bin\/node/);
  assert.match(hook!.content, /TV_PKG='\/usr\/lib\/node_modules\/trustvol'/);
  assert.match(hook!.content, /-name '\*\.node'.*copy_exec/);
  assert.equal(localTop!.path, "/etc/initramfs-tools/scripts/local-top/trustvol");
  assert.match(localTop!.content, /trustvol provision --stage initramfs/);
  assert.match(localTop!.content, /open \$TRUSTVOL_ARGS \$tv_pk "\$@" "\$tv_dev" "\$TRUSTVOL_NAME"/);
  assert.match(localTop!.content, /--token-only/);
});

test("systemd units: provision service stops on SIGTERM and disables itself on success; volume template", () => {
  const [svc, tmpl] = bootFiles(["systemd"], layout);
  assert.match(svc!.content, /ExecStart=\/usr\/bin\/trustvol provision --stage system/);
  assert.match(svc!.content, /KillSignal=SIGTERM/);
  assert.match(svc!.content, /EXIT_STATUS" = 0 ].*disable trustvol-provision.service/);
  assert.match(tmpl!.content, /ExecStop=\/usr\/bin\/trustvol close %i/);
});

test("crypttab lines for stock systemd-cryptsetup", () => {
  assert.equal(crypttabLine({ name: "data", device: "UUID=1234", token: "tpm2", tokenTimeout: 20 }), "data UUID=1234 none luks,tpm2-device=auto,token-timeout=20s,headless=true\n");
  assert.equal(crypttabLine({ name: "d", device: "/dev/vdb", token: "pkcs11", headless: false }), "d /dev/vdb none luks,pkcs11-uri=auto,token-timeout=30s\n");
  assert.throws(() => crypttabLine({ name: "a b", device: "/dev/x", token: "tpm2" }), TrustvolError);
  assert.throws(() => crypttabLine({ name: "a", device: "/dev/x y", token: "tpm2" }), TrustvolError);
});

test("boot.conf: validated values, one per line; shell-active characters refused", () => {
  const c = bootConf({ name: "root", device: "PARTLABEL=root", mode: "provision", onFail: "fail", headerBackup: "PARTLABEL=boot:/trustvol/h.img" });
  assert.match(c, /^TRUSTVOL_NAME=root$/m);
  assert.match(c, /^TRUSTVOL_MODE=provision$/m);
  assert.match(c, /^TRUSTVOL_HEADER_BACKUP=PARTLABEL=boot:\/trustvol\/h.img$/m);
  for (const device of ["/dev/x;reboot", "$(id)", "/dev/`x`", "a b"]) assert.throws(() => bootConf({ name: "root", device }), /has characters the boot script does not accept/);
  assert.throws(() => bootConf({ name: "../x", device: "/dev/x" }), /not a plain name/);
});

test("the unlock script reads boot.conf without sourcing it (unknown keys ignored, values never executed)", () => {
  const dir = mkdtempSync(join(tmpdir(), "trustvol-bootconf-"));
  try {
    const body = bootFiles(["initramfs-tools"], layout)[1]!.content;
    // Run only the config-reading part against a hostile file, with the paths redirected.
    const start = body.indexOf("tv_conf=");
    const end = body.indexOf('[ -n "${TRUSTVOL_NAME:-}" ]');
    const part = body.slice(start, end).replace("tv_conf=/etc/trustvol/boot.conf", `tv_conf=${dir}/boot.conf`).replace(/>\/dev\/console 2>\/dev\/null \|\| /g, "");
    const conf = `TRUSTVOL_NAME=$(touch ${dir}/pwned)\nTRUSTVOL_DEVICE=/dev/vda2;touch ${dir}/pwned2\nEVIL=1\n`;
    require_write(join(dir, "boot.conf"), conf);
    const r = spawnSync("sh", ["-c", `f() {\n${part}\necho "N=$TRUSTVOL_NAME"; echo "D=$TRUSTVOL_DEVICE"\n}\nf`], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /N=\$\(touch .*pwned\)/);
    assert.match(r.stdout + r.stderr, /unknown key EVIL/);
    assert.throws(() => statSync(join(dir, "pwned")));
    assert.throws(() => statSync(join(dir, "pwned2")));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

function require_write(p: string, s: string): void {
  spawnSync("sh", ["-c", 'cat > "$1"', "w", p], { input: s });
}

test("install writes the files with their modes under --root, links the provision service, and a wrapper", () => {
  const root = mkdtempSync(join(tmpdir(), "trustvol-bootroot-"));
  try {
    const l = runtimeLayout();
    const written = installBootFiles(root, bootFiles(["initramfs-tools", "systemd"], l, { name: "root", device: "/dev/vda2" }), { layout: l, enableProvision: true });
    assert.ok(written.includes("/etc/trustvol/boot.conf"));
    assert.equal(statSync(join(root, "etc/initramfs-tools/hooks/trustvol")).mode & 0o777, 0o755);
    assert.equal(statSync(join(root, "etc/systemd/system/trustvol-provision.service")).mode & 0o777, 0o644);
    assert.equal(readlinkSync(join(root, "etc/systemd/system/multi-user.target.wants/trustvol-provision.service")), "/etc/systemd/system/trustvol-provision.service");
    assert.match(readFileSync(join(root, "usr/bin/trustvol"), "utf8"), /^#!\/bin\/sh\nexec .*trustvol/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("CLI: boot crypttab / print; bad input is one line with exit 2", async () => {
  const r = await trustvolInProcess(["boot", "crypttab", "PARTUUID=ab-cd", "data", "--token-timeout", "15"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "data PARTUUID=ab-cd none luks,tpm2-device=auto,token-timeout=15s,headless=true\n");
  const bad = await trustvolInProcess(["boot", "print", "--device", "/dev/x;reboot", "--name", "root"]);
  assert.equal(bad.status, 2);
  assert.equal(bad.stderr.trim().split("\n").length, 1);
  const none = await trustvolInProcess(["boot", "print"]);
  assert.equal(none.status, 2);
  const p = await trustvolInProcess(["boot", "print", "--systemd"]);
  assert.equal(p.status, 0);
  assert.match(p.stdout, /==> \/etc\/systemd\/system\/trustvol-provision.service/);
});

test("trustvol-generator: each volumes/NAME.conf pulls trustvol-volume@NAME.service into cryptsetup.target, bound to its device; bad names skipped", () => {
  const dir = mkdtempSync(join(tmpdir(), "trustvol-generator-"));
  try {
    const gen = bootFiles(["systemd"], layout).find((f) => f.path === "/etc/systemd/system-generators/trustvol-generator")!;
    assert.equal(gen.mode, 0o755);
    assert.equal(spawnSync("sh", ["-n"], { input: gen.content }).status, 0);
    const vols = join(dir, "volumes");
    const script = gen.content.replaceAll("/etc/trustvol/volumes", vols);
    const out = join(dir, "out");
    // no volumes directory: nothing generated, exit 0
    let r = spawnSync("sh", ["-c", script, "gen", out, join(dir, "early"), join(dir, "late")], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.throws(() => statSync(out));
    spawnSync("mkdir", ["-p", vols]);
    require_write(join(vols, "data.conf"), "# comment\nDEVICE=/dev/disk/by-partlabel/tvdata\nOPTIONS=--blob /etc/trustvol/data.tvkey\n");
    require_write(join(vols, "caam-1.conf"), "DEVICE=/dev/mmcblk0p3\nOPTIONS=--blob /etc/trustvol/caam-1.caam\n");
    require_write(join(vols, "bad name;x.conf"), "DEVICE=/dev/x\n");
    require_write(join(vols, "notes.txt"), "DEVICE=/dev/y\n");
    r = spawnSync("sh", ["-c", script, "gen", out, join(dir, "early"), join(dir, "late")], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /bad name;x\.conf: the volume name must be letters/);
    const wants = join(out, "cryptsetup.target.wants");
    assert.deepEqual(spawnSync("ls", [wants], { encoding: "utf8" }).stdout.trim().split("\n"), ["trustvol-volume@caam-1.service", "trustvol-volume@data.service"]);
    assert.equal(readlinkSync(join(wants, "trustvol-volume@data.service")), "/etc/systemd/system/trustvol-volume@.service");
    if (spawnSync("sh", ["-c", "command -v systemd-escape"]).status === 0) {
      assert.equal(readFileSync(join(out, "trustvol-volume@data.service.d", "50-trustvol-device.conf"), "utf8"), "[Unit]\nBindsTo=dev-disk-by\\x2dpartlabel-tvdata.device\nAfter=dev-disk-by\\x2dpartlabel-tvdata.device\n");
      assert.match(readFileSync(join(out, "trustvol-volume@caam-1.service.d", "50-trustvol-device.conf"), "utf8"), /^\[Unit\]\nBindsTo=dev-mmcblk0p3\.device\n/);
    }
    // idempotent (systemd reruns generators at daemon-reload into a fresh dir, but a rerun into the same one is fine)
    r = spawnSync("sh", ["-c", script, "gen", out], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    const tmpl = bootFiles(["systemd"], layout).find((f) => f.path === "/etc/systemd/system/trustvol-volume@.service")!;
    assert.match(tmpl.content, /EnvironmentFile=\/etc\/trustvol\/volumes\/%i\.conf/);
    assert.match(tmpl.content, /Before=local-fs-pre\.target cryptsetup\.target/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the unlock script mounts the PKCS#11 token stores the hook listed (SPEC MOUNTPOINT FSTYPE) and unmounts them once unlocked", () => {
  const body = bootFiles(["initramfs-tools"], layout)[1]!.content;
  assert.match(body, /done <\/etc\/trustvol\/mounts/);
  assert.match(body, /mount -t "\$tv_mt" "\$tv_md" "\$tv_mp"/);
  assert.ok(body.indexOf("/etc/trustvol/mounts") < body.indexOf("trustvol provision --stage initramfs"), "mounted before provisioning");
  assert.ok(body.indexOf('umount "$tv_mp"') > body.lastIndexOf("tv_open"), "unmounted after the unlock");
  assert.ok(body.indexOf('umount "$tv_mp"') < body.indexOf("unlocked (uptime"));
});
