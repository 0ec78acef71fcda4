// `format` only formats an existing image file or block device, like cryptsetup: a missing path, a directory, a FIFO
// or a character device is refused on one line, before any prompt, and nothing is created or written.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, mkdirSync, existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { run, tmpDir, hasTool } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";

test("format refuses a missing path, a directory, a FIFO and a character device; nothing is created", (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const pw = join(dir, "pw");
  writeFileSync(pw, "pw", { mode: 0o600 });
  const fmt = (target: string) => trustvol(["format", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", pw, target]);

  const missing = join(dir, "new.img");
  let r = fmt(missing);
  assert.equal(r.status, 5, r.stderr);
  assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  assert.match(r.stderr, /new\.img does not exist.*truncate -s 64M/);
  assert.ok(!existsSync(missing), "format created the file");

  const d = join(dir, "adir");
  mkdirSync(d);
  r = fmt(d);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /adir is a directory, not an image file or a block device/);
  assert.doesNotMatch(r.stderr, /EISDIR|illegal operation/);
  assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  assert.deepEqual(readdirSync(d), []);

  if (hasTool("mkfifo")) {
    const fifo = join(dir, "fifo");
    run("mkfifo", [fifo]);
    r = fmt(fifo); // would block or stream a header into the pipe if it were opened
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /fifo is a FIFO/);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }

  r = fmt("/dev/null");
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /\/dev\/null is a character device/);
  assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);

  // The same checks guard every other command that opens a volume (read-only ones included).
  r = trustvol(["dump", d]);
  assert.equal(r.status, 2, r.stderr);
  assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  assert.deepEqual(readdirSync(dir).sort(), ["adir", ...(hasTool("mkfifo") ? ["fifo"] : []), "pw"]);

  // An existing image is formatted as before.
  run("truncate", ["-s", "20M", missing]);
  r = fmt(missing);
  assert.equal(r.status, 0, r.stderr);
});
