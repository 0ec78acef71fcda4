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
import { checkDecryptShiftDevice } from "../../src/luks2/reencrypt-shift-decrypt.js";
import { allSegments, dataSegments, segmentByFlag, digestsOfSegment } from "../../src/luks2/segment.js";

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

// Decryption with a data shift (cryptsetup 2.6's --decrypt --header NEW_FILE of a device that holds its header):
// cryptsetup 2.6.1's own `--init-only --hotzone-size 4M` header of a 48 MiB volume (data offset = shift 16 MiB, plain
// data T = 32 MiB, moved segment L = 4 MiB < shift), verbatim, and the states its state machine reaches from there.
const DECRYPT_SHIFT_INIT = JSON.parse(
  '{"keyslots":{"0":{"type":"luks2","key_size":64,"af":{"type":"luks1","stripes":4000,"hash":"sha256"},"area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64},"kdf":{"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"MSyuVdGNp4y/tw57dlLhfqZiu/Nn2Fq5fZI1MaypwII="}},"1":{"area":{"offset":"290816","size":"16486400","type":"datashift-checksum","hash":"sha256","sector_size":4096,"shift_size":"16777216"},"type":"reencrypt","key_size":1,"mode":"decrypt","direction":"forward","priority":0}},"tokens":{},' +
    '"segments":{"0":{"type":"crypt","offset":"0","size":"4194304","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096},"1":{"type":"crypt","offset":"20971520","size":"dynamic","iv_tweak":"8192","encryption":"aes-xts-plain64","sector_size":4096},"2":{"type":"crypt","offset":"0","size":"4194304","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096,"flags":["backup-moved-segment"]},"3":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096,"flags":["backup-previous"]},"4":{"type":"linear","offset":"0","size":"dynamic","flags":["backup-final"]}},' +
    '"digests":{"0":{"type":"pbkdf2","keyslots":["0"],"segments":["0","1","2","3"],"hash":"sha256","iterations":1000,"salt":"XaHyPqE+ht8N9AbFDhpx+kPIii5HoIf5ip0H49k+1hY=","digest":"nB40yQUb6H3jRyx80tKUHuJ2mwZDU4uk/0QJfbfr9J4="},"1":{"type":"pbkdf2","keyslots":["1"],"segments":[],"hash":"sha256","iterations":64694,"salt":"qtWIoOGhYRRjJ9vuACOYi/YvUhChBix8LJWadXc+Heo=","digest":"4Tjoq3wkSvMsHNh5+XanT0AV1lszYij0EYvjFPsEILI="}},' +
    '"config":{"json_size":"12288","keyslots_size":"16744448","requirements":{"mandatory":["online-reencrypt-v3"]}}}',
) as Luks2Metadata;
const DS_MiB = 1 << 20, DS_SHIFT = 16 * DS_MiB, DS_T = 32 * DS_MiB, DS_DEV = DS_SHIFT + DS_T;
const segShape = (m: Luks2Metadata) => dataSegments(m).map((s) => `${s.type}@${s.offset / DS_MiB}M+${s.size === null ? "dyn" : `${s.size / DS_MiB}M`}${s.flags.length ? "*" : ""}${s.type === "crypt" ? ` iv${s.ivTweak}` : ""}`);

/** The states of cryptsetup's walk from the init header: each hotzone in re-encryption (hot) and done (post). */
function decryptShiftStates() {
  const st = loadReencryptState(DECRYPT_SHIFT_INIT);
  const hot1 = hotMetadata(DECRYPT_SHIFT_INIT, st, 4 * DS_MiB, 16 * DS_MiB, DS_T);
  const post1 = postMetadata(hot1, st, 4 * DS_MiB, 16 * DS_MiB, DS_T);
  const hot2 = hotMetadata(post1, st, 20 * DS_MiB, 12 * DS_MiB, DS_T);
  const post2 = postMetadata(hot2, st, 20 * DS_MiB, 12 * DS_MiB, DS_T);
  const hotMoved = hotMetadata(post2, st, 0, 4 * DS_MiB, DS_T);
  return { st, hot1, post1, hot2, post2, hotMoved, done: postMetadata(hotMoved, st, 0, 4 * DS_MiB, DS_T) };
}

