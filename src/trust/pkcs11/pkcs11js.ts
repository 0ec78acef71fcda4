// pkcs11js is a native addon: loaded on first use, so importing trustvol (or a TPM-only boot) never dlopens it.
import { createRequire } from "node:module";
import type * as Pkcs11js from "pkcs11js";
import { TrustvolError } from "../../util/errors.js";

let mod: typeof Pkcs11js | undefined;

/** The pkcs11js module, or a one-line error saying it is missing (a bundle shipped without it next to it). */
export function loadPkcs11js(): typeof Pkcs11js {
  if (!mod) {
    try {
      mod = createRequire(import.meta.url)("pkcs11js") as typeof Pkcs11js;
    } catch (e) {
      const missing = (e as NodeJS.ErrnoException)?.code === "MODULE_NOT_FOUND";
      throw new TrustvolError(
        "EUNSUPPORTED",
        missing ? "PKCS#11 needs the pkcs11js native module, which is not installed" : "the pkcs11js native module failed to load",
        "install pkcs11js next to trustvol (npm install pkcs11js)",
        { cause: e },
      );
    }
  }
  return mod;
}

/** Stands in for `import pkcs11js from "pkcs11js"`: the first property read loads the addon. */
export const pkcs11js: typeof Pkcs11js = new Proxy({} as typeof Pkcs11js, {
  get: (_t, k) => (loadPkcs11js() as unknown as Record<string | symbol, unknown>)[k],
});
