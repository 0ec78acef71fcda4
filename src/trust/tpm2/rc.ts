// TPM 2.0 response codes (Part 2 §6.6) decoded into TrustvolError with text a user can act on.
import { TrustvolError, type ErrorCode } from "../../util/errors.js";
import { TPM_CC } from "./constants.js";

const FMT1: Record<number, string> = {
  0x001: "ASYMMETRIC", 0x002: "ATTRIBUTES", 0x003: "HASH", 0x004: "VALUE", 0x005: "HIERARCHY", 0x007: "KEY_SIZE",
  0x008: "MGF", 0x009: "MODE", 0x00a: "TYPE", 0x00b: "HANDLE", 0x00c: "KDF", 0x00d: "RANGE", 0x00e: "AUTH_FAIL",
  0x00f: "NONCE", 0x010: "PP", 0x012: "SCHEME", 0x015: "SIZE", 0x016: "SYMMETRIC", 0x017: "TAG", 0x018: "SELECTOR",
  0x01a: "INSUFFICIENT", 0x01b: "SIGNATURE", 0x01c: "KEY", 0x01d: "POLICY_FAIL", 0x01f: "INTEGRITY", 0x020: "TICKET",
  0x021: "RESERVED_BITS", 0x022: "BAD_AUTH", 0x023: "EXPIRED", 0x024: "POLICY_CC", 0x025: "BINDING", 0x026: "CURVE",
  0x027: "ECC_POINT",
};
const VER1: Record<number, string> = {
  0x000: "INITIALIZE", 0x001: "FAILURE", 0x003: "SEQUENCE", 0x00b: "PRIVATE", 0x019: "HMAC", 0x020: "DISABLED",
  0x021: "EXCLUSIVE", 0x024: "AUTH_TYPE", 0x025: "AUTH_MISSING", 0x026: "POLICY", 0x027: "PCR", 0x028: "PCR_CHANGED",
  0x02d: "UPGRADE", 0x02e: "TOO_MANY_CONTEXTS", 0x02f: "AUTH_UNAVAILABLE", 0x030: "REBOOT", 0x031: "UNBALANCED",
  0x042: "COMMAND_SIZE", 0x043: "COMMAND_CODE", 0x044: "AUTHSIZE", 0x045: "AUTH_CONTEXT", 0x046: "NV_RANGE",
  0x047: "NV_SIZE", 0x048: "NV_LOCKED", 0x049: "NV_AUTHORIZATION", 0x04a: "NV_UNINITIALIZED", 0x04b: "NV_SPACE",
  0x04c: "NV_DEFINED", 0x050: "BAD_CONTEXT", 0x051: "CPHASH", 0x052: "PARENT", 0x053: "NEEDS_TEST", 0x054: "NO_RESULT",
  0x055: "SENSITIVE",
};
const WARN: Record<number, string> = {
  0x001: "CONTEXT_GAP", 0x002: "OBJECT_MEMORY", 0x003: "SESSION_MEMORY", 0x004: "MEMORY", 0x005: "SESSION_HANDLES",
  0x006: "OBJECT_HANDLES", 0x007: "LOCALITY", 0x008: "YIELDED", 0x009: "CANCELED", 0x00a: "TESTING", 0x020: "NV_RATE",
  0x021: "LOCKOUT", 0x022: "RETRY", 0x023: "NV_UNAVAILABLE",
};

export interface DecodedRc {
  rc: number;
  /** e.g. "POLICY_FAIL", "LOCKOUT" (TPM_RC_ prefix dropped). */
  name: string;
  /** Which handle / session / parameter the error is about (1-based), if the format says so. */
  subject?: { kind: "handle" | "session" | "parameter"; index: number };
  warning: boolean;
}

