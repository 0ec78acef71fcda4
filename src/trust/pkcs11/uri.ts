// PKCS#11 URIs (RFC 7512): parse, validate and format. Pure functions, no I/O.
//
// pkcs11:<path-attr>=<value>;...?<query-attr>=<value>&...
// Path attributes select a module / slot / token / object; query attributes say how to reach it
// (module-name, module-path) and where the PIN comes from (pin-source). We refuse `pin-value`: a PIN in a URI
// ends up in argv, shell history, logs and LUKS2 headers.
import { TrustvolError, usage } from "../../util/errors.js";

export type Pkcs11ObjectType = "public" | "private" | "cert" | "secret-key" | "data";

export interface Pkcs11Uri {
  // token / slot / library (path)
  token?: string;
  manufacturer?: string;
  serial?: string;
  model?: string;
  libraryManufacturer?: string;
  libraryDescription?: string;
  libraryVersion?: string;
  slotDescription?: string;
  slotManufacturer?: string;
  slotId?: number;
  // object (path)
  object?: string;
  id?: Buffer;
  type?: Pkcs11ObjectType;
  // query
  moduleName?: string;
  modulePath?: string;
  pinSource?: string;
  /** Attributes we do not understand, kept (decoded) so format() can round-trip them. */
  vendor?: { name: string; value: string; query: boolean }[];
}

const PATH_ATTRS: Record<string, keyof Pkcs11Uri> = {
  token: "token",
  manufacturer: "manufacturer",
  serial: "serial",
  model: "model",
  "library-manufacturer": "libraryManufacturer",
  "library-description": "libraryDescription",
  "library-version": "libraryVersion",
  "slot-description": "slotDescription",
  "slot-manufacturer": "slotManufacturer",
  "slot-id": "slotId",
  object: "object",
  id: "id",
  type: "type",
};
const QUERY_ATTRS: Record<string, keyof Pkcs11Uri> = {
  "module-name": "moduleName",
  "module-path": "modulePath",
  "pin-source": "pinSource",
};
const TYPES: readonly string[] = ["public", "private", "cert", "secret-key", "data"];

const bad = (uri: string, why: string) =>
  usage(`invalid PKCS#11 URI ${JSON.stringify(redactUri(uri))}: ${why}`, "use the RFC 7512 form, e.g. pkcs11:token=lmp;object=luks");

/** Drop any pin-value from a URI before it is echoed in an error message. */
export function redactUri(uri: string): string {
  return uri.replace(/(pin-value=)[^;&]*/gi, "$1<redacted>");
}

function pctDecode(uri: string, s: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (s[i] === "%") {
      const h = s.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(h)) throw bad(uri, `bad percent-encoding near "${s.slice(i, i + 3)}"`);
      out.push(parseInt(h, 16));
      i += 2;
    } else if (c < 0x21 || c > 0x7e || `"<>\\^\`{|}#`.includes(s[i]!)) {
      throw bad(uri, `character ${JSON.stringify(s[i])} must be percent-encoded`);
    } else {
      out.push(c);
    }
  }
  return Buffer.from(out);
}

function utf8(uri: string, b: Buffer, attr: string): string {
  const s = b.toString("utf8");
  if (!Buffer.from(s, "utf8").equals(b)) throw bad(uri, `${attr} is not valid UTF-8`);
  return s;
}

