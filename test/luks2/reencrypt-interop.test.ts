// Re-encryption against cryptsetup 2.6.1, both ways, on small image files: its --init-only headers verify with our
// digest code and we finish them; ours are resumed by `cryptsetup reencrypt --resume-only`; a run of ours cut by a
// power loss is repaired and finished by cryptsetup; dump text equals luksDump. Data is checked with an independent
// sector oracle (cryptsetup's volume key + one XTS decipher per sector).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createDecipheriv, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync, copyFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { FileBlockDevice } from "../../src/blockdev/file.js";
import { MemoryBlockDevice } from "../../src/blockdev/memory.js";
import { Luks2Volume } from "../../src/luks2/volume.js";
import { openKeyslotCandidate } from "../../src/luks2/keyslot.js";
import { verifyDigest } from "../../src/luks2/digest.js";
import { verifyReencryptDigest } from "../../src/luks2/reencrypt-digest.js";
import { reencryptStatus } from "../../src/luks2/reencrypt-metadata.js";
import { dumpText } from "../../src/luks2/dump.js";
import { LuksHandle } from "../../src/ops/volume.js";
import { reencrypt } from "../../src/ops/reencrypt.js";
import { PowerCutDevice, PowerCut } from "../helpers/power-cut.js";
import { needTools, run, tmpDir } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";

const PASS = "interop pass";
const P = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
const MiB = 1 << 20;

function cs(args: string[], input = PASS) {
  return run("cryptsetup", args, { input });
}

/** A cryptsetup-formatted image with `dataMiB` of random plaintext written through our crypt view. */
async function csVolume(path: string, dataMiB: number): Promise<Buffer> {
  writeFileSync(path, Buffer.alloc((16 + dataMiB) * MiB));
  cs(["luksFormat", "-q", ...P, "--key-file", "-", path]);
  const h = await LuksHandle.open(path);
  try {
    const { volumeKey } = await h.unlock(Buffer.from(PASS));
    const plain = randomBytes(dataMiB * MiB);
    await h.decrypted(volumeKey).write(plain, 0);
    await h.dataDev.flush();
    return plain;
  } finally {
    await h.close();
  }
}

let vkSeq = 0;
/** Decrypt the data with cryptsetup's idea of the volume key (aes-xts-plain64 only): the independent oracle. */
function oracle(dir: string, path: string, header?: string): Buffer {
  const vkf = join(dir, `vk${++vkSeq}.bin`);
  cs(["luksDump", "-q", "--dump-volume-key", "--volume-key-file", vkf, "--key-file", "-", ...(header ? ["--header", header] : []), path]);
  const key = readFileSync(vkf);
  rmSync(vkf);
  const m = JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", header ?? path]).stdout.toString());
  const seg = m.segments["0"];
  const ss = seg.sector_size as number;
  const img = readFileSync(path);
  const data = img.subarray(Number(seg.offset));
  const out = Buffer.alloc(data.length);
  for (let s = 0; s < data.length / ss; s++) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt((s * ss) / 512) + BigInt(seg.iv_tweak));
    const d = createDecipheriv(`aes-${key.length * 4}-xts`, key, iv);
    d.setAutoPadding(false);
    Buffer.concat([d.update(data.subarray(s * ss, (s + 1) * ss)), d.final()]).copy(out, s * ss);
  }
  return out;
}

test("cryptsetup --init-only headers (checksum, journal, none): digest verifies, dump text identical, trustvol finishes", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  try {
    for (const resilience of ["checksum", "journal", "none"]) {
      const img = join(dir, `${resilience}.img`);
      const plain = await csVolume(img, 4);
      cs(["reencrypt", "--init-only", "--force-offline-reencrypt", "-q", ...P, "--resilience", resilience, "--key-file", "-", img]);
      const dev = await FileBlockDevice.open(img);
      try {
        const v = await Luks2Volume.open(dev);
        assert.equal(dumpText(v), run("cryptsetup", ["luksDump", img]).stdout.toString(), `${resilience}: dump text`);
        const keys = new Map<number, Buffer>();
        for (const [id, ks] of Object.entries(v.metadata.keyslots)) {
          if (ks.type !== "luks2") continue;
          const k = await openKeyslotCandidate(dev, ks, Buffer.from(PASS));
          for (const [d, dg] of Object.entries(v.metadata.digests)) if (dg.keyslots.includes(id) && verifyDigest(dg, k)) keys.set(Number(d), k);
        }
        assert.equal(keys.size, 2);
        assert.ok(verifyReencryptDigest(v.metadata, keys), `${resilience}: cryptsetup's re-encryption digest verifies`);
        await reencrypt(dev, { passphrase: Buffer.from(PASS), resumeOnly: true, hotzoneSize: MiB });
      } finally {
        await dev.close();
      }
      assert.ok(oracle(dir, img).equals(plain), `${resilience}: data under cryptsetup's key`);
      cs(["open", "--test-passphrase", "--key-file", "-", img]);
    }
  } finally {
    cleanup();
  }
});

