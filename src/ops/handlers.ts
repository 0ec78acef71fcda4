// The token types trustvol unlocks out of the box. Each codec is loaded only when a token of its type is met: PKCS#11
// and ASN.1 code stays out of a TPM boot. Plain data (no registration side effect): ops/tokens.ts installs them.
import type { TokenHandler } from "./tokens.js";

/** Open the TPM the context names (or the default), run fn, always close it. */
export async function withTpm<T>(ctx: { tpm2Device?: string }, fn: (tpm: import("../trust/tpm2/index.js").Tpm2TrustSource) => Promise<T>): Promise<T> {
  const { Tpm2TrustSource } = await import("../trust/tpm2/index.js");
  const src = new Tpm2TrustSource(ctx.tpm2Device ? { device: ctx.tpm2Device } : {});
  try {
    return await fn(src);
  } finally {
    await src.close().catch(() => {});
  }
}

export const BUILTIN_TOKEN_HANDLERS: readonly TokenHandler[] = [
  {
    type: "systemd-pkcs11",
    unlocksWith: "PKCS#11 token",
    needsPin: () => true, // a user PIN unless the token has a protected authentication path; offered when at hand
    passphrase: async (token, ctx) => {
      const { unlockSystemdPkcs11Token } = await import("../tokens/systemd-pkcs11.js");
      return unlockSystemdPkcs11Token(token, { pin: ctx.pin ? { kind: "buffer", pin: ctx.pin } : undefined, ...(ctx.pkcs11Module ? { modulePath: ctx.pkcs11Module } : {}) });
    },
  },
  {
    type: "systemd-tpm2",
    unlocksWith: "TPM2",
    needsPin: (token) => token["tpm2-pin"] === true || token["tpm2_pin"] === true,
    passphrase: async (token, ctx) => {
      const { unlockSystemdTpm2Token } = await import("../tokens/systemd-tpm2.js");
      const { readFileSync } = await import("node:fs");
      const signature = ctx.tpm2Signature ? readFileSync(ctx.tpm2Signature) : undefined;
      return withTpm(ctx, (tpm) => unlockSystemdTpm2Token(token, tpm, { ...(ctx.pin ? { pin: ctx.pin } : {}), ...(signature ? { signature } : {}), ...(ctx.tpm2Pcrlock ? { pcrlockPath: ctx.tpm2Pcrlock } : {}) }));
    },
  },
  {
    type: "clevis",
    unlocksWith: "TPM2 (clevis)",
    needsPin: () => false,
    passphrase: async (token, ctx) => {
      const { unlockClevisToken } = await import("../tokens/clevis.js");
      return withTpm(ctx, (tpm) => unlockClevisToken(token, tpm));
    },
  },
];
