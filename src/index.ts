// trustvol's library API. Formats are pure functions over Buffers; I/O goes through BlockDevice.
// Importing this loads no native module and no ASN.1 code: PKCS#11 tools and dm-verity live in `trustvol/pkcs11` and
// `trustvol/verity`; pkcs11js and argon2 load on first use.
export { TrustvolError, ExitCode, type ErrorCode } from "./util/errors.js";
export { wipe, withSecret } from "./util/secret.js";
export { atomicWriteFileSync } from "./util/atomic.js";
export type { BlockDevice } from "./blockdev/types.js";
export { FileBlockDevice } from "./blockdev/file.js";
export { MemoryBlockDevice } from "./blockdev/memory.js";
export { CryptBlockDevice } from "./blockdev/crypt.js";
export * from "./dmcrypt/index.js";
// LUKS2 / LUKS1
export * from "./luks2/index.js";
// lifecycle operations
export * from "./ops/index.js";
// trust sources and token codecs
export type { TrustSourceInfo, SealPolicy, SealedBlob, TrustSourceKind } from "./trust/types.js";
export * from "./tokens/index.js";
export { Tpm2TrustSource } from "./trust/tpm2/index.js";
export { Pkcs11TrustSource } from "./trust/pkcs11/source.js";
