// `trustvol tpm2 sign-policy` against systemd-measure 257 (byte-identical JSON: RSASSA-PKCS1-v1_5 is deterministic),
// and end to end: a token systemd-cryptenroll 257 enrolled against the vendor key unlocks, in systemd 257 and in
// trustvol, with the signature trustvol made.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, generateKeyPairSync, verify } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { swtpmForFile } from "../helpers/swtpm.js";
import { run } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { DEB13_WORK, deb13SwtpmDevice, needDebian13, runInDebian13 } from "../helpers/debian13.js";
import { exportToken, makeLuksImage, passphraseOpens } from "../tokens/luks-fixture.js";
import { decodePcrSignatureJson, systemdPubkeyFingerprint, unlockSystemdTpm2Token } from "../../src/tokens/systemd-tpm2.js";
import { makeSoftHsm, needSoftHsm } from "../helpers/softhsm.js";
import { initToken, provisionKey } from "../../src/trust/pkcs11/setup.js";
import { openToken } from "../../src/trust/pkcs11/token.js";
import { parsePkcs11Uri } from "../../src/trust/pkcs11/uri.js";
import { peSizeOfImage, predictPcr11, signPcrPolicy } from "../../src/ops/sign-policy.js";
import { Tpm, openTpm2Transport } from "../../src/trust/tpm2/index.js";
import { TrustvolError } from "../../src/util/errors.js";

const fx = swtpmForFile(["swtpm", "cryptsetup"]);
const MEASURE = "/usr/lib/systemd/systemd-measure";

/** A minimal PE32+ header whose SizeOfImage (64 KiB) exceeds the file: the stub measures the zero tail too. */
function fakePeKernel(): Buffer {
  const b = Buffer.alloc(4096, 0x5a);
  b.writeUInt16LE(0x5a4d, 0);
  b.writeUInt32LE(0x80, 0x3c);
  b.writeUInt32LE(0x00004550, 0x80);
  b.writeUInt16LE(112 + 8 * 16, 0x80 + 20); // SizeOfOptionalHeader: PE32+ fields and 16 data directories
  b.writeUInt16LE(0x20b, 0x80 + 24);
  b.writeUInt32LE(65536, 0x80 + 24 + 56);
  b.writeUInt32LE(16, 0x80 + 24 + 108);
  return b;
}

function keys(dir: string) {
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  writeFileSync(join(dir, "pk.pem"), publicKey.export({ type: "spki", format: "pem" }));
  writeFileSync(join(dir, "sk.pem"), privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 }); // test-only signing key
}

