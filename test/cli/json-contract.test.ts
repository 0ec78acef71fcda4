// The --json contract (README, "Machine-readable output"), checked on every command that has --json. The commands
// are enumerated from the commander definitions: a new command with --json and no case here fails this test.
// Each command runs once on a failing input (the error document) and, where this machine can, once for real.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, mkdirSync, symlinkSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { startSwtpm } from "../helpers/swtpm.js";
import { makeSoftHsm, needSoftHsm } from "../helpers/softhsm.js";
import { buildProgram } from "../../src/cli/main.js";

/** Every command path (e.g. "enroll tpm2") that offers --json. */
async function jsonCommands(): Promise<string[]> {
  const out: string[] = [];
  const walk = (c: Command, path: string[]): void => {
    for (const s of c.commands) {
      const p = [...path, s.name()];
      if (s.options.some((o) => o.long === "--json")) out.push(p.join(" "));
      walk(s, p);
    }
  };
  walk(await buildProgram([]), []);
  return out.sort();
}

/** Commands whose success path needs what this host lacks; the QEMU tier (test/vm/) runs them for real. */
const SUCCESS_ELSEWHERE: Record<string, string> = {
  close: "needs device-mapper (test/vm/open.slow.test.ts)",
  "trusted new": "needs kernel trusted keys (test/vm/trusted-keys.slow.test.ts)",
  "trusted load": "needs kernel trusted keys (test/vm/trusted-keys.slow.test.ts)",
  "trusted format": "needs kernel trusted keys (test/vm/open.slow.test.ts)",
  "verity open": "needs dm-verity (test/vm/verity.slow.test.ts)",
  "verity status": "needs dm-verity (test/vm/verity.slow.test.ts)",
  "verity close": "needs dm-verity (test/vm/verity.slow.test.ts)",
};

const SNAKE = /^[a-z0-9]+(_[a-z0-9]+)*$/;

/** Keys snake_case at every depth, no serialized Buffer; `skip` names subtrees printed as stored (dump's metadata). */
function checkKeys(v: unknown, where: string, skip: (path: string) => boolean): void {
  if (Array.isArray(v)) return v.forEach((x, i) => checkKeys(x, `${where}[${i}]`, skip));
  if (v === null || typeof v !== "object") return;
  const o = v as Record<string, unknown>;
  assert.ok(!(o.type === "Buffer" && Array.isArray(o.data)), `${where}: a raw Buffer`);
  for (const [k, x] of Object.entries(o)) {
    const p = where ? `${where}.${k}` : k;
    assert.match(k, SNAKE, `${p}: key is not snake_case`);
    if (!skip(p)) checkKeys(x, p, skip);
  }
}

function checkOk(cmd: string, r: { status: number; stdout: string; stderr: string }, okStatus: number[] = [0]): Record<string, unknown> {
  assert.ok(okStatus.includes(r.status), `${cmd}: exit ${r.status}: ${r.stderr}`);
  assert.doesNotMatch(r.stdout, /"type":\s*"Buffer"/, cmd);
  const j = JSON.parse(r.stdout) as Record<string, unknown>;
  assert.equal(j.version, 1, `${cmd}: contract version`);
  assert.equal(Object.keys(j)[0], "version", `${cmd}: version comes first`);
  assert.equal(j.error, undefined, `${cmd}: success printed an error`);
  checkKeys(j, "", (p) => cmd === "dump" && p === "metadata");
  return j;
}

