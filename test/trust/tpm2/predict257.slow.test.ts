// PCR prediction against systemd 257's own tools in the Debian 13 root: the Authenticode hash of an EFI binary
// (systemd-pcrlock lock-pe records it for PCR 4) and PCR 11 of a UKI (systemd-measure calculate).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { hasTool, needTools, tmpDir } from "../../helpers/tools.js";
import { trustvolInProcess } from "../../helpers/cli.js";
import { DEB13_WORK, needDebian13, runInDebian13 } from "../../helpers/debian13.js";
import { makePe } from "../../helpers/boot-chain.js";
import { authenticodeHash } from "../../../src/trust/tpm2/predict.js";

test("Authenticode of EFI binaries equals systemd-pcrlock lock-pe's record (every bank; with trailing data)", (t) => {
  if (!needTools(t, "unshare")) return;
  const root = needDebian13(t);
  if (!root) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  for (const [name, pe] of [["a.efi", makePe("a")], ["b.efi", makePe("b", 200)]] as const) {
    writeFileSync(join(dir, name), pe);
    runInDebian13(root, "/usr/lib/systemd/systemd-pcrlock", ["lock-pe", "--pcr=4", `--pcrlock=${DEB13_WORK}/${name}.pcrlock`, `${DEB13_WORK}/${name}`], { work: dir });
    const rec = JSON.parse(readFileSync(join(dir, `${name}.pcrlock`), "utf8")).records[0];
    assert.equal(rec.pcr, 4);
    for (const d of rec.digests as { hashAlg: "sha1" | "sha256" | "sha384" | "sha512"; digest: string }[]) assert.equal(authenticodeHash(d.hashAlg, pe).toString("hex"), d.digest, `${name} ${d.hashAlg}`);
  }
});

test("tpm2 predict PCR 11 equals systemd-measure calculate (phase enter-initrd)", async (t) => {
  if (!hasTool("unshare")) return t.skip("unshare");
  const root = needDebian13(t);
  if (!root) return;
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  writeFileSync(join(dir, "linux"), makePe("kernel"));
  writeFileSync(join(dir, "osrel"), "ID=trustvol\nVERSION_ID=2\n");
  writeFileSync(join(dir, "cmdline"), "root=/dev/mapper/root ro\n");
  writeFileSync(join(dir, "initrd"), Buffer.alloc(5000, 3));
  const sd = runInDebian13(root, "/usr/lib/systemd/systemd-measure", ["calculate", "--bank=sha256", "--phase=enter-initrd", ...["linux", "osrel", "cmdline", "initrd"].map((s) => `--${s}=${DEB13_WORK}/${s}`)], { work: dir }).stdout.toString();
  const want = /11:sha256=([0-9a-f]{64})/i.exec(sd)?.[1];
  assert.ok(want, sd);
  // systemd-measure 257 does not pad the PE kernel to SizeOfImage (258 does; the stub measures the padding)
  const r = await trustvolInProcess(["tpm2", "predict", "--no-linux-padding", ...["linux", "osrel", "cmdline", "initrd"].flatMap((s) => [`--${s}`, join(dir, s)])]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), `11:sha256=${want!.toLowerCase()}`);
});
