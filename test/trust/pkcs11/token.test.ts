// The PKCS#11 trust source against SoftHSM2: token set-up, key properties, export refusal, seal/unseal, errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import pkcs11js from "pkcs11js";
import { makeSoftHsm, softhsmModulePath, type SoftHsm, needSoftHsm } from "../../helpers/softhsm.js";
import { hasTool, needTools, run } from "../../helpers/tools.js";
import { initToken, provisionKey, generateKeyPair } from "../../../src/trust/pkcs11/setup.js";
import { openToken, listTokens } from "../../../src/trust/pkcs11/token.js";
import { Pkcs11TrustSource } from "../../../src/trust/pkcs11/source.js";
import { TrustvolError } from "../../../src/util/errors.js";
import { randomBytesBuf } from "../../../src/util/secret.js";

const P = pkcs11js;
const SO = Buffer.from("so-pin-1234");
const PIN = Buffer.from("user-pin-1234");
const pin = () => ({ kind: "buffer" as const, pin: PIN });
let h: SoftHsm | undefined;

function ready(t: import("node:test").TestContext): boolean {
  return needSoftHsm(t) && !!h;
}

before(() => {
  if (!softhsmModulePath()) return;
  h = makeSoftHsm();
  // Our own token initialisation (C_InitToken + C_InitPIN), like LmP on OP-TEE: label "lmp", then an RSA-2048 key "luks".
  initToken({ modulePath: h.modulePath, label: "lmp", soPin: { kind: "buffer", pin: SO }, userPin: pin() });
  provisionKey({ uri: "pkcs11:token=lmp", modulePath: h.modulePath, pin: pin(), label: "luks", subject: "CN=LmP" });
});
after(() => h?.cleanup());

test("init token: label, flags; softhsm2-util sees it", (t) => {
  if (!ready(t)) return;
  const toks = listTokens({ modulePath: h!.modulePath });
  const lmp = toks.find((x) => x.label === "lmp");
  assert.ok(lmp, "token lmp listed");
  assert.ok(lmp.flags & P.CKF_TOKEN_INITIALIZED && lmp.flags & P.CKF_USER_PIN_INITIALIZED && lmp.flags & P.CKF_LOGIN_REQUIRED);
  if (hasTool("softhsm2-util")) assert.match(run("softhsm2-util", ["--show-slots"], { env: h!.env }).stdout.toString(), /Label:\s+lmp/);
  // Refuses to re-initialise a token holding keys unless forced.
  assert.throws(
    () => initToken({ modulePath: h!.modulePath, label: "lmp", soPin: { kind: "buffer", pin: SO }, userPin: pin(), slotId: lmp.slotId }),
    (e: unknown) => e instanceof TrustvolError && e.code === "EBUSY",
  );
});

test("RSA-2048 and EC P-256 keys are sensitive and never extractable; export attempts fail", (t) => {
  if (!ready(t)) return;
  const s = openToken({ uri: "pkcs11:token=lmp", modulePath: h!.modulePath, readWrite: true });
  try {
    s.login(PIN);
    const ec = generateKeyPair(s, { algorithm: "ec-p256", label: "ec-test" });
    const rsa = s.findPrivateKey([{ type: P.CKA_LABEL, value: Buffer.from("luks") }]);
    for (const [key, kt] of [[rsa, "rsa"], [ec.privateKey, "ec"]] as const) {
      const a = s.keyAttributes(key);
      assert.equal(a.keyType, kt);
      assert.equal(a.sensitive, true);
      assert.equal(a.extractable, false);
      assert.equal(a.alwaysSensitive, true);
      assert.equal(a.neverExtractable, true);
      assert.equal(a.local, true, "generated on the token");
      // Reading the secret parts is refused.
      for (const attr of kt === "rsa" ? [P.CKA_PRIVATE_EXPONENT, P.CKA_PRIME_1, P.CKA_PRIME_2] : [P.CKA_VALUE]) {
        assert.throws(() => s.lib.C_GetAttributeValue(s.session, key, [{ type: attr }]), (e: unknown) => (e as { code?: number }).code === P.CKR_ATTRIBUTE_SENSITIVE);
      }
      // Wrapping it out under a session AES key is refused.
      const kek = s.lib.C_GenerateKey(s.session, { mechanism: P.CKM_AES_KEY_GEN }, [
        { type: P.CKA_CLASS, value: P.CKO_SECRET_KEY },
        { type: P.CKA_TOKEN, value: false },
        { type: P.CKA_VALUE_LEN, value: 32 },
        { type: P.CKA_WRAP, value: true },
        { type: P.CKA_EXTRACTABLE, value: true },
      ]);
      assert.throws(
        () => s.lib.C_WrapKey(s.session, { mechanism: P.CKM_AES_KEY_WRAP_PAD }, kek, key, Buffer.alloc(4096)),
        (e: unknown) => [P.CKR_KEY_UNEXTRACTABLE, P.CKR_KEY_NOT_WRAPPABLE].includes((e as { code?: number }).code!),
      );
      // Turning extractability back on is refused too.
      assert.throws(() => s.lib.C_SetAttributeValue(s.session, key, [{ type: P.CKA_EXTRACTABLE, value: true }]));
    }
    assert.equal(s.keyAttributes(rsa).decrypt, true, "systemd needs CKA_DECRYPT");
    const pub = s.publicKey({ id: ec.id });
    assert.equal(pub.key.asymmetricKeyType, "ec");
    assert.equal(pub.key.asymmetricKeyDetails?.namedCurve, "prime256v1");
    s.lib.C_DestroyObject(s.session, ec.privateKey);
    s.lib.C_DestroyObject(s.session, ec.publicKey);
  } finally {
    s.close();
  }
});

