// Pure tests of the TPM 2.0 marshalling, policy prediction, response-code decoding and device selection.
import { test } from "node:test";
import assert from "node:assert/strict";
import { computePolicyDigest, predictPcr } from "../../../src/trust/tpm2/policy.js";
import { decodeRc, tpmError } from "../../../src/trust/tpm2/rc.js";
import { TPM_CC } from "../../../src/trust/tpm2/constants.js";
import { decodePublic2B, encodePcrSelections, encodePublic2B, objectName, sealedObjectTemplate, storagePrimaryTemplate } from "../../../src/trust/tpm2/structures.js";
import { parseTpm2Device, resolveTpm2Device } from "../../../src/trust/tpm2/transport-select.js";
import { kdfa, kdfe } from "../../../src/trust/tpm2/crypto.js";
import { joinBlob, splitBlob } from "../../../src/trust/tpm2/seal.js";
import { TpmReader } from "../../../src/trust/tpm2/marshal.js";
import { TrustvolError } from "../../../src/util/errors.js";

const zeros = (n: number) => Buffer.alloc(n);

test("policy digests equal what systemd-cryptenroll 252 recorded (PCR 7 = 0; PCRs 0+7 = 0 with PIN)", () => {
  assert.equal(computePolicyDigest({ bank: "sha256", pcrs: [7], pcrValues: new Map([[7, zeros(32)]]), pin: false }).toString("hex"), "8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b");
  assert.equal(
    computePolicyDigest({ bank: "sha256", pcrs: [7, 0], pcrValues: new Map([[0, zeros(32)], [7, zeros(32)]]), pin: true }).toString("hex"),
    "a459f3351d48706d42b6a920938f56e28b7356602a02784cf0f37b6f5aeb068c",
  );
  assert.throws(() => computePolicyDigest({ bank: "sha256", pcrs: [7], pcrValues: new Map(), pin: false }), TrustvolError);
  assert.equal(predictPcr("sha256", [zeros(32)]).toString("hex"), "f5a5fd42d16a20302798ef6ed309979b43003d2320d9f0e8ea9831a92759fb4b");
});

test("PCR selection marshalling: 3-byte bitmap, bit i of byte i/8", () => {
  assert.equal(encodePcrSelections([{ hash: "sha256", pcrs: [0, 7, 8, 23] }]).toString("hex"), "00000001" + "000b" + "03" + "810180");
});

test("TPMT_PUBLIC round-trips, and the ECC storage template is the TCG one", () => {
  const t = storagePrimaryTemplate("ecc");
  const b = encodePublic2B(t);
  assert.equal(b.toString("hex"), "001a" + "0023000b00030072" + "0000" + "000600800043" + "0010" + "0003" + "0010" + "0000" + "0000");
  assert.deepEqual(encodePublic2B(decodePublic2B(b)), b);
  const r = storagePrimaryTemplate("rsa");
  assert.equal(encodePublic2B(r).toString("hex"), "001a" + "0001000b00030072" + "0000" + "000600800043" + "0010" + "0800" + "00000000" + "0000");
  const s = sealedObjectTemplate({ authPolicy: Buffer.alloc(32, 1) });
  assert.equal(objectName(s).subarray(0, 2).toString("hex"), "000b");
  assert.equal(decodePublic2B(encodePublic2B(s)).objectAttributes, 0x12);
});

test("blob split/join, truncated and trailing bytes rejected", () => {
  const pub = encodePublic2B(sealedObjectTemplate({ authPolicy: Buffer.alloc(32, 2) }));
  const priv = Buffer.alloc(20, 9);
  const blob = joinBlob(priv, pub);
  const s = splitBlob(blob);
  assert.deepEqual(s.priv, priv);
  assert.deepEqual(s.pubBytes, pub);
  assert.throws(() => splitBlob(blob.subarray(0, blob.length - 1)), /truncated/);
  assert.throws(() => splitBlob(Buffer.concat([blob, Buffer.from([0])])), /trailing/);
  assert.throws(() => splitBlob(joinBlob(priv, encodePublic2B(storagePrimaryTemplate("ecc")))), /sealed data object/);
  assert.throws(() => new TpmReader(Buffer.from([0xff, 0xff, 0])).tpm2b(), /truncated/);
});

