// trustvol's library API. Formats are pure functions over Buffers; I/O goes through BlockDevice.
export { TrustvolError, ExitCode, type ErrorCode } from "./util/errors.js";
export { wipe, withSecret } from "./util/secret.js";
export { atomicWriteFileSync } from "./util/atomic.js";
export type { BlockDevice } from "./blockdev/types.js";
export { FileBlockDevice } from "./blockdev/file.js";
export { MemoryBlockDevice } from "./blockdev/memory.js";
export { CryptBlockDevice } from "./blockdev/crypt.js";
export * from "./dmcrypt/index.js";
// LUKS2 / LUKS1
export { Luks2Volume, type UnlockResult } from "./luks2/volume.js";
export { formatLuks2, planFormat, type FormatOptions } from "./luks2/format.js";
export { readHeader, writeHeader, probeLuksVersion, type Luks2Header } from "./luks2/header.js";
export { validateMetadata, type Luks2Metadata, type Luks2Keyslot, type Luks2Token, type Luks2Segment, type Luks2Digest } from "./luks2/metadata.js";
export { backupHeader, restoreHeader } from "./luks2/backup.js";
export { dumpText, dumpJson } from "./luks2/dump.js";
export type { PbkdfOptions } from "./luks2/kdf.js";
export { readLuks1Header, unlockLuks1, type Luks1Header } from "./luks1/luks1.js";
// lifecycle operations
export { LuksHandle, type DataArea } from "./ops/volume.js";
export { encryptImage, decryptImage, type EncryptImageOptions, type DecryptImageOptions } from "./ops/image.js";
export { unlockWithTokens, enrollToken, resolveWipeSlots, resolveWipeSlotsFull, findEmptyPassphraseSlots, registerTokenHandler, type TokenHandler, type TokenUnlockContext } from "./ops/tokens.js";
import "./ops/handlers.js";
export { createIdentity, identityCsr, identityImportCert, identityShow } from "./ops/identity.js";
// trust sources and token codecs
export type { TrustSource, TrustSourceInfo, SealPolicy, SealedBlob, TrustSourceKind } from "./trust/types.js";
export * as pkcs11 from "./trust/pkcs11/index.js";
export * as systemdPkcs11 from "./tokens/systemd-pkcs11.js";
export * as verity from "./verity/index.js";
export * as systemdTpm2 from "./tokens/systemd-tpm2.js";
export * as clevis from "./tokens/clevis.js";
export * as systemdRecovery from "./tokens/systemd-recovery.js";
export { Tpm2TrustSource } from "./trust/tpm2/index.js";
export { Pkcs11TrustSource } from "./trust/pkcs11/index.js";