test("trustvol --init-only (CLI) → cryptsetup --resume-only finishes; trustvol encrypt --header → cryptsetup reads it", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  try {
    const img = join(dir, "v.img");
    const plain = await csVolume(img, 4);
    const pf = join(dir, "pass");
    writeFileSync(pf, PASS, { mode: 0o600 });
    const r = await trustvolInProcess(["reencrypt", img, "--init-only", "--key-file", pf, ...P, "--resilience", "journal"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(run("cryptsetup", ["luksDump", img]).stdout.toString(), dumpText(await Luks2Volume.open(await FileBlockDevice.open(img, { readOnly: true }))));
    cs(["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", "-", img]);
    assert.ok(oracle(dir, img).equals(plain));

    const data = join(dir, "plain.img");
    const hdr = join(dir, "plain.hdr");
    const p2 = randomBytes(2 * MiB);
    writeFileSync(data, p2);
    const e = await trustvolInProcess(["reencrypt", "--encrypt", data, "--header", hdr, "--key-file", pf, ...P, "--hotzone-size", "512K"]);
    assert.equal(e.status, 0, e.stderr);
    cs(["open", "--test-passphrase", "--header", hdr, "--key-file", "-", data]);
    assert.ok(oracle(dir, data, hdr).equals(p2));
  } finally {
    cleanup();
  }
});

test("cryptsetup --encrypt / --decrypt --header --init-only → trustvol finishes", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  try {
    const data = join(dir, "d.img");
    const hdr = join(dir, "d.hdr");
    const plain = randomBytes(3 * MiB);
    writeFileSync(data, plain);
    cs(["reencrypt", "--encrypt", "--init-only", "--header", hdr, "--force-offline-reencrypt", "-q", ...P, "--key-file", "-", data]);
    let dev = await FileBlockDevice.open(data), h = await FileBlockDevice.open(hdr);
    await reencrypt(dev, { mode: "encrypt", header: h, passphrase: Buffer.from(PASS), resumeOnly: true, hotzoneSize: MiB });
    await dev.close();
    await h.close();
    assert.ok(oracle(dir, data, hdr).equals(plain));
    cs(["reencrypt", "--decrypt", "--init-only", "--header", hdr, "--force-offline-reencrypt", "-q", "--key-file", "-", data]);
    dev = await FileBlockDevice.open(data);
    h = await FileBlockDevice.open(hdr);
    await reencrypt(dev, { mode: "decrypt", header: h, passphrase: Buffer.from(PASS), resumeOnly: true, hotzoneSize: MiB });
    await dev.close();
    await h.close();
    assert.ok(readFileSync(data).equals(plain));
  } finally {
    cleanup();
  }
});

