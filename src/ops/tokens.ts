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
  /** Signed PCR policy file (systemd-measure's tpm2-pcr-signature.json) for tpm2_pubkey tokens; default: systemd's paths. */
  tpm2Signature?: string;
  /** systemd-pcrlock policy file (pcrlock.json) for tpm2_pcrlock tokens; default: systemd's paths (never a path from the header). */
  tpm2Pcrlock?: string;
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

/** systemd-cryptenroll's --wipe-slot type selectors and the token types they pick. */
const WIPE_TOKEN_TYPES: Record<string, string> = { recovery: "systemd-recovery", pkcs11: "systemd-pkcs11", fido2: "systemd-fido2", tpm2: "systemd-tpm2" };

/**
 * `--wipe-slot` as systemd-cryptenroll (257) reads it: a comma list of `all` (every keyslot), `empty` (keyslots
 * that open with an empty passphrase), `password` (keyslots no token lists), `recovery`, `pkcs11`, `fido2`, `tpm2`
 * (keyslots of those systemd tokens) and keyslot numbers. Like systemd, a token with a wiped keyslot takes its other
 * keyslots with it. Resolved and validated BEFORE enrolling, so a bad spec changes nothing; the enrollment then drops
 * these slots in the same header commit that adds the new one (which is never among them). `empty` needs
 * `emptySlots` from findEmptyPassphraseSlots (resolveWipeSlotsFull does both).
 */
export function resolveWipeSlots(v: Luks2Volume, spec: string | undefined, emptySlots?: readonly number[]): number[] {
  if (spec === undefined) return [];
  if (spec === "") throw new TrustvolError("EUSAGE", "--wipe-slot: empty list", "nothing was changed");
  const passSlots = v.keyslotIds().filter((k) => v.metadata.keyslots[String(k)]!.type === "luks2");
  const tokens = Object.values(v.metadata.tokens);
  const tokenSlots = new Set(tokens.flatMap((t) => t.keyslots.map(Number)));
  const out = new Set<number>();
  for (const part of spec.split(",")) {
    if (part === "all") passSlots.forEach((k) => out.add(k));
    else if (part === "empty") {
      if (!emptySlots) throw new TrustvolError("EINTERNAL", "--wipe-slot=empty needs the empty-passphrase keyslots");
      emptySlots.forEach((k) => out.add(k));
    } else if (part === "password") passSlots.filter((k) => !tokenSlots.has(k)).forEach((k) => out.add(k));
    else if (part in WIPE_TOKEN_TYPES) tokens.filter((t) => t.type === WIPE_TOKEN_TYPES[part]).forEach((t) => t.keyslots.forEach((k) => out.add(Number(k))));
    else if (/^(?:0|[1-9][0-9]?)$/.test(part) && Number(part) <= 31) {
      if (!(part in v.metadata.keyslots)) throw new TrustvolError("ENOENT", `--wipe-slot: keyslot ${part} is not in use`, "nothing was changed");
      out.add(Number(part));
    } else throw new TrustvolError("EUSAGE", `--wipe-slot: "${part.slice(0, 40)}" is not all, empty, password, recovery, pkcs11, fido2, tpm2 or a keyslot number 0..31`, "nothing was changed");
  }
  // a token goes when one of its keyslots goes, and takes the rest with it (systemd-cryptenroll's wipe_slots)
  for (const t of tokens) if (t.keyslots.some((k) => out.has(Number(k)))) t.keyslots.forEach((k) => out.add(Number(k)));
  return [...out].filter((k) => String(k) in v.metadata.keyslots).sort((a, b) => a - b);
}

/** Keyslots that open with the empty passphrase (`--wipe-slot=empty`). */
export async function findEmptyPassphraseSlots(v: Luks2Volume): Promise<number[]> {
  const out: number[] = [];
  for (const k of v.keyslotIds()) {
    if (v.metadata.keyslots[String(k)]!.type !== "luks2") continue;
    try {
      const { volumeKey } = await v.unlock(Buffer.alloc(0), { slot: k });
      wipe(volumeKey);
      out.push(k);
    } catch (e) {
      if (!(e instanceof TrustvolError && (e.code === "EBADPASS" || e.code === "ENOKEY"))) throw e;
    }
  }
  return out;
}

/** resolveWipeSlots, trying the empty passphrase on each keyslot first when the spec says `empty`. */
export async function resolveWipeSlotsFull(v: Luks2Volume, spec: string | undefined): Promise<number[]> {
  const needEmpty = spec?.split(",").includes("empty");
  return resolveWipeSlots(v, spec, needEmpty ? await findEmptyPassphraseSlots(v) : undefined);
}