test("sign-policy: the same JSON as systemd-measure 257 sign (default banks and phases, chosen ones, --append, PE kernel padding)", async (t) => {
  if (!fx.ready(t)) return;
  const root = needDebian13(t);
  if (!root) return;
  const d = fx.dir;
  keys(d);
  writeFileSync(join(d, "linux"), "not a PE kernel");
  writeFileSync(join(d, "pe-linux"), fakePeKernel());
  writeFileSync(join(d, "osrel"), "ID=trustvol\nVERSION_ID=1\n");
  writeFileSync(join(d, "cmdline"), "root=/dev/mapper/root quiet\n");
  writeFileSync(join(d, "initrd"), Buffer.alloc(3000, 7));
  writeFileSync(join(d, "uname"), "6.12.0-trustvol\n");
  writeFileSync(join(d, "empty"), "");
  assert.equal(peSizeOfImage(fakePeKernel()), 65536);
  const broken = fakePeKernel();
  broken.writeUInt32LE(15, 0x80 + 24 + 108); // data directory count disagrees with the header size: not a PE to systemd
  assert.equal(peSizeOfImage(broken), undefined);
  const sd = (args: string[]) => runInDebian13(root, MEASURE, ["sign", `--private-key=${DEB13_WORK}/sk.pem`, `--public-key=${DEB13_WORK}/pk.pem`, ...args], { work: d }).stdout.toString();
  const tv = async (args: string[]) => {
    const r = await trustvolInProcess(["tpm2", "sign-policy", "--private-key", join(d, "sk.pem"), "--public-key", join(d, "pk.pem"), ...args]);
    assert.equal(r.status, 0, r.stderr);
    return r.stdout;
  };
  const cases: [string[], string[]][] = [
    [[`--linux=${DEB13_WORK}/linux`, `--osrel=${DEB13_WORK}/osrel`], ["--linux", join(d, "linux"), "--osrel", join(d, "osrel")]],
    [[`--linux=${DEB13_WORK}/pe-linux`, `--cmdline=${DEB13_WORK}/cmdline`, `--initrd=${DEB13_WORK}/initrd`, `--uname=${DEB13_WORK}/uname`, `--splash=${DEB13_WORK}/empty`, "--bank=sha256", "--phase=enter-initrd", "--phase=::enter-initrd:leave-initrd:"],
      ["--linux", join(d, "pe-linux"), "--cmdline", join(d, "cmdline"), "--initrd", join(d, "initrd"), "--uname", join(d, "uname"), "--splash", join(d, "empty"), "--bank", "SHA256", "--phase", "enter-initrd", "--phase", "::enter-initrd:leave-initrd:", "--no-linux-padding"]],
  ];
  for (const [sdArgs, tvArgs] of cases) assert.equal((await tv(tvArgs)).trimEnd(), sd(sdArgs).trimEnd(), tvArgs.join(" "));
  // systemd-measure 257 hashes a PE kernel as the file is; the stub measures it padded to SizeOfImage (measure pads since 258)
  const pe = readFileSync(join(d, "pe-linux"));
  const padded = predictPcr11("sha256", new Map([[".linux", pe]]), "enter-initrd");
  assert.deepEqual(padded, predictPcr11("sha256", new Map([[".linux", Buffer.concat([pe, Buffer.alloc(65536 - pe.length)])]]), "enter-initrd", false));
  assert.notDeepEqual(padded, predictPcr11("sha256", new Map([[".linux", pe]]), "enter-initrd", false));
  // --append: both add to the same earlier signature file
  writeFileSync(join(d, "earlier.json"), sd([`--linux=${DEB13_WORK}/linux`, "--bank=sha256", "--phase=enter-initrd"]).trim());
  assert.equal(
    (await tv(["--linux", join(d, "pe-linux"), "--no-linux-padding", "--bank", "sha256", "--phase", "sysinit", "--append", join(d, "earlier.json")])).trimEnd(),
    sd([`--linux=${DEB13_WORK}/pe-linux`, "--bank=sha256", "--phase=sysinit", `--append=${DEB13_WORK}/earlier.json`]).trimEnd(),
  );
});

