// --wipe-slot selectors judged by systemd-cryptenroll 257 on the same header: each spec is applied by both tools
// (each enrolling a TPM2 keyslot on its own copy) and the surviving keyslots and tokens must be the same.
import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { swtpmForFile } from "../helpers/swtpm.js";
import { run } from "../helpers/tools.js";
import { trustvolInProcess } from "../helpers/cli.js";
import { DEB13_WORK, deb13SwtpmDevice, needDebian13, runInDebian13 } from "../helpers/debian13.js";
import { TrustvolError } from "../../src/util/errors.js";
import { resolveWipeSlots } from "../../src/ops/tokens.js";
import { LuksHandle } from "../../src/ops/volume.js";

const fx = swtpmForFile(["swtpm", "cryptsetup"]);
const PBKDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

// systemd 257 wrote this tpm2 token; only type and keyslots matter here (the enrollments below use PCRs 7+8, so
// systemd-cryptenroll does not mistake it for the same enrollment and keep it as "already enrolled")
const TPM2_TOKEN = {
  type: "systemd-tpm2", keyslots: ["3"],
  "tpm2-blob": "AJ4AIGIjcRyinDYEszAqU8EBMStFefxo2jkQHHV+xTQH8VTAABDidb7+3Mlw/dTANmGrk0p6XHovapelspuJ9pO1xATomNNOpnZG9+Jf20HzqAYw38GIIbvl8KPUXRA2rjvYQ3Ro7fuRl5IGTZa+xniEWLKCc+1egqwhQKCgBpkw0GinEEsFiF6w0i4FhqniEEGkZ0oUiiSXEJKc8G0UowBOAAgACwAABBIAIItWgtgbKUNdCNeSeBUGEdx+WSOy/vzOaEoJV3tAEwqLABAAIHRKRBxaMXDuVcSIsM56oiGY+FDTAR0SrwdiV3Lm56zx",
  "tpm2-pcrs": [7], "tpm2-pcr-bank": "sha256", "tpm2-primary-alg": "ecc", "tpm2-policy-hash": "8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b",
};

/**
 * Keyslots: 0 factory password, 1 empty passphrase, 2 systemd-recovery, 3 systemd-tpm2, 4 systemd-pkcs11,
 * 5+6 one foreign token listing both, 7 another password.
 */
function fixture(dir: string): string {
  const img = join(dir, "wipe.img");
  writeFileSync(join(dir, "factory"), "factory", { mode: 0o600 });
  writeFileSync(join(dir, "empty"), "", { mode: 0o600 });
  run("truncate", ["-s", "20M", img]);
  run("cryptsetup", ["luksFormat", "-q", "--type", "luks2", ...PBKDF, "--key-file", join(dir, "factory"), img]);
  const add = (slot: number, keyFile: string) => run("cryptsetup", ["luksAddKey", "-q", ...PBKDF, "--key-file", join(dir, "factory"), "--key-slot", String(slot), img, keyFile]);
  add(1, join(dir, "empty"));
  for (const s of [2, 3, 4, 5, 6, 7]) {
    writeFileSync(join(dir, `pw${s}`), `passphrase ${s}`, { mode: 0o600 });
    add(s, join(dir, `pw${s}`));
  }
  const tokens: [number, unknown][] = [
    [0, { type: "systemd-recovery", keyslots: ["2"] }],
    [1, TPM2_TOKEN],
    [2, { type: "systemd-pkcs11", keyslots: ["4"], "pkcs11-uri": "pkcs11:token=lmp;object=luks", "pkcs11-key": Buffer.alloc(256, 9).toString("base64") }],
    [3, { type: "trustvol-test", keyslots: ["5", "6"] }],
  ];
  for (const [id, t] of tokens) run("cryptsetup", ["token", "import", "--token-id", String(id), img], { input: JSON.stringify(t) });
  return img;
}

function survivors(img: string): { keyslots: number[]; tokens: string[] } {
  const m = JSON.parse(run("cryptsetup", ["luksDump", "--dump-json-metadata", img]).stdout.toString());
  return {
    keyslots: Object.keys(m.keyslots).map(Number).sort((a, b) => a - b),
    tokens: Object.values(m.tokens as Record<string, { type: string; keyslots: string[] }>).map((t) => `${t.type}:${t.keyslots.join("+")}`).sort(),
  };
}

test("--wipe-slot: every systemd selector leaves the same keyslots and tokens as systemd-cryptenroll 257", async (t) => {
  if (!fx.ready(t)) return;
  const root = needDebian13(t);
  if (!root) return;
  const { tpmDir, device } = deb13SwtpmDevice(fx.sw.sock);
  const base = fixture(fx.dir);
  const specs = ["all", "empty", "password", "recovery", "pkcs11", "fido2", "tpm2", "5", "0,2", "empty,tpm2", "password,recovery,31"];
  for (const spec of specs) {
    const sd = join(fx.dir, "sd.img");
    const tv = join(fx.dir, "tv.img");
    copyFileSync(base, sd);
    copyFileSync(base, tv);
    const r = runInDebian13(root, "systemd-cryptenroll", [`--unlock-key-file=${DEB13_WORK}/pw7`, `--tpm2-device=${device}`, "--tpm2-pcrs=7+8", `--wipe-slot=${spec}`, `${DEB13_WORK}/sd.img`], { work: fx.dir, tpmDir, check: false });
    const mine = await trustvolInProcess(["enroll", "tpm2", tv, "--tpm2-device", fx.sw.device, "--pcrs", "7,8", "--key-file", join(fx.dir, "pw7"), "--wipe-slot", spec]);
    if (spec.endsWith(",31")) {
      // systemd warns about the missing slot, wipes the rest and fails; trustvol refuses before changing anything
      assert.notEqual(r.status, 0, spec);
      assert.notEqual(mine.status, 0, spec);
      assert.match(mine.stderr, /keyslot 31 is not in use.*nothing was changed/);
      assert.deepEqual(survivors(tv), survivors(base));
      continue;
    }
    assert.equal(r.status, 0, `${spec}: ${r.stderr}`);
    assert.equal(mine.status, 0, `${spec}: ${mine.stderr}`);
    assert.deepEqual(survivors(tv), survivors(sd), `--wipe-slot=${spec}`);
  }
});

test("--wipe-slot: bad selectors are one-line usage errors (resolved before anything is written)", async (t) => {
  if (!fx.ready(t)) return;
  const img = fixture(fx.dir);
  const h = await LuksHandle.open(img, { readOnly: true });
  try {
    const v = h.requireLuks2("test");
    for (const bad of ["", "bogus", "32", "01", "-1", "tpm2,", "password,,all", "x".repeat(500)])
      assert.throws(() => resolveWipeSlots(v, bad, []), (e: unknown) => e instanceof TrustvolError && e.code === "EUSAGE" && !e.message.includes("\n") && e.message.length < 200, JSON.stringify(bad).slice(0, 40));
    assert.deepEqual(resolveWipeSlots(v, "5"), [5, 6]); // the foreign token's other keyslot goes with it
    assert.deepEqual(resolveWipeSlots(v, "password"), [0, 1, 7]);
    assert.deepEqual(resolveWipeSlots(v, "recovery,pkcs11"), [2, 4]);
    assert.deepEqual(resolveWipeSlots(v, undefined), []);
  } finally {
    await h.close();
  }
});
