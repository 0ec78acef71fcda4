// The sector engines a dm-crypt test runs through: the native addon (when built) and the JS backend once per XTS XOR
// kernel (TRUSTVOL_JS_XTS=wasm: WebAssembly SIMD; =js: TypeScript loops). The variable is read when an engine is
// created, so create it inside withJsXts.
import { nativeAvailable } from "../../src/dmcrypt/index.js";

export interface SectorEngineVariant {
  backend: "native" | "js";
  /** TRUSTVOL_JS_XTS for the JS backend. */
  xts?: "wasm" | "js";
  name: string;
}

export function sectorEngineVariants(): SectorEngineVariant[] {
  return [
    ...(nativeAvailable() ? [{ backend: "native" as const, name: "native" }] : []),
    { backend: "js", xts: "wasm", name: "js (wasm XOR kernel)" },
    { backend: "js", xts: "js", name: "js (TypeScript XOR kernel)" },
  ];
}

/** Runs fn with TRUSTVOL_JS_XTS set to v.xts (unchanged for native), restoring it afterwards. */
export function withJsXts<T>(v: SectorEngineVariant, fn: () => T): T {
  if (!v.xts) return fn();
  const before = process.env.TRUSTVOL_JS_XTS;
  process.env.TRUSTVOL_JS_XTS = v.xts;
  try {
    return fn();
  } finally {
    if (before === undefined) delete process.env.TRUSTVOL_JS_XTS;
    else process.env.TRUSTVOL_JS_XTS = before;
  }
}
