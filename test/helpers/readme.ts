// The README's library example, for the tests that run it.
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The ```ts block after the api-example marker in README.md. */
export function readmeExample(): string {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const m = /<!-- api-example[^>]*-->\s*```ts\n([\s\S]*?)```/.exec(readme);
  if (!m) throw new Error("README.md has no api-example block");
  return m[1]!;
}
