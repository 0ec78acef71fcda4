// Root hash signatures: ours must verify with openssl cms, openssl's (made the way the veritysetup/kernel docs say)
// must verify with ours, and the signed bytes are the root hash hex the kernel sees in the table.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, tmpDir, run } from "../helpers/tools.js";
import { TrustvolError } from "../../src/util/errors.js";
import { pemPrivateKeySigner, signRootHash, verifyRootHashSignature, rootHashSignedContent } from "../../src/verity/index.js";

const ROOT = "3213e709c890c522d3d675dd3bfe1d88be185e60dd6cb2ad9f38c29368e5023b";
const OTHER = "09927c9db47fbfd270fde648dbd5a1dde6856b2707344601661d0c4ef2c66ab1";

function makeKey(dir: string, kind: "rsa" | "ec", name: string = kind): { key: string; cert: string } {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.pem`);
  const newkey = kind === "rsa" ? ["-newkey", "rsa:2048"] : ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
  run("openssl", ["req", "-x509", ...newkey, "-nodes", "-keyout", key, "-out", cert, "-subj", `/CN=trustvol verity ${name}`, "-days", "2", "-sha256"]);
  return { key, cert };
}

function opensslVerify(dir: string, sig: Buffer, root: string, cert: string, certInMessage: boolean): { status: number; stderr: string } {
  const sigPath = join(dir, "sig.p7s");
  const content = join(dir, "roothash.txt");
  writeFileSync(sigPath, sig);
  writeFileSync(content, root);
  const extra = certInMessage ? [] : ["-certfile", cert];
  const r = run("openssl", ["cms", "-verify", "-binary", "-inform", "DER", "-in", sigPath, "-content", content, "-CAfile", cert, "-purpose", "any", "-out", join(dir, "out.txt"), ...extra], { check: false });
  return { status: r.status, stderr: r.stderr };
}

test("root hash signing: the signed content is the lower-case hex string, no newline", () => {
  assert.equal(rootHashSignedContent(ROOT.toUpperCase()).toString("latin1"), ROOT);
  assert.throws(() => rootHashSignedContent("xyz"), (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE");
});

for (const kind of ["rsa", "ec"] as const) {
  test(`root hash signing (${kind}): ours verifies with openssl cms and with ours; wrong root hash refused`, async (t) => {
    if (!needTools(t, "openssl")) return;
    const { dir, cleanup } = tmpDir("trustvol-verity-sig-");
    try {
      const { key, cert } = makeKey(dir, kind);
      const signer = pemPrivateKeySigner(readFileSync(key), readFileSync(cert, "utf8"));
      assert.equal(signer.algorithm, kind === "rsa" ? "rsa" : "ecdsa");
      for (const includeCertificate of [true, false]) {
        const sig = await signRootHash(ROOT, signer, { includeCertificate });
        const ok = opensslVerify(dir, sig, ROOT, cert, includeCertificate);
        assert.equal(ok.status, 0, `openssl cms -verify: ${ok.stderr}`);
        assert.notEqual(opensslVerify(dir, sig, ROOT + "\n", cert, includeCertificate).status, 0, "a trailing newline is different content");
        assert.notEqual(opensslVerify(dir, sig, OTHER, cert, includeCertificate).status, 0, "openssl refuses another root hash");
        const res = await verifyRootHashSignature(ROOT, sig, [readFileSync(cert, "utf8")]);
        assert.match(res.signer, /trustvol verity/);
        await assert.rejects(verifyRootHashSignature(OTHER, sig, [readFileSync(cert, "utf8")]), (e: unknown) => e instanceof TrustvolError && e.code === "ECORRUPT" && /does not match root hash/.test(e.message));
      }
      // The structure the kernel parser wants: SignedData v1, detached id-data, issuerAndSerialNumber, no signed attributes.
      const sig = await signRootHash(ROOT, signer);
      writeFileSync(join(dir, "s.der"), sig);
      const dump = run("openssl", ["cms", "-cmsout", "-print", "-inform", "DER", "-in", join(dir, "s.der")]).stdout.toString();
      assert.match(dump, /contentType: pkcs7-signedData/);
      assert.match(dump, /eContentType: pkcs7-data[^\n]*\n\s+eContent: <ABSENT>/);
      assert.match(dump, /signedAttrs:\s+<ABSENT>|signedAttrs:\s*<EMPTY>/);
      assert.match(dump, kind === "rsa" ? /algorithm: rsaEncryption/ : /algorithm: ecdsa-with-SHA256/);
    } finally {
      cleanup();
    }
  });
}

test("root hash signing: openssl-made signatures (veritysetup docs recipe, and with attributes) verify with ours", async (t) => {
  if (!needTools(t, "openssl")) return;
  const { dir, cleanup } = tmpDir("trustvol-verity-sig-");
  try {
    const { key, cert } = makeKey(dir, "rsa");
    const content = join(dir, "roothash.txt");
    writeFileSync(content, ROOT);
    const recipes: Record<string, string[]> = {
      "smime -nocerts -noattr": ["smime", "-sign", "-nocerts", "-noattr", "-binary", "-in", content, "-inkey", key, "-signer", cert, "-outform", "DER", "-out", join(dir, "a.p7s")],
      "cms -noattr": ["cms", "-sign", "-noattr", "-binary", "-in", content, "-inkey", key, "-signer", cert, "-outform", "DER", "-out", join(dir, "b.p7s")],
      "cms with signed attributes": ["cms", "-sign", "-binary", "-in", content, "-inkey", key, "-signer", cert, "-outform", "DER", "-out", join(dir, "c.p7s")],
      "cms -keyid (SKID, v3)": ["cms", "-sign", "-keyid", "-binary", "-in", content, "-inkey", key, "-signer", cert, "-outform", "DER", "-out", join(dir, "d.p7s")],
    };
    for (const [name, args] of Object.entries(recipes)) {
      run("openssl", args);
      const sig = readFileSync(args[args.length - 1]!);
      await verifyRootHashSignature(ROOT, sig, [readFileSync(cert)].map((b) => b.toString("utf8")));
      await assert.rejects(verifyRootHashSignature(OTHER, sig, [readFileSync(cert, "utf8")]), (e: unknown) => e instanceof TrustvolError && e.code === "ECORRUPT", name);
    }
    // Attached (non-detached) signatures are refused, as the kernel refuses them.
    run("openssl", ["cms", "-sign", "-nodetach", "-binary", "-in", content, "-inkey", key, "-signer", cert, "-outform", "DER", "-out", join(dir, "e.p7s")]);
    await assert.rejects(verifyRootHashSignature(ROOT, readFileSync(join(dir, "e.p7s")), [readFileSync(cert, "utf8")]), /embeds its content/);
    // Untrusted signer and garbage.
    const other = makeKey(dir, "rsa", "other");
    await assert.rejects(verifyRootHashSignature(ROOT, readFileSync(join(dir, "a.p7s")), [readFileSync(other.cert, "utf8")]), (e: unknown) => e instanceof TrustvolError && e.code === "EPOLICY");
    await assert.rejects(verifyRootHashSignature(ROOT, Buffer.from("not a signature"), [readFileSync(cert, "utf8")]), (e: unknown) => e instanceof TrustvolError && e.code === "ECORRUPT" && /not a PKCS#7 SignedData/.test(e.message));
    // A key that is not the certificate's is refused up front.
    assert.throws(() => pemPrivateKeySigner(readFileSync(other.key), readFileSync(cert, "utf8")), /does not belong to the certificate/);
  } finally {
    cleanup();
  }
});
