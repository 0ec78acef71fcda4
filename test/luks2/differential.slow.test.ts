// Differential test: thousands of seeded mutations of LUKS1 and LUKS2 headers, each judged by cryptsetup 2.6.1
// (`luksDump`, `open --test-passphrase`) and by trustvol (`dump`, `unlock --test`). Any disagreement fails, except the
// committed ALLOWED list below (each with its reason). Read-only commands must leave the file byte-identical.
// Reproduce one case: TRUSTVOL_DIFF_SEED=<seed> TRUSTVOL_DIFF_N=<n> node --import tsx --test test/luks2/differential.slow.test.ts
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { writeFileSync, readFileSync } from "node:fs";
import { createHash, pbkdf2Sync } from "node:crypto";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { tmpDir, needTools, run } from "../helpers/tools.js";
import { trustvol } from "../helpers/cli.js";
import { withJson, reseal } from "../helpers/luks-image.js";
import { prng } from "../helpers/power-cut.js";

const PW = "pw";
const SEED = Number(process.env.TRUSTVOL_DIFF_SEED ?? 20261201);
const N2 = Number(process.env.TRUSTVOL_DIFF_N ?? 1400); // LUKS2 mutations (issue 9: thousands, strict): 2100 in all
const N1 = Math.ceil(N2 / 2); // LUKS1 mutations
/** Workers, each with its own cryptsetup shell and trustvol judge child. */
const POOL = Number(process.env.TRUSTVOL_DIFF_POOL ?? 3);

type Rnd = () => number;
const pick = <T>(r: Rnd, a: readonly T[]): T => a[Math.floor(r() * a.length)]!;
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

// ---------- base images, made by cryptsetup itself (small: 2 MiB, pbkdf2 1000, digest re-keyed to 1000 iterations)

function makeLuks2(dir: string): Buffer {
  const p = join(dir, "base2.img");
  writeFileSync(p, Buffer.alloc(2 << 20));
  writeFileSync(join(dir, "vk2"), Buffer.alloc(64, 7).map((_, i) => (i * 37 + 11) & 0xff), { mode: 0o600 });
  writeFileSync(join(dir, "pw"), PW, { mode: 0o600 });
  writeFileSync(join(dir, "pw2"), "pw2", { mode: 0o600 });
  const common = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "-q"];
  run("cryptsetup", ["luksFormat", "--type", "luks2", ...common, "--luks2-keyslots-size", "512k", "--offset", "2048", "--volume-key-file", join(dir, "vk2"), "--key-file", join(dir, "pw"), p]);
  run("cryptsetup", ["luksAddKey", ...common, "--key-file", join(dir, "pw"), p, join(dir, "pw2")]);
  const vk = readFileSync(join(dir, "vk2"));
  // The digest is benchmarked to 125 ms: re-key it to 1000 iterations so thousands of opens stay cheap.
  return withJson(readFileSync(p), (j) => {
    const d = j.digests["0"];
    d.iterations = 1000;
    d.digest = pbkdf2Sync(vk, Buffer.from(d.salt, "base64"), 1000, Buffer.from(d.digest, "base64").length, d.hash).toString("base64");
    return j;
  });
}

function makeLuks1(dir: string): Buffer {
  const p = join(dir, "base1.img");
  writeFileSync(p, Buffer.alloc(3 << 20));
  writeFileSync(join(dir, "vk1"), Buffer.alloc(32).map((_, i) => (i * 53 + 5) & 0xff));
  const common = ["--pbkdf-force-iterations", "1000", "-q"];
  run("cryptsetup", ["luksFormat", "--type", "luks1", ...common, "--key-size", "256", "--volume-key-file", join(dir, "vk1"), "--key-file", join(dir, "pw"), p]);
  run("cryptsetup", ["luksAddKey", ...common, "--key-file", join(dir, "pw"), p, join(dir, "pw2")]);
  const b = readFileSync(p);
  const vk = readFileSync(join(dir, "vk1"));
  const hash = b.subarray(72, 104).toString("latin1").replace(/\0.*$/s, "");
  b.writeUInt32BE(1000, 164);
  pbkdf2Sync(vk, b.subarray(132, 164), 1000, 20, hash).copy(b, 112);
  return b;
}

