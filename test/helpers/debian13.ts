// The Debian 13 tier: today's reference tools (systemd 257, cryptsetup 2.7.5, SoftHSM2) run from a cached trixie
// root (scripts/debian13-root.sh) with chroot. Each command runs in its own private mount namespace (unshare -m), so
// the binds of the work dir, the swtpm socket dir, /dev, /proc, /run and /tmp vanish with it: nothing to unmount, and
// parallel test files sharing the root never see each other's mounts.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { TestContext } from "node:test";
import { IN_CI, hasTool, run, type RunResult } from "./tools.js";

const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "scripts", "debian13-root.sh");

/** Where the work dir and the swtpm socket dir appear inside the root. */
export const DEB13_WORK = "/w";
export const DEB13_TPM = "/tpm";

let cached: { root?: string; why?: string } | undefined;

/** Build (first call, ~30-60 s) or reuse the trixie root. Undefined with a reason when this box cannot. */
function ensureRoot(): { root?: string; why?: string } {
  if (cached) return cached;
  if (process.getuid?.() !== 0) return (cached = { why: "the Debian 13 tier needs root (chroot, mount)" });
  const missing = ["unshare", "chroot", "mount", "flock"].filter((n) => !hasTool(n));
  if (!hasTool("mmdebstrap") && !hasTool("apt-get")) missing.push("mmdebstrap");
  if (missing.length) return (cached = { why: `missing ${missing.join(", ")}` });
  const r = spawnSync("bash", [SCRIPT], { encoding: "utf8", timeout: 900_000, maxBuffer: 1 << 24 });
  const root = r.stdout?.trim().split("\n").pop();
  if (r.status !== 0 || !root || !existsSync(join(root, ".trustvol-ready"))) return (cached = { why: `building the Debian 13 root failed: ${(r.stderr ?? "").trim().split("\n").slice(-3).join(" | ")}` });
  return (cached = { root });
}

/** The root, or skip on a dev box that cannot build it; in CI that is a failure (.ci/run pre-builds it). */
export function needDebian13(t: TestContext): string | undefined {
  const { root, why } = ensureRoot();
  if (root) return root;
  if (IN_CI) throw new Error(`Debian 13 tier unavailable in CI: ${why}`);
  t.skip(why);
  return undefined;
}

export interface Deb13RunOptions {
  /** Host dir bound at /w (read-write). */
  work: string;
  /** Host dir holding the swtpm sockets, bound at /tpm. */
  tpmDir?: string;
  input?: string | Uint8Array;
  /** Environment inside the chroot (PATH is set); test-only secrets like systemd-cryptenroll's NEWPIN/PIN go here. */
  env?: Record<string, string>;
  check?: boolean;
  timeoutMs?: number;
}

/**
 * Run `cmd args` inside the root. Paths given to the tool must be the chroot's (/w/…, /tpm/…). The mount script
 * receives the host paths as positional parameters, never spliced into shell text.
 */
export function runInDebian13(root: string, cmd: string, args: string[], o: Deb13RunOptions): RunResult {
  const c = debian13Command(root, cmd, args, o);
  return run(c.cmd, c.args, { input: o.input, check: o.check ?? true, timeoutMs: o.timeoutMs ?? 300_000, env: c.env });
}

/**
 * The command line and environment runInDebian13 runs, for a caller that spawns it itself (to signal it mid-run):
 * unshare, sh and chroot exec one another, so the spawned process is the tool in the end.
 */
export function debian13Command(root: string, cmd: string, args: string[], o: Pick<Deb13RunOptions, "work" | "tpmDir" | "env">): { cmd: string; args: string[]; env: Record<string, string> } {
  const script = [
    'set -e; R="$1"; W="$2"; T="$3"; shift 3',
    "mount --make-rprivate /",
    'mount --rbind /dev "$R/dev"',
    'mount -t proc proc "$R/proc"',
    'mount -t sysfs sysfs "$R/sys"',
    'mount -t tmpfs tmpfs "$R/run"',
    'mount -t tmpfs tmpfs "$R/tmp"',
    `mkdir -p "$R${DEB13_WORK}" "$R${DEB13_TPM}"`,
    `mount --bind "$W" "$R${DEB13_WORK}"`,
    `if [ -n "$T" ]; then mount --bind "$T" "$R${DEB13_TPM}"; fi`,
    'exec chroot "$R" "$@"',
  ].join("\n");
  // A fresh environment (never the host's), inherited through unshare/sh/chroot: values never reach argv.
  const env = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", LANG: "C.UTF-8", ...(o.env ?? {}) };
  return { cmd: "unshare", args: ["--mount", "--propagation", "private", "sh", "-c", script, "deb13", root, o.work, o.tpmDir ?? "", cmd, ...args], env };
}

/** `swtpm:path=/tpm/<sock name>` for a host swtpm whose socket is in tpmDir. */
export function deb13SwtpmDevice(sockHostPath: string): { tpmDir: string; device: string } {
  return { tpmDir: dirname(sockHostPath), device: `swtpm:path=${DEB13_TPM}/${sockHostPath.slice(dirname(sockHostPath).length + 1)}` };
}
