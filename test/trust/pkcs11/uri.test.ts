// Pure tests: RFC 7512 URIs, p11-kit module discovery, PIN sources.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { parsePkcs11Uri, formatPkcs11Uri, isSystemdValidUri, redactUri } from "../../../src/trust/pkcs11/uri.js";
import { discoverP11KitModules, candidateModules, findModuleByName } from "../../../src/trust/pkcs11/module.js";
import { readPin, pinSourceFromUri } from "../../../src/trust/pkcs11/pin.js";
import { TrustvolError } from "../../../src/util/errors.js";
import { tmpDir, run } from "../../helpers/tools.js";
import { fileURLToPath } from "node:url";

test("parse: path and query attributes, percent-decoding, id bytes", () => {
  const u = parsePkcs11Uri(
    "pkcs11:token=My%20Token;manufacturer=Linaro;serial=0000000000000001;model=OP-TEE%20TA;object=luks;id=%9d%01;type=private?module-name=softhsm2&pin-source=file:%2Frun%2Fpin",
  );
  assert.equal(u.token, "My Token");
  assert.equal(u.manufacturer, "Linaro");
  assert.equal(u.serial, "0000000000000001");
  assert.equal(u.model, "OP-TEE TA");
  assert.equal(u.object, "luks");
  assert.deepEqual(u.id, Buffer.from([0x9d, 0x01]));
  assert.equal(u.type, "private");
  assert.equal(u.moduleName, "softhsm2");
  assert.equal(u.pinSource, "file:/run/pin");
  assert.deepEqual(parsePkcs11Uri("pkcs11:"), {});
  assert.equal(parsePkcs11Uri("pkcs11:token=a;slot-id=1").slotId, 1);
  assert.equal(parsePkcs11Uri("PKCS11:token=lmp").token, "lmp");
  assert.equal(parsePkcs11Uri("pkcs11:token=%E2%82%AC").token, "€");
  assert.equal(parsePkcs11Uri("pkcs11:token=a?module-path=/usr/lib/libckteec.so.0").modulePath, "/usr/lib/libckteec.so.0");
});

test("format: round trip, everything outside [A-Za-z0-9-_] percent-encoded (systemd-valid)", () => {
  const cases = [
    { token: "lmp", object: "luks" },
    { token: "My Token;x=y", object: "a/b?c&d%", id: Buffer.from([0, 0xff, 0x9d]), type: "private" as const },
    { token: "lmp", modulePath: "/usr/lib/libckteec.so.0", pinSource: "file:/run/pin" },
    { token: "€uro", serial: "0001", manufacturer: "Linaro", model: "OP-TEE TA", slotId: 1 },
  ];
  for (const c of cases) {
    const s = formatPkcs11Uri(c);
    assert.ok(isSystemdValidUri(s), s);
    assert.deepEqual(parsePkcs11Uri(s), c);
  }
  assert.equal(formatPkcs11Uri({ token: "lmp", object: "luks" }), "pkcs11:token=lmp;object=luks");
  assert.equal(formatPkcs11Uri({ id: Buffer.from("9d", "hex") }), "pkcs11:id=%9d");
  assert.equal(formatPkcs11Uri({ token: "a b" }), "pkcs11:token=a%20b");
});

test("pin-value is refused, never echoed", () => {
  for (const u of ["pkcs11:token=lmp?pin-value=1234", "pkcs11:token=lmp;pin-value=1234", "pkcs11:token=lmp?PIN-VALUE=1234"]) {
    assert.throws(() => parsePkcs11Uri(u), (e: unknown) => e instanceof TrustvolError && /pin-value/.test(e.message) && !e.oneLine().includes("1234"));
  }
  assert.equal(redactUri("pkcs11:token=x?pin-value=secret&module-name=y"), "pkcs11:token=x?pin-value=<redacted>&module-name=y");
});