test("a trustvol run cut by a power loss mid-hotzone: cryptsetup repair + --resume-only finish it (journal)", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  try {
    const img = join(dir, "v.img");
    const plain = await csVolume(img, 2);
    const image = readFileSync(img);
    const opts = { passphrase: Buffer.from(PASS), pbkdf: { type: "pbkdf2" as const, forceIterations: 1000 }, hotzoneSize: 256 * 1024, resilience: "journal" as const };
    // Find a cut that leaves a hotzone in re-encryption (the data write of a middle hotzone).
    let crashed: Buffer | undefined;
    for (let cut = 13; cut < 60 && !crashed; cut++) {
      const pc = new PowerCutDevice(image, { cutAtWrite: cut, unsynced: "random", seed: cut });
      await reencrypt(pc, opts).catch((e) => assert.ok(e instanceof PowerCut));
      const img2 = pc.image();
      const st = reencryptStatus((await Luks2Volume.open(new MemoryBlockDevice(img2))).metadata);
      if (st === "crash") crashed = img2;
    }
    assert.ok(crashed, "a cut point with a hotzone in re-encryption");
    const c = join(dir, "crashed.img");
    const c2 = join(dir, "crashed2.img");
    writeFileSync(c, crashed);
    copyFileSync(c, c2);
    cs(["repair", "-q", "--key-file", "-", c]);
    cs(["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", "-", c]);
    assert.ok(oracle(dir, c).equals(plain), "cryptsetup recovered and finished our crashed run");
    // trustvol's own repair, then cryptsetup resumes: the recovered state is cryptsetup's too.
    const pf = join(dir, "pass");
    writeFileSync(pf, PASS, { mode: 0o600 });
    const r = await trustvolInProcess(["repair", c2, "--key-file", pf]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /Recovered the interrupted re-encryption hotzone/);
    assert.equal(reencryptStatus((await Luks2Volume.open(await FileBlockDevice.open(c2, { readOnly: true }))).metadata), "clean");
    cs(["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", "-", c2]);
    assert.ok(oracle(dir, c2).equals(plain));
  } finally {
    cleanup();
  }
});

/** Keeps a copy of the image after each write to the re-encryption keyslot's area made while a hotzone is in re-encryption. */
class AreaWriteRecorder extends MemoryBlockDevice {
  states: Buffer[] = [];
  override async write(buf: Uint8Array, offset: number): Promise<void> {
    await super.write(buf, offset);
    if (this.states.length >= 2 || offset < 2 * 16384 || offset >= 16 * MiB) return;
    const m = (await Luks2Volume.open(new MemoryBlockDevice(this.data))).metadata;
    const area = Object.values(m.keyslots).find((k) => k.type === "reencrypt")?.area;
    if (area && offset === Number(area.offset) && reencryptStatus(m) === "crash") this.states.push(Buffer.from(this.data));
  }
}

test("checksum mode: the next hotzone's checksums written over a finished hotzone still in re-encryption — cryptsetup and trustvol both keep every block", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  try {
    const img = join(dir, "v.img");
    const plain = await csVolume(img, 2);
    // A hotzone's "done" goes to disk with the next one's "hot": in between, the header says hotzone N is in
    // re-encryption while the area already holds hotzone N+1's checksums and parity (N's data all new and flushed).
    const rec = new AreaWriteRecorder(readFileSync(img));
    await reencrypt(rec, { passphrase: Buffer.from(PASS), pbkdf: { type: "pbkdf2", forceIterations: 1000 }, hotzoneSize: 256 * 1024, resilience: "checksum" });
    assert.equal(rec.states.length, 2, "states with a hotzone in re-encryption and the next one's checksums in the area");
    const pf = join(dir, "pass");
    writeFileSync(pf, PASS, { mode: 0o600 });
    for (const [i, state] of rec.states.entries()) {
      const c = join(dir, `cs${i}.img`), o = join(dir, `tv${i}.img`);
      writeFileSync(c, state);
      writeFileSync(o, state);
      cs(["repair", "-q", "--key-file", "-", c]);
      cs(["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", "-", c]);
      assert.ok(oracle(dir, c).equals(plain), `cryptsetup recovered state ${i} and finished it`);
      const r = await trustvolInProcess(["reencrypt", "--resume-only", "-q", o, "--key-file", pf]);
      assert.equal(r.status, 0, r.stderr);
      assert.ok(oracle(dir, o).equals(plain), `trustvol recovered state ${i} and finished it`);
    }
  } finally {
    cleanup();
  }
});

