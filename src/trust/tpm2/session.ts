// Authorization sessions (Part 1 §19): password, HMAC and policy sessions with command/response HMACs, nonces,
// salting and AES-CFB parameter encryption.
import { randomFillSync } from "node:crypto";
import { TrustvolError } from "../../util/errors.js";
import { constantTimeEqual, wipe } from "../../util/secret.js";
import { HASH_SIZE, TPMA_SESSION, TPM_RH, TPM_SE, type HashName } from "./constants.js";
import { aesCfb, cfbKeyIv, hmacOf, kdfa } from "./crypto.js";
import { encode } from "./schema.js";
import { AUTH_COMMAND } from "./structures.js";

/** Auth values are compared by the TPM with trailing zero octets removed (Part 1 §19.6.4.3 / §19.6.5). */
export function trimAuth(a: Uint8Array | undefined): Buffer {
  if (!a) return Buffer.alloc(0);
  let n = a.length;
  while (n > 0 && a[n - 1] === 0) n--;
  return Buffer.from(a.subarray(0, n));
}

export interface Session {
  readonly handle: number;
  attributes: number;
  /** Marshalled TPMS_AUTH_COMMAND for this command. entityAuth: the authValue of the handle this session authorises. */
  commandAuth(cpHashFor: (h: HashName) => Buffer, entityAuth: Uint8Array | undefined, authorizes: boolean): Buffer;
  /** Check the TPMS_AUTH_RESPONSE and absorb the new nonce. */
  responseAuth(rpHashFor: (h: HashName) => Buffer, nonceTPM: Buffer, attrs: number, hmac: Buffer, entityAuth: Uint8Array | undefined, authorizes: boolean): void;
  /** Encrypt a command parameter / decrypt a response parameter in place of the body (after the TPM2B size). */
  paramCrypt?(decrypt: boolean, data: Buffer, entityAuth: Uint8Array | undefined, authorizes: boolean, direction: "cmd" | "rsp"): Buffer;
  /** Whether the TPM flushed it (continueSession clear after a successful command). */
  closed: boolean;
}

/** TPM_RS_PW: the authValue in the clear. Only over a trusted bus, or for empty auth. */
export class PasswordSession implements Session {
  readonly handle = TPM_RH.PW;
  attributes = TPMA_SESSION.continueSession;
  closed = false;
  commandAuth(_: unknown, entityAuth: Uint8Array | undefined): Buffer {
    const hmac = Buffer.from(entityAuth ?? Buffer.alloc(0)); // a password session carries the authValue itself
    try {
      return encode(AUTH_COMMAND, { sessionHandle: this.handle, nonce: Buffer.alloc(0), sessionAttributes: this.attributes, hmac }, 16);
    } finally {
      wipe(hmac);
    }
  }
  responseAuth(_: unknown, nonceTPM: Buffer, _attrs: number, hmac: Buffer): void {
    if (nonceTPM.length || hmac.length) throw new TrustvolError("EDEVICE", "TPM answered a password session with a nonce or HMAC", "the TPM or something on the bus misbehaves");
  }
}

/** An HMAC or policy session started by StartAuthSession. */
export class AuthSession implements Session {
  closed = false;
  nonceCaller: Buffer;
  /** Set once the policy contains PolicyAuthValue (HMAC then includes the object's authValue) or PolicyPassword. */
  policyAuthValue = false;
  policyPassword = false;
  constructor(
    readonly handle: number,
    readonly type: number,
    readonly hash: HashName,
    public nonceTPM: Buffer,
    nonceCaller: Buffer,
    private sessionKey: Buffer,
    /** Parameter-encryption cipher key size in bits (AES-CFB), or 0 when the session has no symmetric cipher. */
    readonly symKeyBits: number,
    public attributes: number = TPMA_SESSION.continueSession,
  ) {
    this.nonceCaller = nonceCaller;
  }

  get isPolicy(): boolean {
    return this.type === TPM_SE.POLICY || this.type === TPM_SE.TRIAL;
  }

  /** Whether the entity's authValue enters the HMAC / encryption key (Part 1 §19.6.8, §21.3). */
  private includesAuth(authorizes: boolean): boolean {
    if (!authorizes) return false;
    return this.isPolicy ? this.policyAuthValue : true;
  }
  private hmacKey(entityAuth: Uint8Array | undefined, authorizes: boolean): Buffer {
    const a = this.includesAuth(authorizes) ? trimAuth(entityAuth) : Buffer.alloc(0);
    const k = Buffer.concat([this.sessionKey, a]);
    wipe(a);
    return k;
  }

