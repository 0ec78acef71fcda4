// One error type for everything a user can hit: a stable code for scripts, a one-line message, a hint on what to do.

/** Exit codes the CLI promises to scripts (documented in `trustvol --help`). */
export const ExitCode = {
  OK: 0,
  FAILURE: 1, // generic / internal
  USAGE: 2, // bad command line
  NO_KEY: 3, // no passphrase/token/trust source could unlock the volume
  CORRUPT: 4, // on-disk data is damaged or not what it claims to be
  NOT_FOUND: 5, // device, file, token, TPM or object missing
  UNSUPPORTED: 6, // valid but not supported (cipher, requirement, kernel feature)
  BUSY: 7, // locked, in use, TPM lockout, or interrupted at a safe point
  CRITICAL: 8, // `doctor` found a critical finding
  UNENCRYPTED: 9, // `provision`: a volume was left unencrypted, as its config allows (on_failure: continue-unencrypted)
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export type ErrorCode =
  | "EUSAGE"
  | "EBADPASS"
  | "ENOKEY"
  | "ECORRUPT"
  | "ETRUNCATED"
  | "ENOTLUKS"
  | "ENOENT"
  | "EUNSUPPORTED"
  | "ENOSPC"
  | "EBUSY"
  | "EIO"
  | "EPOLICY"
  | "ELOCKOUT"
  | "EDEVICE"
  | "EINTERNAL"
  | "EINTR";

const exitFor: Record<ErrorCode, ExitCodeValue> = {
  EUSAGE: ExitCode.USAGE,
  EBADPASS: ExitCode.NO_KEY,
  ENOKEY: ExitCode.NO_KEY,
  EPOLICY: ExitCode.NO_KEY,
  ECORRUPT: ExitCode.CORRUPT,
  ETRUNCATED: ExitCode.CORRUPT,
  ENOTLUKS: ExitCode.CORRUPT,
  ENOENT: ExitCode.NOT_FOUND,
  EDEVICE: ExitCode.NOT_FOUND,
  EUNSUPPORTED: ExitCode.UNSUPPORTED,
  ENOSPC: ExitCode.FAILURE,
  EBUSY: ExitCode.BUSY,
  ELOCKOUT: ExitCode.BUSY,
  EIO: ExitCode.FAILURE,
  EINTERNAL: ExitCode.FAILURE,
  EINTR: ExitCode.BUSY, // stopped at a safe point (signal): the operation can be resumed
};

export class TrustvolError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  constructor(code: ErrorCode, message: string, hint?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TrustvolError";
    this.code = code;
    this.hint = hint;
  }
  get exitCode(): ExitCodeValue {
    return exitFor[this.code];
  }
  /** The one line the CLI prints: what is wrong, then what to do. */
  oneLine(): string {
    return this.hint ? `${this.message}; ${this.hint}` : this.message;
  }
}

export const corrupt = (message: string, hint?: string) => new TrustvolError("ECORRUPT", message, hint);
export const unsupported = (message: string, hint?: string) => new TrustvolError("EUNSUPPORTED", message, hint);
export const usage = (message: string, hint?: string) => new TrustvolError("EUSAGE", message, hint);