test("decryption with a data shift (cryptsetup 2.6.1's --init-only): loads; the shifted hotzones, then the moved segment in place", () => {
  validateMetadata(structuredClone(DECRYPT_SHIFT_INIT), 16384);
  const s = decryptShiftStates();
  assert.deepEqual([s.st.mode, s.st.direction, s.st.resilience, s.st.movedResilience, s.st.status], ["decrypt", "forward", "datashift", "checksum", "clean"]);
  assert.equal(s.st.keyslot.area.shiftSize, DS_SHIFT);
  // hotzones the shift long from plain offset L, read one shift further on; the last one shorter; then [0, L) in place
  assert.deepEqual(nextHotzone(DECRYPT_SHIFT_INIT, s.st, DS_T, 1), { off: 4 * DS_MiB, len: 16 * DS_MiB }, "the first hotzone (the max hotzone size does not apply)");
  assert.deepEqual(segShape(s.hot1), ["crypt@0M+4M iv0", "linear@4M+16M*", "crypt@36M+dyn iv40960"]);
  assert.deepEqual(segShape(s.post1), ["crypt@0M+4M iv0", "linear@4M+16M", "crypt@36M+dyn iv40960"]);
  assert.deepEqual(nextHotzone(s.post1, s.st, DS_T, 1), { off: 20 * DS_MiB, len: 12 * DS_MiB }, "the last shifted hotzone ends at T");
  assert.deepEqual(segShape(s.hot2), ["crypt@0M+4M iv0", "linear@4M+16M", "linear@20M+12M*"]);
  assert.deepEqual(segShape(s.post2), ["crypt@0M+4M iv0", "linear@4M+dyn"]);
  assert.deepEqual(nextHotzone(s.post2, s.st, DS_T, 1), { off: 0, len: 4 * DS_MiB }, "the moved segment last");
  assert.deepEqual(segShape(s.hotMoved), ["linear@0M+4M*", "linear@4M+dyn"]);
  assert.deepEqual(segShape(s.done), ["linear@0M+dyn"]);
  assert.equal(nextHotzone(s.done, s.st, DS_T, 1), null);
  for (const [name, m] of Object.entries(s)) if (name !== "st") {
    const st = loadReencryptState(m as Luks2Metadata);
    checkDecryptShiftDevice(m as Luks2Metadata, st, DS_DEV, "dev");
    assert.equal(st.status, dataSegments(m as Luks2Metadata).some((x) => x.flags.includes("in-reencryption")) ? "crash" : "clean", name);
    // every crypt data segment and the moved copy stay bound to the old key's digest
    for (const x of allSegments(m as Luks2Metadata)) if (x.type === "crypt") assert.deepEqual(digestsOfSegment(m as Luks2Metadata, x.id), [0], `${name}: segment ${x.id}`);
  }
});

