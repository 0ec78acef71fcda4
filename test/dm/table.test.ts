// dm-crypt table construction: keyring references only, LUKS2 offsets, option validation; the ioctl wrapper basics.
import { test } from "node:test";
import assert from "node:assert/strict";
import { openSync, closeSync } from "node:fs";
import { assertKeyringOnly, checkMappingName, cryptTable, kernelCryptoNames, parseCryptTable } from "../../src/dm/table.js";
import { ioc, ioctlAvailable, ioctlRaw, errnoName } from "../../src/dm/ioctl.js";
import { TrustvolError } from "../../src/util/errors.js";

const code = (fn: () => unknown) => {
  try {
    fn();
    return "ok";
  } catch (e) {
    return e instanceof TrustvolError ? e.code : String(e);
  }
};

test("seed 000 / 001 tables, byte for byte", () => {
  assert.equal(
    cryptTable({ sectors: 65536, cipher: "aes-cbc-plain", key: { size: 32, type: "trusted", description: "kmk" }, device: "/dev/loop0", sectorSize: 512 }),
    "0 65536 crypt aes-cbc-plain :32:trusted:kmk 0 /dev/loop0 0",
  );
  assert.equal(
    cryptTable({ sectors: 65536, cipher: "capi:tk(cbc(aes))-plain", key: { size: 36, type: "logon", description: "logkey:" }, device: "/dev/mmcblk2p3" }),
    "0 65536 crypt capi:tk(cbc(aes))-plain :36:logon:logkey: 0 /dev/mmcblk2p3 0",
  );
});

test("LUKS2-style table: offset in 512-byte sectors, iv_tweak, sector_size and flags", () => {
  const t = cryptTable({ sectors: 32768, cipher: "aes-xts-plain64", key: { size: 64, type: "logon", description: "trustvol:abc-1" }, ivOffset: 8n, device: "7:3", offset: 32768n, sectorSize: 4096, allowDiscards: true });
  assert.equal(t, "0 32768 crypt aes-xts-plain64 :64:logon:trustvol:abc-1 8 7:3 32768 2 allow_discards sector_size:4096");
  const p = parseCryptTable(t);
  assert.equal(p.sectorSize, 4096);
  assert.deepEqual(p.keyring, { size: 64, type: "logon", description: "trustvol:abc-1" });
  assert.equal(p.offset, 32768n);
  assert.equal(p.ivOffset, 8n);
  assert.deepEqual(p.options, ["allow_discards", "sector_size:4096"]);
});

test("refusals: bad sizes, descriptions, ciphers, lengths; never an inline key", () => {
  const base = { sectors: 64, cipher: "aes-xts-plain64", key: { size: 64, type: "logon" as const, description: "a:b" }, device: "/dev/loop0" };
  assert.equal(code(() => cryptTable({ ...base, key: { ...base.key, size: 16 } })), "EUSAGE"); // xts needs 32/64
  assert.equal(code(() => cryptTable({ ...base, key: { ...base.key, description: "nocolon" } })), "EUSAGE"); // logon needs prefix:
  assert.equal(code(() => cryptTable({ ...base, key: { ...base.key, description: "a: b" } })), "EUSAGE");
  assert.equal(code(() => cryptTable({ ...base, key: { ...base.key, type: "big_key" as never } })), "EUSAGE");
  assert.equal(code(() => cryptTable({ ...base, cipher: "aes xts" })), "EUSAGE");
  assert.equal(code(() => cryptTable({ ...base, cipher: "capi:tk(cbc(aes)-plain" })), "EUSAGE");
  assert.equal(code(() => cryptTable({ ...base, sectors: 0 })), "EUSAGE");
  assert.equal(code(() => cryptTable({ ...base, sectors: 12, sectorSize: 4096 })), "EUSAGE"); // not a multiple of 8
  assert.equal(code(() => cryptTable({ ...base, sectorSize: 1000 })), "EUSAGE");
  assert.equal(code(() => cryptTable({ ...base, device: "/tmp/my image" })), "EUSAGE");
  assert.equal(code(() => cryptTable({ ...base, cipher: "serpent-xts-plain64" })), "ok"); // the kernel decides
  assert.equal(code(() => assertKeyringOnly("0 64 crypt aes-xts-plain64 " + "ab".repeat(64) + " 0 /dev/loop0 0")), "EUSAGE");
  assert.equal(code(() => assertKeyringOnly("0 64 crypt aes-xts-plain64 :64:logon:a:b 0 /dev/loop0 0")), "ok");
  assert.equal(code(() => checkMappingName("../x")), "EUSAGE");
  assert.equal(code(() => checkMappingName("control")), "EUSAGE");
  assert.equal(code(() => checkMappingName("data_1")), "ok");
});

test("kernel crypto names for diagnosis", () => {
  assert.deepEqual(kernelCryptoNames("aes-xts-plain64"), ["aes", "xts(aes)"]);
  assert.deepEqual(kernelCryptoNames("capi:tk(cbc(aes))-plain"), ["tk(cbc(aes))"]);
  assert.deepEqual(kernelCryptoNames("aes-plain"), ["aes"]);
});

test("ioctl: _IOC encoding and the addon's errno path", (t) => {
  assert.equal(ioc("rw", "K", 0, 56), 0xc0384b00);
  assert.equal(ioc("rw", "K", 1, 56), 0xc0384b01);
  if (!ioctlAvailable()) return t.skip("native addon not built");
  const fd = openSync("/dev/null", "r");
  try {
    const TCGETS = 0x5401;
    const r = ioctlRaw(fd, TCGETS, Buffer.alloc(64));
    assert.equal(errnoName(-r), "ENOTTY");
    assert.throws(() => ioctlRaw(fd, TCGETS, Buffer.alloc(8), [[4, Buffer.alloc(1), 8]]), /out of range/);
  } finally {
    closeSync(fd);
  }
});
