// Kernel keyring operations against this host's kernel (user, logon, encrypted keys work here; trusted keys do not —
// those are covered in the QEMU tier, test/vm/trusted-keys.slow.test.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { needTools, tmpDir } from "../../helpers/tools.js";
import { TrustvolError } from "../../../src/util/errors.js";
import { loadIoctl } from "../../../src/dm/ioctl.js";
import {
  addKey, describeKey, ensureKeyring, keyId, keyPermMask, linkKey, listKeyring, paddKey, pipeKey, searchKey, setPerm,
  showKeyring, unlinkKey, updateKey, POSSESSOR_ONLY, type KeyctlOptions,
} from "../../../src/trust/kernel/keyring.js";
import {
  createEncryptedKey, loadEncryptedKey, loadEncryptedKeyFile, parseEncryptedBlob, saveEncryptedKeyBlob, changeEncryptedKeyMaster,
} from "../../../src/trust/kernel/encrypted.js";
import { createTrustedKey, detectTrustedSource, parseTrustedBlob, trustedOptionString } from "../../../src/trust/kernel/trusted.js";

/** A keyring of our own under @u, gone after the test; a keyctl wrapper that logs every argv (to prove no secrets there). */
function fixture(t: import("node:test").TestContext) {
  const { dir, cleanup } = tmpDir("trustvol-keyring-");
  const name = `trustvol-test-${randomBytes(6).toString("hex")}`;
  const ring = ensureKeyring(name, "@u");
  const argvLog = join(dir, "argv.log");
  const wrapper = join(dir, "keyctl");
  writeFileSync(wrapper, `#!/bin/sh\nprintf '%s\\n' "$*" >> '${argvLog}'\nexec keyctl "$@"\n`);
  chmodSync(wrapper, 0o755);
  const o: KeyctlOptions = { keyctl: wrapper };
  t.after(() => {
    try {
      unlinkKey(ring, "@u");
    } catch {
      /* already gone */
    }
    cleanup();
  });
  return { dir, name, ring, o, argv: () => readFileSync(argvLog, "utf8") };
}

function hostHasKeyrings(t: import("node:test").TestContext): boolean {
  if (!needTools(t, "keyctl")) return false;
  return true;
}

test("permission masks", () => {
  assert.equal(keyPermMask({ possessor: ["all"], user: ["view"] }), 0x3f010000);
  assert.equal(keyPermMask({ possessor: ["view", "read", "search"], other: ["view"] }), 0x0b000001);
  assert.equal(POSSESSOR_ONLY, 0x3f000000);
});

test("process and thread keyrings are refused (they die with the keyctl process)", () => {
  assert.throws(() => paddKey("user", "x", Buffer.from("y"), "@p" as never), (e: TrustvolError) => e.code === "EUSAGE" && /short-lived/.test(e.message));
});

test("user keys: padd, pipe, search, describe, setperm, link, show, unlink — payload only on stdin", (t) => {
  if (!hostHasKeyrings(t)) return;
  const { ring, name, o, argv } = fixture(t);
  const secret = randomBytes(32);
  const id = paddKey("user", "tv:data", secret, ring, o);
  assert.ok(id > 0);
  const back = pipeKey(id, o);
  assert.deepEqual(back, secret);
  back.fill(0);
  assert.equal(searchKey(ring, "user", "tv:data", undefined, o), id);
  assert.equal(searchKey("@u", "user", "tv:data", undefined, o), id, "found recursively from @u");
  assert.equal(searchKey(ring, "user", "tv:absent", undefined, o), undefined);
  assert.equal(keyId({ keyring: name }, o), ring, "named keyring %:name");
  assert.equal(keyId({ type: "user", description: "tv:data" }, o), id);

  const d = describeKey(id, o);
  assert.equal(d.type, "user");
  assert.equal(d.description, "tv:data");
  assert.equal(d.uid, process.getuid!());
  setPerm(id, keyPermMask({ possessor: ["view", "read", "search", "setattr"] }), o);
  assert.equal(describeKey(id, o).perm, 0x2b000000);

  assert.throws(() => updateKey(id, Buffer.from("replaced"), o), (e: TrustvolError) => e.code === "EPOLICY", "no write permission: refused");
  setPerm(id, keyPermMask({ possessor: ["all"] }), o);
  updateKey(id, Buffer.from("replaced"), o);
  assert.equal(pipeKey(id, o).toString(), "replaced");

  const other = ensureKeyring(`${name}-b`, ring, o);
  assert.equal(ensureKeyring(`${name}-b`, ring, o), other, "ensureKeyring finds the existing one");
  linkKey(id, other, o);
  assert.deepEqual(listKeyring(other, o), [id]);
  const tree = showKeyring(ring, o);
  assert.ok(tree.some((e) => e.id === id && e.type === "user" && e.description === "tv:data"));
  assert.ok(tree.some((e) => e.id === other && e.type === "keyring" && e.depth >= 1));

  unlinkKey(id, other, o);
  assert.deepEqual(listKeyring(other, o), []);
  unlinkKey(id, ring, o);
  assert.equal(searchKey(ring, "user", "tv:data", undefined, o), undefined);
  assert.throws(() => pipeKey({ type: "user", description: "tv:data" }, o), (e: TrustvolError) => e instanceof TrustvolError && e.code === "ENOENT");

  const log = argv();
  assert.ok(log.includes("padd user tv:data"), "keyctl was called through the wrapper");
  assert.ok(!log.includes(secret.toString("hex")) && !log.includes(secret.toString("latin1")), "the secret never appears in argv");
  assert.ok(!log.includes("replaced"));
});

