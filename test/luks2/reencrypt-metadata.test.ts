// Re-encryption metadata against cryptsetup 2.6.1's own --init-only headers (vectors/reencrypt-init-2.6.1.json:
// metadata + the test volume keys): the re-encryption digest verifies byte-exactly, any field it covers breaks it,
// the state loads with the right mode/direction/resilience, and the hot/post segment sets follow cryptsetup's rules.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import type { Luks2Metadata } from "../../src/luks2/metadata.js";
import { validateMetadata } from "../../src/luks2/metadata.js";
import { verifyReencryptDigest, assignReencryptDigest, reencryptDigestIds } from "../../src/luks2/reencrypt-digest.js";
import { loadReencryptState, hotMetadata, postMetadata, finalMetadata, nextHotzone, reencryptStatus, checkSegmentsOnDevice } from "../../src/luks2/reencrypt-metadata.js";
import { dataSegments, segmentByFlag, digestsOfSegment } from "../../src/luks2/segment.js";

type Vec = { keys: Record<string, string>; metadata: Luks2Metadata };
const vectors = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), "vectors", "reencrypt-init-2.6.1.json"), "utf8")) as Record<string, Vec>;
const keysOf = (v: Vec) => new Map(Object.entries(v.keys).map(([d, k]) => [Number(d), Buffer.from(k, "hex")]));

test("cryptsetup's re-encryption digests verify byte-exactly (checksum, journal, encrypt --header, datashift, decrypt backward)", () => {
  for (const [name, v] of Object.entries(vectors)) {
    validateMetadata(structuredClone(v.metadata), Number(v.metadata.config.json_size) + 4096);
    assert.ok(verifyReencryptDigest(v.metadata, keysOf(v)), name);
    assert.equal(reencryptStatus(v.metadata), "clean", name);
  }
});

test("every field the digest covers breaks it when changed; a wrong key breaks it", () => {
  const v = vectors["reencrypt-checksum"]!;
  const rk = Object.keys(v.metadata.keyslots).find((k) => v.metadata.keyslots[k]!.type === "reencrypt")!;
  const edits: ((m: Luks2Metadata) => void)[] = [
    (m) => ((m.keyslots[rk] as Record<string, unknown>).direction = "backward"),
    (m) => ((m.keyslots[rk] as Record<string, unknown>).mode = "decrypt"),
    (m) => (m.keyslots[rk]!.area.type = "journal"),
    (m) => (m.keyslots[rk]!.area.offset = String(Number(m.keyslots[rk]!.area.offset) + 4096)),
    (m) => (m.keyslots[rk]!.area.size = String(Number(m.keyslots[rk]!.area.size) - 4096)),
    (m) => (m.keyslots[rk]!.area.hash = "sha1"),
    (m) => (m.keyslots[rk]!.area.sector_size = 512),
    (m) => (segByFlag(m, "backup-final").sector_size = 512),
    (m) => (segByFlag(m, "backup-final").encryption = "aes-cbc-essiv:sha256"),
    (m) => (segByFlag(m, "backup-previous").offset = "0"),
    (m) => (segByFlag(m, "backup-previous").iv_tweak = "8"),
    (m) => (segByFlag(m, "backup-previous").size = "4096"),
  ];
  for (const [i, edit] of edits.entries()) {
    const m = structuredClone(v.metadata);
    edit(m);
    assert.equal(verifyReencryptDigest(m, keysOf(v)), false, `edit ${i}`);
  }
  const bad = keysOf(v);
  bad.get(reencryptDigestIds(v.metadata).new)![0]! ^= 1;
  assert.equal(verifyReencryptDigest(v.metadata, bad), false);
  // Our own digest over the same metadata verifies, and replaces the old one (one digest bound to the keyslot).
  const m = structuredClone(v.metadata);
  assignReencryptDigest(m, keysOf(v));
  assert.ok(verifyReencryptDigest(m, keysOf(v)));
  assert.equal(Object.values(m.digests).filter((d) => d.keyslots.includes(rk)).length, 1);
});

function segByFlag(m: Luks2Metadata, flag: string): Record<string, unknown> {
  return Object.values(m.segments).find((s) => (s.flags ?? []).includes(flag)) as Record<string, unknown>;
}

