// dm-verity: hash tree format/verify/dump byte-compatible with veritysetup 2.6.1, dm table, root hash signatures.
export {
  type VerityParams,
  type VerityHashAlgorithm,
  type VerityGeometry,
  VERITY_HASH_ALGORITHMS,
  VERITY_SB_SIZE,
  encodeVeritySuperblock,
  parseVeritySuperblock,
  resolveVerityParams,
  verityGeometry,
} from "./superblock.js";
export {
  verityFormat,
  verityVerify,
  verityDump,
  formatVerityDump,
  verityTable,
  parseRootHash,
  VerityVerifyError,
  type VerityCorruption,
  type VerityFormatInput,
  type VerityFormatResult,
  type VerityRunOptions,
  type VerityVerifyOptions,
  type VerityTableOptions,
  type ProgressFn,
} from "./tree.js";
export {
  type RootHashSigner,
  type SignRootHashOptions,
  pemPrivateKeySigner,
  signRootHash,
  verifyRootHashSignature,
  rootHashSignedContent,
} from "./sign.js";