test("LmP-style self-signed certificate on the token matches the key", (t) => {
  if (!ready(t)) return;
  const s = openToken({ uri: "pkcs11:token=lmp;object=luks", modulePath: h!.modulePath });
  try {
    const certs = s.findObjects(s.objectTemplate(P.CKO_CERTIFICATE));
    assert.equal(certs.length, 1);
    const c = new X509Certificate(s.getAttr(certs[0]!, P.CKA_VALUE));
    assert.equal(c.subject, "CN=LmP");
    assert.ok(c.verify(c.publicKey));
    assert.equal(c.publicKey.asymmetricKeyDetails?.modulusLength, 2048);
    assert.ok(c.publicKey.export({ format: "der", type: "spki" }).equals(s.publicKey().key.export({ format: "der", type: "spki" })));
  } finally {
    s.close();
  }
});

test("seal/unseal round trip: PKCS#1 v1.5, OAEP (auto falls back to SHA-1 on SoftHSM), pin-source in the URI", async (t) => {
  if (!ready(t)) return;
  const secret = randomBytesBuf(32);
  for (const padding of ["pkcs1", "oaep", "oaep-sha1"] as const) {
    const src = new Pkcs11TrustSource({ uri: "pkcs11:token=lmp;object=luks", modulePath: h!.modulePath, padding });
    const blob = await src.seal(secret, { pin: PIN });
    assert.equal(blob.kind, "pkcs11");
    assert.equal(blob.data.length, 256);
    assert.equal(blob.meta.padding, padding === "oaep" ? "oaep-sha1" : padding);
    assert.ok(!JSON.stringify(blob.meta).includes(PIN.toString()));
    const back = await src.unseal(blob, { pin: PIN });
    assert.ok(back.equals(secret), padding);
    await src.close();
  }
  // Without a PIN, seal needs no login (public key only); unseal then reads the PIN from pin-source=file:.
  const pf = h!.pinFile(PIN.toString());
  const src = new Pkcs11TrustSource({ uri: `pkcs11:token=lmp;object=luks?pin-source=file:${pf}`, padding: "pkcs1" });
  const blob = await src.seal(secret);
  assert.ok((await src.unseal(blob)).equals(secret));
  // Through p11-kit discovery (no module given): SoftHSM is found by its registration.
  const info = await src.describe();
  assert.equal(info.kind, "pkcs11");
  assert.equal(info.hardwareBacked, false, "SoftHSM is a software token");
  assert.match(info.description, /'lmp'/);
  assert.equal((await src.getRandom(16)).length, 16);
  await assert.rejects(src.seal(secret, { pcrs: [7] }), (e: unknown) => e instanceof TrustvolError && e.code === "EUNSUPPORTED");
});

