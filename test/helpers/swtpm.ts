// Tests start their private swtpm through the same code the demo uses.
import { after, before, type TestContext } from "node:test";
import { hasTool, needTools, tmpDir } from "./tools.js";
import { startSwtpm, type Swtpm } from "../../src/trust/tpm2/swtpm-process.js";
export { startSwtpm, type Swtpm };


/**
 * One swtpm and one temp dir for a whole test file (started in before(), stopped in after()) when the tools are there;
 * `ready(t)` skips a test on a dev box without them and fails in CI.
 */
export function swtpmForFile(tools: string[]): { readonly sw: Swtpm; readonly dir: string; ready: (t: TestContext) => boolean } {
  let sw: Swtpm | undefined;
  let tmp: { dir: string; cleanup: () => void } | undefined;
  before(async () => {
    tmp = tmpDir();
    if (tools.every(hasTool)) sw = await startSwtpm();
  });
  after(async () => {
    await sw?.stop();
    tmp?.cleanup();
  });
  return {
    get sw() {
      if (!sw) throw new Error("swtpm is not running (check ready(t) first)");
      return sw;
    },
    get dir() {
      return tmp!.dir;
    },
    ready: (t) => needTools(t, ...tools) && sw !== undefined,
  };
}
