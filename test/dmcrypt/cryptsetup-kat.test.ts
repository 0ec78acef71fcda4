// Known-answer sectors made by the real cryptsetup (no root, no device-mapper): `reencrypt --encrypt` of a data
// image with a detached LUKS2 header writes dm-crypt sectors from offset 0, IV sector 0; the volume key comes
// from `luksDump --dump-volume-key`. Our engine must produce the same bytes, and must also open the header's
// keyslot area (aes-xts-plain64, 512-byte sectors, IV from 0) the way cryptsetup does.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, pbkdf2Sync, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync, openSync, readSync, closeSync } from "node:fs";
import { join } from "node:path";
import { createSectorCipher } from "../../src/dmcrypt/index.js";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { wipe } from "../../src/util/secret.js";
import { sectorEngineVariants, withJsXts } from "../helpers/sector-engines.js";

const VARIANTS = sectorEngineVariants();

/** LUKS anti-forensic merge (af type "luks1"): d = H-diffuse(d ⊕ s_i) over all stripes but the last, key = d ⊕ s_last. */
function afMerge(material: Buffer, keyLen: number, stripes: number, hash: string): Buffer {
  const digestLen = createHash(hash).digest().length;
  let d = Buffer.alloc(keyLen);
  for (let i = 0; i < stripes; i++) {
    const s = material.subarray(i * keyLen, (i + 1) * keyLen);
    const x = Buffer.alloc(keyLen);
    for (let j = 0; j < keyLen; j++) x[j] = d[j] ^ s[j];
    if (i === stripes - 1) return x;
    const out = Buffer.alloc(keyLen);
    for (let b = 0, off = 0; off < keyLen; b++, off += digestLen) {
      const len = Math.min(digestLen, keyLen - off);
      const iv = Buffer.alloc(4);
      iv.writeUInt32BE(b);
      createHash(hash).update(iv).update(x.subarray(off, off + len)).digest().copy(out, off, 0, len);
    }
    d = out;
  }
  return d;
}

function readAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, "r");
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

const CASES = [
  { cipher: "aes-xts-plain64", keyBits: 512, sectorSize: 4096 },
  { cipher: "aes-xts-plain64", keyBits: 256, sectorSize: 512 },
  { cipher: "aes-xts-plain64", keyBits: 512, sectorSize: 512 },
  { cipher: "aes-xts-plain64", keyBits: 256, sectorSize: 4096 },
  { cipher: "aes-cbc-essiv:sha256", keyBits: 256, sectorSize: 4096 },
  { cipher: "aes-cbc-essiv:sha256", keyBits: 128, sectorSize: 512 },
  { cipher: "aes-cbc-plain64", keyBits: 256, sectorSize: 512 },
  { cipher: "aes-cbc-plain64", keyBits: 128, sectorSize: 4096 },
  { cipher: "aes-xts-plain", keyBits: 512, sectorSize: 1024 },
  { cipher: "aes-cbc-plain64be", keyBits: 192, sectorSize: 2048 },
];

for (const k of CASES) {
  test(`cryptsetup reencrypt --encrypt ${k.cipher} ${k.keyBits}-bit, ${k.sectorSize}-byte sectors: same sectors, same keyslot`, (t) => {
    if (!needTools(t, "cryptsetup")) return;
    const { dir, cleanup } = tmpDir("trustvol-dmcrypt-");
    let vk: Buffer | undefined;
    let areaKey: Buffer | undefined;
    try {
      const plain = randomBytes(256 * 1024);
      const data = join(dir, "data.img");
      const hdr = join(dir, "hdr.img");
      const pw = join(dir, "pw");
      const vkFile = join(dir, "vk");
      const passphrase = randomBytes(18).toString("base64");
      writeFileSync(data, plain);
      writeFileSync(pw, passphrase, { mode: 0o600 });
      run("cryptsetup", [
        "reencrypt", "-q", "--encrypt", "--force-offline-reencrypt", "--header", hdr,
        "--cipher", k.cipher, "--key-size", String(k.keyBits), "--sector-size", String(k.sectorSize),
        "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", pw, data,
      ]);
      run("cryptsetup", ["luksDump", "-q", "--dump-volume-key", "--volume-key-file", vkFile, "--key-file", pw, hdr]);
      vk = readFileSync(vkFile);
      assert.equal(vk.length, k.keyBits / 8);
      const meta = JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", hdr]).stdout.toString()) as {
        segments: Record<string, { offset: string; iv_tweak: string; encryption: string; sector_size: number }>;
        keyslots: Record<string, { key_size: number; af: { stripes: number; hash: string }; area: { offset: string; size: string; encryption: string; key_size: number }; kdf: { type: string; hash: string; iterations: number; salt: string } }>;
      };
      const seg = meta.segments["0"];
      assert.equal(seg.encryption, k.cipher);
      assert.equal(seg.sector_size, k.sectorSize);
      assert.equal(seg.offset, "0");
      assert.equal(seg.iv_tweak, "0");
      const onDisk = readFileSync(data);

      // the keyslot area, decrypted with the passphrase-derived key, AF-merges to the volume key
      const ks = meta.keyslots["0"];
      assert.equal(ks.kdf.type, "pbkdf2");
      areaKey = pbkdf2Sync(passphrase, Buffer.from(ks.kdf.salt, "base64"), ks.kdf.iterations, ks.area.key_size, ks.kdf.hash);
      const area = readAt(hdr, Number(ks.area.offset), Number(ks.area.size));

      const volumeKey = vk;
      const slotKey = areaKey;
      for (const v of VARIANTS) {
        const backend = v.name;
        const c = withJsXts(v, () => createSectorCipher({ cipher: seg.encryption, key: volumeKey, sectorSize: seg.sector_size, ivOffset: BigInt(seg.iv_tweak), backend: v.backend }));
        const mine = Buffer.from(plain);
        c.encrypt(mine, 0);
        for (let s = 0; s < plain.length / k.sectorSize; s++) {
          const a = mine.subarray(s * k.sectorSize, (s + 1) * k.sectorSize);
          const b = onDisk.subarray(s * k.sectorSize, (s + 1) * k.sectorSize);
          if (!a.equals(b)) assert.fail(`${backend}: sector ${s} differs from cryptsetup's`);
        }
        const back = Buffer.from(onDisk);
        c.decrypt(back, 0);
        assert.ok(back.equals(plain), `${backend}: decrypting cryptsetup's sectors gives the plaintext back`);
        c.dispose();

        const kc = withJsXts(v, () => createSectorCipher({ cipher: ks.area.encryption, key: slotKey, sectorSize: 512, backend: v.backend }));
        const material = Buffer.from(area);
        kc.decrypt(material, 0);
        kc.dispose();
        const merged = afMerge(material, ks.key_size, ks.af.stripes, ks.af.hash);
        assert.ok(merged.equals(vk), `${backend}: keyslot area decrypts to the volume key`);
        wipe(material, merged);
      }
    } finally {
      wipe(vk, areaKey);
      cleanup();
    }
  });
}
