// dm-crypt table lines (admin-guide/device-mapper/dm-crypt.rst):
//   <start> <len> crypt <cipher> <key> <iv_offset> <device> <offset> [<#opt_params> <opt_params>]
// trustvol only ever builds tables whose <key> is a kernel keyring reference `:<size>:<type>:<description>`, so a
// table string is safe to put in argv, logs and error messages: the key material stays in the kernel keyring.
// All offsets and lengths are 512-byte sectors, whatever the encryption sector size.
import { usage } from "../util/errors.js";
import { parseCipherSpec, validKeySizes } from "../dmcrypt/cipher-spec.js";

export type KeyringKeyType = "logon" | "user" | "encrypted" | "trusted";
export const KEYRING_KEY_TYPES: readonly KeyringKeyType[] = ["logon", "user", "encrypted", "trusted"];

/** A key dm-crypt fetches from the kernel keyring at table load. */
export interface KeyringKeyRef {
  /** Key size in bytes (what the cipher gets; for a CAAM tagged key the size of the tagged black key). */
  size: number;
  type: KeyringKeyType;
  description: string;
}

export interface CryptTableSpec {
  /** First sector of the mapping (default 0). */
  start?: bigint | number;
  /** Length of the mapping in 512-byte sectors. */
  sectors: bigint | number;
  /** dm-crypt cipher: "aes-xts-plain64", "aes-cbc-essiv:sha256", "capi:tk(cbc(aes))-plain", ... */
  cipher: string;
  key: KeyringKeyRef;
  /** IV offset in 512-byte sectors (LUKS2: segment iv_tweak; plain: --skip). */
  ivOffset?: bigint | number;
  /** Underlying device: a path or major:minor. */
  device: string;
  /** Start of the encrypted data on the device, in 512-byte sectors. */
  offset?: bigint | number;
  /** Encryption sector size (512..4096); written as `sector_size:N` when not 512. */
  sectorSize?: number;
  ivLargeSectors?: boolean;
  allowDiscards?: boolean;
  sameCpuCrypt?: boolean;
  submitFromCryptCpus?: boolean;
  noReadWorkqueue?: boolean;
  noWriteWorkqueue?: boolean;
}

const CIPHER_RE = /^[A-Za-z0-9_(),.:+-]+$/;

/** Accept what the kernel might know: a spec trustvol parses, any other cipher-chain-iv triple, or a capi: spec. */
export function checkTableCipher(cipher: string): void {
  if (!cipher || !CIPHER_RE.test(cipher) || cipher.length > 128) throw usage(`bad dm-crypt cipher "${cipher}"`, "e.g. aes-xts-plain64 or capi:tk(cbc(aes))-plain");
  if (cipher.startsWith("capi:")) {
    if (!/^capi:[a-z0-9_]+(\([a-z0-9_(),-]+\))?-[a-z0-9_:]+$/i.test(cipher)) throw usage(`bad kernel crypto API cipher "${cipher}"`, "format: capi:<template(cipher)>-<ivmode>, e.g. capi:tk(cbc(aes))-plain");
    if ((cipher.match(/\(/g) ?? []).length !== (cipher.match(/\)/g) ?? []).length) throw usage(`unbalanced parentheses in cipher "${cipher}"`);
    return;
  }
  if (!/^[a-z0-9_]+(-[a-z0-9_]+(-[a-z0-9_]+(:[a-z0-9_]+)?)?)?$/i.test(cipher)) throw usage(`bad dm-crypt cipher "${cipher}"`, "format: <cipher>-<chainmode>-<ivmode>[:<ivopts>], e.g. aes-xts-plain64");
}

export function checkKeyDescription(type: string, d: string): void {
  if (!d || d.length > 4000 || /[\s\0]/.test(d)) throw usage(`bad key description "${d.replace(/[\0-\x1f]/g, "?")}"`, "no spaces or control characters");
  if (type === "logon" && (d.indexOf(":") <= 0)) throw usage(`a logon key description needs a "prefix:" (got "${d}")`, 'e.g. "trustvol:data" or "logkey:"');
}

/** `:<size>:<type>:<description>` */
export function keyringKeyString(k: KeyringKeyRef): string {
  if (!(KEYRING_KEY_TYPES as readonly string[]).includes(k.type)) throw usage(`dm-crypt cannot use "${k.type}" keys`, `key type must be one of ${KEYRING_KEY_TYPES.join(", ")}`);
  if (!Number.isInteger(k.size) || k.size < 1 || k.size > 1024) throw usage(`bad key size ${k.size} (bytes)`);
  checkKeyDescription(k.type, k.description);
  return `:${k.size}:${k.type}:${k.description}`;
}

function big(v: bigint | number | undefined, what: string): bigint {
  if (v === undefined) return 0n;
  if (typeof v === "number" && (!Number.isInteger(v) || v < 0)) throw usage(`${what} must be a non-negative whole number of sectors, got ${v}`);
  const b = BigInt(v);
  if (b < 0n) throw usage(`${what} must not be negative`);
  return b;
}

