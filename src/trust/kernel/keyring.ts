// The kernel key retention service (keyrings): add_key(2)/keyctl(2) in-process through the native addon when it is
// built (`addKey`/`keyctl` in native/src/trustvol_native.c), else keyutils' keyctl(1).
//
// In-process is the default: under emulation (the QEMU tier, TCG) every process start costs 0.4-0.9 s, and online
// re-encryption made four keyctl processes per run (two keys loaded, two unlinked). Payloads go to the syscall from
// the caller's buffer (no copy, never argv/env/temp files); payloads read back arrive in a Buffer the caller owns.
// keyctl(1) stays the fallback — no addon (it is optional), `KeyctlOptions.keyctl` naming a binary (tests log its
// argv), `TRUSTVOL_KEYCTL=1`, and the operations done only there: named references (`%:name`, `%type:desc`: keyctl's
// lookup scans /proc/keys), unlink from every keyring, describe, list, show. keyctl is on every device that does disk
// encryption with kernel keys (meta-lmp's initramfs, clevis); with `padd` / `pupdate` the payload travels on its
// stdin, so key material never reaches argv, env or a temp file either.
//
// `@p` (process) and `@t` (thread) keyrings are refused on both paths: through keyctl(1) they would belong to that
// short-lived process, and the two paths must mean the same thing. Use `@s`, `@u`, `@us` or a named keyring.
import { spawnSync } from "node:child_process";
import { constants } from "node:os";
import { TrustvolError, usage } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { loadIoctl } from "../../dm/ioctl.js";

/** A key or keyring: a serial number, a special keyring, or a named keyring `{ keyring: "name" }` (keyctl `%:name`). */
export type KeyRef = number | SpecialKeyring | { keyring: string } | { type: string; description: string };
export type SpecialKeyring = "@s" | "@u" | "@us" | "@g" | "@a";
export type KeyType = "user" | "logon" | "keyring" | "encrypted" | "trusted" | "big_key" | (string & {});

export interface KeyctlOptions {
  /** keyctl binary (default: `keyctl` on PATH). */
  keyctl?: string;
  timeoutMs?: number;
}

export interface KeyDescription {
  id: number;
  type: string;
  uid: number;
  gid: number;
  perm: number;
  description: string;
}

export interface KeyTreeEntry {
  id: number;
  perm: string;
  uid: number;
  gid: number;
  type: string;
  description: string;
  depth: number;
}

// ---------------------------------------------------------------- permissions
export const KeyPerm = { view: 0x01, read: 0x02, write: 0x04, search: 0x08, link: 0x10, setattr: 0x20, all: 0x3f } as const;
export type KeyPermName = Exclude<keyof typeof KeyPerm, "all">;
export interface KeyPermSpec {
  possessor?: (KeyPermName | "all")[];
  user?: (KeyPermName | "all")[];
  group?: (KeyPermName | "all")[];
  other?: (KeyPermName | "all")[];
}

/** Build the 32-bit permission mask: possessor << 24 | user << 16 | group << 8 | other. */
export function keyPermMask(spec: KeyPermSpec): number {
  const bits = (names: (KeyPermName | "all")[] = []) => names.reduce((m, n) => m | KeyPerm[n], 0);
  return ((bits(spec.possessor) << 24) | (bits(spec.user) << 16) | (bits(spec.group) << 8) | bits(spec.other)) >>> 0;
}

/** A mask for keys only their possessor (the boot flow that loaded them) may use: view, read, search, link, setattr. */
export const POSSESSOR_ONLY = keyPermMask({ possessor: ["view", "read", "write", "search", "link", "setattr"] });

// ---------------------------------------------------------------- plumbing
function refArg(ref: KeyRef): string {
  if (typeof ref === "number") {
    if (!Number.isInteger(ref) || ref === 0) throw usage(`bad key serial ${ref}`);
    return String(ref);
  }
  if (typeof ref === "string") {
    if ((ref as string) === "@p" || (ref as string) === "@t")
      throw usage(`${ref} belongs to the short-lived keyctl process`, "use @s, @u or a named keyring");
    if (!["@s", "@u", "@us", "@g", "@a"].includes(ref)) throw usage(`unknown special keyring ${ref}`);
    return ref;
  }
  if ("keyring" in ref) return `%:${checkDesc(ref.keyring)}`;
  return `%${checkType(ref.type)}:${checkDesc(ref.description)}`;
}

