// LUKS2 token codecs (systemd-cryptenroll and clevis compatible): `trustvol/tokens`.
export * as systemdTpm2 from "./systemd-tpm2.js";
export * as systemdPkcs11 from "./systemd-pkcs11.js";
export * as systemdRecovery from "./systemd-recovery.js";
export * as clevis from "./clevis.js";
export { registerTokenHandler, tokenHandler, type TokenHandler, type TokenUnlockContext } from "../ops/tokens.js";
