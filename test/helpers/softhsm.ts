import type { TestContext } from "node:test";
// A throw-away SoftHSM2 world for one test file: its own SOFTHSM2_CONF and token directory, torn down afterwards.
// SoftHSM reads SOFTHSM2_CONF at C_Initialize, so the in-process module (pkcs11js) and every child tool
// (softhsm2-util, systemd-cryptenroll, cryptsetup's systemd plugin, openssl's pkcs11 engine) see the same tokens.
import { writeFileSync, mkdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { tmpDir, run, needTools, IN_CI } from "./tools.js";

export const SOFTHSM_MODULE_CANDIDATES = [
  "/usr/lib/softhsm/libsofthsm2.so",
  "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
  "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
  "/usr/lib64/pkcs11/libsofthsm2.so",
  "/usr/local/lib/softhsm/libsofthsm2.so",
];

export function softhsmModulePath(): string | undefined {
  return SOFTHSM_MODULE_CANDIDATES.find((p) => existsSync(p));
}

export interface SoftHsm {
  dir: string;
  conf: string;
  tokenDir: string;
  modulePath: string;
  /** process.env plus SOFTHSM2_CONF, for child tools. */
  env: NodeJS.ProcessEnv;
  /** Write a PIN to a 0600 file in the temp dir (so tools can read it without argv) and return the path. */
  pinFile(pin: string, name?: string): string;
  /**
   * Initialise a token on the first free slot with softhsm2-util. Test-only oracle: softhsm2-util takes the SO and user
   * PINs only in argv (throw-away test PINs on a throw-away token).
   */
  initToken(label: string, soPin: string, pin: string): void;
  cleanup(): void;
}

/** Create the temp world and point this process at it (process.env.SOFTHSM2_CONF). */
export function makeSoftHsm(): SoftHsm {
  const { dir, cleanup } = tmpDir("trustvol-softhsm-");
  const tokenDir = join(dir, "tokens");
  mkdirSync(tokenDir, { mode: 0o700 });
  const conf = join(dir, "softhsm2.conf");
  writeFileSync(conf, `directories.tokendir = ${tokenDir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`, { mode: 0o600 });
  const prev = process.env.SOFTHSM2_CONF;
  process.env.SOFTHSM2_CONF = conf;
  const env = { ...process.env, SOFTHSM2_CONF: conf };
  const modulePath = softhsmModulePath() ?? "/usr/lib/softhsm/libsofthsm2.so";
  let n = 0;
  return {
    dir,
    conf,
    tokenDir,
    modulePath,
    env,
    pinFile(pin, name) {
      const p = join(dir, name ?? `pin-${n++}`);
      writeFileSync(p, pin, { mode: 0o600 });
      return p;
    },
    initToken(label, soPin, pin) {
      run("softhsm2-util", ["--init-token", "--free", "--label", label, "--so-pin", soPin, "--pin", pin], { env, timeoutMs: 60_000 });
    },
    cleanup() {
      if (prev === undefined) delete process.env.SOFTHSM2_CONF;
      else process.env.SOFTHSM2_CONF = prev;
      cleanup();
    },
  };
}

/** Skip without SoftHSM2 (or the named tools) on a dev box; in CI their absence is a failure, never a silent skip. */
export function needSoftHsm(t: TestContext, ...tools: string[]): boolean {
  if (!softhsmModulePath()) {
    if (IN_CI) throw new Error("SoftHSM2 module missing in CI (.ci/run must install softhsm2)");
    t.skip("SoftHSM2 not installed");
    return false;
  }
  return needTools(t, ...tools);
}
