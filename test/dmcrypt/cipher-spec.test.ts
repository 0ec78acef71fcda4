import { test } from "node:test";
import assert from "node:assert/strict";
import { parseCipherSpec, formatCipherSpec } from "../../src/dmcrypt/index.js";
import { TrustvolError } from "../../src/util/errors.js";

test("parses dm-crypt and LUKS-style cipher specifications", () => {
  assert.deepEqual(parseCipherSpec("aes-xts-plain64"), { cipher: "aes", chainMode: "xts", ivMode: "plain64" });
  assert.deepEqual(parseCipherSpec("aes", "xts-plain64"), { cipher: "aes", chainMode: "xts", ivMode: "plain64" });
  assert.deepEqual(parseCipherSpec("aes", "cbc-essiv:sha256"), { cipher: "aes", chainMode: "cbc", ivMode: "essiv:sha256" });
  assert.deepEqual(parseCipherSpec("aes-cbc-plain"), { cipher: "aes", chainMode: "cbc", ivMode: "plain" });
  assert.deepEqual(parseCipherSpec("aes-xts-plain64be"), { cipher: "aes", chainMode: "xts", ivMode: "plain64be" });
  assert.deepEqual(parseCipherSpec("aes-cbc-null"), { cipher: "aes", chainMode: "cbc", ivMode: "null" });
  assert.deepEqual(parseCipherSpec("aes-ecb"), { cipher: "aes", chainMode: "ecb", ivMode: "null" });
  assert.deepEqual(parseCipherSpec("aes", "ecb"), { cipher: "aes", chainMode: "ecb", ivMode: "null" });
  // the kernel's historic defaults
  assert.deepEqual(parseCipherSpec("aes"), { cipher: "aes", chainMode: "cbc", ivMode: "plain" });
  assert.deepEqual(parseCipherSpec("aes-plain"), { cipher: "aes", chainMode: "cbc", ivMode: "plain" });
});

test("formats canonical strings that parse back", () => {
  for (const s of ["aes-xts-plain64", "aes-xts-plain", "aes-cbc-essiv:sha256", "aes-cbc-plain64be", "aes-cbc-null", "aes-ecb"]) {
    assert.equal(formatCipherSpec(parseCipherSpec(s)), s);
  }
  assert.equal(formatCipherSpec(parseCipherSpec("aes-plain")), "aes-cbc-plain");
});

test("rejects what it cannot run with EUNSUPPORTED", () => {
  for (const [c, m] of [
    ["twofish-xts-plain64"],
    ["serpent", "xts-plain64"],
    ["aes-xts-benbi"],
    ["aes-cbc-essiv:sha1"],
    ["aes-cbc-lmk"],
    ["aes-cbc-tcw"],
    ["aes-xts-random"],
    ["aes-cbc-eboiv"],
    ["aes-gcm-random"],
    ["aes-xts"],
    ["aes-ecb-plain64"],
    ["aes:64-cbc-lmk"],
    ["capi:tk(cbc(aes))-plain"],
    ["AES-XTS-PLAIN64"],
    [""],
  ] as [string, string?][]) {
    assert.throws(
      () => parseCipherSpec(c, m),
      (e: unknown) => e instanceof TrustvolError && e.code === "EUNSUPPORTED" && e.message.includes("not supported") && !!e.hint,
      `${c} ${m ?? ""}`,
    );
  }
});
