// Issue 10: trustvol's refusals of the states a cut cryptsetup run leaves before its first re-encryption commit name a
// way on ("move the header file aside", "restore the header from it"). A way on must never lose a key or data when the
// state only looks like such a cut: another device's header, a header backup, a blank device. Real cryptsetup, real
// files; each refusal is one line, non-zero, nothing changed — and never advises deleting anything.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { needTools, run } from "../helpers/tools.js";
import { FAST_PBKDF, MiB, cs, fastTmpDir, needCliEngine, shaFile, tv, writePlain } from "../helpers/reencrypt.js";

function refusedUnchanged(args: string[], files: string[], what: string): string {
  const before = files.map((f) => shaFile(f));
  const r = tv(args);
  assert.notEqual(r.status, 0, `${what}: refused`);
  assert.equal(r.stderr.trim().split("\n").length, 1, `${what}: one line: ${r.stderr}`);
  assert.deepEqual(files.map((f) => shaFile(f)), before, `${what}: nothing changed`);
  assert.doesNotMatch(r.stderr, /\bremove\b|\brm\b|delete/i, `${what}: never advises deleting: ${r.stderr}`);
  return r.stderr;
}

test("detached --encrypt with another volume's header over a plain ext4 device: refused, the header kept (moved aside at most)", async (t) => {
  if (!needTools(t, "cryptsetup", "mkfs.ext4") || !needCliEngine(t)) return;
  const { dir, cleanup } = fastTmpDir("trustvol-cut-advice-");
  t.after(cleanup);
  const pw = join(dir, "pw"), a = join(dir, "a.img"), ah = join(dir, "a.hdr"), b = join(dir, "b.img");
  writeFileSync(pw, "pw", { mode: 0o600 });
  writePlain(a, 8 * MiB, 1);
  cs(["luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF, "--header", ah, "--key-file", pw, a]); // a.img is encrypted by a.hdr's key
  writePlain(b, 8 * MiB, 2);
  run("mkfs.ext4", ["-q", "-F", b]);
  const said = refusedUnchanged(["reencrypt", "--encrypt", "-q", "--key-file", pw, "--header", ah, b], [ah, b], "another device's header");
  assert.match(said, /move \S+a\.hdr aside/, said);
});

test("in-place --decrypt: the restore is advised only for the device's own export; a blank device or another volume's backup gets none", async (t) => {
  if (!needTools(t, "cryptsetup", "strace") || !needCliEngine(t)) return;
  const { dir, cleanup } = fastTmpDir("trustvol-cut-advice-");
  t.after(cleanup);
  const pw = join(dir, "pw");
  writeFileSync(pw, "pw", { mode: 0o600 });
  const mk = (name: string, seed: number) => {
    const p = join(dir, name);
    writePlain(p, 24 * MiB, seed);
    cs(["luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF, "--key-file", pw, p]);
    return p;
  };
  const x = mk("x.img", 3), y = mk("y.img", 4);
  const yBak = join(dir, "y.bak");
  cs(["luksHeaderBackup", y, "--header-backup-file", yBak]);
  // x cut by cryptsetup right after its export and its magic wipes (strace: write 1 the export, 2 and 3 the magics)
  const xHdr = join(dir, "x.hdr");
  const k = run("strace", ["-f", "-qq", "-o", "/dev/null", "-e", "trace=write", "-e", "inject=write:signal=SIGKILL:when=4", "cryptsetup", "reencrypt", "--decrypt", "--force-offline-reencrypt", "-q", "--resilience", "checksum", "--hotzone-size", "4M", ...FAST_PBKDF, "--header", xHdr, "--key-file", pw, x], { check: false, cwd: dir });
  assert.notEqual(k.status, 0, "cryptsetup killed");
  // its own export: the restore (nothing else changed on x but the magics)
  const own = refusedUnchanged(["reencrypt", "--decrypt", "-q", "--key-file", pw, "--header", xHdr, x], [x, xHdr], "x's own export");
  assert.match(own, /trustvol header restore --force --file \S+x\.hdr \S+x\.img/, own);
  // another volume's backup on the cut x: no restore (it would put y's header over x)
  const other = refusedUnchanged(["reencrypt", "--decrypt", "-q", "--key-file", pw, "--header", yBak, x], [x, yBak], "y's backup on x");
  assert.doesNotMatch(other, /header restore/, other);
  // a blank device and any backup: no restore either
  const blank = join(dir, "blank.img");
  writeFileSync(blank, Buffer.alloc(24 * MiB));
  const none = refusedUnchanged(["reencrypt", "--decrypt", "-q", "--key-file", pw, "--header", yBak, blank], [blank, yBak], "y's backup on a blank device");
  assert.doesNotMatch(none, /header restore/, none);
  // y's own backup while y still holds that header (a backup, not an export): moved aside at most
  const stale = join(dir, "y-old.bak");
  copyFileSync(yBak, stale);
  cs(["luksAddKey", "-q", ...FAST_PBKDF, "--key-file", pw, "--new-keyfile", pw, y]); // y's header now differs from the backup
  const backup = refusedUnchanged(["reencrypt", "--decrypt", "-q", "--key-file", pw, "--header", stale, y], [y, stale], "y's older backup on y");
  assert.match(backup, /move \S+y-old\.bak aside/, backup);
});