  commandAuth(cpHashFor: (h: HashName) => Buffer, entityAuth: Uint8Array | undefined, authorizes: boolean): Buffer {
    if (this.closed) throw new TrustvolError("EINTERNAL", "TPM session used after it was closed");
    // the nonce was refreshed by prepare() before parameter encryption
    let hmac: Buffer;
    if (this.isPolicy && this.policyPassword && authorizes) {
      hmac = trimAuth(entityAuth);
    } else {
      const key = this.hmacKey(entityAuth, authorizes);
      hmac = hmacOf(this.hash, key, cpHashFor(this.hash), this.nonceCaller, this.nonceTPM, Buffer.from([this.attributes]));
      wipe(key);
    }
    try {
      return encode(AUTH_COMMAND, { sessionHandle: this.handle, nonce: this.nonceCaller, sessionAttributes: this.attributes, hmac }, 128);
    } finally {
      wipe(hmac);
    }
  }

  /** A fresh nonceCaller for the next command (called before any parameter encryption). */
  prepare(): void {
    this.nonceCaller = Buffer.alloc(HASH_SIZE[this.hash]);
    randomFillSync(this.nonceCaller);
  }

  responseAuth(rpHashFor: (h: HashName) => Buffer, nonceTPM: Buffer, attrs: number, hmac: Buffer, entityAuth: Uint8Array | undefined, authorizes: boolean): void {
    this.nonceTPM = nonceTPM;
    if (this.isPolicy && this.policyPassword && authorizes) {
      if (hmac.length) throw new TrustvolError("EDEVICE", "unexpected response HMAC on a PolicyPassword session");
    } else {
      const key = this.hmacKey(entityAuth, authorizes);
      const expect = hmacOf(this.hash, key, rpHashFor(this.hash), nonceTPM, this.nonceCaller, Buffer.from([attrs]));
      wipe(key);
      if (!constantTimeEqual(expect, hmac))
        throw new TrustvolError("EDEVICE", "TPM response HMAC does not verify", "something between trustvol and the TPM altered the response (bus tampering?), or the TPM is not the one the session was salted to");
    }
    if (!(attrs & TPMA_SESSION.continueSession)) this.closed = true;
  }

  paramCrypt(decrypt: boolean, data: Buffer, entityAuth: Uint8Array | undefined, authorizes: boolean, direction: "cmd" | "rsp"): Buffer {
    if (!this.symKeyBits) throw new TrustvolError("EINTERNAL", "parameter encryption on a session without a cipher");
    // The encryption key includes the entity's authValue whenever the session authorises with it — for a policy
    // session after PolicyAuthValue or PolicyPassword (measured against swtpm / the reference implementation).
    const withAuth = authorizes && (!this.isPolicy || this.policyAuthValue || this.policyPassword);
    const a = withAuth ? trimAuth(entityAuth) : Buffer.alloc(0);
    const key = Buffer.concat([this.sessionKey, a]);
    wipe(a);
    // Command: nonceNewer = nonceCaller, nonceOlder = nonceTPM. Response: the reverse (§21.2).
    const [newer, older] = direction === "cmd" ? [this.nonceCaller, this.nonceTPM] : [this.nonceTPM, this.nonceCaller];
    const { key: k, iv } = cfbKeyIv(this.hash, key, newer, older, this.symKeyBits);
    wipe(key);
    try {
      return aesCfb(decrypt, k, iv, data);
    } finally {
      wipe(k, iv);
    }
  }

  /** Session key derivation (Part 1 §19.6.8): KDFa(authHash, bindAuth ‖ salt, "ATH", nonceTPM, nonceCaller). */
  static deriveSessionKey(hash: HashName, bindAuth: Uint8Array, salt: Uint8Array, nonceTPM: Buffer, nonceCaller: Buffer): Buffer {
    const k = Buffer.concat([bindAuth, salt]);
    if (!k.length) return Buffer.alloc(0);
    const out = kdfa(hash, k, "ATH", nonceTPM, nonceCaller, HASH_SIZE[hash] * 8);
    wipe(k);
    return out;
  }

  wipe(): void {
    wipe(this.sessionKey);
  }
}