test("response codes decode into actionable errors", () => {
  assert.deepEqual(decodeRc(0x99d), { rc: 0x99d, name: "POLICY_FAIL", subject: { kind: "session", index: 1 }, warning: false });
  assert.equal(decodeRc(0x921).name, "LOCKOUT");
  assert.equal(decodeRc(0x98e).name, "AUTH_FAIL");
  assert.deepEqual(decodeRc(0x1df).subject, { kind: "parameter", index: 1 });
  assert.equal(decodeRc(0x100).name, "INITIALIZE");
  assert.equal(tpmError(0x921, TPM_CC.Unseal).code, "ELOCKOUT");
  assert.equal(tpmError(0x98e, TPM_CC.Unseal).code, "EBADPASS");
  assert.equal(tpmError(0x9a2, TPM_CC.Unseal).code, "EBADPASS");
  const e = tpmError(0x99d, TPM_CC.Unseal);
  assert.equal(e.code, "EPOLICY");
  assert.match(e.oneLine(), /TPM2_Unseal.*POLICY_FAIL.*re-enroll/);
});

test("KDFa / KDFe are counter-mode and length-exact", () => {
  const a = kdfa("sha256", Buffer.from("k"), "ATH", Buffer.from("u"), Buffer.from("v"), 256 + 128);
  assert.equal(a.length, 48);
  assert.deepEqual(kdfa("sha256", Buffer.from("k"), "ATH", Buffer.from("u"), Buffer.from("v"), 256), kdfa("sha256", Buffer.from("k"), "ATH", Buffer.from("u"), Buffer.from("v"), 256));
  assert.notDeepEqual(a.subarray(0, 32), kdfa("sha256", Buffer.from("k"), "ATH", Buffer.from("u"), Buffer.from("v"), 256)); // bits is an input
  assert.equal(kdfe("sha256", Buffer.alloc(32), "SECRET", Buffer.alloc(32), Buffer.alloc(32), 256).length, 32);
});

test("--tpm2-device parsing like systemd, with TRUSTVOL_TPM2_DEVICE", () => {
  assert.deepEqual(parseTpm2Device("swtpm:path=/tmp/s"), { kind: "swtpm", addr: { path: "/tmp/s" }, ctrl: { path: "/tmp/s.ctrl" } });
  assert.deepEqual(parseTpm2Device("swtpm:host=127.0.0.1,port=2321"), { kind: "swtpm", addr: { host: "127.0.0.1", port: 2321 }, ctrl: { host: "127.0.0.1", port: 2322 } });
  assert.deepEqual(parseTpm2Device("/dev/tpmrm0"), { kind: "device", path: "/dev/tpmrm0" });
  assert.deepEqual(parseTpm2Device("device:/dev/tpm0"), { kind: "device", path: "/dev/tpm0" });
  assert.equal(parseTpm2Device("auto"), "auto");
  assert.throws(() => parseTpm2Device("mssim:"), /unrecognised/);
  assert.throws(() => parseTpm2Device("swtpm:port=99999"), /port/);
  assert.deepEqual(resolveTpm2Device("auto", { TRUSTVOL_TPM2_DEVICE: "swtpm:path=/x" }), { kind: "swtpm", addr: { path: "/x" }, ctrl: { path: "/x.ctrl" } });
  assert.deepEqual(resolveTpm2Device("/dev/tpm0", { TRUSTVOL_TPM2_DEVICE: "swtpm:path=/x" }), { kind: "device", path: "/dev/tpm0" });
});

test("transports report a missing swtpm / device as EDEVICE with a hint", async () => {
  const { SwtpmTransport } = await import("../../../src/trust/tpm2/transport-swtpm.js");
  const { DeviceTransport } = await import("../../../src/trust/tpm2/transport-device.js");
  const cmd = Buffer.from("80010000000c0000017b0008", "hex"); // GetRandom(8)
  await assert.rejects(new SwtpmTransport({ path: "/nonexistent/trustvol.sock" }).transmit(cmd), (e: unknown) => e instanceof TrustvolError && e.code === "EDEVICE" && /swtpm/.test(e.oneLine()));
  await assert.rejects(new DeviceTransport("/nonexistent/tpmrm9").transmit(cmd), (e: unknown) => e instanceof TrustvolError && e.code === "EDEVICE" && /cannot open TPM device/.test(e.message));
});
