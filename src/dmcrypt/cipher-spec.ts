// dm-crypt cipher specifications: "cipher-chainmode-ivmode[:ivopts]" (admin-guide/device-mapper/dm-crypt.rst),
// as written in dm tables, LUKS2 segment/keyslot "encryption" fields ("aes-xts-plain64") and LUKS1 headers
// (cipher_name "aes" + cipher_mode "xts-plain64"). Only what trustvol can run byte-exactly is accepted.
import { TrustvolError } from "../util/errors.js";

export type ChainMode = "xts" | "cbc" | "ecb";
export type IvMode = "plain64" | "plain" | "plain64be" | "essiv:sha256" | "null";

export interface CipherSpec {
  cipher: "aes";
  chainMode: ChainMode;
  ivMode: IvMode;
}

const IV_MODES: readonly IvMode[] = ["plain64", "plain", "plain64be", "essiv:sha256", "null"];
const HINT = "trustvol supports aes-xts-plain64 (the cryptsetup default), aes-cbc-essiv:sha256, aes-{xts,cbc}-{plain64,plain,plain64be,null} and aes-ecb";

function bad(spec: string, why: string): TrustvolError {
  return new TrustvolError("EUNSUPPORTED", `cipher "${spec}" is not supported: ${why}`, HINT);
}

/**
 * Parse "aes-xts-plain64", or the LUKS1-style pair ("aes", "xts-plain64").
 * Kernel compatibility: "aes" and "aes-plain" mean aes-cbc-plain; "aes-ecb" has no IV (ivMode "null").
 */
export function parseCipherSpec(cipher: string, mode?: string): CipherSpec {
  if (typeof cipher !== "string" || !cipher) throw bad(String(cipher), "empty cipher name");
  const full = mode !== undefined && mode !== "" ? `${cipher}-${mode}` : cipher;
  if (full.startsWith("capi:")) throw bad(full, "kernel crypto API (capi:) specifications run only in the kernel");
  const parts = full.split("-");
  const [name, chainRaw, ...rest] = parts;
  const ivRaw = rest.length ? rest.join("-") : undefined;
  if (name.includes(":")) throw bad(full, "multi-key (keycount) ciphers are loop-AES/TrueCrypt formats");
  if (name !== "aes") throw bad(full, `block cipher "${name}" (only aes)`);
  if (rest.length > 1) throw bad(full, "too many '-' separated fields");

  let chain: string;
  let iv: string | undefined;
  if (chainRaw === undefined || (chainRaw === "plain" && ivRaw === undefined)) {
    chain = "cbc"; // dm-crypt's historic default for "aes" / "aes-plain"
    iv = "plain";
  } else {
    chain = chainRaw;
    iv = ivRaw;
  }
  if (chain !== "xts" && chain !== "cbc" && chain !== "ecb") throw bad(full, `chain mode "${chain}"`);
  if (chain === "ecb") {
    if (iv !== undefined && iv !== "null") throw bad(full, "ecb takes no IV");
    return { cipher: "aes", chainMode: "ecb", ivMode: "null" };
  }
  if (iv === undefined) throw bad(full, "an IV mode is required (e.g. plain64)");
  if (iv.startsWith("essiv:") && iv !== "essiv:sha256") throw bad(full, `essiv hash "${iv.slice(6)}" (only sha256)`);
  if (!(IV_MODES as readonly string[]).includes(iv)) throw bad(full, `IV mode "${iv}"`);
  return { cipher: "aes", chainMode: chain, ivMode: iv as IvMode };
}

/** Canonical dm-crypt / LUKS2 string: "aes-xts-plain64", "aes-cbc-essiv:sha256", "aes-ecb". */
export function formatCipherSpec(s: CipherSpec): string {
  if (s.chainMode === "ecb") return `${s.cipher}-ecb`;
  return `${s.cipher}-${s.chainMode}-${s.ivMode}`;
}

/** Key sizes (bytes) the kernel and OpenSSL accept for a chain mode. XTS keys are two AES keys back to back. */
export function validKeySizes(chainMode: ChainMode): readonly number[] {
  return chainMode === "xts" ? [32, 64] : [16, 24, 32];
}
