// Finding and loading PKCS#11 modules: p11-kit registrations (`*.module` files), explicit paths, and one shared,
// reference-counted pkcs11js instance per library per process (a module may only be C_Initialize'd once).
import { readdirSync, readFileSync, existsSync, realpathSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { join, isAbsolute, basename } from "node:path";
import type * as Pkcs11js from "pkcs11js";
import { pkcs11js } from "./pkcs11js.js";
import { TrustvolError } from "../../util/errors.js";

export interface P11KitModule {
  /** Registration name: the config file name without ".module" (what RFC 7512's module-name matches). */
  name: string;
  /** Absolute path of the shared library. */
  path: string;
  configFile: string;
  priority: number;
  critical: boolean;
  trustPolicy: boolean;
  enableIn?: string[];
  disableIn?: string[];
}

/** p11-kit's configuration directories, lowest precedence first (a later file of the same name replaces an earlier one). */
export function p11KitConfigDirs(): string[] {
  const dirs = ["/usr/share/p11-kit/modules", "/etc/pkcs11/modules"];
  const xdg = process.env.XDG_CONFIG_HOME;
  dirs.push(xdg ? join(xdg, "pkcs11", "modules") : join(homedir(), ".config", "pkcs11", "modules"));
  return dirs;
}

const MULTIARCH: Record<string, string> = {
  x64: "x86_64-linux-gnu",
  arm64: "aarch64-linux-gnu",
  arm: "arm-linux-gnueabihf",
  ia32: "i386-linux-gnu",
  riscv64: "riscv64-linux-gnu",
  ppc64: "powerpc64le-linux-gnu",
  s390x: "s390x-linux-gnu",
};

/** Where p11-kit resolves a relative `module:` (its compiled-in p11_module_path). */
export function p11KitModuleDirs(): string[] {
  const ma = MULTIARCH[process.arch];
  return [...(ma ? [`/usr/lib/${ma}/pkcs11`] : []), "/usr/lib64/pkcs11", "/usr/lib/pkcs11", "/usr/local/lib/pkcs11"];
}

function parseModuleFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const c = line.indexOf(":");
    if (c <= 0) continue;
    out[line.slice(0, c).trim().toLowerCase()] = line.slice(c + 1).trim();
  }
  return out;
}

/** Modules registered with p11-kit (what systemd's cryptsetup plugin and p11-kit-proxy load). */
export function discoverP11KitModules(opts: { dirs?: string[]; moduleDirs?: string[] } = {}): P11KitModule[] {
  const byName = new Map<string, P11KitModule>();
  for (const dir of opts.dirs ?? p11KitConfigDirs()) {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      continue;
    }
    for (const f of names) {
      if (!f.endsWith(".module")) continue;
      const file = join(dir, f);
      let cfg: Record<string, string>;
      try {
        cfg = parseModuleFile(readFileSync(file, "utf8"));
      } catch {
        continue;
      }
      const name = f.slice(0, -".module".length);
      if (!cfg.module) {
        byName.delete(name); // a file without `module:` disables the package's registration
        continue;
      }
      let path = cfg.module;
      if (!isAbsolute(path)) {
        const hit = (opts.moduleDirs ?? p11KitModuleDirs()).map((d) => join(d, path)).find((p) => existsSync(p));
        path = hit ?? join((opts.moduleDirs ?? p11KitModuleDirs())[0]!, path);
      }
      const list = (v: string | undefined) => v?.split(",").map((s) => s.trim()).filter(Boolean);
      const m: P11KitModule = {
        name,
        path,
        configFile: file,
        priority: Number(cfg.priority ?? 0) || 0,
        critical: /^(yes|true)$/i.test(cfg.critical ?? ""),
        trustPolicy: /^(yes|true)$/i.test(cfg["trust-policy"] ?? ""),
      };
      const en = list(cfg["enable-in"]);
      const dis = list(cfg["disable-in"]);
      if (en) m.enableIn = en;
      if (dis) m.disableIn = dis;
      byName.set(name, m);
    }
  }
  // Highest priority first, then by name (p11-kit's order).
  return [...byName.values()].sort((a, b) => b.priority - a.priority || a.name.localeCompare(b.name));
}