test("in-process (native addon): the same operations with no keyctl process, and keyctl(1) sees their result", (t) => {
  if (!hostHasKeyrings(t)) return;
  const a = loadIoctl() as { addKey?: unknown } | null;
  if (typeof a?.addKey !== "function") return t.skip("the native addon is not built");
  const { ring, name, o, dir } = fixture(t);
  const secret = randomBytes(48);
  const path = process.env.PATH;
  process.env.PATH = dir; // no keyctl binary here: any fallback to keyctl(1) fails with "keyctl not found"
  let id: number, lid: number, sub: number;
  try {
    id = paddKey("user", "tv:native", secret, ring);
    const back = pipeKey(id);
    assert.deepEqual(back, secret);
    back.fill(0);
    assert.equal(searchKey(ring, "user", "tv:native"), id);
    assert.equal(searchKey("@u", "user", "tv:native"), id, "found recursively from @u");
    assert.equal(searchKey(ring, "user", "tv:absent"), undefined);
    updateKey(id, Buffer.from("replaced"));
    assert.equal(pipeKey(id).toString(), "replaced");
    assert.equal(addKey("user", "tv:public", "not-secret", ring) > 0, true);
    lid = paddKey("logon", "tv:logon", randomBytes(32), ring);
    assert.throws(() => pipeKey(lid), (e: TrustvolError) => e instanceof TrustvolError && e.code === "EUNSUPPORTED", "logon keys are unreadable");
    sub = ensureKeyring(`${name}-n`, ring);
    assert.equal(ensureKeyring(`${name}-n`, ring), sub, "ensureKeyring finds the existing one");
    linkKey(id, sub);
    setPerm(id, keyPermMask({ possessor: ["view", "read", "search", "setattr"] }));
    assert.throws(() => updateKey(id, Buffer.from("x")), (e: TrustvolError) => e.code === "EPOLICY" && /Permission denied/.test(e.message), "no write permission: refused, keyctl's wording");
    assert.equal(keyId("@u") > 0, true);
    assert.throws(() => paddKey("user", "x", Buffer.from("y"), "@t" as never), (e: TrustvolError) => e.code === "EUSAGE", "@t refused on this path too");
  } finally {
    process.env.PATH = path;
  }
  // keyctl(1) (the options name a binary) sees what the syscalls did
  assert.equal(pipeKey(id, o).toString(), "replaced");
  assert.equal(describeKey(id, o).perm, 0x2b000000);
  assert.deepEqual(listKeyring(sub, o), [id]);
  assert.equal(keyId({ keyring: `${name}-n` }, o), sub);
  unlinkKey(id, sub);
  assert.deepEqual(listKeyring(sub, o), []);
  unlinkKey(id, ring);
  assert.equal(searchKey(ring, "user", "tv:native", undefined, o), undefined);
  assert.throws(() => unlinkKey(id, ring), (e: TrustvolError) => e instanceof TrustvolError && e.code === "ENOENT", "a key no longer linked");
});

