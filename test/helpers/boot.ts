// The QEMU boot tier: a real Debian 13 root (scripts/boot-root.sh: systemd as init, initramfs by the real
// mkinitramfs with trustvol's hook) on a GPT virtio disk, booted by the QEMU tier's kernel under TCG with swtpm.
// The guest's test-only report service (test/vm/boot-guest/overlay) prints TVTEST lines on ttyS0 and powers off.
//
//   const img = needBootImage(t);                       // { dir, rootfs, initrd, kernel, kver, sizes }
//   makeDisk(disk, { root: img.rootfs, boot: { "trustvol/root-header.img": hdr } });
//   const r = await bootGuest({ disk, img, tpmStateDir });   // r.console, r.report (TVTEST lines), r.unlockedAt
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { TestContext } from "node:test";
import { IN_CI, hasTool, needTools, run } from "./tools.js";
import { findGuestKernel, ensureGuestKernel, safeRead, vmSmp } from "../vm/harness.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const SCRIPT = join(REPO, "scripts", "boot-root.sh");
export const BOOT_OVERLAY = join(REPO, "test", "vm", "boot-guest", "overlay");
export const BOOT_TOOLS = ["qemu-system-x86_64", "swtpm", "tpm2_pcrextend", "sfdisk", "mkfs.ext4", "debugfs", "zstd", "mmdebstrap", "unshare", "chroot"];
/** What SeaBIOS measures into PCR 7 under QEMU (one EV_SEPARATOR, 0xffffffff): replayed on a host swtpm before sealing. */
export const SEABIOS_PCR7_SEPARATOR = "ad95131bc0b799c0b1af477fb14fcf26a6a9f76079e48bf090acb7e8367bfd0e";

export interface BootImage {
  dir: string;
  rootfs: string;
  initrd: string;
  kernel: string;
  kver: string;
  manifest: string;
  sizes: Record<string, number>;
}

/** The kernel release string of a bzImage (setup header kernel_version pointer, + 0x200). */
export function bzImageRelease(path: string): string {
  const fd = openSync(path, "r");
  try {
    const hdr = Buffer.alloc(0x210);
    readSync(fd, hdr, 0, hdr.length, 0);
    const off = hdr.readUInt16LE(0x20e) + 0x200;
    const s = Buffer.alloc(256);
    readSync(fd, s, 0, 256, off);
    return s.toString("latin1").split(/[\s\0]/)[0]!;
  } finally {
    closeSync(fd);
  }
}

let cached: { img?: BootImage; why?: string } | undefined;
function ensure(): { img?: BootImage; why?: string } {
  if (cached) return cached;
  if (process.getuid?.() !== 0) return (cached = { why: "the boot tier needs root (mmdebstrap, chroot)" });
  const missing = BOOT_TOOLS.filter((n) => !hasTool(n));
  if (missing.length) return (cached = { why: `missing ${missing.join(", ")}` });
  const kernel = findGuestKernel() ?? ensureGuestKernel();
  const kver = bzImageRelease(kernel);
  const r = spawnSync("bash", [SCRIPT, "--image", kver, BOOT_OVERLAY], { encoding: "utf8", timeout: 1_200_000, maxBuffer: 1 << 26 });
  const dir = r.stdout?.trim().split("\n").pop();
  if (r.status !== 0 || !dir || !existsSync(join(dir, ".trustvol-ready"))) return (cached = { why: `building the boot image failed: ${(r.stderr ?? "").trim().split("\n").slice(-4).join(" | ")}` });
  const sizes: Record<string, number> = {};
  for (const l of readFileSync(join(dir, "sizes.txt"), "utf8").split("\n")) {
    const [k, v] = l.split(" ");
    if (k && v) sizes[k] = Number(v);
  }
  return (cached = { img: { dir, rootfs: join(dir, "rootfs.ext4"), initrd: join(dir, "initrd.img"), kernel, kver, manifest: join(dir, "manifest.sha256"), sizes } });
}

