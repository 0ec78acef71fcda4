// Root hash signing with the private key on a PKCS#11 token (SoftHSM2 standing in for OP-TEE's PKCS#11 TA):
// the token signs (CKM_SHA256_RSA_PKCS / CKM_ECDSA), the certificate comes from the token, and the PKCS#7 verifies
// with openssl cms and with our verifier. Also through the CLI with the PIN in a file, never in argv.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { makeSoftHsm, softhsmModulePath, type SoftHsm, needSoftHsm } from "../helpers/softhsm.js";
import { run } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { provisionKey } from "../../src/trust/pkcs11/setup.js";
import { toPem } from "../../src/trust/pkcs11/x509.js";
import { pkcs11RootHashSigner } from "../../src/verity/pkcs11-signer.js";
import { signRootHash, verifyRootHashSignature } from "../../src/verity/index.js";
import { TrustvolError } from "../../src/util/errors.js";

const PIN = "verity-pin-97531";
const pin = () => ({ kind: "buffer" as const, pin: Buffer.from(PIN) });
const ROOT = "3213e709c890c522d3d675dd3bfe1d88be185e60dd6cb2ad9f38c29368e5023b";
const OTHER = "09927c9db47fbfd270fde648dbd5a1dde6856b2707344601661d0c4ef2c66ab1";
let h: SoftHsm | undefined;
const certs: Record<string, string> = {};

before(() => {
  if (!softhsmModulePath()) return;
  h = makeSoftHsm();
  h.initToken("verity", "verity-so-8642", PIN);
  for (const [label, algorithm] of [["vrsa", "rsa-2048"], ["vec", "ec-p256"]] as const) {
    const k = provisionKey({ uri: "pkcs11:token=verity", modulePath: h.modulePath, pin: pin(), algorithm, label, subject: `CN=trustvol verity ${label}` });
    certs[label] = join(h.dir, `${label}.pem`);
    writeFileSync(certs[label]!, toPem(k.certificate!, "CERTIFICATE"));
  }
  // A key without a certificate next to it.
  provisionKey({ uri: "pkcs11:token=verity", modulePath: h.modulePath, pin: pin(), algorithm: "ec-p256", label: "nocert", noCertificate: true });
});
after(() => h?.cleanup());

function ready(t: import("node:test").TestContext): boolean {
  return needSoftHsm(t, "openssl", "softhsm2-util");
}

function opensslVerify(sig: Buffer, root: string, cert: string): number {
  const d = h!.dir;
  writeFileSync(join(d, "s.p7s"), sig);
  writeFileSync(join(d, "content.txt"), root);
  return run("openssl", ["cms", "-verify", "-binary", "-inform", "DER", "-in", join(d, "s.p7s"), "-content", join(d, "content.txt"), "-CAfile", cert, "-purpose", "any", "-out", join(d, "out.txt")], { check: false }).status;
}

for (const [label, alg] of [["vrsa", "rsa"], ["vec", "ecdsa"]] as const) {
  test(`PKCS#11 root hash signer (${alg}): signed on the token, certificate from the token; openssl cms and ours verify`, async (t) => {
    if (!ready(t)) return;
    const signer = pkcs11RootHashSigner({ uri: `pkcs11:token=verity;object=${label}`, pin: pin(), modulePath: h!.modulePath });
    try {
      assert.equal(signer.algorithm, alg);
      assert.equal(signer.keyLabel, label);
      assert.deepEqual(Buffer.from(signer.certificate), Buffer.from(readFileSync(certs[label]!, "latin1").replace(/-----[A-Z ]+-----|\s/g, ""), "base64"));
      const sig = await signRootHash(ROOT, signer);
      assert.equal(opensslVerify(sig, ROOT, certs[label]!), 0, "openssl cms -verify accepts the token's signature");
      assert.notEqual(opensslVerify(sig, OTHER, certs[label]!), 0, "openssl refuses another root hash");
      const v = await verifyRootHashSignature(ROOT, sig, [readFileSync(certs[label]!, "utf8")]);
      assert.match(v.signer, new RegExp(`trustvol verity ${label}`));
      await assert.rejects(verifyRootHashSignature(OTHER, sig, [readFileSync(certs[label]!, "utf8")]), (e: unknown) => e instanceof TrustvolError && e.code === "ECORRUPT");
      // Signed by the token key, not trusted under the other key's certificate.
      const other = label === "vrsa" ? "vec" : "vrsa";
      await assert.rejects(verifyRootHashSignature(ROOT, sig, [readFileSync(certs[other]!, "utf8")]), (e: unknown) => e instanceof TrustvolError && e.code === "EPOLICY");
      // Two signatures in one session (ECDSA is randomized; both verify).
      const sig2 = await signRootHash(OTHER, signer, { includeCertificate: false });
      await verifyRootHashSignature(OTHER, sig2, [readFileSync(certs[label]!, "utf8")]);
    } finally {
      signer.close();
    }
  });
}

