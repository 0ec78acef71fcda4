// Device identity (seed 003): key generated on the token, CSR signed by the token, CA-signed certificate imported
// next to the key, then a mutual-TLS handshake with openssl s_server using the on-token key through OpenSSL's
// pkcs11 engine (libp11, via p11-kit-proxy → SoftHSM). The PIN reaches the engine through pin-source=file:, not argv.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import pkcs11js from "pkcs11js";
import { makeSoftHsm, softhsmModulePath, type SoftHsm, needSoftHsm } from "../../helpers/softhsm.js";
import { run, IN_CI } from "../../helpers/tools.js";
import { createIdentity, identityCsr, identityImportCert, identityShow } from "../../../src/ops/identity.js";
import { openToken } from "../../../src/trust/pkcs11/token.js";
import { TrustvolError } from "../../../src/util/errors.js";

const P = pkcs11js;
const PIN = "dev-pin-2468";
const pin = () => ({ kind: "buffer" as const, pin: Buffer.from(PIN) });
const ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";
let h: SoftHsm | undefined;

before(() => {
  if (!softhsmModulePath()) return;
  h = makeSoftHsm();
  h.initToken("dev", "dev-so-1357", PIN);
});
after(() => h?.cleanup());

function ready(t: import("node:test").TestContext): boolean {
  return needSoftHsm(t, "openssl", "softhsm2-util");
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const a = srv.address();
      const port = typeof a === "object" && a ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** Start openssl s_server requiring a client certificate; resolves once it accepts, with a stop() and its output. */
async function startServer(d: string, port: number) {
  const p = spawn("openssl", ["s_server", "-accept", `127.0.0.1:${port}`, "-Verify", "1", "-verify_return_error", "-CAfile", join(d, "ca.pem"),
    "-cert", join(d, "srv.pem"), "-key", join(d, "srv.key"), "-naccept", "1"], { stdio: ["pipe", "pipe", "pipe"] });
  let out = "";
  p.stdout.on("data", (b) => (out += b));
  p.stderr.on("data", (b) => (out += b));
  const exited = new Promise<void>((r) => p.once("exit", () => r()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`s_server did not start: ${out}`)), 15_000);
    const check = () => {
      if (out.includes("ACCEPT")) {
        clearTimeout(timer);
        resolve();
      }
    };
    p.stdout.on("data", check);
    p.once("exit", () => {
      clearTimeout(timer);
      reject(new Error(`s_server exited: ${out}`));
    });
  });
  return {
    output: () => out,
    async stop() {
      if (p.exitCode === null) p.kill("SIGTERM");
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 5000)))]);
      clearTimeout(timer);
      if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    },
  };
}