// ---------- mutators

const U32S = [0, 1, 2, 7, 8, 9, 255, 256, 511, 512, 1000, 3999, 4000, 4001, 4096, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
const U64S = [0n, 1n, 2n, 4096n, 16384n, 32768n, 65536n, 0xffffffffn, 1n << 63n, (1n << 64n) - 1n];
const STRINGS = ["", "x", "aes", "twofish", "serpent", "cipher_null", "xts-plain64", "cbc-essiv:sha256", "cbc-plain", "ecb", "xts-plain64:", "sha1", "sha256", "sha512", "whirlpool", "ripemd160", "md5", "sha3-256", "blake2b-512", "SHA256", "aes-xts-plain64", "\x01\x02"];
const JSON_VALUES: unknown[] = [
  0, 1, -1, 2, 3, 32, 64, 512, 1000, 4000, 4096, 0x7fffffff, 2 ** 31, 2 ** 32, 2 ** 53, 1.5, 1e300,
  "0", "1", "-1", "4096", "32768", "16384", "1048576", "2097152", "18446744073709551615", "18446744073709551616", "9007199254740993", " 1", "01", "1.0",
  "", "x", "dynamic", "luks2", "luks1", "raw", "crypt", "linear", "pbkdf2", "argon2i", "argon2id", "sha1", "sha512", "whirlpool", "aes-cbc-essiv:sha256", "aes-xts-plain64", "cipher_null-ecb",
  "AAAA", "A===", "!!", true, false, null, [], {}, ["0"], ["1"], ["0", "1"], ["1", "0"], ["5"], ["0", "0"], [0], ["online-reencrypt-v2"], ["x-unknown"], ["allow-discards"], { mandatory: ["x"] }, { mandatory: [] },
];

interface Mutation {
  kind: "luks1" | "luks2";
  what: string;
  img: Buffer;
}

/** Every [path, parent, key] in a JSON tree. */
function paths(j: any, pre = ""): [string, any, string][] {
  const out: [string, any, string][] = [];
  if (j && typeof j === "object")
    for (const k of Object.keys(j)) {
      out.push([`${pre}/${k}`, j, k]);
      out.push(...paths(j[k], `${pre}/${k}`));
    }
  return out;
}

function jsonText(img: Buffer): string {
  const hdr = Number(img.readBigUInt64BE(8));
  const a = img.subarray(4096, hdr);
  return a.subarray(0, a.indexOf(0)).toString();
}

function mutateLuks2(base: Buffer, r: Rnd): Mutation {
  const op = Math.floor(r() * 100);
  let img: Buffer = Buffer.from(base);
  if (op < 25) {
    // binary header fields (one copy or both), usually re-sealed so the field itself is what gets judged
    const fields: [string, number, number][] = [["magic", 0, 6], ["version", 6, 2], ["hdr_size", 8, 8], ["seqid", 16, 8], ["label", 24, 48], ["csum_alg", 72, 32], ["salt", 104, 64], ["uuid", 168, 40], ["subsystem", 208, 48], ["hdr_offset", 256, 8], ["csum", 448, 64], ["padding", 512, 64]];
    const [name, off, len] = pick(r, fields);
    const copies = pick(r, [[0], [16384], [0, 16384]] as const);
    let desc = "";
    for (const c of copies) {
      const f = img.subarray(c + off, c + off + len);
      // desc names every copy's value ("version=3,2": primary 3, secondary 2)
      if (len === 8 && r() < 0.7) {
        const v = pick(r, [...U64S, 16384n, 32768n, 65536n, 131072n, 262144n, 524288n, 1048576n, 2097152n, 4194304n, 12288n, 3n]);
        f.writeBigUInt64BE(v);
        desc += `${desc ? "," : "="}${v}`;
      } else if (len === 2) {
        const v = pick(r, [0, 1, 2, 3, 0xffff]);
        f.writeUInt16BE(v);
        desc += `${desc ? "," : "="}${v}`;
      } else if (r() < 0.5 && len >= 32) {
        const s = pick(r, [...STRINGS, "sha256", "sha1", "sha512", "crc32", "a".repeat(len), "12345678-1234-1234-1234-123456789abc", "not-a-uuid", "LUKS\xba\xbe"]);
        f.fill(0);
        Buffer.from(s, "latin1").copy(f);
        desc = `="${s.slice(0, 20)}"`;
      } else {
        const i = Math.floor(r() * len);
        f[i] = Math.floor(r() * 256);
        desc = `[${i}]^`;
      }
    }
    const sealed = name !== "csum" && r() < 0.8;
    if (sealed) reseal(img);
    return { kind: "luks2", what: `bin ${name}${desc} copies=${copies.join("+")}${sealed ? " resealed" : ""}`, img };
  }
  if (op < 85) {
    // JSON: delete / replace / retype a value, add a field, or a structural edit
    let what = "";
    // Edit once, then write the same text to both copies (withJson calls its editor once per copy).
    const edited = ((j: any) => {
      const sub = Math.floor(r() * 10);
      const all = paths(j);
      if (sub === 0) {
        const [p, parent, k] = pick(r, all);
        if (Array.isArray(parent)) parent.splice(Number(k), 1);
        else delete parent[k];
        what = `delete ${p}`;
      } else if (sub <= 5) {
        const [p, parent, k] = pick(r, all);
        const v = structuredClone(pick(r, JSON_VALUES));
        parent[k] = v;
        what = `set ${p}=${JSON.stringify(v)}`;
      } else if (sub === 6) {
        const [p, parent, k] = pick(r, all);
        const v = parent[k];
        parent[k] = typeof v === "number" ? String(v) : typeof v === "string" && /^\d+$/.test(v) ? Number(v) : typeof v === "string" ? [v] : v;
        what = `retype ${p}`;
      } else if (sub === 7) {
        const objs = all.filter(([, parent, k]) => parent[k] && typeof parent[k] === "object" && !Array.isArray(parent[k]));
        const [p, parent, k] = pick(r, objs);
        const nk = pick(r, ["extra", "1", "2", "31", "32", "type", "flags", "integrity", "priority"]);
        parent[k][nk] = structuredClone(pick(r, JSON_VALUES));
        what = `add ${p}/${nk}`;
      } else if (sub === 8) {
        const ks = j.keyslots?.["1"];
        const s = Math.floor(r() * 6);
        if (s === 0 && ks) (j.keyslots["2"] = structuredClone(ks)), (what = "duplicate keyslot 1 as 2 (same area)");
        else if (s === 1) (j.segments["1"] = { ...structuredClone(j.segments["0"] ?? {}), offset: pick(r, ["1048576", "2097152", "1572864"]), size: pick(r, ["dynamic", "4096", "524288"]) }), (what = "second segment");
        else if (s === 2) (j.digests["1"] = { ...structuredClone(j.digests["0"] ?? {}), keyslots: pick(r, [["1"], [], ["0"]]), segments: pick(r, [[], ["0"]]) }), (what = "second digest");
        else if (s === 3) (j.tokens["0"] = { type: pick(r, ["x", "luks2-keyring", "systemd-tpm2", ""]), keyslots: pick(r, [["0"], ["9"], [], "0"]) }), (what = "token");
        else if (s === 4) (j.config.requirements = { mandatory: [pick(r, ["online-reencrypt-v2", "online-reencrypt", "x-future", "offline-reencrypt"])] }), (what = "requirement");
        else if (ks) (ks.area.offset = pick(r, ["0", "16384", "32768", "290816", "294912", "557056", "1048576"])), (what = `keyslot 1 area.offset=${ks.area.offset}`);
      } else {
        const seg = j.segments?.["0"];
        if (seg) {
          seg.size = pick(r, ["dynamic", "0", "512", "4096", "1048576", "2097152", "18446744073709551104", "18446744073709551615", "9007199254740992"]);
          what = `segment size=${seg.size}`;
        }
      }
      return j;
    })(JSON.parse(jsonText(img)));
    img = withJson(img, () => null, JSON.stringify(edited));
    return { kind: "luks2", what: `json ${what}`, img };
  }
  if (op < 93) {
    // raw JSON text: leading/trailing bytes, after-NUL garbage, not an object
    const t = jsonText(img);
    const s = Math.floor(r() * 7);
    const next = [` ${t}`, `${t} `, `${t}\u0000x`, `${t}\u0000\u0000\u0000\u0001`, `[${t}]`, `${t}}`, `\n${t}\n`][s]!;
    return { kind: "luks2", what: `raw json #${s}`, img: withJson(img, () => null, next) };
  }
  // truncation
  const size = pick(r, [0, 512, 4096, 16384, 20000, 32768, 40000, 290816, 300000, 557055, 557056, 1048575, 1048576, 1048577, 1052672]);
  return { kind: "luks2", what: `truncate ${size}`, img: img.subarray(0, size) };
}

function mutateLuks1(base: Buffer, r: Rnd): Mutation {
  const img = Buffer.from(base);
  const op = Math.floor(r() * 100);
  const ksField = (i: number, f: number) => 208 + i * 48 + f;
  if (op < 10) {
    const size = pick(r, [0, 592, 4096, 8192, 135000, 200000, 1048576, 2097151, 2097152]);
    return { kind: "luks1", what: `truncate ${size}`, img: img.subarray(0, size) };
  }
  if (op < 30) {
    const [name, off] = pick(r, [["cipher", 8], ["mode", 40], ["hash", 72]] as const);
    const s = pick(r, [...STRINGS, "aes", "xts-plain64", "cbc-essiv:sha256", "sha256", "aes-xts", "xts-plain", "cbc-plain64", "ecb-plain"]);
    img.fill(0, off, off + 32);
    Buffer.from(s, "latin1").copy(img, off);
    return { kind: "luks1", what: `${name}="${s}"`, img };
  }
  if (op < 75) {
    const i = Math.floor(r() * 3);
    const [name, f] = pick(r, [["active", 0], ["iterations", 4], ["kmOffset", 40], ["stripes", 44], ["kmOffset", 40]] as const);
    const cur = img.readUInt32BE(ksField(i, f));
    const v = r() < 0.5 ? pick(r, U32S) : Math.max(0, cur + pick(r, [-1, 1, -8, 8, 128, -128, 256, 512, 4000]));
    img.writeUInt32BE(v >>> 0, ksField(i, f));
    return { kind: "luks1", what: `slot${i}.${name}=${v >>> 0}`, img };
  }
  const [name, off] = pick(r, [["payloadOffset", 104], ["keyBytes", 108], ["mkIterations", 164], ["version", 6], ["magic", 0], ["uuid", 168], ["payloadOffset", 104], ["keyBytes", 108]] as const);
  if (name === "version") img.writeUInt16BE(pick(r, [0, 2, 3]), 6);
  else if (name === "magic") img[Math.floor(r() * 6)] ^= 1;
  else if (name === "uuid") img.fill(pick(r, [0, 0x41, 0xff]), 168 + Math.floor(r() * 36), 208);
  else {
    const cur = img.readUInt32BE(off);
    img.writeUInt32BE((r() < 0.5 ? pick(r, U32S) : Math.max(0, cur + pick(r, [-1, 1, -8, 8, 16, 32, 64, -64, 4096]))) >>> 0, off);
  }
  return { kind: "luks1", what: `${name}=${name === "magic" || name === "uuid" ? "~" : img.readUInt32BE(off)}`, img };
}

// ---------- judges

/** Would cryptsetup spend more than a moment (or gigabytes) opening this? Then only dump is compared. */
function expensive(m: Mutation): boolean {
  if (m.kind === "luks1") {
    if (m.img.length < 592) return false;
    for (let i = 0; i < 8; i++) if (m.img.readUInt32BE(208 + i * 48 + 4) > 200_000) return true;
    return m.img.readUInt32BE(164) > 200_000 || m.img.readUInt32BE(108) > 4096;
  }
  let j: any;
  try {
    j = JSON.parse(jsonText(m.img.length >= 16384 ? m.img : Buffer.alloc(16384)) || "null");
  } catch {
    return false;
  }
  const big = (v: unknown, lim: number) => (typeof v === "number" && v > lim) || (typeof v === "string" && /^\d+$/.test(v) && Number(v) > lim);
  for (const ks of Object.values<any>(j?.keyslots ?? {})) {
    const k = ks?.kdf ?? {};
    if (big(k.iterations, 200_000) || big(k.time, 16) || big(k.memory, 65536) || big(k.cpus, 16) || big(ks?.key_size, 4096) || big(ks?.af?.stripes, 100_000)) return true;
  }
  for (const d of Object.values<any>(j?.digests ?? {})) if (big(d?.iterations, 200_000)) return true;
  return false;
}

interface Verdict {
  dump: boolean;
  open?: boolean;
  openRc?: number;
  err: string;
}

/**
 * cryptsetup's verdicts through one long-lived shell per worker: a path in, one line out. Under load most of a
 * judgement is process start-up; a shell forks cryptsetup far more cheaply than node does, and a header that opens
 * needs no luksDump (open loads the header exactly as luksDump does, and LUKS2/LUKS1 dump cannot fail after a load).
 */
class CryptsetupJudge {
  private sh: ChildProcessWithoutNullStreams;
  private buf = "";
  private waiting: ((line: string) => void)[] = [];
  constructor(pwFile: string) {
    const script = `while IFS= read -r line; do o=\${line%% *}; p=\${line#* }; orc=-; oerr=
if [ "$o" = 1 ]; then oerr=$(timeout -s KILL 30 cryptsetup open --test-passphrase --key-file "$PW" "$p" 2>&1 >/dev/null); orc=$?; fi
if [ "$orc" = 0 ]; then drc=0; derr=; else derr=$(timeout -s KILL 30 cryptsetup luksDump "$p" 2>&1 >/dev/null); drc=$?; fi
printf '%s\\t%s\\t%s\\t%s\\n' "$drc" "$orc" "$(printf %s "$derr" | tail -n 1 | tr '\\t' ' ')" "$(printf %s "$oerr" | tail -n 1 | tr '\\t' ' ')"
done`;
    this.sh = spawn("bash", ["-c", script], { env: { ...process.env, PW: pwFile, LC_ALL: "C" } });
    this.sh.stdout.setEncoding("utf8");
    this.sh.stdout.on("data", (d: string) => {
      this.buf += d;
      for (let i; (i = this.buf.indexOf("\n")) >= 0; ) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        this.waiting.shift()?.(line);
      }
    });
  }
  judge(path: string, doOpen: boolean): Promise<Verdict> {
    return new Promise((resolve) => {
      this.waiting.push((line) => {
        const [drc, orc, derr, oerr] = line.split("\t");
        const v: Verdict = { dump: drc === "0", err: derr ?? "" };
        if (doOpen) {
          v.openRc = Number(orc);
          v.open = v.openRc === 0;
          if (!v.open) v.err = oerr ?? "";
        }
        resolve(v);
      });
      this.sh.stdin.write(`${doOpen ? 1 : 0} ${path}\n`);
    });
  }
  close(): void {
    this.sh.stdin.end();
  }
}