test("PKCS#11 root hash signer: clear errors for a wrong PIN, a missing key, a key without certificate, a foreign certificate", async (t) => {
  if (!ready(t)) return;
  const mp = h!.modulePath;
  assert.throws(() => pkcs11RootHashSigner({ uri: "pkcs11:token=verity;object=vrsa", pin: { kind: "buffer", pin: Buffer.from("wrong-pin") }, modulePath: mp }),
    (e: unknown) => e instanceof TrustvolError && e.code === "EBADPASS" && !e.message.includes("wrong-pin"));
  assert.throws(() => pkcs11RootHashSigner({ uri: "pkcs11:token=verity;object=absent", pin: pin(), modulePath: mp }), (e: unknown) => e instanceof TrustvolError && e.code === "ENOKEY");
  assert.throws(() => pkcs11RootHashSigner({ uri: "pkcs11:token=verity;object=nocert", pin: pin(), modulePath: mp }),
    (e: unknown) => e instanceof TrustvolError && e.code === "ENOENT" && /no certificate next to the key/.test(e.message) && /--cert/.test(e.hint ?? ""));
  assert.throws(() => pkcs11RootHashSigner({ uri: "pkcs11:token=verity;object=vec", pin: pin(), modulePath: mp, certificate: readFileSync(certs.vrsa!, "utf8") }),
    (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE" && /is not for the key/.test(e.message));
  assert.throws(() => pkcs11RootHashSigner({ uri: "pkcs11:token=nosuchtoken;object=vec", pin: pin(), modulePath: mp }), (e: unknown) => e instanceof TrustvolError && e.code === "EDEVICE");
});

test("CLI: verity sign --pkcs11-uri with --pin-file, verify-sig and openssl accept it; wrong PIN exits 3", async (t) => {
  if (!ready(t)) return;
  const d = h!.dir;
  const pinFile = h!.pinFile(PIN + "\n", "pin.txt");
  const out = join(d, "cli.p7s");
  const env = { SOFTHSM2_CONF: h!.conf };
  const r = trustvol(["verity", "sign", ROOT, "--pkcs11-uri", `pkcs11:token=verity;object=vec?module-path=${h!.modulePath}`, "--pin-file", pinFile, "-o", out, "--json"], { env });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).algorithm, "ecdsa");
  assert.ok(!r.stdout.includes(PIN) && !r.stderr.includes(PIN));
  assert.equal(opensslVerify(readFileSync(out), ROOT, certs.vec!), 0);
  const v = trustvol(["verity", "verify-sig", ROOT, "--signature", out, "--cert", certs.vec!]);
  assert.equal(v.status, 0, v.stderr);
  assert.match(v.stdout, /Signature OK: root hash [0-9a-f]{64} signed by CN=trustvol verity vec/);
  const w = trustvol(["verity", "verify-sig", OTHER, "--signature", out, "--cert", certs.vec!]);
  assert.equal(w.status, 4, w.stderr);
  const u = trustvol(["verity", "verify-sig", ROOT, "--signature", out, "--cert", certs.vrsa!]);
  assert.equal(u.status, 3, u.stderr);
  assert.match(u.stderr, /not from a trusted certificate/);
  // PIN on stdin.
  const s = trustvol(["verity", "sign", ROOT, "--pkcs11-uri", "pkcs11:token=verity;object=vrsa", "--module", h!.modulePath, "--pin-stdin", "-o", join(d, "stdin.p7s")], { env, input: PIN });
  assert.equal(s.status, 0, s.stderr);
  assert.equal(opensslVerify(readFileSync(join(d, "stdin.p7s")), ROOT, certs.vrsa!), 0);
  const bad = trustvol(["verity", "sign", ROOT, "--pkcs11-uri", "pkcs11:token=verity;object=vrsa", "--module", h!.modulePath, "--pin-file", h!.pinFile("nope"), "-o", join(d, "bad.p7s")], { env });
  assert.equal(bad.status, 3, bad.stderr);
  assert.match(bad.stderr, /wrong PIN for token 'verity'/);
});