test("wrong PIN: clear error, tries info, no PIN in the message", async (t) => {
  if (!ready(t)) return;
  const src = new Pkcs11TrustSource({ uri: "pkcs11:token=lmp;object=luks", modulePath: h!.modulePath, padding: "pkcs1" });
  const blob = await src.seal(Buffer.from("x".repeat(32)));
  await assert.rejects(src.unseal(blob, { pin: Buffer.from("wrong-pin-5678") }), (e: unknown) => {
    assert.ok(e instanceof TrustvolError);
    assert.equal(e.code, "EBADPASS");
    assert.match(e.message, /wrong PIN for token 'lmp'/);
    assert.match(e.message, /tries? remain|locked/);
    assert.ok(!e.oneLine().includes("wrong-pin-5678") && !e.oneLine().includes(PIN.toString()));
    return true;
  });
  // The right PIN still works afterwards.
  assert.equal((await src.unseal(blob, { pin: PIN })).toString(), "x".repeat(32));
});

test("missing key: ENOKEY pointing at the recovery key; volume data untouched", async (t) => {
  if (!ready(t)) return;
  h!.initToken("spare", "so-pin-2", "user-pin-2");
  const src = new Pkcs11TrustSource({ uri: "pkcs11:token=spare;object=luks", modulePath: h!.modulePath, padding: "pkcs1" });
  await assert.rejects(src.seal(Buffer.alloc(32, 1)), (e: unknown) => e instanceof TrustvolError && e.code === "ENOKEY" && /recovery key/.test(e.oneLine()));
  // A blob sealed to lmp's key, opened against a token without that key (erased / re-initialised token).
  const good = new Pkcs11TrustSource({ uri: "pkcs11:token=lmp;object=luks", modulePath: h!.modulePath, padding: "pkcs1" });
  const blob = await good.seal(Buffer.alloc(32, 2));
  const data = Buffer.from(blob.data);
  await assert.rejects(src.unseal(blob, { pin: Buffer.from("user-pin-2") }), (e: unknown) => {
    assert.ok(e instanceof TrustvolError && e.code === "ENOKEY");
    assert.match(e.oneLine(), /no private key .*erased.*recovery key/);
    return true;
  });
  assert.ok(Buffer.from(blob.data).equals(data), "blob untouched");
});

test("token absent, bad module path, module that is not PKCS#11: clear errors", async (t) => {
  if (!ready(t)) return;
  await assert.rejects(new Pkcs11TrustSource({ uri: "pkcs11:token=nope", modulePath: h!.modulePath }).describe(), (e: unknown) => {
    assert.ok(e instanceof TrustvolError && e.code === "EDEVICE");
    assert.match(e.message, /no PKCS#11 token matches pkcs11:token=nope/);
    assert.match(e.hint ?? "", /'lmp'/);
    return true;
  });
  await assert.rejects(new Pkcs11TrustSource({ uri: "pkcs11:token=lmp", modulePath: join(h!.dir, "no-such-module.so") }).describe(), (e: unknown) => {
    assert.ok(e instanceof TrustvolError && e.code === "EDEVICE");
    assert.match(e.message, /PKCS#11 module .*no-such-module\.so does not exist$/);
    return true;
  });
  await assert.rejects(new Pkcs11TrustSource({ uri: "pkcs11:token=lmp", modulePath: h!.conf }).describe(), (e: unknown) => {
    assert.ok(e instanceof TrustvolError && e.code === "EDEVICE");
    assert.match(e.message, /failed to load/);
    return true;
  });
  await assert.rejects(new Pkcs11TrustSource({ uri: "pkcs11:token=lmp?module-name=no-such-registration" }).describe(), /no p11-kit module registration named "no-such-registration"/);
  assert.throws(() => new Pkcs11TrustSource({ uri: "pkcs11:token=lmp?pin-value=1234" }), /pin-value/);
});

test("SoftHSM tokens made by softhsm2-util work the same (interop with the reference tool)", async (t) => {
  if (!ready(t) || !needTools(t, "softhsm2-util", "pkcs11-tool")) return;
  h!.initToken("util", "so-pin-3", "user-pin-3");
  const k = provisionKey({ uri: "pkcs11:token=util", pin: { kind: "buffer", pin: Buffer.from("user-pin-3") }, label: "luks" });
  assert.equal(k.uri, "pkcs11:token=util;object=luks");
  // pkcs11-tool lists the private key as sensitive / never extractable (PIN via stdin is not supported by
  // pkcs11-tool; listing public objects needs no login).
  const out = run("pkcs11-tool", ["--module", h!.modulePath, "--token-label", "util", "--list-objects"], { env: h!.env }).stdout.toString();
  assert.match(out, /Certificate Object; type = X\.509 cert\s+label:\s+luks/);
  assert.match(out, /Public Key Object; RSA 2048 bits\s+label:\s+luks/);
});
