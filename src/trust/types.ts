// Value types shared by the trust-source classes (Tpm2TrustSource, Pkcs11TrustSource, KernelTrustedSource): each seals a
// short secret to an opaque blob that only this device's hardware can open again, under a policy (PCR values, PIN,
// token login). There is no common TrustSource interface: LUKS2 tokens are unlocked through TokenHandler
// (ops/tokens.ts, the one extension point), whose handlers call the source-specific APIs their token formats need.

export type TrustSourceKind = "tpm2" | "pkcs11" | "kernel-trusted" | "caam" | "dcp" | "tee";

export interface TrustSourceInfo {
  kind: TrustSourceKind;
  /** e.g. "swtpm (unix socket /tmp/x/sock)", "/dev/tpmrm0 (STM TPM 2.0, fw 1.38)", "SoftHSM token 'lmp'". */
  description: string;
  /** True when the secret material is protected by hardware (false for simulators and software tokens). */
  hardwareBacked: boolean;
  /** Free-form facts for `doctor` and `--json` (manufacturer, firmware, PCR banks, ...). */
  details?: Record<string, unknown>;
}

/** What a sealed secret is bound to; each source reads the fields it understands and rejects ones it can't honour. */
export interface SealPolicy {
  /** TPM: PCR indexes to bind to (current values are used unless pcrValues is given). */
  pcrs?: number[];
  pcrBank?: "sha1" | "sha256" | "sha384" | "sha512";
  /** Expected PCR values (index -> digest) for predicting a policy offline. */
  pcrValues?: Map<number, Uint8Array>;
  /** A PIN the user must supply at unseal time (TPM authValue, token user PIN). Wiped by the caller. */
  pin?: Uint8Array;
}

/** Opaque output of seal(): `data` is what goes to disk or into a LUKS2 token; `meta` is source-specific. */
export interface SealedBlob {
  kind: TrustSourceKind;
  data: Uint8Array;
  meta: Record<string, unknown>;
}
