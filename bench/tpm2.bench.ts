// TPM2 unseal latency: trustvol (systemd-tpm2 token → passphrase, salted + encrypted sessions) against the
// tpm2-tools pipeline on the same blob (createprimary, load, policy session + policypcr, unseal, flush), on swtpm.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { hasTool, run, tmpDir } from "../test/helpers/tools.js";
import { startSwtpm } from "../test/helpers/swtpm.js";
import { Tpm, openTpm2Transport, splitBlob } from "../src/trust/tpm2/index.js";
import { createSystemdTpm2Token, decodeSystemdTpm2Token, unlockSystemdTpm2Token } from "../src/tokens/systemd-tpm2.js";
import { wipe } from "../src/util/secret.js";

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

export default async function (): Promise<void> {
  const tools = ["swtpm", "tpm2_createprimary", "tpm2_load", "tpm2_unseal", "tpm2_startauthsession", "tpm2_policypcr", "tpm2_flushcontext"];
  const missing = tools.filter((t) => !hasTool(t));
  if (missing.length) {
    console.log(`skipped: missing ${missing.join(", ")}`);
    return;
  }
  const N = Number(process.env.BENCH_N ?? 15);
  const sw = await startSwtpm();
  const tmp = tmpDir();
  try {
    const tpm = new Tpm(openTpm2Transport(sw.device));
    const { tokenJson, passphrase } = await createSystemdTpm2Token(tpm, { pcrs: [7], bank: "sha256", keyslot: 1 });
    wipe(passphrase);
    const { privBytes, pubBytes } = splitBlob(decodeSystemdTpm2Token(tokenJson).blob);
    const f = (n: string) => join(tmp.dir, n);
    writeFileSync(f("o.priv"), privBytes);
    writeFileSync(f("o.pub"), pubBytes);

    const ours: number[] = [];
    for (let i = 0; i < N + 2; i++) {
      const t0 = process.hrtime.bigint();
      const p = await unlockSystemdTpm2Token(tokenJson, tpm);
      const dt = Number(process.hrtime.bigint() - t0) / 1e6;
      wipe(p);
      if (i >= 2) ours.push(dt); // warm-up
    }
    const env = sw.env;
    const theirs: number[] = [];
    for (let i = 0; i < N; i++) {
      const t0 = process.hrtime.bigint();
      run("tpm2_createprimary", ["-Q", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", f("p.ctx")], { env });
      run("tpm2_flushcontext", ["-t"], { env });
      run("tpm2_load", ["-Q", "-C", f("p.ctx"), "-u", f("o.pub"), "-r", f("o.priv"), "-c", f("o.ctx")], { env });
      run("tpm2_flushcontext", ["-t"], { env });
      run("tpm2_startauthsession", ["-Q", "--policy-session", "-S", f("s.ctx")], { env });
      run("tpm2_policypcr", ["-Q", "-S", f("s.ctx"), "-l", "sha256:7"], { env });
      const out = run("tpm2_unseal", ["-c", f("o.ctx"), "-p", `session:${f("s.ctx")}`], { env }).stdout;
      wipe(out);
      for (const k of ["-t", "-s"]) run("tpm2_flushcontext", [k], { env, check: false });
      theirs.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    const a = median(ours);
    const b = median(theirs);
    console.log(`| unseal (swtpm, PCR 7 policy, median of ${N}) | ms |`);
    console.log(`|---|---|`);
    console.log(`| trustvol token → passphrase (salted ECC session, AES-CFB response) | ${a.toFixed(2)} |`);
    console.log(`| tpm2-tools createprimary+load+startauthsession+policypcr+unseal | ${b.toFixed(2)} |`);
    console.log(`| ratio tools / trustvol | ${(b / a).toFixed(1)}x |`);
  } finally {
    await sw.stop();
    tmp.cleanup();
  }
}
