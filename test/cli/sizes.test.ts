// Size options (--hotzone-size, --reduce-device-size, ...) read as cryptsetup reads size[units]: bare = bytes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseSize } from "../../src/cli/common.js";
import { TrustvolError } from "../../src/util/errors.js";

test("parseSize: bare numbers are bytes, S sectors, K/M/G binary, KB/MB decimal; garbage refused", () => {
  const p = parseSize("--hotzone-size");
  assert.equal(p("1000000"), 1000000, "a bare number is bytes, not KiB");
  assert.equal(p("33554432"), 32 << 20);
  assert.equal(p("8S"), 4096);
  assert.equal(p("4K"), 4096);
  assert.equal(p("32M"), 32 << 20);
  assert.equal(p("32MiB"), 32 << 20);
  assert.equal(p("1G"), 1 << 30);
  assert.equal(p("2MB"), 2_000_000);
  assert.throws(() => p("12X"), (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE");
});