function checkType(t: string): string {
  if (!/^[a-z_][a-z0-9_.-]*$/i.test(t)) throw usage(`bad key type "${t}"`);
  return t;
}

function checkDesc(d: string): string {
  if (!d || d.length > 4095 || /[\0\n]/.test(d)) throw usage(`bad key description "${d}"`);
  return d;
}

interface Out {
  stdout: Buffer;
  stderr: string;
}

/** Run keyctl; `input` (key material, blobs) goes on stdin. Throws TrustvolError with keyctl's message on failure. */
function keyctl(args: string[], o: KeyctlOptions = {}, input?: Uint8Array): Out {
  const r = spawnSync(o.keyctl ?? "keyctl", args, { input, timeout: o.timeoutMs ?? 30_000, maxBuffer: 1 << 24 });
  if (r.error) {
    const e = r.error as NodeJS.ErrnoException;
    if (e.code === "ENOENT") throw new TrustvolError("EUNSUPPORTED", "keyctl not found", "install keyutils (apt-get install keyutils)", { cause: e });
    throw new TrustvolError("EINTERNAL", `keyctl ${args[0]} failed: ${e.message}`, undefined, { cause: e });
  }
  const stderr = r.stderr?.toString() ?? "";
  if (r.status !== 0) {
    wipe(r.stdout);
    throw keyctlError(args[0]!, stderr.trim(), args);
  }
  return { stdout: r.stdout, stderr };
}