/** Modules worth searching for a key-holding token: skip the trust-anchor module and ones that opt out of proxies. */
export function candidateModules(mods = discoverP11KitModules()): P11KitModule[] {
  return mods.filter((m) => !m.trustPolicy && !(m.disableIn ?? []).includes("p11-kit-proxy") && existsSync(m.path));
}

/** Resolve module-name (p11-kit registration name or library file name) to a registration. */
export function findModuleByName(name: string, mods = discoverP11KitModules()): P11KitModule | undefined {
  return mods.find((m) => m.name === name) ?? mods.find((m) => basename(m.path) === name || basename(m.path) === `${name}.so`);
}

// ---------------------------------------------------------------------------------------------------------------
// Loading

export type Pkcs11Lib = InstanceType<typeof pkcs11js.PKCS11>;

interface Loaded {
  lib: Pkcs11Lib;
  refs: number;
  path: string;
}
const loaded = new Map<string, Loaded>();

/** A loaded, initialised module. Call release() when done; the last release finalises and unloads it. */
export interface ModuleHandle {
  readonly path: string;
  readonly lib: Pkcs11Lib;
  release(): void;
}

export function loadModule(path: string): ModuleHandle {
  if (!isAbsolute(path)) {
    const hit = p11KitModuleDirs().map((d) => join(d, path)).find((p) => existsSync(p));
    if (!hit)
      throw new TrustvolError("EDEVICE", `PKCS#11 module ${path} not found`, "give the module's absolute path (--module /usr/lib/libckteec.so.0)");
    path = hit;
  }
  let key: string;
  try {
    key = realpathSync(path);
    if (!statSync(key).isFile()) throw new Error("not a regular file");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" || code === "ENOTDIR" ? "does not exist" : code === "EACCES" ? "is not readable (permission denied)" : code ? "cannot be examined" : "is not a regular file";
    throw new TrustvolError("EDEVICE", `PKCS#11 module ${path} ${why}`,
      "check the module path (e.g. /usr/lib/libckteec.so.0 for OP-TEE, /usr/lib/softhsm/libsofthsm2.so) or its p11-kit registration");
  }
  const have = loaded.get(key);
  if (have) {
    have.refs++;
    return handle(have, key);
  }
  const lib = new pkcs11js.PKCS11();
  try {
    lib.load(key);
  } catch (e) {
    throw new TrustvolError("EDEVICE", `PKCS#11 module ${path} failed to load: ${oneLineErr(e)}`,
      "is it a PKCS#11 library for this architecture? (tee-supplicant must run for OP-TEE's libckteec)", { cause: e });
  }
  try {
    lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (e) {
    const code = (e as { code?: number }).code;
    if (code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
      try { lib.close(); } catch { /* ignore */ }
      throw new TrustvolError("EDEVICE", `PKCS#11 module ${path} failed to initialise: ${oneLineErr(e)}`,
        "for SoftHSM check SOFTHSM2_CONF and its tokendir; for OP-TEE check that tee-supplicant runs and /dev/tee0 exists", { cause: e });
    }
  }
  const l: Loaded = { lib, refs: 1, path: key };
  loaded.set(key, l);
  return handle(l, key);
}

function handle(l: Loaded, key: string): ModuleHandle {
  let done = false;
  return {
    path: l.path,
    lib: l.lib,
    release() {
      if (done) return;
      done = true;
      if (--l.refs > 0) return;
      loaded.delete(key);
      try { l.lib.C_Finalize(); } catch { /* ignore */ }
      try { l.lib.close(); } catch { /* ignore */ }
    },
  };
}

export function oneLineErr(e: unknown): string {
  const m = e instanceof Error ? e.message : String(e);
  return m.split("\n")[0]!.trim();
}
