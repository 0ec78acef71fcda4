// TPM 2.0 Library, Part 2 (Structures) constants used by trustvol. Values from the spec tables.

export const TPM_ST = { NO_SESSIONS: 0x8001, SESSIONS: 0x8002 } as const;

export const TPM_SU = { CLEAR: 0x0000, STATE: 0x0001 } as const;

/** Command codes (Part 2, Table 12). */
export const TPM_CC = {
  EvictControl: 0x0120,
  NV_UndefineSpace: 0x0122,
  Clear: 0x0126,
  HierarchyChangeAuth: 0x0129,
  NV_DefineSpace: 0x012a,
  CreatePrimary: 0x0131,
  DictionaryAttackLockReset: 0x0139,
  SelfTest: 0x0143,
  Startup: 0x0144,
  Shutdown: 0x0145,
  NV_Write: 0x0137,
  PolicyNV: 0x0149,
  NV_Read: 0x014e,
  Create: 0x0153,
  Load: 0x0157,
  Unseal: 0x015e,
  ContextSave: 0x0162,
  FlushContext: 0x0165,
  LoadExternal: 0x0167,
  PolicyAuthorize: 0x016a,
  PolicyAuthValue: 0x016b,
  NV_ReadPublic: 0x0169,
  PolicyCommandCode: 0x016c,
  PolicyOR: 0x0171,
  ReadPublic: 0x0173,
  StartAuthSession: 0x0176,
  VerifySignature: 0x0177,
  GetCapability: 0x017a,
  GetRandom: 0x017b,
  PCR_Read: 0x017e,
  PolicyPCR: 0x017f,
  PCR_Extend: 0x0182,
  PolicyGetDigest: 0x0189,
  PolicyPassword: 0x018c,
  PolicyAuthorizeNV: 0x0192,
} as const;

/** Algorithm ids (Part 2, Table 9 / TCG Algorithm Registry). */
export const TPM_ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  KEYEDHASH: 0x0008,
  XOR: 0x000a,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  CTR: 0x0040,
  OFB: 0x0041,
  CBC: 0x0042,
  CFB: 0x0043,
  ECB: 0x0044,
} as const;

export const TPM_ECC = { NIST_P256: 0x0003, NIST_P384: 0x0004 } as const;

/** Permanent handles (Part 2, Table 28) and handle ranges. */
export const TPM_RH = {
  OWNER: 0x40000001,
  NULL: 0x40000007,
  PW: 0x40000009, // TPM_RS_PW
  LOCKOUT: 0x4000000a,
  ENDORSEMENT: 0x4000000b,
  PLATFORM: 0x4000000c,
} as const;

export const HR = { PCR: 0x00, HMAC_SESSION: 0x02, POLICY_SESSION: 0x03, TRANSIENT: 0x80, PERSISTENT: 0x81 } as const;

/** TPMA_OBJECT bits (Part 2, Table 31). */
export const TPMA_OBJECT = {
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
} as const;

/** TPMA_SESSION bits (Part 2, Table 32). */
export const TPMA_SESSION = {
  continueSession: 0x01,
  auditExclusive: 0x02,
  auditReset: 0x04,
  decrypt: 0x20, // first command parameter is encrypted by the caller
  encrypt: 0x40, // first response parameter is encrypted by the TPM
  audit: 0x80,
} as const;

export const TPM_SE = { HMAC: 0x00, POLICY: 0x01, TRIAL: 0x03 } as const;

export const TPM_CAP = {
  ALGS: 0x00000000,
  HANDLES: 0x00000001,
  COMMANDS: 0x00000002,
  PP_COMMANDS: 0x00000003,
  AUDIT_COMMANDS: 0x00000004,
  PCRS: 0x00000005,
  TPM_PROPERTIES: 0x00000006,
  PCR_PROPERTIES: 0x00000007,
  ECC_CURVES: 0x00000008,
} as const;

export const TPM_PT = {
  FAMILY_INDICATOR: 0x100,
  MANUFACTURER: 0x105,
  VENDOR_STRING_1: 0x106,
  VENDOR_STRING_2: 0x107,
  VENDOR_STRING_3: 0x108,
  VENDOR_STRING_4: 0x109,
  FIRMWARE_VERSION_1: 0x10b,
  FIRMWARE_VERSION_2: 0x10c,
  PCR_COUNT: 0x112,
  LOCKOUT_COUNTER: 0x20e,
  MAX_AUTH_FAIL: 0x20f,
  LOCKOUT_INTERVAL: 0x210,
  LOCKOUT_RECOVERY: 0x211,
} as const;

export type HashName = "sha1" | "sha256" | "sha384" | "sha512";

export const HASH_ALG: Record<HashName, number> = { sha1: TPM_ALG.SHA1, sha256: TPM_ALG.SHA256, sha384: TPM_ALG.SHA384, sha512: TPM_ALG.SHA512 };

export function hashNameOf(alg: number): HashName {
  for (const [n, v] of Object.entries(HASH_ALG)) if (v === alg) return n as HashName;
  throw new Error(`unsupported TPM hash algorithm 0x${alg.toString(16)}`);
}

export const HASH_SIZE: Record<HashName, number> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };

export function isHashName(s: unknown): s is HashName {
  return s === "sha1" || s === "sha256" || s === "sha384" || s === "sha512";
}