test("data shift (--encrypt --reduce-device-size): cryptsetup init → trustvol finishes; trustvol init → cryptsetup finishes; same segments", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  try {
    const fs = randomBytes(12 * MiB);
    const a = join(dir, "a.img"), b = join(dir, "b.img");
    writeFileSync(a, Buffer.concat([fs, Buffer.alloc(4 * MiB)]));
    copyFileSync(a, b);
    cs(["reencrypt", "--encrypt", "--init-only", "--reduce-device-size", "4M", "--force-offline-reencrypt", "-q", ...P, "--key-file", "-", a]);
    const pf = join(dir, "pass");
    writeFileSync(pf, PASS, { mode: 0o600 });
    const r = await trustvolInProcess(["reencrypt", "--encrypt", "--init-only", "--reduce-device-size", "4M", b, "--key-file", pf, ...P]);
    assert.equal(r.status, 0, r.stderr);
    const segs = (f: string) => JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", f]).stdout.toString()).segments;
    assert.deepEqual(segs(b), segs(a), "trustvol's data-shift segments are cryptsetup's");
    assert.equal(run("cryptsetup", ["luksDump", b]).stdout.toString().replace(/UUID:.*|Salt:[^]*?AF|Digest:[^]*$/g, ""), dumpText(await Luks2Volume.open(await FileBlockDevice.open(b, { readOnly: true }))).replace(/UUID:.*|Salt:[^]*?AF|Digest:[^]*$/g, ""));
    const dev = await FileBlockDevice.open(a);
    await reencrypt(dev, { mode: "encrypt", passphrase: Buffer.from(PASS), resumeOnly: true });
    await dev.close();
    cs(["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", "-", b]);
    for (const f of [a, b]) assert.ok(oracle(dir, f).subarray(0, fs.length).equals(fs), `${f}: the file system, encrypted in place`);
  } finally {
    cleanup();
  }
});

test("a trustvol data-shift run cut mid-chunk: cryptsetup repair + --resume-only finish it", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  try {
    const fs = randomBytes(6 * MiB);
    const image = Buffer.concat([fs, Buffer.alloc(4 * MiB)]);
    // Every cut that leaves a hotzone in re-encryption (three 2 MiB hotzones; the last one's source is the moved copy)
    const crashed: { cut: number; img: Buffer }[] = [];
    for (let cut = 12; cut < 40; cut++) {
      const pc = new PowerCutDevice(image, { cutAtWrite: cut, unsynced: "random", seed: cut });
      await reencrypt(pc, { mode: "encrypt", passphrase: Buffer.from(PASS), pbkdf: { type: "pbkdf2", forceIterations: 1000 }, reduceDeviceSize: 4 * MiB }).catch((e) => assert.ok(e instanceof PowerCut));
      const img = pc.image();
      if (reencryptStatus((await Luks2Volume.open(new MemoryBlockDevice(img))).metadata) === "crash") crashed.push({ cut, img });
    }
    assert.ok(crashed.length, "a cut point with a data-shift hotzone in re-encryption");
    let resumed = 0;
    for (const { cut, img } of crashed) {
      const c = join(dir, `c${cut}.img`);
      writeFileSync(c, img);
      cs(["repair", "-q", "--key-file", "-", c]);
      // cryptsetup's repair recovers the hotzone; when it was the last one, that finishes the run and nothing is left
      const left = reencryptStatus((await Luks2Volume.open(new MemoryBlockDevice(readFileSync(c)))).metadata) !== "none";
      if (left) {
        cs(["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", "-", c]);
        resumed++;
      }
      assert.ok(oracle(dir, c).subarray(0, fs.length).equals(fs), `cut ${cut}: the plaintext after cryptsetup finished`);
    }
    t.diagnostic(`${crashed.length} crashed states; cryptsetup resumed ${resumed} after repair, repair alone finished the others`);
    assert.ok(resumed > 0, "at least one crash left work for --resume-only");
  } finally {
    cleanup();
  }
});

