// `trustvol dump`: runs at boot, so it imports only the header readers and printers; --dump-volume-key loads the
// unlock code when asked. run.ts calls dumpCommand directly for a plain `dump DEVICE [--json]` (no commander).
import { io, printJson, verbatim } from "../io.js";
import { TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { dumpText, dumpJson } from "../../luks2/dump.js";
import { dumpLuks1Text } from "../../luks1/luks1.js";
import { LuksHandle } from "../../ops/volume.js";

export async function dumpCommand(device: string, o: Record<string, unknown>): Promise<void> {
  const h = await LuksHandle.open(device, { header: o.header as string | undefined, readOnly: true });
  try {
    if (o.dumpVolumeKey) {
      const dest = o.volumeKeyFile as string | undefined;
      if (!dest) throw new TrustvolError("EUSAGE", "--dump-volume-key needs --volume-key-file", "the volume key is never printed to a terminal");
      if (dest === "-" && process.stdout.isTTY) throw new TrustvolError("EUSAGE", "refusing to write the volume key to a terminal", "redirect stdout or name a file");
      const { getPassphrase, keyFileLimits } = await import("../secrets.js");
      const pass = await getPassphrase({ keyFile: o.keyFile as string | undefined, prompt: `Enter passphrase for ${device}: `, ...keyFileLimits(o) });
      const { volumeKey } = await h.unlock(pass).finally(() => wipe(pass));
      try {
        if (dest === "-") io.out(volumeKey);
        else if (/^\/dev\/fd\/[0-9]+$/.test(dest)) (await import("node:fs")).writeFileSync(dest, volumeKey); // a descriptor the caller opened for us
        else (await import("../../util/atomic.js")).atomicWriteFileSync(dest, volumeKey, 0o600);
      } finally {
        wipe(volumeKey);
      }
      if (dest === "-") return;
    }
    if (h.luks2) {
      if (o.json) {
        const { version, metadata, ...rest } = dumpJson(h.luks2);
        printJson({ luks_version: version, ...rest, metadata: verbatim(metadata) }); // metadata: the header's JSON as stored
      } else io.out(dumpText(h.luks2));
    } else if (o.json) {
      const { version, ...rest } = h.luks1!;
      printJson({ luks_version: version, ...rest });
    } else io.out(dumpLuks1Text(h.luks1!, (o.header as string | undefined) ?? device)); // (cryptsetup names the metadata device)
  } finally {
    await h.close();
  }
}