test("sign-policy → a token systemd-cryptenroll 257 enrolled against the key unlocks in systemd 257 and in trustvol", async (t) => {
  if (!fx.ready(t)) return;
  const root = needDebian13(t);
  if (!root) return;
  const d = fx.dir;
  keys(d);
  const { tpmDir, device } = deb13SwtpmDevice(fx.sw.sock);
  const sections: [string, string][] = [[".linux", "kernel 6.12 for the next OTA"], [".osrel", "ID=trustvol\n"], [".cmdline", "quiet\n"]];
  for (const [n, c] of sections) writeFileSync(join(d, `s${n}`), c);
  const r = await trustvolInProcess(["tpm2", "sign-policy", "--private-key", join(d, "sk.pem"), ...sections.flatMap(([n]) => [`--${n.slice(1)}`, join(d, `s${n}`)]), "--bank", "sha256", "--output", join(d, "sig.json")]);
  assert.equal(r.status, 0, r.stderr);

  await fx.sw.restart();
  const l = makeLuksImage(d, "ota");
  runInDebian13(root, "systemd-cryptenroll", [`--unlock-key-file=${DEB13_WORK}/ota.key`, `--tpm2-device=${device}`, `--tpm2-public-key=${DEB13_WORK}/pk.pem`, "--tpm2-public-key-pcrs=11", "--tpm2-pcrs=", `${DEB13_WORK}/ota.luks`], { work: d, tpmDir });
  const tpm = new Tpm(openTpm2Transport(fx.sw.device));
  const sha = (b: string | Buffer) => createHash("sha256").update(b).digest();
  // boot the signed UKI up to sysinit, as systemd-stub and systemd-pcrphase would measure it
  for (const [n, c] of sections) {
    await tpm.pcrExtend(11, "sha256", sha(`${n}\0`));
    await tpm.pcrExtend(11, "sha256", sha(c));
  }
  for (const w of ["enter-initrd", "leave-initrd", "sysinit"]) await tpm.pcrExtend(11, "sha256", sha(w));
  const sig = readFileSync(join(d, "sig.json"));
  const pass = await unlockSystemdTpm2Token(exportToken(l.img, 0), tpm, { signature: sig });
  assert.ok(passphraseOpens(l.img, pass, 1));
  const script = `mkdir -p /run/systemd && cp ${DEB13_WORK}/sig.json /run/systemd/tpm2-pcr-signature.json && exec "$@"`;
  const rk = runInDebian13(root, "sh", ["-c", script, "sh", "systemd-cryptenroll", `--unlock-tpm2-device=${device}`, "--recovery-key", `${DEB13_WORK}/ota.luks`], { work: d, tpmDir }).stdout.toString().trim();
  assert.ok(passphraseOpens(l.img, Buffer.from(rk)));

  // trustvol enrolls against the vendor key instead: systemd 257 and trustvol's CLI unlock with the same signature
  run("cryptsetup", ["token", "remove", "--token-id", "0", l.img]);
  let cli = await trustvolInProcess(["enroll", "tpm2", l.img, "--tpm2-device", fx.sw.device, "--public-key", join(d, "pk.pem"), "--public-key-pcrs", "11", "--key-file", l.keyFile, "--json"]);
  assert.equal(cli.status, 0, cli.stderr);
  const slot = JSON.parse(cli.stdout).keyslot as number;
  cli = await trustvolInProcess(["unlock", "--test", "--token-only", "--tpm2-device", fx.sw.device, "--tpm2-signature", join(d, "sig.json"), "--json", l.img]);
  assert.equal(cli.status, 0, cli.stderr);
  assert.equal(JSON.parse(cli.stdout).keyslot, slot);
  const rk2 = runInDebian13(root, "sh", ["-c", script, "sh", "systemd-cryptenroll", `--unlock-tpm2-device=${device}`, "--recovery-key", `${DEB13_WORK}/ota.luks`], { work: d, tpmDir }).stdout.toString().trim();
  assert.ok(passphraseOpens(l.img, Buffer.from(rk2)));
  // a boot chain the vendor never signed: refused
  await tpm.pcrExtend(11, "sha256", sha("ready"));
  await tpm.pcrExtend(11, "sha256", sha("an unsigned extra"));
  cli = await trustvolInProcess(["unlock", "--test", "--token-only", "--tpm2-device", fx.sw.device, "--tpm2-signature", join(d, "sig.json"), l.img]);
  assert.equal(cli.status, 3, cli.stderr);
  assert.match(cli.stderr, /no signature approves/);
});