test("CLI: SIGINT stops at a safe point with exit 7 and one line; --resume-only finishes; progress JSON lines", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { spawn } = await import("node:child_process");
  const { TRUSTVOL_BIN } = await import("../helpers/cli.js");
  const { dir, cleanup } = tmpDir();
  try {
    const img = join(dir, "v.img");
    const plain = await csVolume(img, 8);
    const pf = join(dir, "pass");
    writeFileSync(pf, PASS, { mode: 0o600 });
    const child = spawn(process.execPath, [TRUSTVOL_BIN, "reencrypt", img, "--key-file", pf, ...P, "--hotzone-size", "64K", "--resilience", "journal", "--progress-json"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    child.stderr.on("data", (d) => (err += d));
    const code = await new Promise<number | null>((resolve) => {
      child.stdout.on("data", (d) => {
        out += d;
        if (out.split("\n").length > 3 && !child.killed) child.kill("SIGINT");
      });
      child.on("exit", (c) => resolve(c));
    });
    const lines = out.trim().split("\n").map((l) => JSON.parse(l) as { device_bytes: string; device_size: string });
    assert.ok(lines.length >= 2 && lines.every((l) => Number(l.device_size) === 8 * MiB));
    if (code === 0) t.diagnostic("the run finished before the signal arrived");
    else {
      assert.equal(code, 7, err);
      assert.equal(err.trim().split("\n").length, 1, err);
      assert.match(err, /interrupted at a safe point.*--resume-only/);
      assert.equal(reencryptStatus((await Luks2Volume.open(await FileBlockDevice.open(img, { readOnly: true }))).metadata), "clean");
      const r = await trustvolInProcess(["reencrypt", img, "--resume-only", "--key-file", pf]);
      assert.equal(r.status, 0, r.stderr);
    }
    assert.ok(oracle(dir, img).equals(plain));
  } finally {
    cleanup();
  }
});

test("CLI errors: wrong passphrase, unknown resilience, device too small for the shift, --resume-only on a plain volume: one line, exit code, file unchanged", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  try {
    const img = join(dir, "v.img");
    await csVolume(img, 1);
    const bad = join(dir, "bad");
    writeFileSync(bad, "wrong", { mode: 0o600 });
    const before = readFileSync(img);
    const cases: [string[], number, RegExp][] = [
      [["reencrypt", img, "--key-file", bad, ...P], 3, /no key available/],
      [["reencrypt", img, "--key-file", bad, "--resilience", "magic"], 2, /magic/],
      [["reencrypt", img, "--key-file", bad, "--resume-only"], 2, /not in re-encryption/],
      [["reencrypt", img, "--key-file", bad, "--hotzone-size", "12Q"], 2, /not a size/],
    ];
    for (const [args, code, msg] of cases) {
      const r = await trustvolInProcess(args);
      assert.equal(r.status, code, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, msg);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert.ok(readFileSync(img).equals(before), `${args.join(" ")} changed the file`);
    }
    const small = join(dir, "small.img");
    writeFileSync(small, randomBytes(3 * MiB));
    const snap = readFileSync(small);
    const r = await trustvolInProcess(["reencrypt", "--encrypt", small, "--reduce-device-size", "4M", "--key-file", bad, ...P]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /too small/);
    assert.ok(readFileSync(small).equals(snap));
  } finally {
    cleanup();
  }
});

test("stopped after the last hotzone, before the final commit (cryptsetup's 'datashift tail'): trustvol finishes; cryptsetup 2.6.1 cannot", async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir();
  try {
    const fs = randomBytes(6 * MiB);
    const image = Buffer.concat([fs, Buffer.alloc(4 * MiB)]);
    const opts = { mode: "encrypt" as const, passphrase: Buffer.from(PASS), pbkdf: { type: "pbkdf2" as const, forceIterations: 1000 }, reduceDeviceSize: 4 * MiB };
    const probe = new PowerCutDevice(image);
    await reencrypt(probe, opts);
    let tail: Buffer | undefined;
    for (let cut = probe.writes; cut > 0 && !tail; cut--) {
      const pc = new PowerCutDevice(image, { cutAtWrite: cut, unsynced: "drop" });
      await reencrypt(pc, opts).catch((e) => assert.ok(e instanceof PowerCut));
      const m = (await Luks2Volume.open(new MemoryBlockDevice(pc.image()))).metadata;
      if (reencryptStatus(m) === "clean" && Object.values(m.segments).filter((s) => !(s.flags ?? []).length).every((s) => s.type === "crypt")) tail = pc.image();
    }
    assert.ok(tail, "a cut after the last hotzone's commit");
    const a = join(dir, "a.img"), b = join(dir, "b.img");
    writeFileSync(a, tail);
    writeFileSync(b, tail);
    const r = run("cryptsetup", ["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q", "--key-file", "-", a], { input: PASS, check: false });
    t.diagnostic(`cryptsetup --resume-only: exit ${r.status} ${r.stderr.trim()}`);
    const dev = await FileBlockDevice.open(b);
    await reencrypt(dev, { passphrase: Buffer.from(PASS), resumeOnly: true });
    await dev.close();
    assert.ok(oracle(dir, b).subarray(0, fs.length).equals(fs));
    assert.equal(readFileSync(b).indexOf(fs.subarray(0, 4096)), -1, "the moved plaintext copy is wiped");
  } finally {
    cleanup();
  }
});
