// `dump DEVICE [--json]` skips commander at boot (src/cli/run.ts): it must print exactly what the commander path
// prints (`dump -- DEVICE` goes through commander) — same stdout, stderr and exit status, success or failure.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { hasTool, run, tmpDir } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";

test("dump's fast path and the commander path print the same (LUKS2, LUKS1, --json, missing, not LUKS)", async (t) => {
  const { dir, cleanup } = tmpDir("trustvol-dumpfast-");
  t.after(cleanup);
  const f = (n: string) => join(dir, n);
  writeFileSync(f("pw"), "pw", { mode: 0o600 });
  run("truncate", ["-s", "20M", f("v2.img")]);
  assert.equal(trustvol(["format", f("v2.img"), "--key-file", f("pw"), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "-q"]).status, 0);
  writeFileSync(f("plain.img"), Buffer.alloc(1 << 20));
  const devices = [f("v2.img"), f("missing.img"), f("plain.img")];
  if (hasTool("cryptsetup")) {
    run("truncate", ["-s", "4M", f("v1.img")]);
    run("cryptsetup", ["luksFormat", "-q", "--type", "luks1", "--pbkdf-force-iterations", "1000", "--key-file", f("pw"), f("v1.img")]);
    devices.push(f("v1.img"));
  }
  for (const d of devices) {
    for (const json of [[], ["--json"]]) {
      const fast = trustvol(["dump", d, ...json]);
      const slow = trustvol(["dump", ...json, "--", d]);
      assert.deepEqual(fast, slow, `dump ${d} ${json.join(" ")}`);
      if (d.endsWith("v2.img") || d.endsWith("v1.img")) assert.equal(fast.status, 0, fast.stderr);
      if (d.endsWith("v1.img") && json.length) assert.equal(JSON.parse(fast.stdout).luks_version, 1);
      // LUKS1's text is cryptsetup's, byte for byte (the device as named, the salts in two lines)
      if (d.endsWith("v1.img") && !json.length) assert.equal(fast.stdout, run("cryptsetup", ["luksDump", d]).stdout.toString());
    }
  }
});