/** The boot image, or skip on a dev box that cannot build it (a failure in CI). */
export function needBootImage(t: TestContext): BootImage | undefined {
  if (!needTools(t, ...BOOT_TOOLS)) return undefined;
  const { img, why } = ensure();
  if (img) return img;
  if (IN_CI) throw new Error(`boot tier unavailable in CI: ${why}`);
  t.skip(why);
  return undefined;
}

const MiB = 1 << 20;
/** The plain boot partition: room for a 16 MiB LUKS2 header backup (and its temporary copy while written atomically). */
const BOOT_MIB = 48;

/**
 * A GPT disk: partition 1 "tvboot" (48 MiB ext4, plain, made with mkfs.ext4 -d from `boot` files: the header backup
 * lives here, as on LmP's split /boot), partition 2 "trustvol-root" holding `root` (an ext4 or LUKS2 image), `rootSlack`
 * bytes bigger than the image (room for an in-place encryption's header).
 */
export function makeDisk(disk: string, o: { root: string; boot?: Record<string, Uint8Array | string>; rootSlack?: number }): void {
  const work = mkdtempSync(join(tmpdir(), "trustvol-disk-"));
  try {
    const bootDir = join(work, "boot");
    mkdirSync(bootDir);
    for (const [p, c] of Object.entries(o.boot ?? {})) {
      mkdirSync(dirname(join(bootDir, p)), { recursive: true });
      writeFileSync(join(bootDir, p), c, { mode: 0o600 });
    }
    const bootImg = join(work, "boot.ext4");
    run("mkfs.ext4", ["-q", "-F", "-L", "tvboot", "-d", bootDir, bootImg, `${BOOT_MIB}M`]);
    const rootBytes = statSync(o.root).size + (o.rootSlack ?? 0);
    const rootMiB = Math.ceil(rootBytes / MiB);
    const total = (1 + BOOT_MIB + rootMiB + 1) * MiB;
    rmSync(disk, { force: true });
    run("truncate", ["-s", String(total), disk]);
    run("sfdisk", ["-q", "--no-reread", "--no-tell-kernel", disk], {
      input: `label: gpt\nstart=1MiB, size=${BOOT_MIB}MiB, type=linux, name=tvboot\nstart=${1 + BOOT_MIB}MiB, size=${rootMiB}MiB, type=linux, name=trustvol-root\n`,
    });
    run("dd", [`if=${bootImg}`, `of=${disk}`, "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"]);
    run("dd", [`if=${o.root}`, `of=${disk}`, "bs=1M", `seek=${1 + BOOT_MIB}`, "conv=notrunc,sparse", "status=none"]);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Byte offset and size of the root partition of makeDisk's layout. */
export function rootPartition(disk: string): { offset: number; size: number } {
  return { offset: (1 + BOOT_MIB) * MiB, size: statSync(disk).size - (2 + BOOT_MIB) * MiB };
}

export interface BootOptions {
  disk: string;
  img: BootImage;
  /** Persistent swtpm state: several boots with it are one device's life. */
  tpmStateDir: string;
  /** Kernel command line additions (test switches). */
  append?: string;
  /** Host limit for the whole boot (default 600 s: TCG on a loaded host). */
  timeoutMs?: number;
  /** Power cut: SIGKILL QEMU as soon as the console matches (plus killDelayMs). */
  killOn?: RegExp;
  killDelayMs?: number;
  /** Keep the run dir (console.log, swtpm.log). */
  keep?: boolean;
  memMiB?: number;
  /** Check every factory file (/usr too: ~40 s under TCG); default /etc and /srv only. */
  fullCheck?: boolean;
  /** Initramfs to boot instead of the image's (e.g. initrdWith()). */
  initrd?: string;
  /** Text typed on the serial console (e.g. a recovery key) once the console matches `when`. */
  type?: { when: RegExp; text: string };
}

export interface BootResult {
  console: string;
  /** TVTEST lines from the report service (empty when it never ran). */
  report: string[];
  /** The report service ran to its end. */
  completed: boolean;
  powerCut: boolean;
  timedOut: boolean;
  ms: number;
  /** Guest uptime (s) when trustvol reported the root unlocked, from its console line. */
  unlockedAt?: number;
  /** Seconds trustvol's initramfs script took from its start to the root unlocked (wait, provision/open, restore). */
  unlockSeconds?: number;
  /** Guest uptime (s) when the report service started. */
  reportAt?: number;
  /** The first power-on hit the firmware's disabled TPM hierarchy and the device was powered on again. */
  firmwareRetry?: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const exited = (c: ChildProcess) => c.exitCode !== null || c.signalCode !== null;

async function stopChild(c: ChildProcess | undefined, sig: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (!c || exited(c)) return;
  c.kill(sig);
  for (let i = 0; i < 100 && !exited(c); i++) await sleep(50);
  if (!exited(c)) c.kill("SIGKILL");
  for (let i = 0; i < 100 && !exited(c); i++) await sleep(50);
}

/**
 * Boot the disk: swtpm on tpmStateDir, QEMU (TCG) with root=/dev/mapper/root, until power-off, killOn or timeout.
 * SeaBIOS disables the TPM's owner hierarchy for that boot when one of its own TPM commands fails (seen on a host with a
 * load average of 25: its command timeouts); trustvol then stops with TPM_RC_HIERARCHY. That boot is reported on
 * stderr and the device is powered on once more (the next TPM2_Startup re-enables the hierarchy), as a user would.
 */
export async function bootGuest(o: BootOptions): Promise<BootResult> {
  const first = await bootOnce(o);
  if (first.completed || first.powerCut || !/TPM_RC_HIERARCHY/.test(first.console)) return first;
  process.stderr.write("trustvol-boot: the firmware left the TPM's storage hierarchy disabled (TPM_RC_HIERARCHY): powering on again\n");
  const again = await bootOnce(o);
  return { ...again, console: `${first.console}\n--- power on again ---\n${again.console}`, firmwareRetry: true };
}

async function bootOnce(o: BootOptions): Promise<BootResult> {
  const t0 = Date.now();
  const runDir = mkdtempSync(join(tmpdir(), "trustvol-boot-"));
  mkdirSync(o.tpmStateDir, { recursive: true });
  let swtpm: ChildProcess | undefined;
  let qemu: ChildProcess | undefined;
  const reap = () => {
    for (const c of [qemu, swtpm]) if (c && !exited(c)) c.kill("SIGKILL");
  };
  process.once("exit", reap);
  try {
    const sock = join(runDir, "swtpm.sock");
    swtpm = spawn("swtpm", ["socket", "--tpm2", "--tpmstate", `dir=${resolve(o.tpmStateDir)}`, "--ctrl", `type=unixio,path=${sock}`, "--log", `file=${join(runDir, "swtpm.log")},level=1`, "--terminate"], { stdio: "ignore" });
    for (let i = 0; i < 200 && !existsSync(sock) && !exited(swtpm); i++) await sleep(25);
    if (!existsSync(sock)) throw new Error(`swtpm did not start: ${safeRead(join(runDir, "swtpm.log"))}`);
    const consoleFile = join(runDir, "console.log");
    // systemd.default_device_timeout_sec: under TCG at a load average of ~20, udev's coldplug started > 90 s into
    // systemd's wait for fstab's /boot (boot-factory's header backup then failed: "no such file or directory").
    const cmdline = ["console=ttyS0", "root=/dev/mapper/root", "rw", "panic=-1", "no_timer_check", "random.trust_cpu=on", "i8042.noaux", "i8042.nokbd", "mitigations=off", "trusted.source=tpm", "systemd.default_device_timeout_sec=600", // The report service owns ttyS0: no serial getty.
      `trustvol.test=${o.fullCheck ? "full" : "report"}`, "systemd.mask=serial-getty@ttyS0.service", "systemd.show_status=1", ...(o.append ? [o.append] : []),
      // debugging: e.g. "systemd.log_target=kmsg systemd.log_level=info" puts systemd's timeline on the console, timed
      ...(process.env.TRUSTVOL_BOOT_APPEND ? [process.env.TRUSTVOL_BOOT_APPEND] : [])].join(" ");
    // The serial port is a pipe pair: the console is read from it (and logged), typed text goes into it.
    const args = [
      "-name", "trustvol-boot", "-machine", "pc,accel=tcg", "-cpu", "max", "-smp", String(vmSmp()), "-m", String(o.memMiB ?? 1024),
      "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-no-reboot",
      "-kernel", o.img.kernel, "-initrd", o.initrd ?? o.img.initrd, "-append", cmdline,
      "-serial", "stdio", "-device", "virtio-rng-pci",
      "-drive", `file=${resolve(o.disk)},if=virtio,format=raw,cache=writeback`,
      "-chardev", `socket,id=chrtpm,path=${sock}`, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
    ];
    qemu = spawn("qemu-system-x86_64", args, { stdio: ["pipe", "pipe", "pipe"] });
    let con = "";
    let qerr = "";
    const conFd = openSync(consoleFile, "w"); // live: tail -f RUNDIR/console.log while a boot runs
    qemu.stdout!.on("data", (d: Buffer) => {
      con += d.toString("latin1");
      try {
        writeSync(conFd, d);
      } catch {
        /* closed */
      }
    });
    qemu.once("exit", () => closeSync(conFd));
    qemu.stderr!.on("data", (d: Buffer) => {
      qerr += d.toString();
    });
    const timeoutMs = o.timeoutMs ?? 600_000;
    let powerCut = false;
    let timedOut = false;
    let typed = false;
    let killAt = 0;
    while (!exited(qemu)) {
      await sleep(50);
      if (o.killOn && !killAt && o.killOn.test(con)) killAt = Date.now() + (o.killDelayMs ?? 0);
      if (killAt && Date.now() >= killAt) {
        powerCut = true;
        qemu.kill("SIGKILL");
        break;
      }
      if (o.type && !typed && o.type.when.test(con)) {
        typed = true;
        qemu.stdin!.write(o.type.text);
      }
      if (Date.now() - t0 > timeoutMs) {
        timedOut = true;
        qemu.kill("SIGKILL");
        break;
      }
    }
    await stopChild(qemu, "SIGKILL");
    const report = con.split(/\r?\n/).filter((l) => l.startsWith("TVTEST-")).map((l) => l.trim());
    const num = (re: RegExp) => {
      const m = re.exec(con);
      return m ? Number(m[1]) : undefined;
    };
    const unlockedAt = num(/trustvol: \/dev\/mapper\/root unlocked \(uptime [\d.]+s -> ([\d.]+)s\)/);
    const unlockStart = num(/trustvol: \/dev\/mapper\/root unlocked \(uptime ([\d.]+)s -> [\d.]+s\)/);
    const reportAt = num(/TVTEST-BEGIN uptime=([\d.]+)/);
    if ((timedOut || (!powerCut && !report.includes("TVTEST-END"))) && !o.keep) {
      process.stderr.write(`trustvol-boot: guest ${timedOut ? "timed out" : "ended without a report"}; qemu: ${qerr.trim()}\n--- last console lines ---\n${con.split("\n").slice(-40).join("\n")}\n`);
    }
    return {
      console: con,
      report,
      completed: report.includes("TVTEST-END"),
      powerCut,
      timedOut,
      ms: Date.now() - t0,
      ...(unlockedAt !== undefined ? { unlockedAt } : {}),
      ...(unlockedAt !== undefined && unlockStart !== undefined ? { unlockSeconds: Math.round((unlockedAt - unlockStart) * 100) / 100 } : {}),
      ...(reportAt !== undefined ? { reportAt } : {}),
    };
  } finally {
    await stopChild(qemu, "SIGKILL");
    await stopChild(swtpm);
    process.removeListener("exit", reap);
    if (o.keep || process.env.TRUSTVOL_VM_KEEP === "1") process.stderr.write(`trustvol-boot: run dir kept: ${runDir}\n`);
    else rmSync(runDir, { recursive: true, force: true });
  }
}

/** Files the first boot legitimately rewrites in /etc (systemd's machine identity and friends). */
export const FIRST_BOOT_REWRITES = [/^etc\/machine-id$/, /^etc\/\.pwd\.lock$/, /^etc\/systemd\/system\//, /^etc\/ld\.so\.cache$/, /^etc\/adjtime$/];

/** The TVTEST-MISMATCH paths the report listed, minus files a first boot rewrites. */
export function unexpectedMismatches(report: string[], changedByTest: string[] = []): string[] {
  return report.filter((l) => l.startsWith("TVTEST-MISMATCH ")).map((l) => l.slice(16)).filter((p) => !FIRST_BOOT_REWRITES.some((re) => re.test(p)) && !changedByTest.includes(p));
}

/** A cpio "newc" archive of regular files (and their parent dirs), for appending to an initramfs: later entries win. */
export function newcArchive(files: Record<string, { data: Uint8Array | string; mode?: number }>): Buffer {
  const parts: Buffer[] = [];
  let ino = 900000;
  const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const entry = (name: string, mode: number, data: Buffer) => {
    const f = [ino++, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, name.length + 1, 0].map((v) => v.toString(16).padStart(8, "0").toUpperCase());
    const hdr = Buffer.from(`070701${f.join("")}${name}\0`, "latin1");
    parts.push(hdr, pad4(hdr.length), data, pad4(data.length));
  };
  const dirs = new Set<string>();
  for (const p of Object.keys(files)) {
    const segs = p.replace(/^\/+/, "").split("/");
    for (let i = 1; i < segs.length; i++) dirs.add(segs.slice(0, i).join("/"));
  }
  for (const d of [...dirs].sort()) entry(d, 0o040755, Buffer.alloc(0));
  for (const [p, f] of Object.entries(files)) entry(p.replace(/^\/+/, ""), 0o100000 | (f.mode ?? 0o644), Buffer.from(f.data));
  entry("TRAILER!!!", 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}

/**
 * A copy of the image's initramfs with `files` appended (the kernel unpacks concatenated archives in order). Appended
 * as a second zstd frame: after mkinitramfs's zstd archive, Linux 6.1 reads the rest as one multi-frame zstd stream
 * (an uncompressed cpio there fails with "invalid magic at start of compressed archive"). `base`: another initramfs
 * (the image's initrd-dracut.img: dracut's --zstd archive takes a second frame the same way).
 */
export function initrdWith(img: BootImage, out: string, files: Record<string, { data: Uint8Array | string; mode?: number }>, base = img.initrd): string {
  const z = run("zstd", ["-q", "-c", "-"], { input: newcArchive(files) }).stdout;
  writeFileSync(out, Buffer.concat([readFileSync(base), z]));
  return out;
}

/** Write files into an ext4 image without mounting it (debugfs -w); missing parent directories are made. */
export function ext4Write(image: string, files: Record<string, string | Uint8Array>): void {
  const work = mkdtempSync(join(tmpdir(), "trustvol-ext4w-"));
  try {
    const cmds: string[] = [];
    const made = new Set<string>();
    let i = 0;
    for (const [p, c] of Object.entries(files)) {
      const src = join(work, `f${i++}`);
      writeFileSync(src, c);
      const dest = p.replace(/^\/+/, "");
      // Only missing parents: debugfs's mkdir of an existing name adds a second entry (e2fsck then fails).
      const segs = dest.split("/");
      for (let k = 1; k < segs.length; k++) {
        const d = segs.slice(0, k).join("/");
        if (made.has(d)) continue;
        made.add(d);
        if (/File not found/.test(run("debugfs", ["-R", `stat ${d}`, image]).stderr)) cmds.push(`mkdir ${d}`);
      }
      cmds.push(`rm ${dest}`, `write ${src} ${dest}`, `sif ${dest} mode 0100644`);
    }
    run("debugfs", ["-w", "-f", "-", image], { input: cmds.join("\n") + "\n" });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/**
 * A factory LUKS2 root made on the host as a CI/factory station would: `trustvol image encrypt` (PBKDF2, fast under
 * TCG), then `trustvol enroll tpm2 --pcrs 7` against a host swtpm on the guest's TPM state dir (PCR 7 first brought
 * to the guest's value), and a header backup. The factory passphrase stays as the recovery secret.
 */
/** provisionOnHost's factory passphrase (kept as the volume's recovery secret). */
export const HOST_FACTORY_PASSPHRASE = "factory passphrase for the boot test";

export interface HostProvisionOptions {
  /** Seal to a PCR 7 other than the guest's (a changed Secure Boot state): no unattended unlock. */
  sealToOtherPcr7?: boolean;
  /** Files written into (a copy of) the image's root before it is encrypted (test hooks). */
  rootFiles?: Record<string, string | Uint8Array>;
}

export async function provisionOnHost(img: BootImage, dir: string, tpmState: string, o: HostProvisionOptions = {}): Promise<{ luks: string; header: Buffer; key: string }> {
  const { trustvol } = await import("./cli.js");
  const { startSwtpm } = await import("./swtpm.js");
  const ok = (r: { status: number; stderr: string }, what: string) => {
    if (r.status !== 0) throw new Error(`${what} failed (${r.status}): ${r.stderr.trim()}`);
  };
  const key = join(dir, "factory.key");
  writeFileSync(key, HOST_FACTORY_PASSPHRASE, { mode: 0o600 }); // no newline: it is typed at a prompt too
  const luks = join(dir, "root.luks");
  let rootfs = img.rootfs;
  if (o.rootFiles) {
    rootfs = join(dir, "root.ext4");
    copyFileSync(img.rootfs, rootfs);
    ext4Write(rootfs, o.rootFiles);
  }
  ok(trustvol(["image", "encrypt", rootfs, luks, "--key-file", key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--no-progress", "--label", "trustvol-root"]), "image encrypt");
  mkdirSync(tpmState, { recursive: true });
  const sw = await startSwtpm({ stateDir: tpmState });
  try {
    run("tpm2_pcrextend", [`7:sha256=${SEABIOS_PCR7_SEPARATOR}`], { env: { ...process.env, TPM2TOOLS_TCTI: sw.device } });
    // A Secure Boot state other than the guest's (one more measurement): the guest's PCR 7 will not match the policy.
    if (o.sealToOtherPcr7) run("tpm2_pcrextend", [`7:sha256=${"11".repeat(32)}`], { env: { ...process.env, TPM2TOOLS_TCTI: sw.device } });
    ok(trustvol(["enroll", "tpm2", luks, "--pcrs", "7", "--key-file", key, "--tpm2-device", sw.device]), "enroll tpm2");
  } finally {
    await sw.stop();
  }
  const hdrFile = join(dir, "root-header.img");
  ok(trustvol(["header", "backup", luks, "--file", hdrFile]), "header backup");
  return { luks, header: readFileSync(hdrFile), key };
}

/**
 * The guest setup the boot tests share. A disk whose root was provisioned on the host (provisionOnHost: LUKS2, TPM2
 * PCR 7, header backup on the boot partition), with its swtpm state dir.
 */
export async function hostProvisionedDisk(img: BootImage, dir: string, o: HostProvisionOptions = {}): Promise<{ disk: string; tpmState: string; key: string }> {
  const tpmState = join(dir, "tpm");
  const { luks, header, key } = await provisionOnHost(img, dir, tpmState, o);
  const disk = join(dir, "disk.img");
  makeDisk(disk, { root: luks, boot: { "trustvol/root-header.img": header } });
  return { disk, tpmState, key };
}

/**
 * A copy of the image's root and initramfs set up for `trustvol provision` at boot: `cfg` (provision.json) and
 * BOOT_CONF_PROVISION in both, `initrdExtra` (e.g. a factory key) in the initramfs only.
 */
export function provisioningRoot(img: BootImage, dir: string, cfg: string, initrdExtra: Record<string, { data: Uint8Array | string; mode?: number }> = {}, baseInitrd = img.initrd): { root: string; initrd: string } {
  const root = join(dir, "root.ext4");
  copyFileSync(img.rootfs, root);
  ext4Write(root, { "etc/trustvol/provision.json": cfg, "etc/trustvol/boot.conf": BOOT_CONF_PROVISION });
  const initrd = initrdWith(img, join(dir, "initrd.img"), { "etc/trustvol/provision.json": { data: cfg }, "etc/trustvol/boot.conf": { data: BOOT_CONF_PROVISION }, ...initrdExtra }, baseInitrd);
  return { root, initrd };
}

/** boot.conf of the provisioning tests: `trustvol provision --stage initramfs` at every boot, fail closed. */
export const BOOT_CONF_PROVISION = [
  "TRUSTVOL_NAME=root",
  "TRUSTVOL_DEVICE=PARTLABEL=trustvol-root",
  "TRUSTVOL_MODE=provision",
  "TRUSTVOL_ON_FAIL=fail",
  "TRUSTVOL_HEADER_BACKUP=PARTLABEL=tvboot:/trustvol/root-header.img",
  "TRUSTVOL_TIMEOUT=20",
  "",
].join("\n");

/** provision.json for the guest root (PCR 7, posture ignored: no UEFI under SeaBIOS). */
export function provisionJson(extra: Record<string, unknown> = {}): string {
  return JSON.stringify({
    version: 1,
    volumes: [
      {
        name: "root",
        device: "PARTLABEL=trustvol-root",
        trust: { type: "tpm2", pcrs: [7] },
        encrypt_plain: true,
        recovery: "none",
        header_backup: "/boot/trustvol/root-header.img",
        posture: { secure_boot: "ignore", setup_mode: "ignore", huk: "ignore" },
        on_failure: "stop",
        ...extra,
      },
    ],
  }, null, 2) + "\n";
}

// ------------------------------------------------------------------ scenario 6 (PKCS#11 root, trusted-key data)

/** A file of the image's initramfs (mkinitramfs's zstd newc archive), or undefined. */
export function initrdFile(img: BootImage, name: string): string | undefined {
  const buf = run("zstd", ["-q", "-d", "-c", img.initrd]).stdout;
  let off = 0;
  const up4 = (n: number) => (n + 3) & ~3;
  while (off + 110 <= buf.length && buf.toString("latin1", off, off + 6) === "070701") {
    const field = (i: number) => parseInt(buf.toString("latin1", off + 6 + i * 8, off + 14 + i * 8), 16);
    const size = field(6), nameLen = field(11);
    const n = buf.toString("latin1", off + 110, off + 110 + nameLen - 1);
    const data = up4(off + 110 + nameLen);
    if (n === "TRAILER!!!") break;
    if (n === name || n === `./${name}`) return buf.toString("utf8", data, data + size);
    off = up4(data + size);
  }
  return undefined;
}

/**
 * initramfs-tools runs a boot phase's scripts in the order mkinitramfs wrote to scripts/PHASE/ORDER: a script appended
 * later (initrdWith) runs only when ORDER names it. The image's ORDER with `script` first (its "$@" call included).
 */
export function initrdOrderFirst(img: BootImage, phase: string, script: string): string {
  const order = initrdFile(img, `scripts/${phase}/ORDER`) ?? "";
  return `/scripts/${phase}/${script} "$@"\n[ -e /conf/param.conf ] && . /conf/param.conf\n${order}`;
}

/**
 * makeDisk's layout plus more partitions after the root, each `mib` MiB of zeros, named by GPT `name` (PARTLABEL=).
 * The root keeps partition number 2 (/dev/vda2).
 */
export function makeDiskWithParts(disk: string, o: { root: string; boot?: Record<string, Uint8Array | string>; rootSlack?: number; parts: { name: string; mib: number }[] }): void {
  makeDisk(disk, o);
  const rootMiB = Math.ceil((statSync(o.root).size + (o.rootSlack ?? 0)) / MiB);
  let start = 1 + BOOT_MIB + rootMiB;
  const extraMiB = o.parts.reduce((a, p) => a + p.mib, 0);
  run("truncate", ["-s", String((start + extraMiB + 1) * MiB), disk]);
  let table = `label: gpt\nstart=1MiB, size=${BOOT_MIB}MiB, type=linux, name=tvboot\nstart=${1 + BOOT_MIB}MiB, size=${rootMiB}MiB, type=linux, name=trustvol-root\n`;
  for (const p of o.parts) {
    table += `start=${start}MiB, size=${p.mib}MiB, type=linux, name=${p.name}\n`;
    start += p.mib;
  }
  // Rewrites the partition table only (GPT header, entries, backup at the new end); the contents stay.
  run("sfdisk", ["-q", "--no-reread", "--no-tell-kernel", "--wipe", "never", "--wipe-partitions", "never", disk], { input: table });
}

/**
 * A factory LUKS2 root as `trustvol image encrypt` makes it from the image's root with `files` written into the ext4
 * first (debugfs): the factory passphrase keyslot only, no token; the device enrolls its trust source at first boot.
 */
export async function factoryLuksRoot(img: BootImage, dir: string, files: Record<string, string | Uint8Array>, key: string, secret: string[] = []): Promise<string> {
  const { trustvol } = await import("./cli.js");
  const root = join(dir, "root.ext4");
  run("cp", ["--sparse=always", img.rootfs, root]);
  // ext4Write needs the parent directories: make the missing ones (debugfs mkdir of an existing one only complains).
  const dirs = new Set<string>();
  for (const p of Object.keys(files)) {
    const segs = p.replace(/^\/+/, "").split("/");
    for (let i = 1; i < segs.length; i++) dirs.add(segs.slice(0, i).join("/"));
  }
  run("debugfs", ["-w", "-f", "-", root], { input: [...dirs].sort().map((d) => `mkdir ${d}\n`).join("") });
  ext4Write(root, files);
  // ext4Write leaves 0644: secrets (PIN files) 0600.
  if (secret.length) run("debugfs", ["-w", "-f", "-", root], { input: secret.map((p) => `sif ${p.replace(/^\/+/, "")} mode 0100600\n`).join("") });
  const keyFile = join(dir, "factory.key");
  writeFileSync(keyFile, key, { mode: 0o600 });
  const luks = join(dir, "root.luks");
  const r = trustvol(["image", "encrypt", root, luks, "--key-file", keyFile, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--no-progress", "--label", "trustvol-root"]);
  if (r.status !== 0) throw new Error(`image encrypt failed (${r.status}): ${r.stderr.trim()}`);
  rmSync(root, { force: true });
  return luks;
}

/** The boot tier's package tree (scripts/boot-root.sh --check), for files a test adds to the initramfs. */
export function bootTree(): string {
  return run("bash", [SCRIPT, "--check"]).stdout.toString().trim();
}