test("state: mode, direction, resilience and digests as cryptsetup wrote them", () => {
  const want: Record<string, [string, string, string]> = {
    "reencrypt-checksum": ["reencrypt", "forward", "checksum"],
    "reencrypt-journal": ["reencrypt", "forward", "journal"],
    "encrypt-header": ["encrypt", "forward", "checksum"],
    "encrypt-datashift": ["encrypt", "backward", "datashift"],
    "decrypt-header-backward": ["decrypt", "backward", "checksum"],
  };
  for (const [name, v] of Object.entries(vectors)) {
    const st = loadReencryptState(v.metadata);
    assert.deepEqual([st.mode, st.direction, st.resilience], want[name], name);
    assert.equal(st.digestOld >= 0, st.mode !== "encrypt", name);
    assert.equal(st.digestNew >= 0, st.mode !== "decrypt", name);
  }
});

test("hot and post segments (forward key rotation): in-reencryption hotzone bound to both digests, backups re-appended", () => {
  const v = vectors["reencrypt-checksum"]!;
  const st = loadReencryptState(v.metadata);
  const dev = 64 << 20, MiB = 1 << 20;
  const hot = hotMetadata(v.metadata, st, 0, 4 * MiB, dev);
  const segs = dataSegments(hot);
  assert.deepEqual(segs.map((s) => [s.offset, s.size, s.flags]), [[16 * MiB, 4 * MiB, ["in-reencryption"]], [20 * MiB, null, []]]);
  assert.deepEqual(digestsOfSegment(hot, 0), [st.digestOld, st.digestNew].sort());
  assert.deepEqual(digestsOfSegment(hot, 1), [st.digestOld]);
  assert.equal(segByFlag(hot, "backup-previous") !== undefined && segmentByFlag(hot, "backup-final")?.id, 3);
  assert.equal(segs[1]!.ivTweak, BigInt((4 * MiB) / 512));
  const post = postMetadata(hot, st, 0, 4 * MiB, dev);
  assert.deepEqual(dataSegments(post).map((s) => [s.offset, s.size]), [[16 * MiB, 4 * MiB], [20 * MiB, null]]);
  assert.deepEqual(nextHotzone(post, st, dev, 8 * MiB), { off: 4 * MiB, len: 8 * MiB });
  const last = postMetadata(post, st, 4 * MiB, dev - 4 * MiB, dev);
  assert.deepEqual(dataSegments(last).map((s) => [s.offset, s.size]), [[16 * MiB, null]]);
  assert.equal(nextHotzone(last, st, dev, 8 * MiB), null, "a run stopped after its last hotzone is recognised as done");
  const fin = finalMetadata(last, st).metadata;
  assert.deepEqual(Object.keys(fin.segments), ["0"]);
  assert.equal(fin.config.requirements, undefined);
  assert.ok(Object.values(fin.keyslots).every((k) => k.type === "luks2"));
  validateMetadata(structuredClone(fin), Number(fin.config.json_size) + 4096);
});

test("backward direction (cryptsetup's --decrypt --header): hotzones from the end", () => {
  const v = vectors["decrypt-header-backward"]!;
  const st = loadReencryptState(v.metadata);
  const dev = 3 << 20;
  const hz = nextHotzone(v.metadata, st, dev, 1 << 20)!;
  assert.deepEqual(hz, { off: 2 << 20, len: 1 << 20 });
  const hot = hotMetadata(v.metadata, st, hz.off, hz.len, dev);
  assert.deepEqual(dataSegments(hot).map((s) => [s.type, s.offset, s.size, s.flags]), [["crypt", 0, 2 << 20, []], ["linear", 2 << 20, 1 << 20, ["in-reencryption"]]]);
  const post = postMetadata(hot, st, hz.off, hz.len, dev);
  assert.deepEqual(nextHotzone(post, st, dev, 1 << 20), { off: 1 << 20, len: 1 << 20 });
});