/** trustvol's verdicts from a long-lived child (test/helpers/diff-judge.ts): one per worker, so they run side by side. */
class TrustvolJudge {
  private child: ChildProcessWithoutNullStreams;
  private buf = "";
  private waiting: ((line: string) => void)[] = [];
  constructor() {
    this.child = spawn(process.execPath, ["--import", "tsx", fileURLToPath(new URL("../helpers/diff-judge.ts", import.meta.url))], { env: { ...process.env, TRUSTVOL_TEST: "1" } });
    this.child.stderr.on("data", (d) => process.stderr.write(d));
    this.child.stdout.setEncoding("utf8");
    this.child.stdout.on("data", (d: string) => {
      this.buf += d;
      for (let i; (i = this.buf.indexOf("\n")) >= 0; ) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        this.waiting.shift()?.(line);
      }
    });
  }
  judge(path: string, pwFile: string, doOpen: boolean): Promise<Verdict> {
    return new Promise((resolve, reject) => {
      this.waiting.push((line) => {
        const v = JSON.parse(line) as Verdict & { problem?: string };
        if (v.problem) reject(new Error(`${path}: ${v.problem}`));
        else resolve(v);
      });
      this.child.stdin.write(JSON.stringify({ path, pwFile, doOpen }) + "\n");
    });
  }
  close(): void {
    this.child.stdin.end();
  }
}

