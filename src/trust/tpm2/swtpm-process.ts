// A private software TPM (swtpm) process: temp state dir, unix or TCP command + control sockets, restart ("reboot":
// PCRs reset, seeds kept), stop. Used by `trustvol demo` on machines without a TPM, and by the tests.
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "node:net";

export interface Swtpm {
  /** Command socket path; the control socket is `${sock}.ctrl` (unused with tcp). */
  sock: string;
  /** TCP command port when started with { tcp: true } (control channel on port + 1), else 0. */
  port: number;
  stateDir: string;
  /** "swtpm:path=S" — for --tpm2-device= and TRUSTVOL_TPM2_DEVICE. */
  device: string;
  /** process.env plus TPM2TOOLS_TCTI for tpm2-tools / clevis. */
  env: NodeJS.ProcessEnv;
  /** Kill and start swtpm on the same state dir: PCRs and transient objects reset, seeds kept. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

function waitForSocket(path: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (!existsSync(path)) return retry(new Error("no socket yet"));
      const s = connect({ path });
      s.once("connect", () => {
        s.destroy();
        resolve();
      });
      s.once("error", (e) => {
        s.destroy();
        retry(e);
      });
    };
    const retry = (e: Error) => (Date.now() > deadline ? reject(new Error(`swtpm socket ${path} did not come up: ${e.message}`)) : setTimeout(attempt, 25));
    attempt();
  });
}

/** A free TCP port pair (P, P+1) on localhost for swtpm's tcp server + control channel. */
async function freePortPair(): Promise<number> {
  const { createServer } = await import("node:net");
  for (let i = 0; i < 20; i++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    const ok = await Promise.all([port, port + 1].map((p) => new Promise<boolean>((res) => {
      const srv = createServer();
      srv.once("error", () => res(false));
      srv.listen(p, "127.0.0.1", () => srv.close(() => res(true)));
    })));
    if (ok.every(Boolean)) return port;
  }
  throw new Error("no free TCP port pair for swtpm");
}

function waitForTcp(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const s = connect({ host: "127.0.0.1", port });
      s.once("connect", () => {
        s.destroy();
        resolve();
      });
      s.once("error", (e) => {
        s.destroy();
        if (Date.now() > deadline) reject(new Error(`swtpm tcp port ${port} did not come up: ${e.message}`));
        else setTimeout(attempt, 25);
      });
    };
    attempt();
  });
}

export async function startSwtpm(opts: { stateDir?: string; tcp?: boolean } = {}): Promise<Swtpm> {
  const base = mkdtempSync(join(tmpdir(), "trustvol-swtpm-"));
  const stateDir = opts.stateDir ?? base;
  const sock = join(base, "sock");
  const port = opts.tcp ? await freePortPair() : 0;
  let child: ChildProcess | undefined;
  // swtpm logs every client disconnect on stderr; a file (not a pipe) so synchronous tool runs can't block it
  const logPath = join(base, "swtpm.log");

  const launch = async () => {
    rmSync(sock, { force: true });
    rmSync(`${sock}.ctrl`, { force: true });
    const logFd = openSync(logPath, "a");
    const server = port ? ["--server", `type=tcp,port=${port},bindaddr=127.0.0.1`, "--ctrl", `type=tcp,port=${port + 1},bindaddr=127.0.0.1`] : ["--server", `type=unixio,path=${sock}`, "--ctrl", `type=unixio,path=${sock}.ctrl`];
    const c = spawn("swtpm", ["socket", "--tpm2", "--tpmstate", `dir=${stateDir}`, ...server, "--flags", "not-need-init,startup-clear"], { stdio: ["ignore", "ignore", logFd] });
    closeSync(logFd);
    const stderrTail = () => {
      try {
        return readFileSync(logPath, "utf8").slice(-2000).trim();
      } catch {
        return "";
      }
    };
    child = c;
    // never leave an swtpm behind if the test process exits without calling stop()
    const reap = () => {
      if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    };
    process.once("exit", reap);
    c.once("exit", () => process.removeListener("exit", reap));
    const exited = new Promise<never>((_, reject) => c.once("exit", (code) => reject(new Error(`swtpm exited early (${code}): ${stderrTail()}`))));
    const up = port ? Promise.all([waitForTcp(port, 15_000), waitForTcp(port + 1, 15_000)]) : Promise.all([waitForSocket(sock, 15_000), waitForSocket(`${sock}.ctrl`, 15_000)]);
    await Promise.race([up, exited]);
    c.removeAllListeners("exit");
  };

  const kill = async () => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => c.kill("SIGKILL"), 5000);
      c.once("exit", () => {
        clearTimeout(t);
        resolve();
      });
      c.kill("SIGTERM");
    });
  };

  /** TPM2_Shutdown(SU_CLEAR) first, as an OS does on reboot; otherwise the TPM counts the power loss as a DA failure. */
  const orderlyShutdown = () =>
    new Promise<void>((resolve) => {
      const s = port ? connect({ host: "127.0.0.1", port }) : connect({ path: sock });
      const done = () => {
        s.destroy();
        resolve();
      };
      s.setTimeout(5000, done);
      s.once("connect", () => s.write(Buffer.from("80010000000c000001450000", "hex")));
      s.once("data", done);
      s.once("error", done);
    });

  await launch();
  const device = port ? `swtpm:host=127.0.0.1,port=${port}` : `swtpm:path=${sock}`;
  return {
    sock,
    port,
    stateDir,
    device,
    env: { ...process.env, TPM2TOOLS_TCTI: device, TRUSTVOL_TPM2_DEVICE: device },
    async restart() {
      await orderlyShutdown();
      await kill();
      await launch();
    },
    async stop() {
      await kill();
      rmSync(base, { recursive: true, force: true });
    },
  };
}
