// The runs scripts/build-cli.mjs makes each boot program do before it writes the program's V8 code cache, so that the
// cache holds the functions a start really compiles (src/cli/boot-script.ts). Ordinary runs on a throw-away 8 MiB
// image file in a temporary directory: an encryption in place and a key rotation (boot-lifecycle), then dump and a
// passphrase unlock test of the result (boot-volume). Nothing touches device-mapper, a device or the keyring: the
// kernel program (open, close…) only builds its command line.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";

export function trainingRuns() {
  const dir = mkdtempSync(join(tmpdir(), "trustvol-cache-training-"));
  const img = join(dir, "image.img");
  const pw = join(dir, "passphrase");
  writeFileSync(img, randomBytes(8 << 20), { mode: 0o600 });
  writeFileSync(pw, "code-cache-training", { mode: 0o600 });
  const kdf = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
  return {
    dir,
    runs: {
      "boot-lifecycle": [
        ["reencrypt", "--encrypt", "-q", "--reduce-device-size", "2M", ...kdf, "--key-file", pw, img],
        ["reencrypt", "-q", ...kdf, "--key-file", pw, img],
      ],
      "boot-volume": [
        ["dump", img],
        ["unlock", "--test", "--key-file", pw, img],
      ],
      "boot-kernel": [["open", "--help"]],
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
