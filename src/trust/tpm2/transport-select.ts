// Choosing a TPM like systemd's --tpm2-device= does: "auto", a device path, or a TCTI-style "swtpm:path=S" /
// "swtpm:host=H,port=P" / "device:/dev/tpmrm0"; TRUSTVOL_TPM2_DEVICE supplies the default.
import { existsSync, readdirSync, statSync } from "node:fs";
import { TrustvolError } from "../../util/errors.js";
import type { Tpm2Transport } from "./transport.js";
import { DeviceTransport } from "./transport-device.js";
import { SwtpmControl, SwtpmTransport, type SocketAddress } from "./transport-swtpm.js";

export type Tpm2DeviceSpec = { kind: "device"; path: string } | { kind: "swtpm"; addr: SocketAddress; ctrl: SocketAddress };

export const TPM2_DEVICE_ENV = "TRUSTVOL_TPM2_DEVICE";

function parseKv(s: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const part of s.split(",")) {
    if (!part) continue;
    const eq = part.indexOf("=");
    if (eq < 0) m.set("path", part);
    else m.set(part.slice(0, eq).trim(), part.slice(eq + 1));
  }
  return m;
}

/** Parse a --tpm2-device= value (without "auto" resolution). */
export function parseTpm2Device(spec: string): Tpm2DeviceSpec | "auto" {
  const s = spec.trim();
  if (s === "" || s === "auto") return "auto";
  if (s.startsWith("swtpm:") || s === "swtpm") {
    const kv = parseKv(s.slice(6));
    const path = kv.get("path");
    if (path) return { kind: "swtpm", addr: { path }, ctrl: { path: kv.get("ctrl") ?? `${path}.ctrl` } };
    const host = kv.get("host") ?? "localhost";
    const port = Number(kv.get("port") ?? "2321");
    if (!Number.isInteger(port) || port <= 0 || port > 65534) throw new TrustvolError("EUSAGE", `invalid swtpm port in '${spec}'`, "use swtpm:host=H,port=P");
    return { kind: "swtpm", addr: { host, port }, ctrl: { host, port: port + 1 } };
  }
  if (s.startsWith("device:")) return { kind: "device", path: s.slice(7) || "/dev/tpmrm0" };
  if (s.startsWith("/")) {
    let sock = false;
    try {
      sock = statSync(s).isSocket();
    } catch {
      /* a missing device is reported when opened */
    }
    return sock ? { kind: "swtpm", addr: { path: s }, ctrl: { path: `${s}.ctrl` } } : { kind: "device", path: s };
  }
  throw new TrustvolError("EUSAGE", `unrecognised TPM device '${spec}'`, "use auto, a device path (/dev/tpmrm0), swtpm:path=SOCKET or swtpm:host=H,port=P");
}

/** Resolve "auto": TRUSTVOL_TPM2_DEVICE, else the first kernel resource manager (/sys/class/tpmrm), else /dev/tpm0. */
export function resolveTpm2Device(spec: string | undefined = undefined, env: NodeJS.ProcessEnv = process.env): Tpm2DeviceSpec {
  let parsed = parseTpm2Device(spec ?? "auto");
  if (parsed === "auto" && env[TPM2_DEVICE_ENV]) parsed = parseTpm2Device(env[TPM2_DEVICE_ENV]!);
  if (parsed !== "auto") return parsed;
  try {
    const rm = readdirSync("/sys/class/tpmrm").sort();
    if (rm.length) return { kind: "device", path: `/dev/${rm[0]}` };
  } catch {
    /* no sysfs class */
  }
  for (const p of ["/dev/tpmrm0", "/dev/tpm0"]) if (existsSync(p)) return { kind: "device", path: p };
  throw new TrustvolError("EDEVICE", "no TPM 2.0 device found", `enable the TPM in firmware, load the tpm_tis/tpm_crb driver, or set ${TPM2_DEVICE_ENV}=swtpm:path=SOCKET`);
}

export function openTpm2Transport(spec?: string | Tpm2DeviceSpec, env: NodeJS.ProcessEnv = process.env): Tpm2Transport {
  const d = typeof spec === "object" ? spec : resolveTpm2Device(spec, env);
  return d.kind === "device" ? new DeviceTransport(d.path) : new SwtpmTransport(d.addr);
}

/** The control channel of an swtpm spec (power cycling in tests); undefined for real devices. */
export function swtpmControlFor(spec: string | Tpm2DeviceSpec, env: NodeJS.ProcessEnv = process.env): SwtpmControl | undefined {
  const d = typeof spec === "object" ? spec : resolveTpm2Device(spec, env);
  return d.kind === "swtpm" ? new SwtpmControl(d.ctrl) : undefined;
}
