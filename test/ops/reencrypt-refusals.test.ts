// Bad input to `trustvol reencrypt` (issue 10): a wrong passphrase, a missing token, an unknown resilience, a device
// too small for the data shift, and hostile `reencrypt` keyslots/segments (bad mode, direction, area type, shift,
// a re-encryption digest that no longer matches) → a one-line error, a non-zero exit, and the file byte-identical.
// Each hostile header is also shown to cryptsetup 2.6.1, which must refuse it too (as strict as cryptsetup, no more
// lenient). Headers are edited here with their checksums recomputed (no trustvol code), so only the engine judges.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, copyFileSync, mkdirSync, existsSync } from "node:fs";
import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { needTools } from "../helpers/tools.js";
import { MiB, FAST_PBKDF, PASSPHRASE, writePlain, shaFile, cs, luksJson, tv, needCliEngine, fastTmpDir, tamperJson, type LuksJson } from "../helpers/reencrypt.js";

interface Case {
  name: string;
  /** The file (and its detached header, if any) to refuse, built in dir. */
  make(dir: string, pw: string): { img: string; hdr?: string };
  args: string[];
  /** Expected exit status, when one is agreed (else: any non-zero). */
  status?: number;
  /** What the error line should say. */
  says?: RegExp;
  /** cryptsetup must refuse the same (hostile metadata): its arguments. */
  cryptsetupArgs?: string[];
}