function checkError(cmd: string, r: { status: number; stdout: string; stderr: string }): void {
  assert.notEqual(r.status, 0, `${cmd}: a failing input exits non-zero`);
  const j = JSON.parse(r.stdout) as { version: number; error: Record<string, unknown> };
  assert.deepEqual(Object.keys(j), ["version", "error"], `${cmd}: ${r.stdout}`);
  assert.equal(j.version, 1);
  const e = j.error;
  assert.match(String(e.code), /^E[A-Z]+$/, `${cmd}: error.code`);
  assert.equal(e.exit_code, r.status, `${cmd}: error.exit_code is the exit status`);
  assert.equal(typeof e.message, "string");
  assert.ok((e.message as string).length > 0 && !(e.message as string).includes("\n"), `${cmd}: one-line message`);
  assert.doesNotMatch(e.message as string, /\bE(NOENT|ACCES|ISDIR|NOTDIR|PERM|EXIST|NXIO)\b|illegal operation|\bopen '/, `${cmd}: raw errno text`);
  assert.ok(e.hint === null || typeof e.hint === "string", `${cmd}: hint`);
  checkKeys(j, "", () => false);
  assert.match(r.stderr, /^trustvol: /, `${cmd}: the human line stays on stderr`);
}

test("every --json command: valid JSON, version, snake_case keys, no raw Buffer; the error document on failure", async (t) => {
  if (!needTools(t, "swtpm", "openssl")) return;
  if (!needSoftHsm(t, "softhsm2-util")) return;
  const cmds = await jsonCommands();
  const { dir, cleanup } = tmpDir("trustvol-json-");
  t.after(cleanup);
  const h = makeSoftHsm();
  t.after(() => h.cleanup());
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const savedSim = process.env.TRUSTVOL_CAAM_SIMULATOR;
  process.env.TRUSTVOL_CAAM_SIMULATOR = "1";
  t.after(() => (savedSim === undefined ? delete process.env.TRUSTVOL_CAAM_SIMULATOR : (process.env.TRUSTVOL_CAAM_SIMULATOR = savedSim)));

  const f = (name: string) => join(dir, name);
  const missing = f("missing.img");
  writeFileSync(f("pw"), "passphrase-1", { mode: 0o600 });
  writeFileSync(f("pw2"), "passphrase-2", { mode: 0o600 });
  writeFileSync(f("tok.json"), JSON.stringify({ type: "x-test", keyslots: [] }));
  const so = h.pinFile("87654321"), pin = h.pinFile("1234");
  const kdf = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
  const key = ["--key-file", f("pw")];
  run("truncate", ["-s", "20M", f("v.img")]);
  run("truncate", ["-s", "3M", f("r.img")]);
  run("truncate", ["-s", "20M", f("u.img")]);
  run("truncate", ["-s", "2M", f("plain.img")]);
  writeFileSync(f("data.img"), Buffer.alloc(64 * 4096, 7));
  run("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f("sig.key"), "-out", f("sig.pem"), "-subj", "/CN=json signer", "-days", "2"]);
  run("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f("ca.key"), "-out", f("ca.pem"), "-subj", "/CN=json CA", "-days", "2"]);
  const root = f("root");
  mkdirSync(join(root, "proc/self"), { recursive: true });
  writeFileSync(join(root, "proc/self/mounts"), "tmpfs /tmp tmpfs rw 0 0\n");
  symlinkSync("/nonexistent", join(root, "dangling"));
  const tokUri = "pkcs11:token=lmp";
  const id = ["--uri", tokUri, "--module", h.modulePath, "--pin-file", pin];
  let verityRoot = "";

  // In order: later steps use what earlier ones made. [command, argv, exit statuses that mean success]
  const steps: [string, () => string[], number[]?][] = [
    ["format", () => ["format", f("v.img"), ...key, ...kdf, "-q", "--json"]],
    ["format", () => ["format", f("r.img"), ...key, ...kdf, "--offset", String(1 << 20), "-q", "--json"]],
    ["dump", () => ["dump", f("v.img"), "--json"]],
    ["unlock", () => ["unlock", "--test", f("v.img"), ...key, "--json"]],
    ["key add", () => ["key", "add", f("v.img"), ...key, "--new-key-file", f("pw2"), ...kdf, "--json"]],
    ["token import", () => ["token", "import", f("v.img"), "--json-file", f("tok.json"), "--json"]],
    ["header backup", () => ["header", "backup", f("v.img"), "--file", f("hdr.bin"), "--json"]],
    ["header restore", () => ["header", "restore", f("v.img"), "--file", f("hdr.bin"), "--json"]],
    ["repair", () => ["repair", f("v.img"), "--json"]],
    ["image encrypt", () => ["image", "encrypt", f("plain.img"), f("enc.img"), ...key, ...kdf, "--offset", String(1 << 20), "--progress-json", "--json"]],
    ["image decrypt", () => ["image", "decrypt", f("enc.img"), f("dec.img"), ...key, "--json"]],
    ["enroll recovery", () => ["enroll", "recovery", f("v.img"), ...key, "--json"]],
    ["enroll tpm2", () => ["enroll", "tpm2", f("v.img"), "--tpm2-device", tpm.device, "--pcrs", "7", ...key, "--json"]],
    ["enroll clevis", () => ["enroll", "clevis", f("v.img"), "--tpm2-device", tpm.device, "--pcrs", "7", ...key, "--json"]],
    ["unlock", () => ["unlock", "--test", "--token-only", "--tpm2-device", tpm.device, f("v.img"), "--json"]],
    ["tpm2 predict", () => ["tpm2", "predict", "--tpm2-device", tpm.device, "--extend", `16=${"ab".repeat(32)}`, "--json"]],
    // OTA re-enrolment on its own volume (PCR 7 is not extended here, so the staged token unseals in this "boot")
    ["format", () => ["format", f("u.img"), ...key, ...kdf, "-q", "--json"]],
    ["enroll tpm2", () => ["enroll", "tpm2", f("u.img"), "--tpm2-device", tpm.device, "--pcrs", "7", ...key, "--json"]],
    ["tpm2 stage-update", () => ["tpm2", "stage-update", f("u.img"), "--pcrs", "7", "--tpm2-device", tpm.device, "--json"]],
    ["tpm2 commit-update", () => ["tpm2", "commit-update", f("u.img"), "--tpm2-device", tpm.device, "--json"]],
    ["tpm2 stage-update", () => ["tpm2", "stage-update", f("u.img"), "--pcrs", "7", "--tpm2-device", tpm.device, "--json"]],
    ["tpm2 abort-update", () => ["tpm2", "abort-update", f("u.img"), "--json"]],
    ["reencrypt", () => ["reencrypt", f("r.img"), ...key, ...kdf, "--progress-json", "--json"]], // progress to stderr then
    ["pkcs11 init-token", () => ["pkcs11", "init-token", "--module", h.modulePath, "--label", "lmp", "--so-pin-file", so, "--pin-file", pin, "--json"]],
    ["pkcs11 list", () => ["pkcs11", "list", "--module", h.modulePath, "--json"]],
    ["pkcs11 keygen", () => ["pkcs11", "keygen", ...id, "--json"]],
    ["enroll pkcs11", () => ["enroll", "pkcs11", f("v.img"), "--uri", `${tokUri};object=luks`, "--module", h.modulePath, "--pin-file", pin, ...key, "--json"]],
    ["identity create", () => ["identity", "create", ...id, "--json"]],
    ["identity show", () => ["identity", "show", ...id, "--json"]],
    ["identity import-cert", () => ["identity", "import-cert", ...id, "--cert", f("dev.pem"), "--json"]],
    ["doctor", () => ["doctor", "--root", root, "--json"]],
    ["trusted source", () => ["trusted", "source", "--json"]],
    ["caam keygen", () => ["caam", "keygen", "k1", "--dir", f("caam"), "--simulator", f("caam-sim"), "--json"]],
    ["caam import", () => ["caam", "import", f("caam/k1.bb"), "k2", "--dir", f("caam"), "--simulator", f("caam-sim"), "--json"]],
    ["open", () => ["open", f("v.img"), "jsonvol", ...key, "--dry-run", "--json"]],
    ["verity format", () => ["verity", "format", f("data.img"), f("data.hash"), "--json"]],
    ["verity dump", () => ["verity", "dump", f("data.hash"), "--json"]],
    ["verity verify", () => ["verity", "verify", f("data.img"), f("data.hash"), verityRoot, "--json"]],
    ["verity sign", () => ["verity", "sign", verityRoot, "--signing-key", f("sig.key"), "--cert", f("sig.pem"), "-o", f("root.p7s"), "--json"]],
    ["verity verify-sig", () => ["verity", "verify-sig", verityRoot, "--signature", f("root.p7s"), "--cert", f("sig.pem"), "--json"]],
    // provision on an image file (no device-mapper: --no-open): a factory volume → TPM2 token, factory slot wiped,
    // recovery key escrowed to a fleet key; then the fleet side decrypts the escrow file
    ["format", () => (run("truncate", ["-s", "8M", f("prov.img")]), ["format", f("prov.img"), ...key, ...kdf, "--offset", String(2 << 20), "-q", "--json"])],
    ["provision", () => {
      run("openssl", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", f("fleet.key")]);
      run("openssl", ["pkey", "-in", f("fleet.key"), "-pubout", "-out", f("fleet.pem")]);
      const vol = { name: "prov", device: f("prov.img"), trust: { type: "tpm2", pcrs: [7], device: tpm.device }, factory: { key_file: f("pw") }, recovery: { escrow: { public_key: f("fleet.pem"), output: f("prov-escrow.json") } }, posture: { secure_boot: "ignore", setup_mode: "ignore", huk: "ignore" } };
      writeFileSync(f("provision.json"), JSON.stringify({ version: 1, volumes: [vol] }));
      return ["provision", "--config", f("provision.json"), "--no-open", "--json"];
    }],
    ["recovery decrypt", () => ["recovery", "decrypt", f("prov-escrow.json"), "--private-key", f("fleet.key"), "--json"]],
    // the boot files written into an empty root directory
    ["boot install", () => (mkdirSync(f("bootroot"), { recursive: true }), ["boot", "install", "--root", f("bootroot"), "--initramfs-tools", "--systemd", "--json"])],
  ];
  const ran = new Set<string>();
  for (const [cmd, argv, okStatus] of steps) {
    if (cmd === "identity import-cert") {
      // the CA signs the token's CSR (openssl as the CA)
      const r = await trustvolInProcess(["identity", "csr", ...id, "--subject", "CN=json-device", "-o", f("dev.csr")]);
      assert.equal(r.status, 0, r.stderr);
      run("openssl", ["x509", "-req", "-in", f("dev.csr"), "-CA", f("ca.pem"), "-CAkey", f("ca.key"), "-CAcreateserial", "-out", f("dev.pem"), "-days", "1"]);
    }
    const r = await trustvolInProcess(argv());
    const j = checkOk(cmd, r, okStatus);
    if (cmd === "verity format") verityRoot = String(j.root_hash);
    // the update steps really did something (not "nothing staged")
    if (cmd === "tpm2 predict") assert.match(String((j.pcrs as { value: string }[])[0]?.value), /^[0-9a-f]{64}$/, r.stdout);
    if (cmd === "tpm2 commit-update") assert.equal((j.committed_tokens as number[]).length, 1, r.stdout);
    if (cmd === "tpm2 abort-update") assert.equal((j.removed_tokens as number[]).length, 1, r.stdout);
    ran.add(cmd);
  }
  assert.match(verityRoot, /^[0-9a-f]{64}$/);

  // A failing input for every command (mostly a path that does not exist, the rest a refusal).
  const failing: Record<string, string[]> = {
    format: ["format", missing, ...key, "--json"],
    dump: ["dump", missing, "--json"],
    unlock: ["unlock", "--test", f("v.img"), "--key-file", f("tok.json"), "--key-slot", "0", "--json"],
    repair: ["repair", f("plain.img"), "--json"],
    "key add": ["key", "add", missing, ...key, "--new-key-file", f("pw2"), "--json"],
    "token import": ["token", "import", f("v.img"), "--json-file", missing, "--json"],
    "header backup": ["header", "backup", f("v.img"), "--file", f("hdr.bin"), "--json"],
    "header restore": ["header", "restore", f("v.img"), "--file", missing, "--json"],
    "image encrypt": ["image", "encrypt", missing, f("enc2.img"), ...key, "--json"],
    "image decrypt": ["image", "decrypt", missing, f("dec2.img"), ...key, "--json"],
    "enroll pkcs11": ["enroll", "pkcs11", missing, "--uri", `${tokUri};object=luks`, ...key, "--json"],
    "enroll tpm2": ["enroll", "tpm2", missing, "--tpm2-device", tpm.device, ...key, "--json"],
    "enroll clevis": ["enroll", "clevis", missing, "--tpm2-device", tpm.device, ...key, "--json"],
    "enroll recovery": ["enroll", "recovery", missing, ...key, "--json"],
    "tpm2 predict": ["tpm2", "predict", "--eventlog", missing, "--pcrs", "7", "--json"],
    "tpm2 stage-update": ["tpm2", "stage-update", missing, "--pcrs", "7", "--tpm2-device", tpm.device, "--json"],
    "tpm2 commit-update": ["tpm2", "commit-update", missing, "--tpm2-device", tpm.device, "--json"],
    "tpm2 abort-update": ["tpm2", "abort-update", missing, "--json"],
    "identity create": ["identity", "create", ...id, "--json"], // the label exists already
    "identity import-cert": ["identity", "import-cert", ...id, "--cert", missing, "--json"],
    "identity show": ["identity", "show", "--uri", "pkcs11:token=nosuch", "--module", h.modulePath, "--pin-file", pin, "--json"],
    "pkcs11 list": ["pkcs11", "list", "--module", missing, "--json"],
    "pkcs11 init-token": ["pkcs11", "init-token", "--module", missing, "--label", "x", "--so-pin-file", so, "--pin-file", pin, "--json"],
    "pkcs11 keygen": ["pkcs11", "keygen", "--uri", "pkcs11:token=nosuch", "--module", h.modulePath, "--pin-file", pin, "--json"],
    reencrypt: ["reencrypt", missing, ...key, "--json"],
    open: ["open", missing, "jsonvol", ...key, "--dry-run", "--json"],
    close: ["close", "trustvol-json-no-such-mapping", "--json"],
    "trusted new": ["trusted", "new", "kmk", "--blob", f("kmk.blob"), "--size", "7", "--json"],
    "trusted load": ["trusted", "load", "kmk", "--blob", missing, "--json"],
    "trusted format": ["trusted", "format", missing, "--json"],
    "trusted source": ["trusted", "source", "--bogus", "--json"],
    "caam keygen": ["caam", "keygen", "../bad", "--json"],
    "caam import": ["caam", "import", missing, "k3", "--dir", f("caam"), "--simulator", f("caam-sim"), "--json"],
    doctor: ["doctor", "--root", f("no-such-root"), "--json"],
    "verity format": ["verity", "format", missing, f("x.hash"), "--json"],
    "verity verify": ["verity", "verify", f("data.img"), f("data.hash"), "00".repeat(32), "--json"],
    "verity dump": ["verity", "dump", missing, "--json"],
    "verity sign": ["verity", "sign", "00".repeat(32), "-o", f("x.p7s"), "--json"],
    "verity verify-sig": ["verity", "verify-sig", "00".repeat(32), "--signature", f("root.p7s"), "--cert", f("sig.pem"), "--json"],
    "verity open": ["verity", "open", missing, "vjson", f("data.hash"), "00".repeat(32), "--json"],
    "verity status": ["verity", "status", "trustvol-json-no-such-mapping", "--json"],
    "verity close": ["verity", "close", "trustvol-json-no-such-mapping", "--json"],
    provision: ["provision", "--config", missing, "--no-open", "--json"],
    "recovery decrypt": ["recovery", "decrypt", f("prov-escrow.json"), "--private-key", f("sig.key"), "--json"], // another key
    "boot install": ["boot", "install", "--root", f("bootroot"), "--json"], // nothing to install
  };
  for (const cmd of cmds) {
    await t.test(cmd, async () => {
      assert.ok(failing[cmd], `${cmd} has --json but no failing case in json-contract.test.ts`);
      assert.ok(ran.has(cmd) || SUCCESS_ELSEWHERE[cmd], `${cmd} has --json but no success case in json-contract.test.ts (or a reason in SUCCESS_ELSEWHERE)`);
      const r = await trustvolInProcess(failing[cmd]!);
      t.diagnostic(`${cmd}: ${r.stderr.trim()}`);
      checkError(cmd, r);
    });
  }
  // a usage error (commander's, before any command runs) has the same shape
  checkError("usage", await trustvolInProcess(["dump", f("v.img"), "--no-such-option", "--json"]));
  // a corrupted verity block: the error document carries where
  const data = readFileSync(f("data.img"));
  data[5 * 4096] ^= 1;
  writeFileSync(f("data.img"), data);
  const bad = await trustvolInProcess(["verity", "verify", f("data.img"), f("data.hash"), verityRoot, "--json"]);
  checkError("verity verify (corrupt)", bad);
  assert.ok(JSON.parse(bad.stdout).error.corruption, bad.stdout);
});
