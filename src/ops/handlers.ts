// The token types trustvol unlocks, registered in one place (imported for its side effect by the CLI and the library index).
import { registerTokenHandler } from "./tokens.js";
import { unlockSystemdPkcs11Token, SYSTEMD_PKCS11_TYPE } from "../tokens/systemd-pkcs11.js";

registerTokenHandler({
  type: SYSTEMD_PKCS11_TYPE,
  passphrase: (token, ctx) =>
    unlockSystemdPkcs11Token(token, { pin: ctx.pin ? { kind: "buffer", pin: ctx.pin } : undefined, ...(ctx.pkcs11Module ? { modulePath: ctx.pkcs11Module } : {}) }),
});
