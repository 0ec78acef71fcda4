// The real-kernel test tier: run a script inside a throw-away QEMU guest (TCG) that has device-mapper, loop,
// kernel keyrings with trusted + encrypted keys, and a swtpm TPM 2.0. The host's / is the guest's root
// (9p, read-only, tmpfs overlay), so the guest runs the host's node, cryptsetup, dmsetup, keyctl, tpm2-tools
// and sees this repo at the same path. Writable host directories come in as extra 9p shares.
//
//   const r = await runInGuest({ script: "uname -r; dmsetup targets" });   // r.status, r.stdout, r.stderr, r.consoleLog
//
// A "reboot" is simply a second runInGuest() with the same tpmStateDir (and scratchDir / disks): same TPM seeds and
// NV, fresh PCRs, fresh kernel keyrings. A "power cut" is killAfterMs / killOnOutput: the guest is SIGKILLed,
// nothing is flushed. Every process started here is killed before runInGuest() returns (and on process exit).
//
// Env: TRUSTVOL_GUEST_KERNEL (bzImage to boot; else the cache, else scripts/vm/build-kernel.sh builds it),
//      TRUSTVOL_BUSYBOX (static busybox for the initramfs), TRUSTVOL_VM_KEEP=1 (keep run dirs, print their path),
//      TRUSTVOL_VM_SMP / TRUSTVOL_VM_MEM (vCPUs, MiB), XDG_CACHE_HOME (cache root).
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, realpathSync, unlinkSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { TestContext } from "node:test";
import { ensureInitramfs } from "./initramfs.js";
import { IN_CI, hasTool, needTools } from "../helpers/tools.js";

const HERE = dirname(fileURLToPath(import.meta.url));
/** The repository root; the guest sees it at the same path (read-only through the host root share). */
export const REPO_ROOT = resolve(HERE, "..", "..");
export const GUEST_DIR = join(HERE, "guest");
/** Default handle of the owner storage primary the harness persists for kernel trusted keys (`keyhandle=`). */
export const SRK_HANDLE = 0x81000001;
/** Tools the QEMU tier needs on the host (the guest uses the same binaries). */
export const VM_TOOLS = ["qemu-system-x86_64", "swtpm", "busybox", "keyctl", "cryptsetup", "dmsetup", "tpm2_createprimary"];

/** Guest vCPUs when a run does not say: $TRUSTVOL_VM_SMP, else 2 (the QEMU tier's guests and the boot tier's). */
export const vmSmp = (): number => Number(process.env.TRUSTVOL_VM_SMP ?? 2);

export function cacheDir(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "trustvol");
}

/** Kernel choice: $TRUSTVOL_GUEST_KERNEL, else the cached build; undefined when neither exists. */
export function findGuestKernel(): string | undefined {
  const env = process.env.TRUSTVOL_GUEST_KERNEL;
  if (env) {
    if (!existsSync(env)) throw new Error(`TRUSTVOL_GUEST_KERNEL=${env} does not exist`);
    return resolve(env);
  }
  const cached = join(cacheDir(), "guest-kernel", "bzImage");
  return existsSync(cached) ? cached : undefined;
}

/** findGuestKernel(), building the kernel into the cache when there is none (about 15 min on 2 cores). */
export function ensureGuestKernel(): string {
  const found = findGuestKernel();
  if (found) return found;
  process.stderr.write("trustvol-vm: no guest kernel (TRUSTVOL_GUEST_KERNEL unset, cache empty): building it with scripts/vm/build-kernel.sh\n");
  const r = spawnSync("bash", [join(REPO_ROOT, "scripts/vm/build-kernel.sh")], { stdio: ["ignore", "pipe", "inherit"] });
  const path = r.stdout?.toString().trim().split("\n").pop() ?? "";
  if (r.status !== 0 || !path || !existsSync(path)) throw new Error(`guest kernel build failed (status ${r.status})`);
  return path;
}

/**
 * For tests: true when the QEMU tier can run. Missing tools skip locally and fail in CI (needTools); the kernel is
 * built when missing (so give the calling hook a long timeout).
 */
export function needGuest(t: TestContext): boolean {
  if (!needTools(t, ...VM_TOOLS)) return false;
  ensureGuestKernel();
  return true;
}