test("sign-policy refuses bad keys and inputs with one-line errors", () => {
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const other = generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey;
  const ec = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
  const pem = (k: import("node:crypto").KeyObject, type: "pkcs8" | "spki") => Buffer.from(k.export({ type, format: "pem" }) as string);
  const sections = new Map([[".linux" as const, Buffer.from("k")]]);
  const cases: [() => unknown, string, RegExp][] = [
    [() => signPcrPolicy({ sections: new Map(), privateKeyPem: pem(privateKey, "pkcs8") }), "EUSAGE", /--linux is required/],
    [() => signPcrPolicy({ sections, privateKeyPem: Buffer.from("junk") }), "EUSAGE", /not a PEM private key/],
    [() => signPcrPolicy({ sections, privateKeyPem: pem(ec, "pkcs8") }), "EUNSUPPORTED", /ec keys/],
    [() => signPcrPolicy({ sections, privateKeyPem: pem(privateKey, "pkcs8"), publicKeyPem: pem(other, "spki") }), "EUSAGE", /does not belong/],
    [() => signPcrPolicy({ sections, privateKeyPem: pem(privateKey, "pkcs8"), append: "[1]" }), "ECORRUPT", /./],
  ];
  for (const [fn, code, re] of cases) assert.throws(fn, (e: unknown) => e instanceof TrustvolError && e.code === code && re.test(e.message) && !e.message.includes("\n"));
});

test("sign-policy with the vendor key on a PKCS#11 token (SoftHSM2): systemd-measure's policy digests, signatures the token's public key verifies", async (t) => {
  if (!fx.ready(t) || !needSoftHsm(t)) return;
  const root = needDebian13(t);
  if (!root) return;
  const h = makeSoftHsm();
  t.after(() => h.cleanup());
  const pin = { kind: "buffer" as const, pin: Buffer.from("vendor-pin") };
  initToken({ modulePath: h.modulePath, label: "vendor", soPin: { kind: "buffer", pin: Buffer.from("so-pin-1357") }, userPin: pin });
  provisionKey({ uri: "pkcs11:token=vendor", modulePath: h.modulePath, pin, label: "pcr-signing", subject: "CN=Vendor PCR signing" });
  const d = fx.dir;
  writeFileSync(join(d, "tk-linux"), "kernel signed on a token");
  const r = await trustvolInProcess(["tpm2", "sign-policy", "--private-key", "pkcs11:token=vendor;object=pcr-signing", "--pin-file", h.pinFile("vendor-pin"), "--module", h.modulePath, "--linux", join(d, "tk-linux")]);
  assert.equal(r.status, 0, r.stderr);
  const sigs = decodePcrSignatureJson(r.stdout);
  assert.deepEqual([...new Set(sigs.map((s) => s.bank))], ["sha256"]); // the token mechanism hashes with SHA-256
  // the policy digests do not depend on the key: systemd-measure 257 (no policy-digest verb yet) signs them with a PEM one
  keys(d);
  const digests = JSON.parse(runInDebian13(root, MEASURE, ["sign", `--private-key=${DEB13_WORK}/sk.pem`, `--linux=${DEB13_WORK}/tk-linux`, "--bank=sha256"], { work: d }).stdout.toString()) as { sha256: { pol: string }[] };
  assert.deepEqual(sigs.map((s) => s.pol.toString("hex")), digests.sha256.map((e) => e.pol));
  const s = openToken({ uri: parsePkcs11Uri("pkcs11:token=vendor;object=pcr-signing"), modulePath: h.modulePath });
  let pub: import("node:crypto").KeyObject;
  try {
    pub = s.publicKey().key;
  } finally {
    s.close();
  }
  const pem = Buffer.from(pub.export({ type: "spki", format: "pem" }) as string);
  for (const e of sigs) {
    assert.equal(e.pkfp, systemdPubkeyFingerprint(pem));
    assert.ok(verify("sha256", e.pol, pub, e.sig));
  }
  const bad = await trustvolInProcess(["tpm2", "sign-policy", "--private-key", "pkcs11:token=vendor;object=pcr-signing", "--pin-file", h.pinFile("vendor-pin"), "--module", h.modulePath, "--linux", join(d, "tk-linux"), "--bank", "sha1"]);
  assert.equal(bad.status, 6);
  assert.match(bad.stderr, /^trustvol: this key can only sign for the sha256 bank, not sha1; [^\n]*\n$/);
});
