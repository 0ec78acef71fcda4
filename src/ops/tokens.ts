// Token-driven unlock and enrollment: the bridge between LUKS2 tokens and trust sources.
// A handler turns a token into the passphrase of the keyslot it names (systemd-pkcs11, systemd-tpm2, clevis...).
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import type { Luks2Volume } from "../luks2/volume.js";
import type { Luks2Token } from "../luks2/metadata.js";
import type { NewKeyslotOptions } from "../luks2/keyslot.js";
import type { PbkdfOptions } from "../luks2/kdf.js";
import type { LuksHandle } from "./volume.js";
import { BUILTIN_TOKEN_HANDLERS } from "./handlers.js";

export interface TokenUnlockContext {
  /** PIN bytes for tokens that need one (PKCS#11 user PIN, TPM PIN); the caller wipes them. */
  pin?: Uint8Array;
  /** PKCS#11 module to load instead of searching p11-kit registrations. */
  pkcs11Module?: string;
  /** TPM device selection (`auto`, a path, `swtpm:path=...`). */
  tpm2Device?: string;
}

/** A token type trustvol can unlock: register your own with registerTokenHandler (replaces one of the same type). */
export interface TokenHandler {
  /** The LUKS2 token type it handles, e.g. "systemd-tpm2". */
  type: string;
  /** What it unlocks with, for messages: "TPM2", "PKCS#11 token". */
  unlocksWith: string;
  /** Whether unlocking this token needs a PIN (asked for through the unlock's PIN callback). */
  needsPin(token: Luks2Token): boolean;
  /** Return the keyslot passphrase for this token (caller wipes), or throw a TrustvolError that says why not. */
  passphrase(token: Luks2Token, ctx: TokenUnlockContext): Promise<Buffer>;
}

const handlers = new Map<string, TokenHandler>(BUILTIN_TOKEN_HANDLERS.map((h) => [h.type, h]));

export function registerTokenHandler(h: TokenHandler): void {
  handlers.set(h.type, h);
}

export function tokenHandler(type: string): TokenHandler | undefined {
  return handlers.get(type);
}

export interface TokenUnlockResult {
  volumeKey: Buffer;
  keyslot: number;
  tokenId: number;
  tokenType: string;
}

/**
 * Try each token (or the one named) whose type we know, like `cryptsetup open --token-only`: the first that yields a
 * passphrase opening one of its keyslots wins. When all fail the error says what each token said.
 */
export async function unlockWithTokens(h: LuksHandle, ctx: TokenUnlockContext, opts: { tokenId?: number; tokenType?: string; tokenOrder?: number[] } = {}): Promise<TokenUnlockResult> {
  const v = h.requireLuks2("token unlock");
  const ids = opts.tokenId !== undefined ? [opts.tokenId] : (opts.tokenOrder ?? v.tokenIds()).filter((id) => String(id) in v.metadata.tokens);
  if (opts.tokenId !== undefined && !(String(opts.tokenId) in v.metadata.tokens)) throw new TrustvolError("ENOENT", `token ${opts.tokenId} is not in use`);
  const failures: { id: number; type: string; err: TrustvolError }[] = [];
  let tried = 0;
  for (const id of ids) {
    const token = v.metadata.tokens[String(id)]!;
    if (opts.tokenType && token.type !== opts.tokenType) continue;
    const handler = handlers.get(token.type);
    if (!handler) continue;
    tried++;
    let pass: Buffer | undefined;
    try {
      pass = await handler.passphrase(token, ctx);
      for (const ks of token.keyslots) {
        try {
          const r = await v.unlock(pass, { slot: Number(ks) });
          return { ...r, tokenId: id, tokenType: token.type };
        } catch (e) {
          if (!(e instanceof TrustvolError) || (e.code !== "EBADPASS" && e.code !== "ENOENT")) throw e;
        }
      }
      failures.push({ id, type: token.type, err: new TrustvolError("EBADPASS", `token ${id} (${token.type}) yielded a passphrase that opens none of its keyslots`) });
    } catch (e) {
      if (!(e instanceof TrustvolError)) throw e;
      failures.push({ id, type: token.type, err: e });
    } finally {
      wipe(pass);
    }
  }
  if (!tried) throw new TrustvolError("ENOKEY", "no token on this volume that trustvol can use", "unlock with a passphrase or the recovery key");
  if (failures.length === 1) throw failures[0]!.err;
  // The most specific reason decides the exit code; the message names each token once, with its id, on one line.
  const first = failures.find((f) => f.err.code !== "EBADPASS") ?? failures[0]!;
  const said = failures.map(({ id, type, err }) => (err.message.startsWith(`token ${id} `) ? err.message : `token ${id} (${type}): ${err.message}`));
  throw new TrustvolError(first.err.code, said.join("; "), first.err.hint);
}

/** Token keyslots hold a random high-entropy secret: PBKDF2, 1000 iterations, as systemd-cryptenroll writes them. */
export const TOKEN_KEYSLOT_PBKDF: Readonly<PbkdfOptions> = { type: "pbkdf2", hash: "sha512", forceIterations: 1000 };

/**
 * Enroll a token-backed keyslot: the maker seals a fresh secret and returns the token JSON + passphrase. The keyslot
 * KDF defaults to TOKEN_KEYSLOT_PBKDF (not the argon2id of passphrase keyslots: the secret is already random).
 */
export async function enrollToken(
  v: Luks2Volume,
  volumeKey: Uint8Array,
  makeToken: (slot: number) => Promise<{ tokenJson: Record<string, unknown>; passphrase: Buffer }>,
  opts: NewKeyslotOptions & { slot?: number; removeSlots?: number[] } = {},
): Promise<{ keyslot: number; tokenId: number; removed: number[] }> {
  return v.addKeyslotWithToken(volumeKey, makeToken, { ...opts, pbkdf: opts.pbkdf ?? { ...TOKEN_KEYSLOT_PBKDF } });
}

/**
 * `--wipe-slot` as systemd-cryptenroll reads it: "password" (passphrase keyslots, i.e. not token-backed), "all", or a
 * list of numbers. Resolved and validated BEFORE enrolling, so a bad spec changes nothing; the enrollment then drops
 * these slots in the same header commit that adds the new one.
 */
export function resolveWipeSlots(v: Luks2Volume, spec: string | undefined): number[] {
  if (!spec) return [];
  const tokenSlots = new Set(Object.values(v.metadata.tokens).flatMap((t) => t.keyslots.map(Number)));
  const out = new Set<number>();
  for (const part of spec.split(",")) {
    if (part === "password") v.keyslotIds().filter((k) => !tokenSlots.has(k) && v.metadata.keyslots[String(k)]!.type === "luks2").forEach((k) => out.add(k));
    else if (part === "all") v.keyslotIds().forEach((k) => out.add(k));
    else if (/^[0-9]+$/.test(part) && Number(part) <= 31) {
      if (!(part in v.metadata.keyslots)) throw new TrustvolError("ENOENT", `--wipe-slot: keyslot ${part} is not in use`, "nothing was changed");
      out.add(Number(part));
    } else throw new TrustvolError("EUSAGE", `--wipe-slot: "${part}" is not password, all or a keyslot number`, "nothing was changed");
  }
  return [...out].sort((a, b) => a - b);
}
