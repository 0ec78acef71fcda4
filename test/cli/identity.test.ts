// Device identity through the CLI (seed 003): token set-up, key on the token, CSR signed there, CA certificate back.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { run } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { makeSoftHsm, needSoftHsm } from "../helpers/softhsm.js";

test("identity create → csr → CA signs → import-cert → show, all through the CLI; the key stays non-extractable", async (t) => {
  if (!needSoftHsm(t, "openssl", "softhsm2-util")) return;
  const h = makeSoftHsm();
  t.after(() => h.cleanup());
  const env = h.env;
  const so = h.pinFile("87654321"), pin = h.pinFile("1234");
  const d = h.dir;
  const base = ["--uri", "pkcs11:token=dev", "--module", h.modulePath, "--pin-file", pin];
  assert.equal(trustvol(["pkcs11", "init-token", "--module", h.modulePath, "--label", "dev", "--so-pin-file", so, "--pin-file", pin], { env }).status, 0);
  let r = trustvol(["identity", "create", ...base, "--json"], { env });
  assert.equal(r.status, 0, r.stderr);
  const created = JSON.parse(r.stdout);
  assert.equal(created.key_uri, "pkcs11:token=dev;object=device;type=private");
  assert.equal(created.attributes.extractable, false);
  assert.equal(created.attributes.sensitive, true);
  r = trustvol(["identity", "create", ...base], { env });
  assert.equal(r.status, 7, "a second key with the same label is refused");
  r = trustvol(["identity", "csr", ...base, "--subject", "CN=device-0042,O=Example", "--dns", "device-0042.example", "-o", join(d, "dev.csr")], { env });
  assert.equal(r.status, 0, r.stderr);
  run("openssl", ["req", "-in", join(d, "dev.csr"), "-noout", "-verify"]);
  const subj = run("openssl", ["req", "-in", join(d, "dev.csr"), "-noout", "-subject"]).stdout.toString();
  assert.match(subj, /CN\s*=\s*device-0042/);
  run("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(d, "ca.key"), "-out", join(d, "ca.pem"), "-subj", "/CN=Test CA", "-days", "2"]);
  run("openssl", ["x509", "-req", "-in", join(d, "dev.csr"), "-CA", join(d, "ca.pem"), "-CAkey", join(d, "ca.key"), "-CAcreateserial", "-out", join(d, "dev.pem"), "-days", "1"]);
  r = trustvol(["identity", "import-cert", ...base, "--cert", join(d, "dev.pem"), "--json"], { env });
  assert.equal(r.status, 0, r.stderr);
  // a certificate for some other key is refused
  r = trustvol(["identity", "import-cert", ...base, "--cert", join(d, "ca.pem"), "--replace"], { env });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /^trustvol: /);
  r = trustvol(["identity", "show", ...base, "--json"], { env });
  assert.equal(r.status, 0, r.stderr);
  const shown = JSON.parse(r.stdout);
  assert.match(shown.certificate.subject, /device-0042/);
  assert.match(shown.certificate.issuer, /Test CA/);
  assert.equal(shown.attributes.extractable, false);
});