test("add with a public payload; logon keys cannot be read back", (t) => {
  if (!hostHasKeyrings(t)) return;
  const { ring, o } = fixture(t);
  const id = addKey("user", "tv:public", "not-secret", ring, o);
  assert.equal(pipeKey(id, o).toString(), "not-secret");
  const lid = paddKey("logon", "tv:logon", randomBytes(32), ring, o);
  assert.throws(() => pipeKey(lid, o), (e: TrustvolError) => e instanceof TrustvolError && e.code === "EUNSUPPORTED");
});

test("encrypted keys with a user master: default and enc32, blob saved 0600, reloaded identical", (t) => {
  if (!hostHasKeyrings(t)) return;
  const { ring, dir, o, argv } = fixture(t);
  const kmk = randomBytes(32);
  paddKey("user", "tv-kmk", kmk, ring, o);
  for (const format of ["default", "enc32"] as const) {
    const desc = `tv-ek-${format}`;
    const id = createEncryptedKey(desc, { master: { type: "user", description: "tv-kmk" }, length: 32, format }, ring, o);
    const file = join(dir, `${format}.blob`);
    saveEncryptedKeyBlob(id, file, o);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const saved = readFileSync(file);
    const b = parseEncryptedBlob(saved);
    assert.equal(b.format, format);
    assert.deepEqual(b.master, { type: "user", description: "tv-kmk" });
    assert.equal(b.length, 32);
    // iv(16) ‖ encrypted data (padded to the AES block) ‖ HMAC-SHA256(32)
    assert.ok(b.hex.length / 2 >= 16 + 32 + 32, `blob payload ${b.hex.length / 2} bytes`);
    unlinkKey(id, ring, o);
    assert.equal(searchKey(ring, "encrypted", desc, undefined, o), undefined);
    const id2 = loadEncryptedKeyFile(desc, file, ring, o);
    assert.deepEqual(pipeKey(id2, o), saved, "the reloaded key exports the same blob");
    assert.ok(!argv().includes(b.hex), "blobs go on stdin, not argv");
  }
  assert.ok(!argv().includes(kmk.toString("hex")));
});

test("encrypted keys: wrong or missing master, bad blob, master change", (t) => {
  if (!hostHasKeyrings(t)) return;
  const { ring, o } = fixture(t);
  paddKey("user", "tv-kmk-a", randomBytes(32), ring, o);
  const id = createEncryptedKey("tv-ek", { master: { type: "user", description: "tv-kmk-a" }, length: 64 }, ring, o);
  const blob = pipeKey(id, o);
  unlinkKey(id, ring, o);
  // a different key under the same master name: the HMAC check fails
  const masterId = searchKey(ring, "user", "tv-kmk-a", undefined, o)!;
  updateKey(masterId, randomBytes(32), o);
  assert.throws(() => loadEncryptedKey("tv-ek", blob, ring, o), (e: TrustvolError) => e instanceof TrustvolError && /tv-kmk-a/.test(e.hint ?? ""));
  unlinkKey(masterId, ring, o);
  assert.throws(() => loadEncryptedKey("tv-ek", blob, ring, o), (e: TrustvolError) => e instanceof TrustvolError && ["ENOKEY", "EUSAGE"].includes(e.code));
  assert.throws(() => loadEncryptedKey("tv-ek", "garbage", ring, o), (e: TrustvolError) => e.code === "ECORRUPT");
  assert.throws(() => createEncryptedKey("x", { master: { type: "user", description: "m" }, length: 16 }, ring, o), (e: TrustvolError) => e.code === "EUSAGE");
  assert.throws(() => createEncryptedKey("x", { master: { type: "user", description: "m" }, length: 64, format: "enc32" }, ring, o), (e: TrustvolError) => e.code === "EUSAGE");

  paddKey("user", "tv-kmk-b", randomBytes(32), ring, o);
  paddKey("user", "tv-kmk-c", randomBytes(32), ring, o);
  const id3 = createEncryptedKey("tv-ek3", { master: { type: "user", description: "tv-kmk-b" }, length: 32 }, ring, o);
  changeEncryptedKeyMaster(id3, { type: "user", description: "tv-kmk-c" }, o);
  assert.equal(parseEncryptedBlob(pipeKey(id3, o)).master.description, "tv-kmk-c");
});

