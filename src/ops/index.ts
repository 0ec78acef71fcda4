// Lifecycle operations with the CLI's defaults: `trustvol/ops`.
export { LuksHandle, type DataArea } from "./volume.js";
export { encryptImage, decryptImage, type EncryptImageOptions, type DecryptImageOptions } from "./image.js";
export { unlockWithTokens, enrollToken, resolveWipeSlots, registerTokenHandler, tokenHandler, type TokenHandler, type TokenUnlockContext, type TokenUnlockResult } from "./tokens.js";
export { openLuks, openPlain, closeVolume, type OpenResult, type ActivateOptions, type CloseResult } from "./open.js";
export { runDoctor, formatDoctor, type DoctorReport, type DoctorOptions, type Finding } from "./doctor.js";