// ---------- where the two may disagree, and why

interface Result {
  m: Mutation;
  cs: Verdict;
  tv: Verdict;
}
const ALLOWED: { id: string; reason: string; match: (r: Result) => boolean }[] = [
  {
    id: "cryptsetup-stops-at-first-broken-keyslot",
    reason:
      "cryptsetup's passphrase loop aborts on the first keyslot that fails with an error other than a wrong passphrase (unknown KDF/hash/cipher: 'Keyslot open failed'), so a healthy later keyslot is never tried; trustvol refuses only the broken keyslot and still tries the others (issue 9 item 3)",
    match: (r) => r.cs.dump && r.tv.dump && r.tv.open === true && r.cs.open === false && r.cs.openRc === 1,
  },
  {
    id: "trustvol-refuses-absurd-kdf-costs",
    reason: "trustvol refuses (exit 6) keyslots whose KDF asks for pbkdf2 >= 2^31 iterations or argon2 beyond cryptsetup's own creation limits; cryptsetup would try to compute them",
    match: (r) => r.cs.dump && r.tv.dump && r.tv.openRc === 6 && /out of range/.test(r.tv.err),
  },
  {
    id: "cryptsetup-untyped-digest-fields",
    reason: "cryptsetup 2.6.1 loads a pbkdf2 digest whose salt, digest, hash or iterations has the wrong JSON type (json-c converts it) and still reports the passphrase as opening; the spec defines their types: trustvol refuses the header (salt, iterations) or loads it and verifies no key against the malformed digest (hash, digest: exit 3)",
    match: (r) =>
      /^json (retype|set) \/digests\/\d+\/(salt|digest|hash|iterations)\b/.test(r.m.what) && r.cs.dump &&
      ((!r.tv.dump && /digests? \d+\.(salt|digest|hash|iterations) must be/.test(r.tv.err)) || (/\/(digest|hash)\b/.test(r.m.what) && r.tv.dump && r.tv.openRc === 3)),
  },
  {
    id: "cryptsetup-ignores-unknown-digest-hash",
    reason: "measured: cryptsetup 2.6.1 opens a volume whose digest names a hash that does not exist ('A===', '-1'); trustvol refuses the digest (exit 6, the hash named)",
    match: (r) => /^json set \/digests\/\d+\/hash=/.test(r.m.what) && r.cs.open === true && r.tv.openRc === 6 && /hash ".*" is not supported/.test(r.tv.err),
  },
  {
    id: "trustvol-bounds-key-material",
    reason: "trustvol refuses a keyslot key_size above 1024 bytes or af.stripes other than 4000 (the spec's only AF); cryptsetup loads them and would allocate key_size × stripes bytes when opening",
    match: (r) => /^json (set|retype|delete) \/keyslots\/\d+\/(key_size|af\/stripes)\b/.test(r.m.what) && r.cs.dump && !r.tv.dump && /(key_size|stripes) must be/.test(r.tv.err),
  },
  {
    id: "trustvol-finds-the-secondary",
    reason: "when only the primary's hdr_size is changed (re-sealed or not), cryptsetup looks for the secondary at that wrong offset and gives up; trustvol, like the spec's recovery rule (§2.3), finds the intact secondary at a standard offset and reads it",
    match: (r) => /^bin hdr_size=\d+ copies=0( |$)/.test(r.m.what) && !r.cs.dump && r.tv.dump,
  },
  {
    id: "cryptsetup-opens-without-a-digest-value",
    reason: "measured: with a digest's 'digest' field deleted, cryptsetup 2.6.1 still reports the passphrase as opening; trustvol loads the header (dump agrees) but cannot verify any key against a missing digest, so no keyslot of it unlocks (exit 3)",
    match: (r) => /^json delete \/digests\/\d+\/digest$/.test(r.m.what) && r.cs.open === true && r.tv.dump && r.tv.openRc === 3,
  },
  {
    id: "cryptsetup-accepts-short-digest-salt-or-value",
    reason:
      "measured: cryptsetup 2.6.1 reports the passphrase as opening when a digest's salt or digest is replaced by another valid base64 string of a different length ('AAAA', 'argon2id'), though one flipped salt bit makes it refuse — and then a wrong passphrase 'opens' too (measured: its key check is skipped, the key is garbage); trustvol computes the digest with the stored salt and compares it whole, so no key verifies (exit 3)",
    match: (r) => /^json (set|retype) \/digests\/\d+\/(salt|digest)\b/.test(r.m.what) && r.cs.open === true && r.tv.dump && r.tv.openRc === 3,
  },
  {
    id: "trustvol-reads-only-the-declared-keyslot-area",
    reason:
      "measured: cryptsetup 2.6.1 opens a keyslot whose area.size is smaller than its key material, reading past the declared area (into free space or the next keyslot's area); trustvol reads key material only inside the area the metadata declares, so that keyslot is unusable (the header loads, other keyslots still open)",
    match: (r) => /^json (set|retype) \/keyslots\/\d+\/area\/size=/.test(r.m.what) && r.cs.dump && r.tv.dump && r.cs.open === true && r.tv.open === false,
  },
  {
    id: "trustvol-finds-the-secondary-version",
    reason: "when only the primary's version field is damaged (re-sealed or not), cryptsetup's version probe reads the primary alone and says 'not a valid LUKS device'; trustvol reads the intact secondary (spec §2.3 recovery), as it does for a damaged primary checksum",
    match: (r) => (/^bin version=\d+ copies=0( |$)/.test(r.m.what) || /^bin version=\d+,2 copies=0\+16384( |$)/.test(r.m.what)) && !r.cs.dump && r.tv.dump,
  },
];

