// Tests start their private swtpm through the same code the demo uses.
export { startSwtpm, type Swtpm } from "../../src/trust/tpm2/swtpm-process.js";
