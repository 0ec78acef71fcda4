// A LUKS2 header is hostile input: a token must never choose a library to load, a program to run or a file to open.
// Each test edits a real enrolled token the way an attacker with the disk would, then unlocks as the boot path does.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { run, hasTool, IN_CI } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { makeSoftHsm, softhsmModulePath, type SoftHsm } from "../helpers/softhsm.js";

const usable = !!softhsmModulePath() && hasTool("cc") && hasTool("softhsm2-util");
if (!usable && IN_CI) throw new Error("SoftHSM2, softhsm2-util and cc are needed in CI");

let h: SoftHsm;
let img: string, pin: string, evil: string, marker: string;
let token: Record<string, unknown>;

const pct = (s: string) => [...Buffer.from(s)].map((c) => (/[A-Za-z0-9_-]/.test(String.fromCharCode(c)) ? String.fromCharCode(c) : "%" + c.toString(16).padStart(2, "0"))).join("");

before(() => {
  if (!usable) return;
  h = makeSoftHsm();
  const env = h.env;
  // A library whose constructor leaves a marker: if it ever appears, the header made us load code.
  marker = join(h.dir, "evil-ran");
  const src = join(h.dir, "evil.c");
  writeFileSync(src, `#include <stdio.h>\n__attribute__((constructor)) static void pwn(void) { FILE *f = fopen(${JSON.stringify(marker)}, "w"); if (f) fclose(f); }\nint C_GetFunctionList(void **p) { (void)p; return 5; }\n`);
  evil = join(h.dir, "evil.so");
  run("cc", ["-shared", "-fPIC", "-o", evil, src]);
  const so = h.pinFile("87654321");
  pin = h.pinFile("1234");
  let r = trustvol(["pkcs11", "init-token", "--module", h.modulePath, "--label", "lmp", "--so-pin-file", so, "--pin-file", pin], { env });
  assert.equal(r.status, 0, r.stderr);
  r = trustvol(["pkcs11", "keygen", "--uri", "pkcs11:token=lmp", "--pin-file", pin, "--module", h.modulePath], { env });
  assert.equal(r.status, 0, r.stderr);
  img = join(h.dir, "disk.img");
  const factory = join(h.dir, "factory");
  writeFileSync(factory, "factory-passphrase", { mode: 0o600 });
  run("truncate", ["-s", "20M", img]);
  r = trustvol(["format", "--key-file", factory, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img], { env });
  assert.equal(r.status, 0, r.stderr);
  r = trustvol(["enroll", "pkcs11", img, "--uri", "pkcs11:token=lmp;object=luks", "--pin-file", pin, "--module", h.modulePath, "--key-file", factory], { env });
  assert.equal(r.status, 0, r.stderr);
  r = trustvol(["token", "export", "--token-id", "0", img], { env });
  assert.equal(r.status, 0, r.stderr);
  token = JSON.parse(r.stdout);
});
after(() => h?.cleanup());

/** Replace token 0's URI with a hostile one, as someone holding the disk can. */
function plantUri(uri: string): void {
  const f = join(h.dir, "token.json");
  writeFileSync(f, JSON.stringify({ ...token, "pkcs11-uri": uri }));
  const r = trustvol(["token", "import", img, "--token-id", "0", "--token-replace", "--json-file", f], { env: h.env });
  assert.equal(r.status, 0, r.stderr);
}

test("a systemd-pkcs11 token's module-path never makes unlock load that library (ignored, like systemd)", (t) => {
  if (!usable) return t.skip("SoftHSM2 / cc missing");
  plantUri(`pkcs11:token=lmp;object=luks?module-path=${pct(evil)}`);
  // Unattended boot unlock: the token is found through p11-kit's registry; the planted library is never touched.
  let r = trustvol(["unlock", "--test", "--token-only", "--pin-file", pin, img], { env: h.env });
  assert.ok(!existsSync(marker), "the header-named library was loaded");
  assert.equal(r.status, 0, r.stderr);
  // Without a PIN: a one-line refusal, still nothing loaded, nothing written.
  const before = readFileSync(img);
  r = trustvol(["unlock", "--test", "--token-only", img], { env: h.env });
  assert.ok(!existsSync(marker), "the header-named library was loaded");
  assert.notEqual(r.status, 0);
  assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  assert.ok(readFileSync(img).equals(before));
});

test("a systemd-pkcs11 token's module-name is ignored too (no library chosen by the header)", (t) => {
  if (!usable) return t.skip("SoftHSM2 / cc missing");
  plantUri("pkcs11:token=lmp;object=luks?module-name=nosuchmodule");
  const r = trustvol(["unlock", "--test", "--token-only", "--pin-file", pin, img], { env: h.env });
  assert.equal(r.status, 0, r.stderr);
  assert.ok(!existsSync(marker));
});

test("a systemd-pkcs11 token's pin-source never makes unlock open a file the header names", (t) => {
  if (!usable) return t.skip("SoftHSM2 / cc missing");
  // The PIN file is right, so honouring pin-source would unlock; the header must not pick files to read.
  plantUri(`pkcs11:token=lmp;object=luks?pin-source=${pct("file:" + pin)}`);
  const r = trustvol(["unlock", "--test", "--token-only", img], { env: h.env });
  assert.notEqual(r.status, 0, "unlocked with a PIN read from a file the header named");
  assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  assert.match(r.stderr, /PIN/);
});

test("a clevis token naming tang / sss (URLs, nested pins) is refused before any I/O, on one line", async () => {
  const { unlockClevisToken } = await import("../../src/tokens/clevis.js");
  const { TrustvolError } = await import("../../src/util/errors.js");
  let touched = false;
  const tpm = new Proxy({}, { get: () => { touched = true; throw new Error("the TPM was used"); } });
  const b64u = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const pins = [
    { pin: "tang", tang: { url: "http://127.0.0.1:9/adv", adv: {} } },
    { pin: "sss", sss: { t: 1, pins: { tang: [{ url: "http://127.0.0.1:9" }] } } },
    { pin: "pkcs11", pkcs11: { uri: "pkcs11:?module-path=%2Ftmp%2Fevil%2Eso" } },
  ];
  for (const clevis of pins) {
    const tok = { type: "clevis", keyslots: ["0"], jwe: { protected: b64u({ alg: "dir", enc: "A256GCM", clevis }), encrypted_key: "", iv: "AAAAAAAAAAAAAAAA", ciphertext: "AAAA", tag: "AAAAAAAAAAAAAAAAAAAAAA" } };
    await assert.rejects(unlockClevisToken(tok, tpm as never), (e: unknown) => {
      assert.ok(e instanceof TrustvolError, String(e));
      assert.equal(e.code, "EUNSUPPORTED");
      assert.ok(!e.message.includes("\n"));
      return true;
    });
  }
  assert.equal(touched, false);
});
