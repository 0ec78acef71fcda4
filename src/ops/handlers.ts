// The token types trustvol unlocks, registered in one place (imported for its side effect by the CLI and the library
// index). Each codec is loaded only when a token of its type is met: PKCS#11 and ASN.1 code stays out of a TPM boot.
import { registerTokenHandler } from "./tokens.js";

registerTokenHandler({
  type: "systemd-pkcs11",
  passphrase: async (token, ctx) => {
    const { unlockSystemdPkcs11Token } = await import("../tokens/systemd-pkcs11.js");
    return unlockSystemdPkcs11Token(token, { pin: ctx.pin ? { kind: "buffer", pin: ctx.pin } : undefined, ...(ctx.pkcs11Module ? { modulePath: ctx.pkcs11Module } : {}) });
  },
});
