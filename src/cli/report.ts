// How a failed command ends: one line on stderr (what is wrong; what to do) and, when --json was given, the error
// document on stdout (src/cli/io.ts). Shared by main() and run.ts's commander-free fast paths; imports no commander.
import { io, jsonError } from "./io.js";
import { TrustvolError } from "../util/errors.js";

/** Messages that quote a tool's stderr can span lines: the CLI always prints one. */
export function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, " ").trim();
}

/** Print `e` for people (stderr) and, with json, for programs (stdout); return the exit status. */
export function reportError(e: unknown, json: boolean): number {
  const fail = (t: TrustvolError, details?: Record<string, unknown>): number => {
    io.err(`trustvol: ${oneLine(t.oneLine())}\n`);
    if (json) io.out(jsonError({ code: t.code, exitCode: t.exitCode, message: oneLine(t.message), hint: t.hint === undefined ? undefined : oneLine(t.hint) }, details));
    return t.exitCode;
  };
  if (e instanceof TrustvolError) return fail(e, "corruption" in e ? { corruption: (e as { corruption: unknown }).corruption } : {});
  const err = e as NodeJS.ErrnoException;
  const sys = systemError(err);
  if (sys) return fail(sys);
  if (process.env.TRUSTVOL_DEBUG) io.err(`${err?.stack}\n`);
  return fail(new TrustvolError("EINTERNAL", `internal error: ${oneLine(err?.message ?? String(e))}`));
}

/** Plain Node errors with an errno (a path we could not open or write) become the same one-line errors. */
function systemError(err: NodeJS.ErrnoException | undefined): TrustvolError | undefined {
  if (!err || typeof err.code !== "string") return undefined;
  const path = typeof err.path === "string" ? err.path.replace(/\/\.([^/]+)\.[0-9a-f]{12}\.tmp$/, "/$1") : "a file";
  switch (err.code) {
    case "ENOENT":
      return new TrustvolError("ENOENT", `${path}: no such file or directory`, "check the path");
    case "EACCES":
    case "EPERM":
      return new TrustvolError("EDEVICE", `${path}: permission denied`, "run as a user who may access it (often root)");
    case "EROFS":
      return new TrustvolError("EDEVICE", `${path}: read-only file system`);
    case "ENOSPC":
      return new TrustvolError("ENOSPC", `${path}: no space left on device`);
    case "EISDIR":
      return new TrustvolError("EUSAGE", `${path} is a directory`);
    case "EEXIST":
      return new TrustvolError("EUSAGE", `${path} already exists`);
    default:
      return undefined;
  }
}
