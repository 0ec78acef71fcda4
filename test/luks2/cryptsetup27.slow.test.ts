// LUKS2 headers, keyslots and tokens both ways with Debian 13's cryptsetup 2.7.5 (run from the cached trixie root).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { DEB13_WORK, needDebian13, runInDebian13 } from "../helpers/debian13.js";

const FAST_ARGON = ["--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "1"];
const FAST_PBKDF2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

function setup(t: import("node:test").TestContext) {
  if (!needTools(t, "truncate")) return undefined;
  const root = needDebian13(t);
  if (!root) return undefined;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const key = (name: string, v: string) => {
    writeFileSync(join(dir, name), v, { mode: 0o600 });
    return join(dir, name);
  };
  const cs = (args: string[], o: { input?: string; check?: boolean } = {}) => runInDebian13(root, "cryptsetup", args, { work: dir, ...o });
  return { dir, key, cs, w: (f: string) => `${DEB13_WORK}/${f}` };
}

test("trustvol format/key add/token import → cryptsetup 2.7.5 opens, dumps and exports the same", async (t) => {
  const s = setup(t);
  if (!s) return;
  assert.match(s.cs(["--version"]).stdout.toString(), /cryptsetup 2\.7\./);
  for (const [name, kdf] of [["argon", FAST_ARGON], ["pbkdf2", FAST_PBKDF2]] as const) {
    const img = join(s.dir, `${name}.img`);
    run("truncate", ["-s", "24M", img]);
    s.key("pw", "trustvol made me");
    s.key("pw2", "second key");
    let r = await trustvolInProcess(["format", "-q", "--key-file", join(s.dir, "pw"), ...kdf, "--label", "tv", img]);
    assert.equal(r.status, 0, r.stderr);
    r = await trustvolInProcess(["key", "add", img, "--key-file", join(s.dir, "pw"), "--new-key-file", join(s.dir, "pw2"), ...kdf, "--json"]);
    assert.equal(r.status, 0, r.stderr);
    const token = JSON.stringify({ type: "systemd-recovery", keyslots: ["1"] });
    writeFileSync(join(s.dir, "tok.json"), token);
    r = await trustvolInProcess(["token", "import", img, "--json-file", join(s.dir, "tok.json"), "--token-id", "5"]);
    assert.equal(r.status, 0, r.stderr);

    const dump = s.cs(["luksDump", s.w(`${name}.img`)]).stdout.toString();
    assert.match(dump, /Label:\s+tv/);
    assert.match(dump, /5: systemd-recovery/);
    s.cs(["open", "--test-passphrase", "--key-file", s.w("pw"), s.w(`${name}.img`)]);
    s.cs(["open", "--test-passphrase", "--key-slot", "1", "--key-file", s.w("pw2"), s.w(`${name}.img`)]);
    assert.notEqual(s.cs(["open", "--test-passphrase", "--key-file", "-", s.w(`${name}.img`)], { input: "wrong", check: false }).status, 0);
    assert.equal(s.cs(["token", "export", "--token-id", "5", s.w(`${name}.img`)]).stdout.toString().trim(), token);
    // 2.7 writes back into trustvol's header (new keyslot), and trustvol reads what it wrote
    s.key("pw3", "from cryptsetup 2.7");
    s.cs(["luksAddKey", "-q", ...kdf, "--key-file", s.w("pw"), "--key-slot", "7", s.w(`${name}.img`), s.w("pw3")]);
    r = await trustvolInProcess(["unlock", "--test", "--key-file", join(s.dir, "pw3"), img]);
    assert.equal(r.status, 0, r.stderr);
    // 2.7 checks the header copies and finds nothing to repair
    s.cs(["repair", "-q", s.w(`${name}.img`)]);
  }
});

test("cryptsetup 2.7.5 luksFormat/luksAddKey/token import → trustvol unlocks, adds keys and tokens 2.7 accepts", async (t) => {
  const s = setup(t);
  if (!s) return;
  for (const [name, extra] of [["default", FAST_ARGON], ["pbkdf2-512", [...FAST_PBKDF2, "--sector-size", "512", "--hash", "sha512"]], ["cbc", [...FAST_PBKDF2, "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256"]]] as const) {
    const img = join(s.dir, `${name}.img`);
    run("truncate", ["-s", "24M", img]);
    s.key("pw", "cryptsetup made me");
    s.cs(["luksFormat", "-q", "--type", "luks2", ...extra, "--key-file", s.w("pw"), s.w(`${name}.img`)]);
    s.key("pw2", "added by 2.7");
    s.cs(["luksAddKey", "-q", ...FAST_PBKDF2, "--key-file", s.w("pw"), "--key-slot", "3", s.w(`${name}.img`), s.w("pw2")]);
    s.cs(["token", "import", "--token-id", "2", "--key-slot", "3", s.w(`${name}.img`)], { input: JSON.stringify({ type: "systemd-recovery", keyslots: [] }) });

    let r = await trustvolInProcess(["unlock", "--test", "--key-file", join(s.dir, "pw2"), "--key-slot", "3", img]);
    assert.equal(r.status, 0, r.stderr);
    r = await trustvolInProcess(["token", "export", img, "--token-id", "2"]);
    assert.deepEqual(JSON.parse(r.stdout), { type: "systemd-recovery", keyslots: ["3"] });
    r = await trustvolInProcess(["dump", img, "--json"]);
    assert.equal(r.status, 0, r.stderr);

    s.key("pw3", "added by trustvol");
    r = await trustvolInProcess(["key", "add", img, "--key-file", join(s.dir, "pw"), "--new-key-file", join(s.dir, "pw3"), ...FAST_PBKDF2, "--new-key-slot", "9"]);
    assert.equal(r.status, 0, r.stderr);
    writeFileSync(join(s.dir, "kr.json"), JSON.stringify({ type: "luks2-keyring", keyslots: ["9"], key_description: "trustvol:test" }));
    r = await trustvolInProcess(["token", "import", img, "--json-file", join(s.dir, "kr.json"), "--token-id", "4"]);
    assert.equal(r.status, 0, r.stderr);
    s.cs(["open", "--test-passphrase", "--key-slot", "9", "--key-file", s.w("pw3"), s.w(`${name}.img`)]);
    assert.match(s.cs(["luksDump", s.w(`${name}.img`)]).stdout.toString(), /4: luks2-keyring\s+Key description:\s+trustvol:test\s+Keyslot:\s+9/);
    r = await trustvolInProcess(["key", "remove", img, "--key-slot", "3"]);
    assert.equal(r.status, 0, r.stderr);
    assert.notEqual(s.cs(["open", "--test-passphrase", "--key-file", s.w("pw2"), s.w(`${name}.img`)], { check: false }).status, 0);
    s.cs(["repair", "-q", s.w(`${name}.img`)]);
    s.cs(["open", "--test-passphrase", "--key-file", s.w("pw"), s.w(`${name}.img`)]);
  }
});

test("re-encryption started by cryptsetup 2.6.1 resumes with 2.7.5 and vice versa; trustvol decrypts the result to the same data", async (t) => {
  const s = setup(t);
  if (!s || !needTools(t, "cryptsetup")) return;
  const plain = join(s.dir, "plain.raw");
  const data = Buffer.alloc(8 << 20);
  for (let i = 0; i < data.length; i += 4096) data.write(`block ${i / 4096} `, i);
  writeFileSync(plain, data);
  s.key("pw", "re-encrypt me");
  for (const [first, then] of [["2.6", "2.7"], ["2.7", "2.6"]] as const) {
    const name = `re${first}.img`;
    const img = join(s.dir, name);
    let r = await trustvolInProcess(["image", "encrypt", plain, img, "--key-file", join(s.dir, "pw"), ...FAST_PBKDF2]);
    assert.equal(r.status, 0, r.stderr);
    const before = (await trustvolInProcess(["dump", img, "--json"])).stdout;
    // cryptsetup of either version on this image (2.7 in the trixie root), the image path appended
    const cs = (ver: string, args: string[]) => (ver === "2.7" ? s.cs([...args, s.w(name)]) : run("cryptsetup", [...args, img]));
    cs(first, ["reencrypt", "--init-only", "-q", ...FAST_PBKDF2, "--key-file", v(first, s, "pw")]);
    assert.match((await trustvolInProcess(["dump", img, "--json"])).stdout, /online-reencrypt/);
    cs(then, ["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", v(then, s, "pw")]);
    const after = (await trustvolInProcess(["dump", img, "--json"])).stdout;
    assert.doesNotMatch(after, /online-reencrypt/);
    assert.notEqual(after, before);
    r = await trustvolInProcess(["image", "decrypt", img, join(s.dir, "out.raw"), "--key-file", join(s.dir, "pw"), "--force"]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(readFileSync(join(s.dir, "out.raw")).equals(data), `${first} → ${then}: data intact`);
  }
});

/** A key file's path as the given cryptsetup version sees it (2.7 runs in the trixie root, the work dir at /w). */
function v(version: string, s: { dir: string; w: (f: string) => string }, f: string): string {
  return version === "2.7" ? s.w(f) : join(s.dir, f);
}
