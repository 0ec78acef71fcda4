// Lifecycle operations with the CLI's defaults: `trustvol/ops`.
export { LuksHandle, type DataArea } from "./volume.js";
export { encryptImage, decryptImage, type EncryptImageOptions, type DecryptImageOptions } from "./image.js";
export { unlockWithTokens, enrollToken, resolveWipeSlots, resolveWipeSlotsFull, findEmptyPassphraseSlots, registerTokenHandler, tokenHandler, type TokenHandler, type TokenUnlockContext, type TokenUnlockResult } from "./tokens.js";
export { openLuks, openPlain, closeVolume, type OpenResult, type ActivateOptions, type CloseResult } from "./open.js";
export { createCaamVolume, openCaamVolume, readCaamVolumeDescriptor, type CaamVolumeDescriptor, type CreateCaamVolumeOptions } from "./caam-volume.js";
export { reencryptOnline, findActiveMapping, type OnlineReencryptOptions, type OnlineReencryptResult } from "./reencrypt-online.js";
export { runDoctor, formatDoctor, type DoctorReport, type DoctorOptions, type Finding } from "./doctor.js";
export { unlock, type UnlockOptions, type VolumeUnlockResult, type SecretInput, type PinInput } from "./unlock.js";
export { enrollTpm2, enrollPkcs11, enrollClevis, enrollRecovery, CLEVIS_KEYSLOT_PBKDF, type EnrollOptions, type EnrollResult, type EnrollUnlock, type EnrollTpm2Options, type EnrollPkcs11Options, type EnrollClevisOptions, type EnrollRecoveryOptions } from "./enroll.js";
export { TOKEN_KEYSLOT_PBKDF } from "./tokens.js";
export { stageTpm2Update, commitTpm2Update, abortTpm2Update, updateTokens, UPDATE_FIELD, type UpdateCommitOptions, type UpdateCommitResult } from "./tpm2-update.js";
export { probeSignature, probePath } from "./probe.js";
export { provision, resolveDevice, TRANSITIONAL_PASSPHRASE, type ProvisionOptions, type ProvisionReport, type VolumeReport, type ProvisionStage } from "./provision.js";
export { loadProvisionConfig, parseProvisionConfig, type ProvisionConfig, type VolumeConfig } from "../provision/config.js";
export { readVolumeState, type VolumeState, type ProvisionStateName } from "../provision/state.js";
