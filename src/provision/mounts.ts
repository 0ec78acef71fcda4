// Is the file system a path belongs on mounted yet? The system stage of provisioning runs After=local-fs.target, but a
// `nofail` (or x-systemd.automount-less, late) fstab mount is not ordered before that target: a header backup under
// such a mount point (/boot, /data) would land in the directory underneath it, hidden once the mount appears, and the
// service would then disable itself. So the backup waits for the fstab mount that should hold it (fstab(5),
// proc_pid_mountinfo(5)).
import { readFileSync } from "node:fs";
import { posix } from "node:path";

/** fstab(5) and mountinfo escape spaces, tabs, newlines and backslashes as \ooo octal. */
function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/**
 * The mount point fstab gives the file system that holds `path`: the longest mount point that is `path` or one of its
 * parents, other than "/", skipping swap and `noauto` entries (nothing mounts those at boot). Null: the root's.
 */
export function fstabMountPointFor(path: string, fstab: string): string | null {
  const abs = posix.resolve(path);
  let best: string | null = null;
  for (const raw of fstab.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const f = line.split(/\s+/);
    if (f.length < 3) continue;
    const mp = unescapeOctal(f[1]!);
    const opts = (f[3] ?? "defaults").split(",");
    if (f[2] === "swap" || mp === "none" || !mp.startsWith("/") || opts.includes("noauto")) continue;
    const norm = posix.resolve(mp);
    if (norm === "/") continue;
    if ((abs === norm || abs.startsWith(norm + "/")) && (!best || norm.length > best.length)) best = norm;
  }
  return best;
}

/** Mount points in a mountinfo table (field 5). */
export function mountedPoints(mountinfo: string): Set<string> {
  const out = new Set<string>();
  for (const line of mountinfo.split("\n")) {
    const f = line.split(" ");
    if (f.length > 4) out.add(unescapeOctal(f[4]!));
  }
  return out;
}

export interface MountWait {
  fstabPath?: string;
  mountinfoPath?: string;
  timeoutMs?: number;
  pollMs?: number;
}

/**
 * Wait until the fstab mount that should hold `path` is mounted (at most timeoutMs, default 120 s); returns that mount
 * point or null (no such fstab entry, or no fstab). Throws when it is still not mounted: the caller fails the step
 * and the next boot tries again.
 */
export async function waitForFstabMount(path: string, o: MountWait = {}): Promise<string | null> {
  let fstab = "";
  try {
    fstab = readFileSync(o.fstabPath ?? "/etc/fstab", "utf8");
  } catch {
    return null; // no fstab: nothing is promised to be mounted
  }
  const mp = fstabMountPointFor(path, fstab);
  if (!mp) return null;
  const deadline = Date.now() + (o.timeoutMs ?? 120_000);
  for (;;) {
    let info = "";
    try {
      info = readFileSync(o.mountinfoPath ?? "/proc/self/mountinfo", "utf8");
    } catch {
      return null; // no /proc: cannot tell, as before
    }
    if (mountedPoints(info).has(mp)) return mp;
    if (Date.now() >= deadline) throw new Error(`${mp} (from /etc/fstab) is not mounted`);
    await new Promise((r) => setTimeout(r, o.pollMs ?? 500));
  }
}
