// dm-crypt sector engine: cipher specifications and in-place sector encryption (native addon, or a fallback over node:crypto).
export { parseCipherSpec, formatCipherSpec, validKeySizes, type CipherSpec, type ChainMode, type IvMode } from "./cipher-spec.js";
export { createSectorCipher, nativeAvailable, type SectorCipher, type SectorCipherOptions } from "./sector-cipher.js";