function luksVolume(dir: string, pw: string, name = "v.img", size = 32 * MiB): string {
  const img = join(dir, name);
  writePlain(img, size, 11);
  cs(["luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF, "--key-file", pw, img]);
  return img;
}

/** A rotation (or other run) initialised by cryptsetup --init-only: a genuine reencrypt keyslot to tamper with. */
function initOnly(dir: string, pw: string, extra: string[], plainShift = false): string {
  if (plainShift) {
    const img = join(dir, "shift.img");
    writePlain(img, 64 * MiB, 12);
    cs(["reencrypt", "--encrypt", "--init-only", "-q", "--force-offline-reencrypt", "--reduce-device-size", "32M", ...FAST_PBKDF, "--key-file", pw, img]);
    return img;
  }
  const img = luksVolume(dir, pw);
  cs(["reencrypt", "--init-only", "-q", "--force-offline-reencrypt", ...extra, ...FAST_PBKDF, "--key-file", pw, img]);
  return img;
}


const reencSlot = (j: LuksJson): any => Object.values(j.keyslots).find((k: any) => k.type === "reencrypt");
const hostile = (name: string, edit: (j: LuksJson) => void, extra: string[] = ["--resilience", "checksum"], shift = false): Case => ({
  name: `hostile reencrypt metadata: ${name}`,
  make: (dir, pw) => {
    const img = initOnly(dir, pw, extra, shift);
    tamperJson(img, edit);
    return { img };
  },
  args: ["--resume-only"],
  cryptsetupArgs: ["reencrypt", "--resume-only", "--force-offline-reencrypt", "-q"],
});

const cases: Case[] = [
  // What trustvol does not do online (cryptsetup 2.6 does): refused before anything is written, saying what to do.
  {
    name: "online --decrypt (the device is open)",
    make: (dir, pw) => ({ img: luksVolume(dir, pw) }),
    args: ["--decrypt", "--active-name", "vol"],
    says: /vol is open: trustvol decrypts offline only; unmount and close it \(trustvol close vol\).*cryptsetup reencrypt --decrypt --header FILE --active-name vol/,
  },
  {
    name: "online rotation with a detached header",
    make: (dir, pw) => {
      const img = join(dir, "d.img");
      const hdr = join(dir, "d.hdr");
      writePlain(img, 32 * MiB, 14);
      cs(["luksFormat", "-q", "--type", "luks2", ...FAST_PBKDF, "--header", hdr, "--key-file", pw, img]);
      return { img, hdr };
    },
    args: ["--active-name", "vol"],
    says: /vol is open: trustvol rotates keys online only with the LUKS2 header on the device, not with --header; .*cryptsetup reencrypt --header \S+ --active-name vol/,
  },
  {
    name: "online --init-only",
    make: (dir, pw) => ({ img: luksVolume(dir, pw) }),
    args: ["--init-only", "--active-name", "vol"],
    says: /vol is open: --init-only and --reduce-device-size are for offline runs/,
  },
  {
    name: "wrong passphrase (rotation)",
    make: (dir, pw) => ({ img: luksVolume(dir, pw) }),
    args: ["--key-file", "WRONG"],
    status: 3,
    says: /passphrase|no key/i,
  },
  {
    name: "wrong passphrase (resuming cryptsetup's --init-only)",
    make: (dir, pw) => ({ img: initOnly(dir, pw, ["--resilience", "journal"]) }),
    args: ["--resume-only", "--key-file", "WRONG"],
    status: 3,
  },
  {
    name: "no token to unlock with (--token-only on a volume without tokens)",
    make: (dir, pw) => ({ img: luksVolume(dir, pw) }),
    args: ["--token-only"],
    says: /token/i,
  },
  {
    name: "unknown resilience mode",
    make: (dir, pw) => ({ img: luksVolume(dir, pw) }),
    args: ["--resilience", "bogus"],
    status: 2,
    says: /resilience/i,
  },
  {
    name: "unknown resilience hash",
    make: (dir, pw) => ({ img: luksVolume(dir, pw) }),
    args: ["--resilience", "checksum", "--resilience-hash", "nosuchhash"],
    says: /hash/i,
  },
  {
    name: "device too small for the data shift (16 MiB, --reduce-device-size 32M)",
    make: (dir) => {
      const img = join(dir, "small.img");
      writePlain(img, 16 * MiB, 13);
      return { img };
    },
    args: ["--encrypt", "--reduce-device-size", "32M"],
    says: /small|size|shift/i,
  },
  {
    name: "a data area too small to hold the head move's record (2 KiB + --reduce-device-size 32M)",
    make: (dir) => {
      const img = join(dir, "tiny.img");
      writePlain(img, 32 * MiB + 2048, 15);
      return { img };
    },
    args: ["--encrypt", "--reduce-device-size", "32M"],
    says: /too small/i,
  },
  {
    name: "--reduce-device-size equal to the device",
    make: (dir) => {
      const img = join(dir, "exact.img");
      writePlain(img, 32 * MiB, 14);
      return { img };
    },
    args: ["--encrypt", "--reduce-device-size", "32M"],
  },
  {
    name: "--resume-only on a volume with no re-encryption",
    make: (dir, pw) => ({ img: luksVolume(dir, pw) }),
    args: ["--resume-only"],
  },
  hostile("mode \"bogus\"", (j) => void (reencSlot(j).mode = "bogus")),
  hostile("direction \"sideways\"", (j) => void (reencSlot(j).direction = "sideways")),
  hostile("area type \"bogus\"", (j) => void (reencSlot(j).area.type = "bogus")),
  hostile("checksum area without a hash", (j) => void delete reencSlot(j).area.hash),
  hostile("checksum area with sector_size 3", (j) => void (reencSlot(j).area.sector_size = 3)),
  hostile("journal area larger than the keyslots area", (j) => void (reencSlot(j).area.size = String(64 * MiB)), ["--resilience", "journal"]),
  hostile("datashift with a shift that is not a multiple of 512", (j) => void (reencSlot(j).area.shift_size = "12345"), [], true),
  hostile("datashift shift_size changed (digest no longer matches)", (j) => void (reencSlot(j).area.shift_size = String(8 * MiB)), [], true),
  hostile("backup-final segment changed (re-encryption digest mismatch)", (j) => {
    const fin = Object.values(j.segments).find((x: any) => x.flags?.includes("backup-final")) as any;
    fin.sector_size = fin.sector_size === 4096 ? 512 : 4096;
  }),
  hostile("backup-previous segment cipher changed (digest mismatch)", (j) => {
    const prev = Object.values(j.segments).find((x: any) => x.flags?.includes("backup-previous")) as any;
    prev.encryption = "aes-cbc-essiv:sha256";
  }),
  hostile("reencrypt digest bytes flipped", (j) => {
    const id = Object.keys(j.keyslots).find((k) => j.keyslots[k].type === "reencrypt")!;
    const d = Object.values(j.digests).find((x: any) => x.keyslots.includes(id)) as any;
    const b = Buffer.from(d.digest, "base64");
    b[0] = b[0]! ^ 1;
    d.digest = b.toString("base64");
  }),
  hostile("a data segment whose cipher matches neither backup", (j) => void (j.segments["0"].encryption = "aes-cbc-essiv:sha256")),
  hostile("a second re-encryption requirement flag", (j) => void j.config.requirements!.mandatory!.push("online-reencrypt-v3")),
  hostile("two reencrypt keyslots", (j) => {
    const id = Object.keys(j.keyslots).find((k) => j.keyslots[k].type === "reencrypt")!;
    j.keyslots["9"] = JSON.parse(JSON.stringify(j.keyslots[id]));
  }),
  hostile("requirement online-reencrypt-v2 without a reencrypt keyslot", (j) => {
    const id = Object.keys(j.keyslots).find((k) => j.keyslots[k].type === "reencrypt")!;
    delete j.keyslots[id];
    for (const d of Object.values(j.digests) as any[]) d.keyslots = d.keyslots.filter((k: string) => k !== id);
  }),
];

for (const c of cases) {
  test(`reencrypt refuses: ${c.name} — one-line error, non-zero exit, file unchanged`, async (t) => {
    if (!needTools(t, "cryptsetup")) return;
    const { dir, cleanup } = fastTmpDir();
    t.after(cleanup);
    const pw = join(dir, "pw");
    writeFileSync(pw, PASSPHRASE, { mode: 0o600 });
    writeFileSync(join(dir, "WRONG"), "not the passphrase", { mode: 0o600 });
    const { img, hdr } = c.make(dir, pw);
    const before = shaFile(img), hdrBefore = hdr ? shaFile(hdr) : "";
    if (c.cryptsetupArgs) {
      // The premise: cryptsetup refuses this header too (else it is not hostile, and trustvol may accept it).
      const keep = join(dir, "cs-copy.img");
      copyFileSync(img, keep);
      const r = cs([...c.cryptsetupArgs, "--key-file", pw, keep], { check: false });
      if (r.status === 0) assert.fail(`cryptsetup accepted the hostile header: ${JSON.stringify(luksJson(img))}`);
      t.diagnostic(`cryptsetup: exit ${r.status}: ${(r.stderr + r.stdout.toString()).trim().split("\n").at(-1)}`);
    }
    if (!needCliEngine(t)) return;
    const args = c.args.map((a) => (a === "WRONG" ? join(dir, "WRONG") : a));
    const keyArgs = args.includes("--key-file") || args.includes("--token-only") ? [] : ["--key-file", pw];
    const r = tv(["reencrypt", "-q", ...args, ...keyArgs, ...FAST_PBKDF, ...(hdr ? ["--header", hdr] : []), img]);
    t.diagnostic(`trustvol: exit ${r.status}: ${r.stderr.trim()}`);
    assert.notEqual(r.status, 0, "non-zero exit");
    if (c.status !== undefined) assert.equal(r.status, c.status, `exit status (stderr: ${r.stderr.trim()})`);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, `one line on stderr: ${r.stderr}`);
    assert.match(lines[0]!, /^trustvol: /);
    assert.doesNotMatch(lines[0]!, /internal error|at .*\.ts:\d+/, "a TrustvolError, not a crash");
    if (c.says) assert.match(lines[0]!, c.says);
    assert.equal(shaFile(img), before, "device byte-identical");
    if (hdr) assert.equal(shaFile(hdr), hdrBefore, "header byte-identical");
  });
}

// cryptsetup's re-encryption lock held by another process (util-linux flock on the same file: what cryptsetup holds
// while it re-encrypts online or offline): an offline `trustvol reencrypt` is refused before it writes anything —
// a fresh rotation, the resume of an initialised one, and --encrypt of a plain device (with --uuid: the lock's name).
const luksUuid = (img: string) => cs(["luksUUID", img]).stdout.toString().trim();

test("reencrypt refuses while cryptsetup's re-encryption lock is held — one-line error, exit 7, file unchanged", async (t) => {
  if (!needTools(t, "cryptsetup", "flock")) return;
  if (!needCliEngine(t)) return;
  const { dir, cleanup } = fastTmpDir();
  t.after(cleanup);
  const saved = process.env.TRUSTVOL_LUKS2_LOCK_DIR;
  process.env.TRUSTVOL_LUKS2_LOCK_DIR = join(dir, "lockdir"); // the spawned CLI inherits it
  t.after(() => (saved === undefined ? delete process.env.TRUSTVOL_LUKS2_LOCK_DIR : (process.env.TRUSTVOL_LUKS2_LOCK_DIR = saved)));
  const pw = join(dir, "pw");
  writeFileSync(pw, PASSPHRASE, { mode: 0o600 });
  const plainImg = join(dir, "plain.img");
  writePlain(plainImg, 32 * MiB, 13);
  const encUuid = "3f0c9d52-6a1b-4c7e-8d2f-1a2b3c4d5e6f";
  const runs: { name: string; img: string; uuid: string; args: string[] }[] = [
    { name: "rotation", img: luksVolume(dir, pw, "rot.img"), uuid: "", args: [] },
    { name: "resume", img: initOnly(dir, pw, []), uuid: "", args: ["--resume-only"] },
    { name: "encrypt", img: plainImg, uuid: encUuid, args: ["--encrypt", "--header", join(dir, "enc.hdr"), "--uuid", encUuid] },
  ];
  for (const run of runs) {
    const uuid = run.uuid || luksUuid(run.img);
    const lockFile = join(dir, "lockdir", `LN_LUKS2-reencryption-${uuid}`);
    mkdirSync(join(dir, "lockdir"), { recursive: true, mode: 0o700 });
    // one process holds the descriptor (killing it releases the lock), as cryptsetup does
    const holder = spawn("sh", ["-c", 'exec 9>>"$1" && flock -n 9 && echo locked && exec sleep 600', "holder", lockFile], { stdio: ["ignore", "pipe", "ignore"] });
    t.after(() => holder.kill("SIGKILL"));
    await new Promise<void>((res, rej) => {
      holder.stdout!.once("data", () => res());
      holder.once("exit", (c) => rej(new Error(`the lock holder exited (${c})`)));
    });
    assert.notEqual(spawnSync("flock", ["-n", lockFile, "true"]).status, 0, "the holder has the lock");
    const before = shaFile(run.img);
    const r = tv(["reencrypt", "-q", ...run.args, "--key-file", pw, ...FAST_PBKDF, run.img]);
    t.diagnostic(`${run.name}: exit ${r.status}: ${r.stderr.trim()}`);
    const lines = r.stderr.trim().split("\n");
    assert.equal(r.status, 7, `${run.name}: exit 7 (busy): ${r.stderr}`);
    assert.equal(lines.length, 1, `${run.name}: one line: ${r.stderr}`);
    assert.match(lines[0]!, /^trustvol: the device is being re-encrypted .* by another process/);
    assert.equal(shaFile(run.img), before, `${run.name}: device byte-identical`);
    if (run.name === "encrypt") assert.equal(existsSync(join(dir, "enc.hdr")), false, "no detached header written");
    holder.kill("SIGKILL");
    await new Promise((res) => holder.once("exit", res));
  }
  // the lock released: the same rotation runs
  const r = tv(["reencrypt", "-q", "--key-file", pw, ...FAST_PBKDF, runs[0]!.img]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(existsSync(join(dir, "lockdir", `LN_LUKS2-reencryption-${luksUuid(runs[0]!.img)}`)), false, "trustvol removes the lock file on release");
});