test("differential: mutated LUKS1/LUKS2 headers — trustvol agrees with cryptsetup 2.6.1", { timeout: 60 * 60_000 }, async (t) => {
  if (!needTools(t, "cryptsetup")) return;
  const { dir, cleanup } = tmpDir("trustvol-diff-");
  t.after(cleanup);
  const t0 = Date.now();
  const base2 = makeLuks2(dir);
  const base1 = makeLuks1(dir);
  const tBase = Date.now() - t0;
  const pwFile = join(dir, "pw");
  // Mutations are made one at a time, in a fixed order (same PRNG sequence whatever the pool does), and an image is
  // kept only while it is judged or when it disagrees: thousands of 2-3 MiB images never sit in memory at once.
  const r = prng(SEED);
  const total = N2 + N1 + 2;
  let made = 0;
  const nextMutation = (): Mutation => {
    const i = made++;
    if (i < N2) return mutateLuks2(base2, r);
    if (i < N2 + N1) return mutateLuks1(base1, r);
    return i === N2 + N1 ? { kind: "luks2", what: "unmodified", img: base2 } : { kind: "luks1", what: "unmodified", img: base1 };
  };

  let agree = 0, skippedOpen = 0, spawnedSamples = 0, csMs = 0, tvMs = 0, repeats = 0;
  const seen = new Map<string, Promise<[Verdict, Verdict]>>();
  const counts = new Map<string, number>();
  const bad: Result[] = [];
  const allowedHits = new Map<string, number>();
  const unmodifiedOpens = new Map<string, boolean | undefined>();
  const judges = Array.from({ length: POOL }, () => new CryptsetupJudge(pwFile));
  const tvJudges = Array.from({ length: POOL }, () => new TrustvolJudge());
  t.after(() => [...judges, ...tvJudges].forEach((j) => j.close()));
  const worker = async (w: number) => {
    while (made < total) {
      const i = made;
      const m = nextMutation();
      const cp = join(dir, `c${w}.img`), tp = join(dir, `t${w}.img`);
      const doOpen = !expensive(m);
      // The same image again (truncations, repeated picks): both verdicts are deterministic, judge it once.
      const key = sha(m.img);
      let judged = seen.get(key);
      const fresh = !judged;
      if (!judged) {
        writeFileSync(cp, m.img);
        writeFileSync(tp, m.img);
        const ta = Date.now();
        judged = Promise.all([judges[w]!.judge(cp, doOpen).then((v) => ((csMs += Date.now() - ta), v)), tvJudges[w]!.judge(tp, pwFile, doOpen).then((v) => ((tvMs += Date.now() - ta), v))]);
        seen.set(key, judged);
      } else repeats++;
      const [cs, tv] = await judged;
      if (i % 500 === 0 && fresh) {
        // A sample through the spawned CLI, as it ships: same verdicts as in-process.
        const sd = trustvol(["dump", tp]);
        assert.equal(sd.status === 0, tv.dump, `spawned dump disagrees with in-process on ${m.what}: ${sd.stderr}`);
        assert.equal(sha(readFileSync(tp)), sha(m.img));
        spawnedSamples++;
      }
      if (m.what === "unmodified") unmodifiedOpens.set(m.kind, tv.open);
      const res: Result = { m, cs, tv };
      if (cs.open === undefined) skippedOpen++;
      if (cs.dump === tv.dump && cs.open === tv.open) {
        agree++;
        continue;
      }
      const dir1 = cs.dump !== tv.dump ? `${m.kind} dump: cryptsetup ${cs.dump ? "accepts" : "rejects"}, trustvol ${tv.dump ? "accepts" : "rejects"}` : `${m.kind} open: cryptsetup ${cs.open ? "opens" : "refuses"}, trustvol ${tv.open ? "opens" : "refuses"}`;
      counts.set(dir1, (counts.get(dir1) ?? 0) + 1);
      const allowed = ALLOWED.find((a) => a.match(res));
      if (allowed) allowedHits.set(allowed.id, (allowedHits.get(allowed.id) ?? 0) + 1);
      else bad.push(res);
    }
  };
  await Promise.all(judges.map((_, w) => worker(w)));

  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  t.diagnostic(`seed ${SEED}: ${total} mutations (${N2} LUKS2, ${N1} LUKS1, 2 unmodified) in ${secs}s, pool ${POOL} (bases ${tBase} ms; cryptsetup ${csMs} ms, trustvol ${tvMs} ms, summed over the pool); ${agree} agreements; ${skippedOpen} compared on dump only (costly KDF); ${spawnedSamples} spawned-CLI samples; ${repeats} repeated images judged once`);
  for (const [k, n] of counts) t.diagnostic(`disagreement: ${k}: ${n}`);
  for (const [k, n] of allowedHits) t.diagnostic(`allowed (${k}): ${n}`);
  const line = (b: Result) => `${b.m.kind} ${b.m.what} | cs dump=${b.cs.dump} open=${b.cs.open}(${b.cs.openRc}) ${b.cs.err} | tv dump=${b.tv.dump} open=${b.tv.open}(${b.tv.openRc}) ${b.tv.err}`;
  if (process.env.TRUSTVOL_DIFF_KEEP) bad.forEach((b, i) => writeFileSync(join(process.env.TRUSTVOL_DIFF_KEEP!, `bad${i}.img`), b.m.img));
  if (process.env.TRUSTVOL_DIFF_OUT) writeFileSync(process.env.TRUSTVOL_DIFF_OUT, bad.map(line).join("\n") + "\n");
  assert.equal(made, total);
  assert.ok(unmodifiedOpens.get("luks2"), "the unmodified LUKS2 image opens");
  assert.ok(unmodifiedOpens.get("luks1"), "the unmodified LUKS1 image opens");
  // Strict (issue 9): every disagreement is either fixed or in ALLOWED with its reason.
  assert.equal(bad.length, 0, `${bad.length} unexplained disagreements (replay: TRUSTVOL_DIFF_SEED=${SEED} TRUSTVOL_DIFF_N=${N2}; TRUSTVOL_DIFF_OUT/KEEP to list and keep them):\n${bad.slice(0, 25).map(line).join("\n")}`);
});
