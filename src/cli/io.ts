// Where the CLI prints. Commands write through here (not process.stdout directly) so an in-process caller can capture.
// Also the one implementation of the `--json` contract (README, "Machine-readable output"): every command prints its
// result with printJson(), and main() prints jsonError() for a failure when --json was given.
export const io = {
  out: (s: string | Uint8Array): void => void process.stdout.write(s),
  err: (s: string | Uint8Array): void => void process.stderr.write(s),
};

/** A command that succeeded but must still exit non-zero (doctor's 8 for a critical finding) sets this; main() resets it. */
export const status = { exitCode: 0 };

/** The `version` of the JSON contract; raised only on an incompatible change (a key renamed, removed or retyped). */
export const JSON_CONTRACT_VERSION = 1;

const VERBATIM = Symbol("verbatim");
/** A subtree printed exactly as stored (the LUKS2 header's own JSON): its keys are not converted. */
export function verbatim<T>(v: T): T {
  return { [VERBATIM]: v } as unknown as T;
}

/** camelCase / kebab-case → snake_case ("slotId" → "slot_id", "tpm2-pin" → "tpm2_pin"). */
export function snakeKey(k: string): string {
  return k.replace(/[A-Z]+/g, (m, i: number) => (i > 0 ? "_" : "") + m.toLowerCase()).replace(/-/g, "_");
}

/**
 * The contract's value rules: keys snake_case; every integer (counts, sizes, offsets, ids; bigint included) a JSON
 * number — a bigint past 2^53 (no real device gets there) a decimal string rather than a rounded number; bytes
 * (Buffer, Uint8Array) lower-case hex; Date an ISO string; Map an object; undefined members left out.
 */
export function toContract(v: unknown): unknown {
  if (v === null || typeof v === "string" || typeof v === "boolean") return v;
  if (typeof v === "number") return Number.isFinite(v) ? v : null;
  if (typeof v === "bigint") return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
  if (v === undefined || typeof v === "function" || typeof v === "symbol") return undefined;
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("hex");
  if (v instanceof Date) return v.toISOString();
  if (Array.isArray(v)) return v.map((x) => toContract(x) ?? null);
  if (v instanceof Map) return toContract(Object.fromEntries(v));
  if (typeof v === "object") {
    if (VERBATIM in v) return (v as { [VERBATIM]: unknown })[VERBATIM];
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      const c = toContract(x);
      if (c !== undefined) out[snakeKey(k)] = c;
    }
    return out;
  }
  return String(v);
}

/** Print a command's result: `{"version": 1, ...result}` under the contract's rules, one document on stdout. */
export function printJson(result: object): void {
  if (Array.isArray(result) || "version" in result) throw new Error("printJson: the result must be an object without a 'version' key");
  io.out(JSON.stringify({ version: JSON_CONTRACT_VERSION, ...(toContract(result) as object) }, null, 2) + "\n");
}

/** The failure document: `{"version": 1, "error": {"code", "exit_code", "message", "hint", ...details}}`. */
export function jsonError(e: { code: string; exitCode: number; message: string; hint?: string | undefined }, details: Record<string, unknown> = {}): string {
  const error = { code: e.code, exit_code: e.exitCode, message: e.message, hint: e.hint ?? null, ...(toContract(details) as object) };
  return JSON.stringify({ version: JSON_CONTRACT_VERSION, error }, null, 2) + "\n";
}

/** True when argv asks for --json (before a `--`): a failure then also prints jsonError() on stdout. */
export function wantsJson(argv: readonly string[]): boolean {
  const end = argv.indexOf("--");
  return (end < 0 ? argv : argv.slice(0, end)).includes("--json");
}