test("hostile re-encryption metadata cryptsetup refuses at load is refused at load (validateMetadata), each with its reason", () => {
  const v = vectors["reencrypt-checksum"]!;
  const load = (m: Luks2Metadata) => validateMetadata(m, Number(m.config.json_size) + 4096);
  load(structuredClone(v.metadata));
  const cases: [string, (m: Luks2Metadata) => void, RegExp][] = [
    ["two re-encryption flags", (m) => m.config.requirements!.mandatory!.push("online-reencrypt-v3"), /more than one re-encryption requirement flag/],
    ["a reencrypt keyslot without its flag", (m) => (m.config.requirements!.mandatory = ["x-other"]), /without a re-encryption requirement flag/],
    ["a gap in the segment ids", (m) => ((m.segments["5"] = m.segments["2"]!), delete m.segments["2"], (m.digests["1"]!.segments = ["5"])), /segment ids skip 2/],
    ["only backups", (m) => ([m.segments["0"], m.segments["1"]] = [m.segments["1"]!, m.segments["0"]!]), /no data segment, only backup segments/],
    ["a data segment after a backup", (m) => ((m.segments["3"] = { ...m.segments["0"]!, offset: String(17 << 20), iv_tweak: String(2048) }), (m.segments["0"]!.size = String(1 << 20)), m.digests["0"]!.segments.push("3")), /data segment 3 comes after backup segment 1/],
    ["a linear segment size not a multiple of 512", (m) => (m.segments["0"] = { type: "linear", offset: "16777216", size: "1000" } as never), /size is not a multiple of 512/],
    ["a crypt backup no digest lists", (m) => (m.digests["1"]!.segments = []), /segment 2 is not assigned to any digest/],
    ["a data segment of neither kind", (m) => (m.segments["0"]!.encryption = "aes-cbc-essiv:sha256"), /matches neither the previous nor the final segment/],
    ["a hotzone not of the final kind", (m) => ((m.segments["0"]!.flags = ["in-reencryption"]), (m.segments["0"]!.sector_size = 512)), /matches neither/],
  ];
  for (const [what, edit, says] of cases) {
    const m = structuredClone(v.metadata);
    edit(m);
    assert.throws(() => load(m), says, what);
  }
});

test("hostile re-encryption state refused before any write (loadReencryptState): IV tweaks, backup flags, the data shift's layout", () => {
  const rot = vectors["reencrypt-checksum"]!.metadata;
  const MiB = 1 << 20;
  const refuse = (m: Luks2Metadata, says: RegExp, what: string) => assert.throws(() => loadReencryptState(m), says, what);
  let m = structuredClone(rot);
  m.segments["0"]!.iv_tweak = "8";
  refuse(m, /iv_tweak 8 does not follow from its offset/, "iv_tweak of a data segment changed");
  m = structuredClone(rot);
  m.segments["1"]!.flags = ["backup-previous", "in-reencryption"];
  refuse(m, /backup segment 1 is also flagged in-reencryption/, "a backup in re-encryption");
  // a rotation stopped after 4 MiB: its segments are consistent, their IV tweaks too
  const st = loadReencryptState(rot);
  const post = postMetadata(hotMetadata(rot, st, 0, 4 * MiB, 64 * MiB), st, 0, 4 * MiB, 64 * MiB);
  loadReencryptState(post);
  checkSegmentsOnDevice(post, 64 * MiB, "dev");
  assert.throws(() => checkSegmentsOnDevice(post, 20 * MiB - 512, "dev"), /dev \(20971008 bytes\) is too small for data segment 0, which ends at 20971520/, "a progress past the device's end");
  // the data shift (cryptsetup's --init-only vector): moved copy 8 MiB at 24 MiB, shift 16 MiB
  const shift = vectors["encrypt-datashift"]!.metadata;
  const sst = loadReencryptState(shift);
  // its data (8 MiB) is shorter than the shift: one hotzone, the shift long, cut inside (review, session 16)
  assert.equal(loadReencryptState(hotMetadata(shift, sst, 0, 16 * MiB, 48 * MiB)).status, "crash");
  m = structuredClone(shift);
  m.segments["0"]!.offset = String(25 * MiB);
  m.segments["0"]!.size = String(7 * MiB);
  refuse(m, /segment 0 is not where the data shift left plain data 0/, "the moved copy's segment moved");
  m = structuredClone(shift);
  m.segments["0"]!.size = String(4 * MiB);
  refuse(m, /segment 0 is not where the data shift left plain data 0|cover/, "the moved copy's segment shortened");
  m = structuredClone(shift);
  m.segments["1"]!.offset = String(20 * MiB);
  refuse(m, /moved copy does not fit the shift/, "the moved copy inside the encrypted data's place");
});