test("identity: create on token, CSR signed by the token, CA cert imported, mutual TLS with the on-token key", async (t) => {
  if (!ready(t)) return;
  const d = h!.dir;
  const base = { uri: "pkcs11:token=dev", pin: pin() };

  // 1. Key pair generated on the token; the private key is sensitive and not extractable.
  const id = await createIdentity({ ...base, label: "device", algorithm: "ec-p256" });
  assert.equal(id.keyUri, "pkcs11:token=dev;object=device;type=private");
  assert.equal(id.attributes.extractable, false);
  assert.equal(id.attributes.sensitive, true);
  assert.equal(id.attributes.neverExtractable, true);
  await assert.rejects(createIdentity({ ...base, label: "device" }), (e: unknown) => e instanceof TrustvolError && e.code === "EBUSY");

  // Export attempts fail.
  const s = openToken({ uri: "pkcs11:token=dev;object=device" });
  try {
    s.login(Buffer.from(PIN));
    const key = s.findPrivateKey();
    assert.throws(() => s.lib.C_GetAttributeValue(s.session, key, [{ type: P.CKA_VALUE }]), (e: unknown) => (e as { code?: number }).code === P.CKR_ATTRIBUTE_SENSITIVE);
    assert.equal(s.getBool(key, P.CKA_EXTRACTABLE), false);
  } finally {
    s.close();
  }

  // 2. CSR signed on the token; openssl verifies its self-signature.
  const csr = await identityCsr({ uri: "pkcs11:token=dev;object=device", pin: pin(), subject: "CN=device-0001,O=Example Fleet", san: { dns: ["device-0001.local"], ip: ["127.0.0.1"] } });
  writeFileSync(join(d, "dev.csr"), csr);
  const v = run("openssl", ["req", "-in", join(d, "dev.csr"), "-verify", "-noout", "-text"]);
  assert.match(v.stderr + v.stdout.toString(), /verify OK/);
  assert.match(v.stdout.toString(), /Subject: CN = device-0001, O = Example Fleet/);
  assert.match(v.stdout.toString(), /DNS:device-0001\.local, IP Address:127\.0\.0\.1/);
  assert.match(v.stdout.toString(), /TLS Web Client Authentication/);

  // 3. A test CA signs it (and a server certificate); the device certificate goes onto the token.
  const ossl = (args: string[]) => run("openssl", args, { timeoutMs: 60_000 });
  ossl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(d, "ca.key"), "-out", join(d, "ca.pem"), "-subj", "/CN=Test Fleet CA", "-days", "2"]);
  ossl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(d, "srv.key"), "-out", join(d, "srv.csr"), "-subj", "/CN=localhost"]);
  ossl(["x509", "-req", "-in", join(d, "srv.csr"), "-CA", join(d, "ca.pem"), "-CAkey", join(d, "ca.key"), "-set_serial", "2", "-out", join(d, "srv.pem"), "-days", "2"]);
  ossl(["x509", "-req", "-in", join(d, "dev.csr"), "-CA", join(d, "ca.pem"), "-CAkey", join(d, "ca.key"), "-set_serial", "3", "-out", join(d, "dev.pem"), "-days", "2", "-copy_extensions", "copy"]);
  // A certificate for a different key is refused.
  await assert.rejects(identityImportCert({ uri: "pkcs11:token=dev;object=device", pin: pin(), certificate: readFileSync(join(d, "srv.pem")) }), /not for the key/);
  const imp = await identityImportCert({ uri: "pkcs11:token=dev;object=device", pin: pin(), certificate: readFileSync(join(d, "dev.pem")) });
  assert.equal(imp.issuer, "CN=Test Fleet CA");
  const show = await identityShow({ uri: "pkcs11:token=dev;object=device", pin: pin() });
  assert.equal(show.certificate?.subject, "CN=device-0001, O=Example Fleet");
  assert.equal(show.certificate?.selfSigned, false);
  assert.equal(show.attributes.extractable, false);
  // The certificate sits on the token next to the key (pkcs11-tool lists public objects without a PIN).
  if (existsSync("/usr/bin/pkcs11-tool")) {
    const objs = run("pkcs11-tool", ["--module", h!.modulePath, "--token-label", "dev", "--list-objects"], { env: h!.env }).stdout.toString();
    assert.match(objs, /Certificate Object; type = X\.509 cert\s+label:\s+device/);
  }

  // 4. Mutual TLS: s_server demands a client certificate from the test CA; s_client signs with the on-token key.
  if (!existsSync(ENGINE)) {
    if (IN_CI) throw new Error("libengine-pkcs11-openssl missing in CI");
    return t.skip("OpenSSL pkcs11 engine not installed");
  }
  const pinFile = h!.pinFile(PIN, "engine-pin");
  const port = await freePort();
  const srv = await startServer(d, port);
  try {
    const keyUri = `${id.keyUri}?pin-source=file:${pinFile}`;
    const c = run("openssl", ["s_client", "-connect", `127.0.0.1:${port}`, "-engine", "pkcs11", "-keyform", "engine", "-key", keyUri,
      "-cert", join(d, "dev.pem"), "-CAfile", join(d, "ca.pem"), "-verify_return_error", "-brief"], { env: h!.env, input: "", check: false, timeoutMs: 30_000 });
    assert.equal(c.status, 0, c.stderr);
    assert.match(c.stderr, /CONNECTION ESTABLISHED/);
    assert.match(c.stderr, /Verification: OK/);
    await new Promise((r) => setTimeout(r, 300));
    const out = srv.output();
    assert.match(out, /depth=0 CN = device-0001, O = Example Fleet\s+verify return:1/);
    assert.match(out, /Client certificate/);
    assert.ok(!out.includes(PIN));
  } finally {
    await srv.stop();
  }

  // Without the client key the same server refuses the handshake (the proof above is the on-token key).
  const port2 = await freePort();
  const srv2 = await startServer(d, port2);
  try {
    const c = run("openssl", ["s_client", "-connect", `127.0.0.1:${port2}`, "-CAfile", join(d, "ca.pem"), "-brief"], { input: "", check: false, timeoutMs: 30_000 });
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(c.status !== 0 || /alert|error/i.test(c.stderr + srv2.output()), "server must reject a client without certificate");
  } finally {
    await srv2.stop();
  }
});