/** Check the key size against the cipher when trustvol knows the cipher (kernel-only ciphers are not checked). */
export function checkKeySizeForCipher(cipher: string, size: number): void {
  if (cipher.startsWith("capi:")) return;
  let spec;
  try {
    spec = parseCipherSpec(cipher);
  } catch {
    return; // serpent, twofish...: the kernel decides
  }
  const ok = validKeySizes(spec.chainMode);
  if (!ok.includes(size)) throw usage(`a ${size}-byte key does not fit ${cipher}`, `${cipher} takes ${ok.join(" or ")} bytes`);
}

/** One dm-crypt table line (no trailing newline). */
export function cryptTable(t: CryptTableSpec): string {
  checkTableCipher(t.cipher);
  const key = keyringKeyString(t.key);
  checkKeySizeForCipher(t.cipher, t.key.size);
  if (!t.device || /[\s\0]/.test(t.device)) throw usage(`bad device "${t.device}" for a table`, "device paths with spaces cannot go into a dm table; use major:minor");
  const start = big(t.start, "start");
  const sectors = big(t.sectors, "length");
  if (sectors === 0n) throw usage("the mapping would be empty (0 sectors)", "is the device or image big enough for the data offset?");
  const ss = t.sectorSize ?? 512;
  if (![512, 1024, 2048, 4096].includes(ss)) throw usage(`sector size must be 512, 1024, 2048 or 4096, got ${ss}`);
  const per = BigInt(ss / 512);
  if (sectors % per) throw usage(`the mapping length (${sectors} sectors) is not a multiple of the ${ss}-byte encryption sector`);
  const ivOffset = big(t.ivOffset, "iv offset");
  const offset = big(t.offset, "offset");
  if (t.ivLargeSectors && ivOffset % per) throw usage(`with iv_large_sectors the IV offset must be a multiple of ${per}`);
  const opts: string[] = [];
  if (t.allowDiscards) opts.push("allow_discards");
  if (t.sameCpuCrypt) opts.push("same_cpu_crypt");
  if (t.submitFromCryptCpus) opts.push("submit_from_crypt_cpus");
  if (t.noReadWorkqueue) opts.push("no_read_workqueue");
  if (t.noWriteWorkqueue) opts.push("no_write_workqueue");
  if (ss !== 512) opts.push(`sector_size:${ss}`);
  if (t.ivLargeSectors) opts.push("iv_large_sectors");
  const head = `${start} ${sectors} crypt ${t.cipher} ${key} ${ivOffset} ${t.device} ${offset}`;
  return opts.length ? `${head} ${opts.length} ${opts.join(" ")}` : head;
}

export interface ParsedCryptTable {
  start: bigint;
  sectors: bigint;
  cipher: string;
  /** The key field as printed; `keyring` is set when it is a keyring reference. */
  key: string;
  keyring?: KeyringKeyRef;
  ivOffset: bigint;
  device: string;
  offset: bigint;
  options: string[];
  sectorSize: number;
}

/** Parse one crypt line of `dmsetup table` output ("0 65536 crypt aes-xts-plain64 :64:logon:x 0 7:0 0 1 sector_size:4096"). */
export function parseCryptTable(line: string): ParsedCryptTable {
  const f = line.trim().split(/\s+/);
  if (f.length < 8 || f[2] !== "crypt") throw usage(`not a dm-crypt table line: "${line.trim().slice(0, 80)}"`);
  const n = f.length > 8 ? Number(f[8]) : 0;
  const options = f.slice(9, 9 + n);
  const key = f[4]!;
  const m = /^:(\d+):([a-z]+):(.+)$/.exec(key);
  const ss = options.find((o) => o.startsWith("sector_size:"));
  return {
    start: BigInt(f[0]!),
    sectors: BigInt(f[1]!),
    cipher: f[3]!,
    key,
    ...(m ? { keyring: { size: Number(m[1]), type: m[2] as KeyringKeyType, description: m[3]! } } : {}),
    ivOffset: BigInt(f[5]!),
    device: f[6]!,
    offset: BigInt(f[7]!),
    options,
    sectorSize: ss ? Number(ss.slice(12)) : 512,
  };
}

/** Refuse any table whose key field is not a keyring reference (a hex key must never reach dmsetup's argv or stdin). */
export function assertKeyringOnly(table: string): void {
  for (const line of table.split("\n").filter((l) => l.trim())) {
    const f = line.trim().split(/\s+/);
    if (f[2] === "crypt" && !/^:\d+:[a-z]+:\S+$/.test(f[4] ?? "")) throw usage("internal: refusing a dm-crypt table with an inline key");
  }
}

/** Kernel crypto API names a cipher spec needs, for diagnosis: "aes-xts-plain64" → ["aes", "xts(aes)"]. */
export function kernelCryptoNames(cipher: string): string[] {
  if (cipher.startsWith("capi:")) return [cipher.slice(5).replace(/-[^-()]+$/, "")];
  const [c, chain] = cipher.split("-");
  return chain && chain !== "plain" ? [c!, `${chain}(${c})`] : [c!];
}

/** dm device names: what dmsetup and /dev/mapper accept. */
export function checkMappingName(name: string): void {
  if (!name || name.length > 127 || !/^[A-Za-z0-9_.+#@=-]+$/.test(name) || name === "." || name === ".." || name === "control")
    throw usage(`bad mapping name "${name}"`, "use letters, digits and _ . + - (at most 127 characters)");
}