/** Map keyctl's strerror text to our codes; the message never contains payloads (they were on stdin). */
function keyctlError(cmd: string, msg: string, args: string[]): TrustvolError {
  const what = `keyctl ${cmd}${args[1] && cmd !== "padd" && cmd !== "add" ? " " + args[1] : cmd === "padd" || cmd === "add" ? ` ${args[1]} ${args[2]}` : ""}`;
  const text = msg.replace(/^keyctl_[a-z_]+:\s*/, "").replace(/^add_key:\s*/, "").replace(/^[a-z_]+:\s*/, "") || "failed";
  if (/Required key not available|No such file|Key has been revoked|Key has expired|Can't find/i.test(msg))
    return new TrustvolError("ENOENT", `${what}: ${text}`, "the key is not in any keyring this process can search");
  if (/Permission denied|Operation not permitted/i.test(msg))
    return new TrustvolError("EPOLICY", `${what}: ${text}`, "check the key's permissions (keyctl describe) and that this process possesses it");
  if (/No such device|Unknown key type|not supported|Operation not supported/i.test(msg))
    return new TrustvolError("EUNSUPPORTED", `${what}: ${text}`, "the kernel lacks this key type or its trust source");
  if (/Disk quota exceeded/i.test(msg)) return new TrustvolError("ENOSPC", `${what}: ${text}`, "the user's key quota is full (/proc/key-users)");
  if (/Invalid argument/i.test(msg)) return new TrustvolError("EUSAGE", `${what}: ${text}`, "the kernel rejected the payload or options");
  return new TrustvolError("EIO", `${what}: ${text}`);
}

// ---------------------------------------------------------------- in-process (native addon)
interface KeyAddon {
  addKey(type: string, description: string, payload: Uint8Array | null, keyring: number): number;
  keyctl(op: number, ...args: (number | string | Uint8Array | null)[]): number;
}

/** keyctl(2) operations (linux/keyctl.h). */
const KEYCTL = { getKeyringId: 0, update: 2, revoke: 3, setperm: 5, clear: 7, link: 8, unlink: 9, search: 10, read: 11, setTimeout: 15, invalidate: 21 } as const;
const SPECIAL: Record<SpecialKeyring, number> = { "@s": -3, "@u": -4, "@us": -5, "@g": -6, "@a": -7 };

/** The addon's keyring calls, unless keyctl(1) is asked for (a binary in the options, TRUSTVOL_KEYCTL=1). */
function native(o?: KeyctlOptions): KeyAddon | null {
  if (o?.keyctl !== undefined || process.env.TRUSTVOL_KEYCTL === "1") return null;
  const a = loadIoctl() as unknown as Partial<KeyAddon> | null;
  return a && typeof a.addKey === "function" && typeof a.keyctl === "function" ? (a as KeyAddon) : null;
}

/** A serial or a special keyring as the syscalls take it; undefined for named references (keyctl(1) resolves those). */
function nativeRef(ref: KeyRef): number | undefined {
  refArg(ref); // the same validation (and @p/@t refusal) as the keyctl(1) path
  if (typeof ref === "number") return ref;
  if (typeof ref === "string") return SPECIAL[ref];
  return undefined;
}

// errno numbers of the key errors are Linux's generic ones (x86, arm, arm64, riscv); Node does not name all of them
const E = constants.errno as Record<string, number>;
const ERRNO_TEXT: [number, string][] = [
  [E.ENOKEY ?? 126, "Required key not available"],
  [E.EKEYEXPIRED ?? 127, "Key has expired"],
  [E.EKEYREVOKED ?? 128, "Key has been revoked"],
  [E.EKEYREJECTED ?? 129, "Key was rejected by service"],
  [E.ENOENT!, "No such file or directory"],
  [E.EACCES!, "Permission denied"],
  [E.EPERM!, "Operation not permitted"],
  [E.ENODEV!, "No such device"],
  [E.EOPNOTSUPP!, "Operation not supported"],
  [E.EDQUOT!, "Disk quota exceeded"],
  [E.EINVAL!, "Invalid argument"],
  [E.ENOMEM!, "Cannot allocate memory"],
  [E.EEXIST!, "File exists"],
];

/** A negative syscall result as the error keyctl(1) would have given (same codes, same one-line text). */
function nativeCheck(r: number, cmd: string, args: string[]): number {
  if (r >= 0) return r;
  const text = ERRNO_TEXT.find(([n]) => n === -r)?.[1] ?? `errno ${-r}`;
  throw keyctlError(cmd, text, [cmd, ...args]);
}

/** A keyctl(2) operation on one key through the addon; false when keyctl(1) must do it (no addon, a named reference). */
function nativeKeyOp(o: KeyctlOptions | undefined, key: KeyRef, cmd: string, op: number, ...args: (number | Uint8Array)[]): boolean {
  const a = native(o), id = nativeRef(key);
  if (!a || id === undefined) return false;
  nativeCheck(a.keyctl(op, id, ...args), cmd, [String(key)]);
  return true;
}

function serial(out: Out, what: string): number {
  const s = out.stdout.toString().trim();
  const n = Number(s);
  if (!/^\d+$/.test(s) || !n) throw new TrustvolError("EINTERNAL", `${what}: keyctl printed "${s}" instead of a key serial`);
  return n;
}

// ---------------------------------------------------------------- operations
/**
 * Add a key whose payload is NOT secret (e.g. a kernel command like `new 32 keyhandle=0x81000001`).
 * Anything secret or sealed goes through paddKey (stdin).
 */
export function addKey(type: KeyType, description: string, publicPayload: string, keyring: KeyRef, o?: KeyctlOptions): number {
  const a = native(o), ring = nativeRef(keyring);
  if (a && ring !== undefined) return nativeCheck(a.addKey(checkType(type), checkDesc(description), Buffer.from(publicPayload), ring), "add", [type, description]);
  return serial(keyctl(["add", checkType(type), checkDesc(description), publicPayload, refArg(keyring)], o), `add ${type}`);
}

/** Add (or update) a key with the payload on stdin; returns its serial. */
export function paddKey(type: KeyType, description: string, payload: Uint8Array, keyring: KeyRef, o?: KeyctlOptions): number {
  const a = native(o), ring = nativeRef(keyring);
  if (a && ring !== undefined) return nativeCheck(a.addKey(checkType(type), checkDesc(description), payload, ring), "padd", [type, description]);
  return serial(keyctl(["padd", checkType(type), checkDesc(description), refArg(keyring)], o, payload), `padd ${type}`);
}

/** Replace a key's payload (stdin). */
export function updateKey(key: KeyRef, payload: Uint8Array, o?: KeyctlOptions): void {
  if (!nativeKeyOp(o, key, "pupdate", KEYCTL.update, payload, payload.length)) keyctl(["pupdate", refArg(key)], o, payload);
}

/**
 * The raw payload (`keyctl pipe`): a user key's data, a trusted/encrypted key's sealed blob (hex text).
 * `logon` keys are unreadable by design. The caller owns and wipes the Buffer.
 */
export function pipeKey(key: KeyRef, o?: KeyctlOptions): Buffer {
  const a = native(o), id = nativeRef(key);
  if (a && id !== undefined) {
    // KEYCTL_READ returns the payload's size; read again into a buffer of that size until it fits (keyutils' read_alloc)
    let size = nativeCheck(a.keyctl(KEYCTL.read, id, null, 0), "pipe", [String(key)]);
    for (;;) {
      const buf = Buffer.alloc(size);
      const n = nativeCheck(a.keyctl(KEYCTL.read, id, buf, size), "pipe", [String(key)]);
      if (n <= size) return n === size ? buf : buf.subarray(0, n);
      wipe(buf);
      size = n;
    }
  }
  return keyctl(["pipe", refArg(key)], o).stdout;
}

/** Same as pipeKey (keyctl's own `read` only reformats the same bytes as a hex dump). */
export const readKey = pipeKey;

/** Find a key by type and description below `keyring` (recursively); undefined when absent. Optionally link it into `dest`. */
export function searchKey(keyring: KeyRef, type: KeyType, description: string, dest?: KeyRef, o?: KeyctlOptions): number | undefined {
  try {
    const a = native(o), ring = nativeRef(keyring), to = dest === undefined ? 0 : nativeRef(dest);
    if (a && ring !== undefined && to !== undefined) return nativeCheck(a.keyctl(KEYCTL.search, ring, checkType(type), checkDesc(description), to), "search", [String(keyring)]);
    const args = ["search", refArg(keyring), checkType(type), checkDesc(description)];
    if (dest !== undefined) args.push(refArg(dest));
    return serial(keyctl(args, o), "search");
  } catch (e) {
    if (e instanceof TrustvolError && e.code === "ENOENT") return undefined;
    throw e;
  }
}

/** Resolve a reference (special or named keyring, %type:desc) to a serial. */
export function keyId(ref: KeyRef, o?: KeyctlOptions): number {
  const a = native(o), id = nativeRef(ref);
  if (a && id !== undefined) return nativeCheck(a.keyctl(KEYCTL.getKeyringId, id, 0), "id", [String(ref)]);
  return serial(keyctl(["id", refArg(ref)], o), "id");
}

export function linkKey(key: KeyRef, keyring: KeyRef, o?: KeyctlOptions): void {
  const a = native(o), id = nativeRef(key), ring = nativeRef(keyring);
  if (a && id !== undefined && ring !== undefined) return void nativeCheck(a.keyctl(KEYCTL.link, id, ring), "link", [String(key)]);
  keyctl(["link", refArg(key), refArg(keyring)], o);
}

/** Unlink a key from one keyring, or (without keyring) from every keyring this process can reach. */
export function unlinkKey(key: KeyRef, keyring?: KeyRef, o?: KeyctlOptions): void {
  const a = native(o), id = nativeRef(key), ring = keyring === undefined ? undefined : nativeRef(keyring);
  if (a && id !== undefined && ring !== undefined) return void nativeCheck(a.keyctl(KEYCTL.unlink, id, ring), "unlink", [String(key)]);
  const args = ["unlink", refArg(key)];
  if (keyring !== undefined) args.push(refArg(keyring));
  keyctl(args, o);
}

export function revokeKey(key: KeyRef, o?: KeyctlOptions): void {
  if (!nativeKeyOp(o, key, "revoke", KEYCTL.revoke)) keyctl(["revoke", refArg(key)], o);
}

export function invalidateKey(key: KeyRef, o?: KeyctlOptions): void {
  if (!nativeKeyOp(o, key, "invalidate", KEYCTL.invalidate)) keyctl(["invalidate", refArg(key)], o);
}

export function clearKeyring(keyring: KeyRef, o?: KeyctlOptions): void {
  if (!nativeKeyOp(o, keyring, "clear", KEYCTL.clear)) keyctl(["clear", refArg(keyring)], o);
}

export function setKeyTimeout(key: KeyRef, seconds: number, o?: KeyctlOptions): void {
  const s = Math.max(0, Math.floor(seconds));
  if (!nativeKeyOp(o, key, "timeout", KEYCTL.setTimeout, s)) keyctl(["timeout", refArg(key), String(s)], o);
}

/** Set the permission mask (see keyPermMask). */
export function setPerm(key: KeyRef, mask: number, o?: KeyctlOptions): void {
  if (!nativeKeyOp(o, key, "setperm", KEYCTL.setperm, mask >>> 0)) keyctl(["setperm", refArg(key), `0x${(mask >>> 0).toString(16).padStart(8, "0")}`], o);
}

/**
 * Where a key for a dm-crypt table goes: the keyring `keyctl id @s` names — the session keyring this process and its
 * dmsetup children search, else the user-session keyring (which links @u). Not @u itself: a systemd system service
 * (dracut's initqueue, trustvol-volume@.service) runs with a private session keyring that does not link @u, and the
 * table load fails with "the kernel could not find the logon key".
 */
export function tableKeyring(o?: KeyctlOptions): number {
  return keyId("@s", o);
}

/** Create a keyring named `name` in `parent` (or return the existing one there). */
export function newKeyring(name: string, parent: KeyRef, o?: KeyctlOptions): number {
  const a = native(o), ring = nativeRef(parent);
  if (a && ring !== undefined) return nativeCheck(a.addKey("keyring", checkDesc(name), null, ring), "newring", [name]);
  return serial(keyctl(["newring", checkDesc(name), refArg(parent)], o), "newring");
}

/** The named keyring reachable from this process, or one created in `parent` (default @u). */
export function ensureKeyring(name: string, parent: KeyRef = "@u", o?: KeyctlOptions): number {
  return searchKey(parent, "keyring", name, undefined, o) ?? newKeyring(name, parent, o);
}

export function describeKey(key: KeyRef, o?: KeyctlOptions): KeyDescription {
  const id = keyId(key, o);
  const s = keyctl(["rdescribe", String(id), "\x1f"], o).stdout.toString().replace(/\n$/, "");
  const [type, uid, gid, perm, ...rest] = s.split("\x1f");
  return { id, type: type ?? "", uid: Number(uid), gid: Number(gid), perm: parseInt(perm ?? "0", 16) >>> 0, description: rest.join("\x1f") };
}

/** Serials of the keys directly in a keyring. */
export function listKeyring(keyring: KeyRef, o?: KeyctlOptions): number[] {
  const s = keyctl(["rlist", refArg(keyring)], o).stdout.toString().trim();
  return s ? s.split(/\s+/).map(Number) : [];
}

/** The tree `keyctl show` prints, parsed. */
export function showKeyring(keyring: KeyRef = "@s", o?: KeyctlOptions): KeyTreeEntry[] {
  const lines = keyctl(["show", refArg(keyring)], o).stdout.toString().split("\n");
  const out: KeyTreeEntry[] = [];
  for (const line of lines) {
    const m = /^\s*(\d+)\s+(\S+)\s+(-?\d+)\s+(-?\d+)\s+(.*?)([a-z_.]+): (.*)$/.exec(line);
    if (!m) continue;
    out.push({ id: Number(m[1]), perm: m[2]!, uid: Number(m[3]), gid: Number(m[4]), depth: (m[5]!.match(/\\_|\|/g) ?? []).length, type: m[6]!, description: m[7]! });
  }
  return out;
}

/** True when keyctl(1) can be run (keyutils installed). */
export function keyctlAvailable(o?: KeyctlOptions): boolean {
  const r = spawnSync(o?.keyctl ?? "keyctl", ["--version"], { stdio: "ignore" });
  return r.status === 0;
}
