// NXP CAAM black keys: the /dev/caam-keygen device, a clearly named software simulator for tests, and the tagged
// object format they share. dm-crypt use: black key → `logon` key → table cipher `capi:tk(cbc(aes))-plain`.
import { CaamKeygenDevice, CAAM_KEYGEN_DEVICE, type CaamKeygen } from "./keygen.js";
import { CaamSimulator } from "./simulator.js";

export * from "./tag.js";
export * from "./keygen.js";
export { CaamSimulator, simulatorAllowed, SIMULATOR_ENV } from "./simulator.js";

/** The CAAM black-key cipher dm-crypt needs (linux-imx CONFIG_CRYPTO_DEV_FSL_CAAM_TK_API). */
export const CAAM_TK_CIPHER = "capi:tk(cbc(aes))-plain";

/** The device, or the simulator when `simulatorStateDir` is given (it refuses unless explicitly enabled). */
export function openCaamKeygen(o: { simulatorStateDir?: string; device?: string } = {}): CaamKeygen {
  if (o.simulatorStateDir) return new CaamSimulator({ stateDir: o.simulatorStateDir });
  return new CaamKeygenDevice(o.device ?? CAAM_KEYGEN_DEVICE);
}