export function decodeRc(rc: number): DecodedRc {
  if (rc & 0x080) {
    const name = FMT1[rc & 0x3f] ?? `FMT1_0x${(rc & 0x3f).toString(16)}`;
    const n = (rc >> 8) & 0xf;
    if (rc & 0x040) return { rc, name, subject: { kind: "parameter", index: n }, warning: false };
    if (n === 0) return { rc, name, warning: false };
    if (n & 0x8) return { rc, name, subject: { kind: "session", index: n & 0x7 }, warning: false };
    return { rc, name, subject: { kind: "handle", index: n }, warning: false };
  }
  if (!(rc & 0x100)) return { rc, name: `TPM1.2_0x${rc.toString(16)}`, warning: false };
  if (rc & 0x400) return { rc, name: `VENDOR_0x${rc.toString(16)}`, warning: false };
  if (rc & 0x800) return { rc, name: WARN[rc & 0x7f] ?? `WARN_0x${(rc & 0x7f).toString(16)}`, warning: true };
  return { rc, name: VER1[rc & 0x7f] ?? `VER1_0x${(rc & 0x7f).toString(16)}`, warning: false };
}

const CC_NAMES = new Map<number, string>(Object.entries(TPM_CC).map(([k, v]) => [v, k]));
export const ccName = (cc: number) => CC_NAMES.get(cc) ?? `0x${cc.toString(16)}`;

/** A TPM refused a command. Carries the raw code so callers can map it to a situation-specific message. */
export class TpmRcError extends TrustvolError {
  constructor(
    code: ErrorCode,
    message: string,
    hint: string | undefined,
    readonly rc: number,
    readonly rcName: string,
    readonly commandCode: number,
  ) {
    super(code, message, hint);
  }
}

export function tpmError(rc: number, cc: number): TpmRcError {
  const d = decodeRc(rc);
  const where = d.subject ? ` (${d.subject.kind} ${d.subject.index})` : "";
  const base = `TPM2_${ccName(cc)} failed: TPM_RC_${d.name}${where} 0x${rc.toString(16)}`;
  const mk = (code: ErrorCode, msg: string, hint?: string) => new TpmRcError(code, msg, hint, rc, d.name, cc);
  if (cc === TPM_CC.PolicyAuthorize && d.name === "VALUE")
    return mk("EPOLICY", `${base}: the signed policy does not match the current PCR state`, "the boot chain differs from what the policy signer approved; use the recovery key");
  switch (d.name) {
    case "LOCKOUT":
      return mk("ELOCKOUT", `${base}: the TPM is in dictionary-attack lockout after too many wrong PINs`, "wait for the lockout interval to pass, or clear it with the lockout authorization (tpm2_dictionarylockout --clear-lockout)");
    case "AUTH_FAIL":
    case "BAD_AUTH":
      return mk("EBADPASS", `${base}: wrong PIN or authorization value`, "check the PIN; repeated failures put the TPM into dictionary-attack lockout");
    case "POLICY_FAIL":
      return mk("EPOLICY", `${base}: the TPM policy is not satisfied (PCR values or PIN differ from enrollment)`, "use the recovery key and re-enroll");
    case "PCR_CHANGED":
      return mk("EPOLICY", `${base}: a PCR changed while the policy was being checked`, "retry the unlock");
    case "INTEGRITY":
      return mk("EPOLICY", `${base}: the sealed blob does not belong to this TPM (different TPM, or the TPM was cleared)`, "use the recovery key and re-enroll on this device");
    case "INITIALIZE":
      return mk("EDEVICE", `${base}: the TPM has not been started`, "send TPM2_Startup (the firmware or swtpm --flags startup-clear normally does)");
    case "RETRY":
    case "TESTING":
    case "YIELDED":
      return mk("EBUSY", `${base}: the TPM is busy`, "retry");
    case "OBJECT_MEMORY":
    case "SESSION_MEMORY":
    case "OBJECT_HANDLES":
    case "SESSION_HANDLES":
      return mk("EBUSY", `${base}: the TPM is out of object/session slots`, "flush stale handles (tpm2_flushcontext -t -s) or use /dev/tpmrm0 (resource manager)");
    case "FAILURE":
      return mk("EDEVICE", `${base}: the TPM is in failure mode`, "reboot the device; if it persists, the TPM needs service");
    case "DISABLED":
    case "HIERARCHY":
      return mk("EDEVICE", `${base}: the storage hierarchy is disabled`, "enable the TPM owner hierarchy in firmware setup");
    default:
      return mk("EDEVICE", base, undefined);
  }
}
