// Loader for the optional N-API addon (native/, built by scripts/build-native.mjs). Missing or broken addon ⇒ null,
// silently: the pure-TypeScript engine takes over. TRUSTVOL_NO_NATIVE=1 forces the TypeScript engine.
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** IV generator codes shared with native/src/trustvol_native.c */
export const NativeIv = { none: 0, plain64: 1, plain: 2, plain64be: 3, essiv: 4, null: 5 } as const;

export type NativeHandle = object & { readonly __trustvolCipher: unique symbol };

export interface NativeAddon {
  create(evpName: string, key: Uint8Array, essivKey: Uint8Array | null, ivMode: number, ivStep: number, sectorSize: number): NativeHandle;
  crypt(h: NativeHandle, data: Uint8Array, encrypt: boolean, ivSector: bigint): void;
  destroy(h: NativeHandle): void;
  opensslVersion(): string;
}

const ADDON = join("native", "build", "Release", "trustvol_native.node");
let cached: NativeAddon | null | undefined;

/** Walk up from this module (src/dmcrypt/ under tsx, dist/src/dmcrypt/ when compiled) to the package root. */
function addonPath(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const p = join(dir, ADDON);
    if (existsSync(p)) return p;
    dir = dirname(dir);
  }
  return null;
}

export function loadNative(): NativeAddon | null {
  if (process.env.TRUSTVOL_NO_NATIVE === "1") return null;
  if (cached !== undefined) return cached;
  cached = null;
  try {
    const p = addonPath();
    if (p) {
      const m = createRequire(import.meta.url)(p) as Partial<NativeAddon>;
      if (typeof m.create === "function" && typeof m.crypt === "function" && typeof m.destroy === "function") cached = m as NativeAddon;
    }
  } catch {
    cached = null; // wrong ABI, missing symbols, …: fall back to the TypeScript engine
  }
  return cached;
}