export interface GuestRunOptions {
  /** Shell text, run by /bin/bash in the guest. */
  script?: string;
  /** A file to run instead: *.ts/*.mts via `node --import tsx`, *.js/*.mjs via node (in place), anything else is copied and executed (#!). */
  scriptPath?: string;
  /** Arguments for the script ($1...). */
  args?: string[];
  /** Attach swtpm (default true). */
  tpm?: boolean;
  /** Persistent swtpm state directory: several runs against it are reboots of one device. Default: a fresh TPM per run. */
  tpmStateDir?: string;
  /** Persist an owner storage primary (RSA-2048) at this handle before booting (true = 0x81000001); made on the host, once per state dir. */
  srk?: boolean | number;
  tpmInterface?: "tis" | "crb";
  /** Writable host directories, mounted at the same path in the guest. */
  share?: string[];
  /** Writable scratch directory ($TRUSTVOL_VM_SCRATCH in the guest, same path). Default: a fresh one, deleted after the run. */
  scratchDir?: string;
  /** Raw disk images attached as virtio disks: /dev/vda, /dev/vdb, ... (writes reach the file before a power cut only when the guest flushed them to the device). */
  disks?: string[];
  /** Extra environment for the script (never secrets: the env file sits in the run dir). */
  env?: Record<string, string>;
  /** Working directory of the script (default: the repo root, so `node --import tsx` resolves). */
  cwd?: string;
  /** Limit for the script, measured in the guest (exceeded: status 124, timedOut). Default 120 s. */
  timeoutMs?: number;
  /** Limit for reaching the script (boot). Default 90 s. */
  bootTimeoutMs?: number;
  /** Power cut: SIGKILL the guest this many ms after the script started. */
  killAfterMs?: number;
  /** Power cut: SIGKILL the guest as soon as its stdout contains this. */
  killOnOutput?: string | RegExp;
  /** trusted.source= on the kernel command line (default "tpm" when a TPM is attached). */
  trustedSource?: string;
  /** Extra kernel command line. */
  append?: string;
  memMiB?: number;
  smp?: number;
  /** Keep the run dir (console.log, swtpm.log, qemu.err) and return its path. */
  keep?: boolean;
}

export interface GuestRunResult {
  /** The script's exit status; null when the guest never reported one (power cut, crash, host watchdog). */
  status: number | null;
  stdout: string;
  stderr: string;
  /** Serial console: kernel messages and the harness's timing markers. */
  consoleLog: string;
  /** The script hit timeoutMs (status 124), or the host watchdog had to kill the guest. */
  timedOut: boolean;
  /** The guest was killed on purpose (killAfterMs / killOnOutput). */
  powerCut: boolean;
  /** Host ms from start to the script starting (swtpm + qemu + kernel + init). */
  bootMs: number;
  /** Host ms from start until everything was torn down. */
  totalMs: number;
  scratchDir: string;
  runDir?: string;
}

// ------------------------------------------------------------------ process bookkeeping
const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const c of live) {
    try {
      c.kill("SIGKILL");
    } catch {
      /* gone */
    }
  }
});

function track(c: ChildProcess): ChildProcess {
  live.add(c);
  c.once("exit", () => live.delete(c));
  return c;
}

function exited(c: ChildProcess): boolean {
  return c.exitCode !== null || c.signalCode !== null;
}

function waitExit(c: ChildProcess, ms: number): Promise<boolean> {
  if (exited(c)) return Promise.resolve(true);
  return new Promise((res) => {
    const timer = setTimeout(() => res(false), ms);
    c.once("exit", () => {
      clearTimeout(timer);
      res(true);
    });
  });
}

