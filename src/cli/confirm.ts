// cryptsetup's "Type YES" confirmation before destroying data. Without a terminal there is nobody to ask: refuse, and
// let scripts say -q/--batch-mode.
import { createInterface } from "node:readline";
import { TrustvolError } from "../util/errors.js";
import { io } from "./io.js";

/** Print the question, read one line: was it "YES"? */
async function answeredYes(question: string): Promise<boolean> {
  io.err(`${question}\nAre you sure? (Type 'YES' in capital letters): `);
  const rl = createInterface({ input: process.stdin, terminal: false });
  const line = await new Promise<string>((resolve) => {
    rl.once("line", resolve);
    rl.once("close", () => resolve(""));
  });
  rl.close();
  process.stdin.pause();
  return line.trim() === "YES";
}

export async function confirmOverwrite(what: string, action = "formatting"): Promise<void> {
  if (!process.stdin.isTTY) throw new TrustvolError("EUSAGE", `${what}; refusing to overwrite it without confirmation`, "pass -q/--batch-mode to overwrite it anyway");
  if (!(await answeredYes(`WARNING: ${what}; ${action} destroys it irrevocably.`))) throw new TrustvolError("EUSAGE", `${action === "formatting" ? "format" : "operation"} aborted; nothing was changed`);
}

/** cryptsetup's yesDialog for a step that changes a device (not a format): "YES" goes on; no terminal, no -q: refused. */
export async function confirmYes(question: string, what: string): Promise<void> {
  if (!process.stdin.isTTY) throw new TrustvolError("EUSAGE", `${what} needs confirmation and there is no terminal to ask`, "pass -q/--batch-mode to go ahead");
  if (!(await answeredYes(question))) throw new TrustvolError("EUSAGE", "operation aborted; nothing was changed");
}