export function parsePkcs11Uri(uri: string): Pkcs11Uri {
  if (typeof uri !== "string") throw usage("PKCS#11 URI must be a string");
  if (uri.length > 4096) throw bad(uri.slice(0, 64), "too long");
  if (!/^pkcs11:/i.test(uri)) throw bad(uri, 'must start with "pkcs11:"');
  const body = uri.slice(7);
  const q = body.indexOf("?");
  const path = q < 0 ? body : body.slice(0, q);
  const query = q < 0 ? "" : body.slice(q + 1);
  const out: Pkcs11Uri = {};
  const seen = new Set<string>();
  const take = (part: string, table: Record<string, keyof Pkcs11Uri>, isQuery: boolean) => {
    if (part === "") return;
    const eq = part.indexOf("=");
    if (eq <= 0) throw bad(uri, `attribute "${part.slice(0, 32)}" has no value`);
    const name = part.slice(0, eq).toLowerCase();
    const raw = part.slice(eq + 1);
    if (name === "pin-value")
      throw new TrustvolError("EUSAGE", "PKCS#11 URI carries pin-value; PINs are never taken from URIs",
        "remove pin-value and give the PIN with --pin-file, on stdin, or at the prompt (pin-source=file:... also works)");
    if (!/^[a-z0-9-]+$/.test(name)) throw bad(uri, `bad attribute name "${name.slice(0, 32)}"`);
    if (seen.has(name)) throw bad(uri, `attribute "${name}" given twice`);
    seen.add(name);
    const val = pctDecode(uri, raw);
    const key = table[name];
    if (!key) {
      // RFC 7512: vendor attributes (x-...) may be ignored; an unknown standard one in the path must not be.
      if (!name.startsWith("x-") && !isQuery && !(name in QUERY_ATTRS)) throw bad(uri, `unknown attribute "${name}"`);
      if (name in PATH_ATTRS || name in QUERY_ATTRS) throw bad(uri, `attribute "${name}" is in the wrong part of the URI`);
      (out.vendor ??= []).push({ name, value: utf8(uri, val, name), query: isQuery });
      return;
    }
    switch (key) {
      case "id":
        out.id = val;
        break;
      case "slotId": {
        const s = utf8(uri, val, name);
        if (!/^\d{1,19}$/.test(s)) throw bad(uri, "slot-id must be a decimal number");
        out.slotId = Number(s);
        break;
      }
      case "type": {
        const s = utf8(uri, val, name);
        if (!TYPES.includes(s)) throw bad(uri, `type must be one of ${TYPES.join(", ")}`);
        out.type = s as Pkcs11ObjectType;
        break;
      }
      case "libraryVersion": {
        const s = utf8(uri, val, name);
        if (!/^\d+(\.\d+)?$/.test(s)) throw bad(uri, "library-version must be M or M.N");
        out.libraryVersion = s;
        break;
      }
      default:
        (out as Record<string, unknown>)[key] = utf8(uri, val, name);
    }
  };
  for (const part of path.split(";")) take(part, PATH_ATTRS, false);
  for (const part of query.split("&")) {
    const eq = part.indexOf("=");
    const name = (eq < 0 ? part : part.slice(0, eq)).toLowerCase();
    if (name in PATH_ATTRS) throw bad(uri, `attribute "${name}" belongs in the path, not the query`);
    take(part, QUERY_ATTRS, true);
  }
  if (out.moduleName && out.modulePath) throw bad(uri, "give module-name or module-path, not both");
  return out;
}

/**
 * Percent-encode everything outside [A-Za-z0-9-_]: valid RFC 7512 and also inside the character set systemd's
 * superficial URI check accepts (so the URI can be stored in a systemd-pkcs11 token).
 */
function pctEncode(v: string | Buffer, all = false): string {
  const b = typeof v === "string" ? Buffer.from(v, "utf8") : v;
  let s = "";
  for (const c of b) {
    if (!all && ((c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x2d || c === 0x5f))
      s += String.fromCharCode(c);
    else s += "%" + c.toString(16).padStart(2, "0");
  }
  return s;
}

export function formatPkcs11Uri(u: Pkcs11Uri): string {
  const path: string[] = [];
  const push = (name: string, v: string | Buffer | number | undefined, all = false) => {
    if (v === undefined) return;
    path.push(`${name}=${typeof v === "number" ? String(v) : pctEncode(v, all)}`);
  };
  push("library-manufacturer", u.libraryManufacturer);
  push("library-description", u.libraryDescription);
  push("library-version", u.libraryVersion);
  push("slot-manufacturer", u.slotManufacturer);
  push("slot-description", u.slotDescription);
  push("slot-id", u.slotId);
  push("manufacturer", u.manufacturer);
  push("model", u.model);
  push("serial", u.serial);
  push("token", u.token);
  push("object", u.object);
  push("id", u.id, true);
  push("type", u.type);
  const query: string[] = [];
  if (u.moduleName !== undefined) query.push(`module-name=${pctEncode(u.moduleName)}`);
  if (u.modulePath !== undefined) query.push(`module-path=${pctEncode(u.modulePath)}`);
  if (u.pinSource !== undefined) query.push(`pin-source=${pctEncode(u.pinSource)}`);
  for (const v of u.vendor ?? []) (v.query ? query : path).push(`${v.name}=${pctEncode(v.value)}`);
  return "pkcs11:" + path.join(";") + (query.length ? "?" + query.join("&") : "");
}

/**
 * A URI read from a LUKS2 header, with the host-local query attributes dropped: module-path / module-name would
 * let the disk choose a library to load as root, pin-source a file to open. systemd's plugin ignores them too
 * (it loads every p11-kit registered module); modules come from p11-kit or the administrator only.
 */
export function headerUri(u: Pkcs11Uri): Pkcs11Uri {
  const v = { ...u };
  delete v.modulePath;
  delete v.moduleName;
  delete v.pinSource;
  return v;
}

/** systemd's own check (pkcs11_uri_valid): "pkcs11:" then only [A-Za-z0-9-_?;&%=]. Its plugin refuses anything else. */
export function isSystemdValidUri(uri: string): boolean {
  return /^pkcs11:[A-Za-z0-9\-_?;&%=]+$/.test(uri);
}

/** The token-selecting part of a URI (for matching C_GetTokenInfo), as plain strings. */
export function tokenMatches(u: Pkcs11Uri, t: { label: string; manufacturerID: string; serialNumber: string; model: string }): boolean {
  const eq = (want: string | undefined, have: string) => want === undefined || want === have.replace(/[ \0]+$/, "");
  return eq(u.token, t.label) && eq(u.manufacturer, t.manufacturerID) && eq(u.serial, t.serialNumber) && eq(u.model, t.model);
}
