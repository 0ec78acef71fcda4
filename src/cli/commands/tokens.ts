// `trustvol token import|export|remove|assign|unassign`: generic LUKS2 tokens (like `cryptsetup token`).
import { io } from "../io.js";
import type { Command } from "commander";
import { readFileSync } from "node:fs";
import { TrustvolError } from "../../util/errors.js";
import { LuksHandle } from "../../ops/volume.js";
import { int, printJson } from "../common.js";
import { jsonDepth, JSON_MAX_DEPTH } from "../../luks2/metadata.js";

function readJson(file: string | undefined): unknown {
  let text: string;
  try {
    text = file && file !== "-" ? readFileSync(file, "utf8") : readFileSync(0, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const what = file && file !== "-" ? `token JSON file ${file}` : "token JSON on standard input";
    if (code === "ENOENT" || code === "ENOTDIR") throw new TrustvolError("ENOENT", `${what} does not exist`, "check the --json-file path");
    if (code === "EISDIR") throw new TrustvolError("EUSAGE", `${what} is a directory`, "give the path of a JSON file");
    throw new TrustvolError("EUSAGE", `cannot read ${what}`, "check the --json-file path and its permissions");
  }
  if (text.length > 4 * 1024 * 1024) throw new TrustvolError("EUSAGE", "token JSON is too large");
  if (jsonDepth(text) > JSON_MAX_DEPTH - 2) throw new TrustvolError("EUSAGE", `token JSON is nested deeper than ${JSON_MAX_DEPTH - 2} levels`, "the header's JSON (tokens → id → token) may nest at most 32 levels, as cryptsetup's parser allows");
  try {
    return JSON.parse(text);
  } catch {
    throw new TrustvolError("EUSAGE", "token JSON does not parse", "check the file is a single JSON object");
  }
}

export function registerTokenCommands(program: Command): void {
  const token = program.command("token").description("manage LUKS2 tokens (metadata that tells an unlocker how to get a keyslot's passphrase)");
  token
    .command("import")
    .description("add a token from JSON (file or stdin), validated as cryptsetup validates it")
    .argument("<device>")
    .option("--json-file <file>", "token JSON (default: stdin)")
    .option("--token-id <n>", "token id (default: first free)", int("--token-id", 0, 31))
    .option("-S, --key-slot <n>", "also assign the token to this keyslot", int("--key-slot", 0, 31))
    .option("--token-replace", "replace an existing token with the same id")
    .option("--header <file>", "detached header")
    .option("--json", "print the result as JSON")
    .action(async (device: string, o: Record<string, unknown>) => {
      const t = readJson(o.jsonFile as string | undefined) as Record<string, unknown>;
      if (o.keySlot !== undefined && t && Array.isArray(t.keyslots) && !t.keyslots.includes(String(o.keySlot))) t.keyslots.push(String(o.keySlot));
      const h = await LuksHandle.open(device, { header: o.header as string | undefined });
      try {
        const id = await h.requireLuks2("token import").addToken(t, { tokenId: o.tokenId as number | undefined, replace: !!o.tokenReplace });
        if (o.json) printJson({ token: id });
        else io.err(`Token ${id} created.\n`);
      } finally {
        await h.close();
      }
    });
  token
    .command("export")
    .description("print a token's JSON")
    .argument("<device>")
    .requiredOption("--token-id <n>", "token id", int("--token-id", 0, 31))
    .option("--header <file>", "detached header")
    .action(async (device: string, o: Record<string, unknown>) => {
      const h = await LuksHandle.open(device, { header: o.header as string | undefined, readOnly: true });
      try {
        io.out(JSON.stringify(h.requireLuks2("token export").exportToken(o.tokenId as number)) + "\n");
      } finally {
        await h.close();
      }
    });
  token
    .command("remove")
    .description("remove a token (its keyslots stay)")
    .argument("<device>")
    .requiredOption("--token-id <n>", "token id", int("--token-id", 0, 31))
    .option("--header <file>", "detached header")
    .action(async (device: string, o: Record<string, unknown>) => {
      const h = await LuksHandle.open(device, { header: o.header as string | undefined });
      try {
        await h.requireLuks2("token remove").removeToken(o.tokenId as number);
      } finally {
        await h.close();
      }
    });
  for (const [verb, assign] of [["assign", true], ["unassign", false]] as const)
    token
      .command(verb)
      .description(`${verb} a token ${assign ? "to" : "from"} a keyslot`)
      .argument("<device>")
      .requiredOption("--token-id <n>", "token id", int("--token-id", 0, 31))
      .requiredOption("-S, --key-slot <n>", "keyslot", int("--key-slot", 0, 31))
      .option("--header <file>", "detached header")
      .action(async (device: string, o: Record<string, unknown>) => {
        const h = await LuksHandle.open(device, { header: o.header as string | undefined });
        try {
          await h.requireLuks2(`token ${verb}`).assignToken(o.tokenId as number, o.keySlot as number, assign);
        } finally {
          await h.close();
        }
      });
}