test("trusted keys on a kernel without them: a clear refusal", (t) => {
  if (!hostHasKeyrings(t)) return;
  if (detectTrustedSource().source) return t.skip("this host has a trust source");
  const { ring, o } = fixture(t);
  assert.throws(
    () => createTrustedKey("tv-tk", 32, { keyhandle: 0x81000001 }, ring, { source: "tpm", keyctl: o }),
    (e: TrustvolError) => e instanceof TrustvolError && e.code === "EUNSUPPORTED" && /trusted keys are not available/.test(e.message) && /CONFIG_TRUSTED_KEYS/.test(e.hint ?? ""),
  );
});

test("trusted key options are validated per source", () => {
  assert.equal(trustedOptionString("tpm", { keyhandle: 0x81000001, hash: "sha256", policydigest: Buffer.alloc(32, 0xab), migratable: false }, "new"),
    ` keyhandle=0x81000001 hash=sha256 policydigest=${"ab".repeat(32)} migratable=0`);
  assert.equal(trustedOptionString("tpm", { keyhandle: 0x81000001, hash: "sha256", policydigest: Buffer.alloc(32) }, "load"), " keyhandle=0x81000001");
  assert.throws(() => trustedOptionString("tpm", {}, "new"), /need keyhandle/);
  assert.throws(() => trustedOptionString("tpm", { keyhandle: 1, pcrinfo: Buffer.alloc(4) }, "new"), /TPM 1.2 only/);
  assert.throws(() => trustedOptionString("tpm", { keyhandle: 1, hash: "sha256", policydigest: Buffer.alloc(20) }, "new"), /needs 32/);
  assert.throws(() => trustedOptionString("tpm", { keyhandle: 1, keyauth: Buffer.alloc(5) }, "new"), /20 bytes/);
  assert.equal(trustedOptionString("tpm", { pcrinfo: Buffer.from([1, 2]), pcrlock: 5 }, "new", 1), " pcrinfo=0102 pcrlock=5");
  assert.throws(() => trustedOptionString("tpm", { keyhandle: 1, hash: "sha256" }, "new", 1), /TPM 2.0 option/);
  for (const s of ["tee", "caam", "dcp"] as const) {
    assert.equal(trustedOptionString(s, {}, "new"), "");
    assert.throws(() => trustedOptionString(s, { keyhandle: 0x81000001 }, "new"), /takes no key options/);
  }
});

test("trusted blobs: hex text only", () => {
  assert.equal(parseTrustedBlob("  AB01\n"), "ab01");
  assert.throws(() => parseTrustedBlob("xyz"), (e: TrustvolError) => e.code === "ECORRUPT");
  assert.throws(() => parseTrustedBlob("abc"), (e: TrustvolError) => e.code === "ECORRUPT");
});

test("trust source detection: sysfs parameter, command line, then devices in the kernel's order", (t) => {
  const { dir, cleanup } = tmpDir("trustvol-sysfs-");
  t.after(cleanup);
  const mk = (rel: string, content?: string) => {
    const p = join(dir, rel);
    mkdirSync(content === undefined ? p : join(p, ".."), { recursive: true });
    if (content !== undefined) writeFileSync(p, content);
  };
  assert.deepEqual(detectTrustedSource(dir), { source: undefined, how: "none" });
  mk("sys/bus/platform/drivers/caam_jr/30901000.jr");
  assert.deepEqual(detectTrustedSource(dir), { source: "caam", how: "probe" });
  mk("sys/bus/tee/devices/optee-ta-f04a0fe7-1f5d-4b9b-abf7-619b85b4ce8c");
  assert.deepEqual(detectTrustedSource(dir), { source: "tee", how: "probe" });
  mk("sys/class/tpm/tpm0/tpm_version_major", "2\n");
  assert.deepEqual(detectTrustedSource(dir), { source: "tpm", how: "probe", tpmVersion: 2 });
  mk("proc/cmdline", "console=ttyS0 trusted.source=tee quiet\n");
  assert.deepEqual(detectTrustedSource(dir), { source: "tee", how: "cmdline" });
  mk("sys/module/trusted/parameters/source", "caam\n");
  assert.deepEqual(detectTrustedSource(dir), { source: "caam", how: "sysfs" });
});
