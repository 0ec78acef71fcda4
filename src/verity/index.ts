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
export { pkcs11RootHashSigner, type Pkcs11RootHashSigner, type Pkcs11RootHashSignerOptions } from "./pkcs11-signer.js";
export {
  verityOpen,
  verityClose,
  verityStatus,
  checkDeviceMapperVerity,
  VERITY_DM_UUID_PREFIX,
  type VerityOpenOptions,
  type VerityOpenResult,
  type VerityCloseResult,
  type VerityStatus,
} from "./activate.js";
export {
  verityFecEncode,
  verityFecCheck,
  verityFecLayout,
  rsEncode,
  FEC_MIN_ROOTS,
  FEC_MAX_ROOTS,
  FEC_DEFAULT_ROOTS,
  type VerityFecOptions,
  type VerityFecLayout,
} from "./fec.js";
