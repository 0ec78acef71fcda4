// The token types trustvol unlocks, registered in one place (imported for its side effect by the CLI and the library
// index). Each codec is loaded only when a token of its type is met: PKCS#11 and ASN.1 code stays out of a TPM boot.
import { registerTokenHandler } from "./tokens.js";

registerTokenHandler({
  type: "systemd-pkcs11",
  passphrase: async (token, ctx) => {
    const { unlockSystemdPkcs11Token } = await import("../tokens/systemd-pkcs11.js");
    return unlockSystemdPkcs11Token(token, { pin: ctx.pin ? { kind: "buffer", pin: ctx.pin } : undefined, ...(ctx.pkcs11Module ? { modulePath: ctx.pkcs11Module } : {}) });
  },
});

/** Open the TPM the context names (or the default), run fn, always close it. */
async function withTpm<T>(ctx: { tpm2Device?: string }, fn: (tpm: import("../trust/tpm2/index.js").Tpm2TrustSource) => Promise<T>): Promise<T> {
  const { Tpm2TrustSource } = await import("../trust/tpm2/index.js");
  const src = new Tpm2TrustSource(ctx.tpm2Device ? { device: ctx.tpm2Device } : {});
  try {
    return await fn(src);
  } finally {
    await src.close().catch(() => {});
  }
}

registerTokenHandler({
  type: "systemd-tpm2",
  passphrase: async (token, ctx) => {
    const { unlockSystemdTpm2Token } = await import("../tokens/systemd-tpm2.js");
    const { readFileSync } = await import("node:fs");
    const signature = ctx.tpm2Signature ? readFileSync(ctx.tpm2Signature) : undefined;
    return withTpm(ctx, (tpm) => unlockSystemdTpm2Token(token, tpm, { ...(ctx.pin ? { pin: ctx.pin } : {}), ...(signature ? { signature } : {}) }));
  },
});

registerTokenHandler({
  type: "clevis",
  passphrase: async (token, ctx) => {
    const { unlockClevisToken } = await import("../tokens/clevis.js");
    return withTpm(ctx, (tpm) => unlockClevisToken(token, tpm));
  },
});

export { withTpm };