test("hostile decrypt-shift metadata refused at load (loadReencryptState), before any write, each with its reason", () => {
  const s = decryptShiftStates();
  const by = (m: Luks2Metadata, flag: string) => segByFlag(m, flag);
  const rk = (m: Luks2Metadata) => Object.values(m.keyslots).find((k) => k.type === "reencrypt") as unknown as { mode: string; direction: string; area: Record<string, unknown> };
  const cases: [string, Luks2Metadata, (m: Luks2Metadata) => void, RegExp][] = [
    ["the moved segment longer than the shift", DECRYPT_SHIFT_INIT, (m) => {
      by(m, "backup-moved-segment").size = m.segments["0"]!.size = String(20 * DS_MiB);
      Object.assign(m.segments["1"]!, { offset: String(36 * DS_MiB), iv_tweak: "40960" });
    }, /the moved segment must be .* at offset 0, at most the shift long/],
    ["the moved segment not at offset 0", DECRYPT_SHIFT_INIT, (m) => void (by(m, "backup-moved-segment").offset = m.segments["0"]!.offset = "4096"), /the moved segment must be .* at offset 0/],
    ["the moved segment of another cipher", DECRYPT_SHIFT_INIT, (m) => void (by(m, "backup-moved-segment").encryption = m.segments["0"]!.encryption = "aes-cbc-essiv:sha256"), /the moved segment must be the first chunk of the encrypted data/],
    ["segment 0 unlike the moved segment", DECRYPT_SHIFT_INIT, (m) => void (m.segments["0"]!.sector_size = 512), /segment 0 is not the moved segment/],
    ["the iv_tweak of segment 1 off by one", DECRYPT_SHIFT_INIT, (m) => void (m.segments["1"]!.iv_tweak = "8193"), /segment 1 is not the encrypted data from plain offset 4194304/],
    ["the iv_tweak of the encrypted rest, mid-run, off by one", s.post1, (m) => void (m.segments["2"]!.iv_tweak = "40961"), /segment 2 is not the encrypted data from plain offset 20971520/],
    ["backup-previous not at the shift", DECRYPT_SHIFT_INIT, (m) => void (by(m, "backup-previous").offset = String(8 * DS_MiB)), /backup-previous segment .* must be the encrypted data at the shift/],
    ["shift_size not the old data offset", DECRYPT_SHIFT_INIT, (m) => void (rk(m).area.shift_size = String(8 * DS_MiB)), /backup-previous segment .* must be the encrypted data at the shift/],
    ["requirement online-reencrypt-v2 with datashift-checksum", DECRYPT_SHIFT_INIT, (m) => void (m.config.requirements!.mandatory = ["online-reencrypt-v2"]), /resilience "datashift-checksum" with requirement online-reencrypt-v2/],
    ["requirement online-reencrypt-v3 with plain checksum", DECRYPT_SHIFT_INIT, (m) => void (rk(m).area.type = "checksum"), /resilience "checksum" with requirement online-reencrypt-v3/],
    ["requirement online-reencrypt-v3 with plain journal", DECRYPT_SHIFT_INIT, (m) => void Object.assign(rk(m).area, { type: "journal", hash: undefined, sector_size: undefined }), /resilience "journal" with requirement online-reencrypt-v3/],
    ["direction backward", DECRYPT_SHIFT_INIT, (m) => void (rk(m).direction = "backward"), /a decryption with a data shift runs forward/],
    ["mode encrypt", DECRYPT_SHIFT_INIT, (m) => void (rk(m).mode = "encrypt"), /encrypt mode needs a linear backup-previous/],
    ["datashift-checksum without a moved segment", DECRYPT_SHIFT_INIT, (m) => void delete m.segments["2"], /segment ids skip|for decryption with a data shift/],
    ["a hotzone longer than the shift", s.hot1, (m) => {
      m.segments["1"]!.size = String(20 * DS_MiB);
      Object.assign(m.segments["2"]!, { offset: String(40 * DS_MiB), iv_tweak: "49152" });
    }, /the hotzone in segment 1 does not fit the data shift/],
    ["a dynamic hotzone", s.hot2, (m) => void (m.segments["2"]!.size = "dynamic"), /the hotzone in segment 2 does not fit the data shift/],
    ["the moved segment's hotzone longer than the moved segment", s.hotMoved, (m) => {
      m.segments["0"]!.size = String(8 * DS_MiB);
      m.segments["1"]!.offset = String(8 * DS_MiB);
    }, /the moved segment's hotzone does not match the moved segment/],
    ["the moved segment's hotzone not at 0", s.hotMoved, (m) => void (m.segments["0"]!.offset = "4096"), /segment 0 is not at offset 0/],
    ["a linear segment after the hotzone", s.hot1, (m) => void (m.segments["2"] = { type: "linear", offset: String(20 * DS_MiB), size: "dynamic" } as never), /linear segment 2 follows the hotzone/],
    ["an encrypted segment in re-encryption", s.hot1, (m) => void (m.segments["1"] = { ...m.segments["2"]!, offset: String(20 * DS_MiB), size: String(16 * DS_MiB), iv_tweak: "8192", flags: ["in-reencryption"] }), /encrypted segment 1 is not the end/],
    ["a gap between the plain data and the encrypted rest", s.post1, (m) => void (m.segments["1"]!.offset = String(8 * DS_MiB)), /segment 1 is not where the plain data 4194304 goes/],
  ];
  for (const [what, base, edit, says] of cases) {
    const m = structuredClone(base);
    edit(m);
    assert.throws(() => loadReencryptState(m), says, what);
  }
});

test("decrypt-shift segments that claim more or less plain data than the device holds are refused (checkDecryptShiftDevice)", () => {
  const s = decryptShiftStates();
  const check = (m: Luks2Metadata, devSize: number) => checkDecryptShiftDevice(m, loadReencryptState(m), devSize, "dev");
  for (const m of [DECRYPT_SHIFT_INIT, s.hot1, s.post1, s.hot2, s.post2, s.hotMoved]) check(m, DS_DEV);
  // the last hotzone ends at T: a device 4 MiB shorter or longer is not the one these segments describe
  assert.throws(() => check(s.hot2, DS_DEV - 4 * DS_MiB), /the segments describe 33554432 bytes of plain data, dev holds 29360128 after the data shift/, "more data than the device holds");
  assert.throws(() => check(s.hot2, DS_DEV + 4 * DS_MiB), /the segments describe 33554432 bytes of plain data, dev holds 37748736/, "less data than the device holds");
  const short = structuredClone(s.hot2);
  short.segments["2"]!.size = String(8 * DS_MiB);
  assert.throws(() => check(short, DS_DEV), /the segments describe 29360128 bytes/, "a last hotzone that stops short of the device's end");
  // the encrypted rest starts at or past the device's end; a device shorter than the moved segment
  assert.throws(() => check(s.post1, DS_SHIFT + 20 * DS_MiB), /describe more than 20971520 bytes of plain data, dev holds 20971520/, "encrypted rest at T");
  assert.throws(() => check(DECRYPT_SHIFT_INIT, DS_SHIFT + 2 * DS_MiB), /describe more than 4194304 bytes/, "a device shorter than the moved segment");
});

// Found by review: such a progress once loaded, and the engine committed the next hotzone before its sector engine
// refused (test/ops/reencrypt-refusals.test.ts has the engine case).
test("a decrypt-shift progress that is not whole encryption sectors is refused at load", () => {
  const m = structuredClone(decryptShiftStates().post1);
  m.segments["1"]!.size = String(16 * DS_MiB - 512);
  Object.assign(m.segments["2"]!, { offset: String(36 * DS_MiB - 512), iv_tweak: "40959" });
  assert.throws(() => loadReencryptState(m), /sector/);
});