test("malformed URIs are rejected with a usage error", () => {
  const bad = [
    "token=lmp",
    "pkcs11:token",
    "pkcs11:token=a;token=b",
    "pkcs11:token=%zz",
    "pkcs11:token=%4",
    "pkcs11:token=a b",
    "pkcs11:type=secret",
    "pkcs11:slot-id=abc",
    "pkcs11:bogus=1",
    "pkcs11:token=a;module-path=/x",
    "pkcs11:token=a?token=b",
    "pkcs11:token=a?module-name=x&module-path=/y",
    "pkcs11:token=%ff%fe",
    "pkcs11:" + "a".repeat(5000),
  ];
  for (const u of bad) assert.throws(() => parsePkcs11Uri(u), (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE", u);
  // vendor attributes are kept
  const v = parsePkcs11Uri("pkcs11:token=a;x-vendor=1?x-q=2");
  assert.deepEqual(v.vendor, [{ name: "x-vendor", value: "1", query: false }, { name: "x-q", value: "2", query: true }]);
  assert.equal(formatPkcs11Uri(v), "pkcs11:token=a;x-vendor=1?x-q=2");
});

test("systemd's URI charset check", () => {
  assert.ok(isSystemdValidUri("pkcs11:token=lmp;object=luks"));
  assert.ok(isSystemdValidUri("pkcs11:model=PKCS%2315%20emulated;token=x"));
  assert.ok(!isSystemdValidUri("pkcs11:token=a b"));
  assert.ok(!isSystemdValidUri("pkcs11:token=a.b"));
  assert.ok(!isSystemdValidUri("pkcs11:"));
});

test("p11-kit discovery: package/admin/user precedence, relative module paths, disabling", () => {
  const { dir, cleanup } = tmpDir();
  try {
    const pkg = join(dir, "share"), etc = join(dir, "etc"), user = join(dir, "user"), mods = join(dir, "lib");
    for (const d of [pkg, etc, user, mods]) mkdirSync(d);
    writeFileSync(join(mods, "libfoo.so"), "");
    writeFileSync(join(pkg, "foo.module"), "# comment\nmodule: libfoo.so\npriority: 5\n");
    writeFileSync(join(pkg, "bar.module"), "module: /opt/bar.so\n");
    writeFileSync(join(pkg, "trust.module"), "module: /x/trust.so\ntrust-policy: yes\ndisable-in: p11-kit-proxy\n");
    writeFileSync(join(etc, "bar.module"), "module: /opt/bar2.so\ncritical: yes\n");
    writeFileSync(join(user, "foo.module"), "# disabled by the user\n");
    writeFileSync(join(user, "notamodule.txt"), "module: /x\n");
    const found = discoverP11KitModules({ dirs: [pkg, etc, user], moduleDirs: [mods] });
    assert.deepEqual(found.map((m) => [m.name, m.path, m.critical]), [
      ["bar", "/opt/bar2.so", true],
      ["trust", "/x/trust.so", false],
    ]);
    const again = discoverP11KitModules({ dirs: [pkg, etc], moduleDirs: [mods] });
    assert.equal(again[0]!.name, "foo"); // priority 5 first
    assert.equal(again[0]!.path, join(mods, "libfoo.so"));
    assert.equal(findModuleByName("libfoo.so", again)?.name, "foo");
    assert.deepEqual(candidateModules(again).map((m) => m.name), ["foo"]); // bar's library is absent, trust is skipped
  } finally {
    cleanup();
  }
});

test("p11-kit discovery finds SoftHSM's registration on this host", (t) => {
  if (!existsSync("/usr/share/p11-kit/modules/softhsm2.module")) return t.skip("softhsm2 not registered with p11-kit");
  const m = findModuleByName("softhsm2");
  assert.ok(m, "softhsm2 registration");
  assert.match(m.path, /libsofthsm2\.so$/);
  assert.ok(existsSync(m.path));
  assert.ok(candidateModules().some((c) => c.name === "softhsm2"));
  assert.ok(!candidateModules().some((c) => c.trustPolicy));
});

test("PIN sources: file (newline trimmed), buffer copy, pin-source URIs; empty refused", () => {
  const { dir, cleanup } = tmpDir();
  try {
    const f = join(dir, "pin");
    writeFileSync(f, "1234\n", { mode: 0o600 });
    assert.equal(readPin({ kind: "file", path: f }).toString(), "1234");
    writeFileSync(f, "12 34\r\n");
    assert.equal(readPin({ kind: "file", path: f }).toString(), "12 34");
    const src = Buffer.from("9999");
    const got = readPin({ kind: "buffer", pin: src });
    got.fill(0);
    assert.equal(src.toString(), "9999", "readPin returns a copy the caller may wipe");
    writeFileSync(f, "");
    assert.throws(() => readPin({ kind: "file", path: f }), /empty PIN/);
    assert.throws(() => readPin({ kind: "file", path: join(dir, "nope") }), (e: unknown) => e instanceof TrustvolError && e.code === "ENOENT");
    assert.deepEqual(pinSourceFromUri("file:/run/pin"), { kind: "file", path: "/run/pin" });
    assert.deepEqual(pinSourceFromUri("file:///run/pin"), { kind: "file", path: "/run/pin" });
    assert.deepEqual(pinSourceFromUri("/run/pin"), { kind: "file", path: "/run/pin" });
    assert.throws(() => pinSourceFromUri("|/bin/echo 1234"), /unsupported pin-source/);
  } finally {
    cleanup();
  }
});

test("PIN from stdin (child process): read to EOF, one newline trimmed, never echoed", () => {
  const mod = fileURLToPath(new URL("../../../src/trust/pkcs11/pin.ts", import.meta.url));
  const code = `import(${JSON.stringify(mod)}).then((m) => { const b = m.readPin({ kind: "stdin" }); process.stdout.write(String(b.length) + ":" + b.subarray(0, 2).toString("hex")); b.fill(0); })`;
  const r = run(process.execPath, ["--import", "tsx", "-e", code], { input: "ab34\n", timeoutMs: 60_000 });
  assert.equal(r.stdout.toString(), "4:6162");
});