async function stop(c: ChildProcess | undefined, graceMs = 2000): Promise<void> {
  if (!c || exited(c)) return;
  c.kill("SIGTERM");
  if (!(await waitExit(c, graceMs))) {
    c.kill("SIGKILL");
    await waitExit(c, 5000);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Single-quote for the guest shell. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

// ------------------------------------------------------------------ TPM state
/** One guest per TPM state dir at a time (swtpm would refuse the second). */
function lockStateDir(dir: string): () => void {
  const lock = join(dir, ".trustvol-vm.lock");
  for (let i = 0; i < 2; i++) {
    try {
      const fd = openSync(lock, "wx");
      writeFileSync(fd, String(process.pid));
      closeSync(fd);
      return () => rmSync(lock, { force: true });
    } catch {
      const pid = Number(readFileSync(lock, "utf8") || "0");
      let alive = false;
      try {
        if (pid > 0) process.kill(pid, 0), (alive = true);
      } catch {
        /* stale lock */
      }
      if (alive && pid !== process.pid) throw new Error(`TPM state ${dir} is in use by process ${pid}`);
      if (alive) throw new Error(`TPM state ${dir} is already in use by another guest of this process`);
      unlinkSync(lock);
    }
  }
  throw new Error(`cannot lock TPM state ${dir}`);
}

/** Persist an RSA-2048 owner storage primary at `handle` in the swtpm state (host side, tpm2-tools over the swtpm TCTI). */
async function ensureSrk(stateDir: string, handle: number, runDir: string): Promise<void> {
  const hex = `0x${handle.toString(16)}`;
  const marker = join(stateDir, `.trustvol-srk-${hex}`);
  if (existsSync(marker)) return;
  for (const t of ["tpm2_createprimary", "tpm2_evictcontrol", "tpm2_readpublic"])
    if (!hasTool(t)) throw new Error(`${t} missing: apt-get install tpm2-tools (needed to persist the SRK)`);
  const sock = join(runDir, "srk.sock");
  const sw = track(
    spawn("swtpm", ["socket", "--tpm2", "--tpmstate", `dir=${stateDir}`, "--server", `type=unixio,path=${sock}`, "--ctrl", `type=unixio,path=${sock}.ctrl`, "--flags", "not-need-init,startup-clear"], { stdio: "ignore" }),
  );
  try {
    for (let i = 0; i < 200 && !existsSync(sock); i++) await sleep(25);
    if (!existsSync(sock)) throw new Error("swtpm (SRK setup) did not start");
    const env = { ...process.env, TPM2TOOLS_TCTI: `swtpm:path=${sock}` };
    const tpm = (args: string[]) => spawnSync(args[0]!, args.slice(1), { env, cwd: runDir, encoding: "utf8" });
    if (tpm(["tpm2_readpublic", "-c", hex]).status !== 0) {
      for (const cmd of [
        ["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "rsa2048", "-c", "srk.ctx"],
        ["tpm2_evictcontrol", "-Q", "-C", "o", "-c", "srk.ctx", hex],
      ]) {
        const r = tpm(cmd);
        if (r.status !== 0) throw new Error(`${cmd[0]} failed: ${r.stderr.trim()}`);
      }
    }
    tpm(["tpm2_shutdown"]); // orderly, so the next start is not counted as a dictionary-attack event
    writeFileSync(marker, "");
  } finally {
    await stop(sw);
  }
}

// ------------------------------------------------------------------ the run
/**
 * Run a guest. A guest that died without a single console line (QEMU or the TCG host failing before the kernel
 * printed anything: a known rare flake) is started again, up to twice; a power cut on purpose never is.
 */
export async function runInGuest(opts: GuestRunOptions): Promise<GuestRunResult> {
  for (let attempt = 1; ; attempt++) {
    const r = await runInGuestOnce(opts);
    const silent = r.status === null && !r.powerCut && r.bootMs < 0 && r.consoleLog.trim() === "";
    if (!silent || attempt >= 3) return r;
    process.stderr.write(`trustvol-vm: the guest died with no console output at all (attempt ${attempt}); starting it again\n`);
  }
}

async function runInGuestOnce(opts: GuestRunOptions): Promise<GuestRunResult> {
  if (!!opts.script === !!opts.scriptPath) throw new Error("runInGuest: give exactly one of script / scriptPath");
  const t0 = Date.now();
  const kernel = ensureGuestKernel();
  const initrd = ensureInitramfs(cacheDir(), join(GUEST_DIR, "init.sh"));
  const runDir = mkdtempSync(join(tmpdir(), "trustvol-vm-"));
  const ctl = join(runDir, "ctl");
  mkdirSync(ctl);
  const ownScratch = !opts.scratchDir;
  const scratch = opts.scratchDir ? realpathSync(opts.scratchDir) : join(runDir, "scratch");
  if (ownScratch) mkdirSync(scratch);
  const useTpm = opts.tpm !== false;
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const bootTimeoutMs = opts.bootTimeoutMs ?? 90_000;
  const srk = opts.srk === true ? SRK_HANDLE : typeof opts.srk === "number" ? opts.srk : undefined;
  let swtpm: ChildProcess | undefined;
  let qemu: ChildProcess | undefined;
  let unlock: (() => void) | undefined;
  let keep = opts.keep || process.env.TRUSTVOL_VM_KEEP === "1";
  try {
    // --- guest payload in the control share
    copyFileSync(join(GUEST_DIR, "stage2.sh"), join(ctl, "stage2.sh"));
    let runner = "/bin/bash";
    let scriptArgs = opts.args ?? [];
    if (opts.script !== undefined) writeFileSync(join(ctl, "script"), opts.script);
    else {
      const p = resolve(opts.scriptPath!);
      if (/\.(c|m)?ts$/.test(p) || /\.(c|m)?js$/.test(p)) {
        writeFileSync(join(ctl, "script"), `exec node ${/ts$/.test(p) ? "--import tsx " : ""}${shq(p)} "$@"\n`);
      } else {
        copyFileSync(p, join(ctl, "script"));
        runner = statSync(p).mode & 0o111 ? "" : "/bin/sh";
      }
    }
    if (runner === "") spawnSync("chmod", ["755", join(ctl, "script")]);
    // The guest mounts fresh tmpfs on /tmp, /var/tmp and /run, hiding a checkout there (CI clones may live in /tmp):
    // share the repository explicitly then, at the same path.
    const repoHidden = /^\/(tmp|var\/tmp|run)(\/|$)/.test(realpathSync(REPO_ROOT));
    const shares = [scratch, ...(opts.share ?? []).map((d) => realpathSync(d))];
    const roShares = repoHidden ? [realpathSync(REPO_ROOT)] : [];
    writeFileSync(join(ctl, "shares"), [...shares.map((d, i) => `share${i} ${d}\n`), ...roShares.map((d, i) => `roshare${i} ${d} ro\n`)].join(""));
    const env: Record<string, string> = {
      TRUSTVOL_VM: "1",
      TRUSTVOL_VM_SCRATCH: scratch,
      TRUSTVOL_REPO: REPO_ROOT,
      TRUSTVOL_VM_CWD: opts.cwd ?? REPO_ROOT,
      TRUSTVOL_VM_TIMEOUT: `${Math.ceil(timeoutMs / 1000)}s`,
      TRUSTVOL_VM_RUNNER: runner,
      ...(srk !== undefined ? { TRUSTVOL_VM_SRK: `0x${srk.toString(16)}` } : {}),
      ...(opts.env ?? {}),
    };
    const envLines = Object.entries(env).map(([k, v]) => {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`bad env name ${k}`);
      return `export ${k}=${shq(v)}\n`;
    });
    writeFileSync(join(ctl, "env"), envLines.join("") + `set -- ${scriptArgs.map(shq).join(" ")}\n`);

    // --- swtpm
    const qemuTpm: string[] = [];
    if (useTpm) {
      const stateDir = opts.tpmStateDir ? resolve(opts.tpmStateDir) : join(runDir, "tpm");
      mkdirSync(stateDir, { recursive: true });
      unlock = lockStateDir(stateDir);
      if (srk !== undefined) await ensureSrk(stateDir, srk, runDir);
      const sock = join(runDir, "swtpm.sock");
      swtpm = track(
        spawn("swtpm", ["socket", "--tpm2", "--tpmstate", `dir=${stateDir}`, "--ctrl", `type=unixio,path=${sock}`, "--log", `file=${join(runDir, "swtpm.log")},level=1`, "--terminate"], { stdio: "ignore" }),
      );
      for (let i = 0; i < 200 && !existsSync(sock) && !exited(swtpm); i++) await sleep(25);
      if (!existsSync(sock)) throw new Error(`swtpm did not start: ${safeRead(join(runDir, "swtpm.log"))}`);
      qemuTpm.push("-chardev", `socket,id=chrtpm,path=${sock}`, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", `${opts.tpmInterface === "crb" ? "tpm-crb" : "tpm-tis"},tpmdev=tpm0`);
    }

    // --- qemu (TCG: KVM is not usable on the CI machines)
    const fs9p = (id: string, path: string, ro: boolean) => [
      "-fsdev", `local,id=${id},path=${path},security_model=none,multidevs=remap${ro ? ",readonly=on" : ""}`,
      "-device", `virtio-9p-pci,fsdev=${id},mount_tag=${id}`,
    ];
    const cmdline = [
      "console=ttyS0", "quiet", "loglevel=4", "panic=-1", "no_timer_check", // a loaded TCG host can miss the IO-APIC timer check and panic at boot
      "random.trust_cpu=on", "i8042.noaux", "i8042.nokbd", "mitigations=off",
      ...(useTpm || opts.trustedSource ? [`trusted.source=${opts.trustedSource ?? "tpm"}`] : []),
      ...(opts.append ? [opts.append] : []),
    ].join(" ");
    const args = [
      "-name", "trustvol-vm", "-machine", "pc,accel=tcg", "-cpu", "max",
      "-smp", String(opts.smp ?? vmSmp()), "-m", String(opts.memMiB ?? Number(process.env.TRUSTVOL_VM_MEM ?? 1024)),
      "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-no-reboot",
      "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
      "-serial", `file:${join(runDir, "console.log")}`,
      "-device", "virtio-rng-pci",
      ...fs9p("hostroot", "/", true), ...fs9p("tvctl", ctl, false),
      ...shares.flatMap((d, i) => fs9p(`share${i}`, d, false)),
      ...roShares.flatMap((d, i) => fs9p(`roshare${i}`, d, true)),
      ...(opts.disks ?? []).flatMap((d) => ["-drive", `file=${resolve(d)},if=virtio,format=raw,cache=writeback`]),
      ...qemuTpm,
    ];
    const qerr = openSync(join(runDir, "qemu.err"), "w");
    qemu = track(spawn("qemu-system-x86_64", args, { stdio: ["ignore", "ignore", qerr] }));
    closeSync(qerr);

    // --- watch: boot, script timers, power cut markers
    let bootMs = -1;
    let startedAt = 0;
    let timedOut = false;
    let powerCut = false;
    let bootFailed = false;
    let seen = 0;
    let stdoutSoFar = "";
    while (!exited(qemu)) {
      await sleep(40);
      const now = Date.now();
      if (bootMs < 0) {
        if (existsSync(join(ctl, "started"))) {
          bootMs = now - t0;
          startedAt = now;
        } else if (now - t0 > bootTimeoutMs) {
          bootFailed = true;
          qemu.kill("SIGKILL");
          break;
        }
        continue;
      }
      if (opts.killAfterMs !== undefined && now - startedAt >= opts.killAfterMs) {
        powerCut = true;
        qemu.kill("SIGKILL");
        break;
      }
      if (opts.killOnOutput !== undefined) {
        const size = fileSize(join(ctl, "stdout"));
        if (size > seen) {
          seen = size;
          stdoutSoFar = safeRead(join(ctl, "stdout"));
          const m = opts.killOnOutput;
          if (typeof m === "string" ? stdoutSoFar.includes(m) : m.test(stdoutSoFar)) {
            powerCut = true;
            qemu.kill("SIGKILL");
            break;
          }
        }
      }
      if (now - startedAt > timeoutMs + 20_000) {
        timedOut = true; // the guest's own timeout did not bring it down: host watchdog
        qemu.kill("SIGKILL");
        break;
      }
    }
    await waitExit(qemu, 10_000);
    await stop(swtpm);
    const statusText = powerCut ? "" : safeRead(join(ctl, "status")).trim();
    const status = statusText ? Number(statusText) : null;
    if (status === 124) timedOut = true;
    const consoleLog = safeRead(join(runDir, "console.log"));
    if (status === null && !powerCut) {
      keep = keep || IN_CI;
      const why = bootFailed ? `did not reach the script within ${bootTimeoutMs} ms` : timedOut ? "was killed by the host watchdog" : "reported no exit status";
      process.stderr.write(`trustvol-vm: guest ${why}; qemu: ${safeRead(join(runDir, "qemu.err")).trim()}\n--- last console lines ---\n${consoleLog.split("\n").slice(-25).join("\n")}\n`);
    }
    return {
      status,
      stdout: safeRead(join(ctl, "stdout")),
      stderr: safeRead(join(ctl, "stderr")),
      consoleLog,
      timedOut,
      powerCut,
      bootMs,
      totalMs: Date.now() - t0,
      scratchDir: scratch,
      ...(keep ? { runDir } : {}),
    };
  } finally {
    await stop(qemu, 500);
    await stop(swtpm);
    unlock?.();
    if (keep) process.stderr.write(`trustvol-vm: run dir kept: ${runDir}\n`);
    else rmSync(runDir, { recursive: true, force: true });
  }
}

/** A file's text, or "" when it cannot be read (logs of a guest that died early). */
export function safeRead(p: string): string {
  try {
    return readFileSync(p, "utf8");
  } catch {
    return "";
  }
}

function fileSize(p: string): number {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
}

// ------------------------------------------------------------------ helpers for guest-side commands
/** Shell line that runs a TypeScript file in the guest with the repo's tsx (cwd = repo root). */
export function guestNodeTs(file: string, ...args: string[]): string {
  return `(cd ${shq(REPO_ROOT)} && node --import tsx ${shq(resolve(file))} ${args.map(shq).join(" ")})`;
}

/** Shell line that runs the trustvol CLI from this checkout in the guest. */
export function guestCli(...args: string[]): string {
  return `node ${shq(join(REPO_ROOT, "bin", "trustvol.mjs"))} ${args.map(shq).join(" ")}`;
}

/** Source this in guest scripts for small helpers (loop devices, dm-crypt tables): `. "$TRUSTVOL_REPO/test/vm/guest/lib.sh"`. */
export const GUEST_LIB = join(GUEST_DIR, "lib.sh");
