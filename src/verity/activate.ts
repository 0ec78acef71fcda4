// dm-verity activation through device-mapper: `verity open` / `verity close`.
//
// open: image files get read-only loop devices (losetup -f --show -r); the table comes from verityTable(); the mapping
// is created read-only with a dm UUID "TRUSTVOL-VERITY-<superblock uuid>-<name>". Before anything is created the root
// hash is checked against the top hash block (one block read): a wrong root hash is refused up front instead of
// producing a device whose every read fails. Data blocks are verified by the kernel as they are read.
// A root hash signature is handed to the kernel the way veritysetup does it: a `user` key holding the PKCS#7 DER, named
// by the table option root_hash_sig_key_desc; the kernel (CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG) checks it against its
// builtin/secondary trusted keyring while it builds the table, so the key is removed again right after.
// Everything device-mapper and loop goes through src/dm/ (one state directory, see dm/state.ts).
import { realpathSync, statSync } from "node:fs";
import { randomBytes, createHash } from "node:crypto";
import { TrustvolError, unsupported, usage } from "../util/errors.js";
import { checkMappingName } from "../dm/table.js";
import { dmCreate, dmExists, dmStatus, dmTable, dmInfo, dmRemove, requireTarget } from "../dm/dmsetup.js";
import { loopAttach, loopBackingFile, type LoopHandle } from "../dm/loop.js";
import { closeMapping, recallMapping, rememberMapping } from "../dm/state.js";
import { FileBlockDevice } from "../blockdev/file.js";
import { readAt } from "../blockdev/types.js";
import { hashBlock } from "./pool.js";
import { resolveVerityParams, verityGeometry, type VerityParams } from "./superblock.js";
import { verityDump, verityTable, parseRootHash, type VerityFormatInput, type VerityTableOptions } from "./tree.js";
import { paddKey, unlinkKey, invalidateKey } from "../trust/kernel/keyring.js";
import { verityFecLayout, type VerityFecLayout } from "./fec.js";

export const VERITY_DM_UUID_PREFIX = "TRUSTVOL-VERITY-";

export interface VerityOpenOptions {
  /** Root hash (hex or bytes). */
  rootHash: string | Uint8Array;
  /** Superblock offset in the hash device (bytes, default 0). */
  hashOffset?: number;
  /** Explicit parameters for a hash device without superblock (noSuperblock: true). */
  params?: VerityFormatInput & { noSuperblock?: boolean };
  /** Detached PKCS#7 signature (DER) of the root hash, checked by the kernel. */
  signature?: Uint8Array;
  /** Extra table options (corruption handling, zero blocks). */
  table?: Omit<VerityTableOptions, "rootHashSigKeyDesc">;
  /** Reed-Solomon parity made by verity format --fec-device (veritysetup-compatible): the kernel repairs bad blocks. */
  fec?: { device: string; roots?: number; offset?: number };
}

export interface VerityOpenResult {
  name: string;
  device: string;
  dmUuid: string;
  dataDevice: string;
  hashDevice: string;
  /** Loop devices attached by open (detached again by close). */
  loops: string[];
  table: string;
  /** Kernel status right after activation: V (verified so far) or C (corruption detected). */
  status: "verified" | "corrupted" | "unknown";
  signed: boolean;
}

// ---------------------------------------------------------------- devices
function checkName(name: string): void {
  try {
    checkMappingName(name);
  } catch {
    throw usage(`verity: "${name.slice(0, 140)}" is not a usable device name`, "use letters, digits and _ . + - (at most 127 characters, no /)");
  }
}

export function checkDeviceMapperVerity(): void {
  try {
    requireTarget("verity");
  } catch (e) {
    throw verityError(e, "");
  }
}

// ---------------------------------------------------------------- open
async function loadParams(hashPath: string, dataSize: number, o: VerityOpenOptions): Promise<{ p: VerityParams; hashSize: number; top: Buffer | undefined }> {
  const hash = await FileBlockDevice.open(hashPath, { readOnly: true });
  try {
    let p: VerityParams;
    if (o.params?.noSuperblock) {
      p = resolveVerityParams({ ...o.params, noSuperblock: true, hashOffset: o.params.hashOffset ?? o.hashOffset ?? 0, salt: o.params.salt ?? Buffer.alloc(0) }, dataSize);
    } else {
      p = (await verityDump(hash, o.hashOffset ?? 0)).params;
    }
    const g = verityGeometry(p);
    if (BigInt(hash.size) < g.hashDeviceSize)
      throw new TrustvolError("ETRUNCATED", `verity: hash device ${hashPath} is truncated: ${hash.size} bytes, the hash tree needs ${g.hashDeviceSize}`, "restore the complete hash device");
    const top = g.levels > 0 ? await readAt(hash, Number(g.levelStart[g.levels - 1]! * BigInt(p.hashBlockSize)), p.hashBlockSize) : undefined;
    return { p, hashSize: hash.size, top };
  } finally {
    await hash.close();
  }
}

async function sizeOf(path: string): Promise<number> {
  const d = await FileBlockDevice.open(path, { readOnly: true });
  try {
    return d.size;
  } finally {
    await d.close();
  }
}

function isRegularFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    throw new TrustvolError("ENOENT", `verity: ${path}: no such file or device`, "check the path");
  }
}

const firstLine = (s: string) => s.split("\n").map((l) => l.trim()).filter(Boolean).join("; ");

function mapCreateError(name: string, stderr: string, newKernelLines: string[], signed: boolean): TrustvolError {
  const kern = newKernelLines.filter((l) => /device-mapper|verity|PKCS#7|pkcs7|X\.509|asymmetric|keyring/i.test(l)).map((l) => l.replace(/^\[[^\]]*\]\s*/, ""));
  const why = firstLine(stderr.replace(/^Command failed\.?$/m, ""));
  const kernelSays = kern.length ? ` (kernel: ${kern.slice(-2).join("; ")})` : "";
  const msg = `${why}${kernelSays}`;
  const sigProblem =
    signed &&
    (/Required key not available|Key was rejected|Key has been revoked|Key has expired|Bad message|Package not installed/i.test(stderr) ||
      /Root hash verification failed|Invalid key specified|signature/i.test(kernelSays));
  if (sigProblem) {
    if (/Invalid key specified/i.test(kernelSays))
      return new TrustvolError("EPOLICY", `verity: the kernel could not read the root hash signature key for ${name}: ${msg}`,
        "the kernel looks the key up from dmsetup's keyrings; check that the user keyring is reachable (keyctl show @us)");
    if (/Bad message/i.test(stderr))
      return new TrustvolError("ECORRUPT", `verity: the kernel could not parse the root hash signature for ${name}: ${msg}`, "give the DER PKCS#7 file made by verity sign (openssl smime -sign -binary -noattr -outform DER)");
    return new TrustvolError("EPOLICY", `verity: the kernel refused the root hash signature for ${name}: ${msg}`,
      "the signer's certificate must be in the kernel's builtin or secondary trusted keyring (CONFIG_SYSTEM_TRUSTED_KEYS, or added to %:.secondary_trusted_keys signed by a builtin key)");
  }
  if (/Operation not permitted/i.test(stderr))
    return new TrustvolError("EPOLICY", `verity: the kernel refused to activate ${name}: ${msg}`, "run as root; if the kernel enforces signed root hashes (dm_verity.require_signatures=1) give --root-hash-signature");
  if (/Device or resource busy|File exists/i.test(stderr))
    return new TrustvolError("EBUSY", `verity: cannot create ${name}: ${msg}`, "the name or a device is in use");
  if (/unknown target type/i.test(msg))
    return unsupported(`verity: this kernel has no dm-verity target: ${msg}`, "load it (modprobe dm-verity) or build the kernel with CONFIG_DM_VERITY");
  if (/Permission denied/i.test(stderr)) return new TrustvolError("EDEVICE", `verity: cannot create ${name}: ${msg}`, "run as root");
  if (/Invalid argument/i.test(stderr))
    return new TrustvolError("EUNSUPPORTED", `verity: the kernel rejected the dm-verity table for ${name}: ${msg}`, "the kernel may lack the hash algorithm, the block size or a table option");
  return new TrustvolError("EIO", `verity: dmsetup create ${name} failed: ${msg || "no message"}`);
}

/** Activate a dm-verity mapping /dev/mapper/<name> over data and hash (files get read-only loop devices). */
export async function verityOpen(data: string, name: string, hash: string, o: VerityOpenOptions): Promise<VerityOpenResult> {
  checkName(name);
  const dataIsFile = isRegularFile(data);
  const hashIsFile = isRegularFile(hash);
  const dataSize = await sizeOf(data);
  const { p, top } = await loadParams(hash, dataSize, o);
  const g = verityGeometry(p);
  const root = parseRootHash(o.rootHash, g.digestSize);
  const need = p.dataBlocks * BigInt(p.dataBlockSize);
  if (BigInt(dataSize) < need)
    throw new TrustvolError("ETRUNCATED", `verity: data device ${data} has ${dataSize} bytes, ${p.dataBlocks} blocks of ${p.dataBlockSize} need ${need}`, "the data image is truncated or belongs to another hash device");
  // The root hash is the digest of the top hash block (or of the only data block): check it before creating anything.
  const spec = { algorithm: p.hashAlgorithm, salt: p.salt, hashType: p.hashType, digestSize: g.digestSize };
  let actual: Buffer;
  if (top) actual = hashBlock(spec, top);
  else {
    const d = await FileBlockDevice.open(data, { readOnly: true });
    try {
      actual = hashBlock(spec, await readAt(d, 0, p.dataBlockSize));
    } finally {
      await d.close();
    }
  }
  if (!actual.equals(root))
    throw new TrustvolError("ECORRUPT", `verity: root hash ${root.toString("hex")} does not match the hash tree on ${hash} (its top block hashes to ${actual.toString("hex")})`,
      "wrong root hash, or the hash device belongs to another image (or was modified)");
  if (o.signature !== undefined && (o.signature.length < 16 || o.signature[0] !== 0x30))
    throw new TrustvolError("ECORRUPT", "verity: the root hash signature is not DER PKCS#7", "give the .p7s file made by verity sign");

  let fecLayout: VerityFecLayout | undefined;
  let fecIsFile = false;
  if (o.fec) {
    fecIsFile = isRegularFile(o.fec.device);
    const sameAsHash = realpathSync(o.fec.device) === realpathSync(hash);
    const hashBytes = sameAsHash ? BigInt(o.fec.offset ?? 0) : BigInt(await sizeOf(hash));
    fecLayout = verityFecLayout(p, g, hashBytes, { ...(o.fec.roots !== undefined ? { roots: o.fec.roots } : {}), ...(o.fec.offset !== undefined ? { offset: o.fec.offset } : {}) });
    const fecSize = await sizeOf(o.fec.device);
    if (BigInt(fecSize) < BigInt(fecLayout.offset) + fecLayout.size)
      throw new TrustvolError("ETRUNCATED", `verity: FEC device ${o.fec.device} has ${fecSize} bytes, ${fecLayout.rsBlocks} parity blocks at offset ${fecLayout.offset} need ${BigInt(fecLayout.offset) + fecLayout.size}`,
        "check --fec-roots and --fec-offset (they are not stored anywhere: give the values used at format)");
  }

  checkDeviceMapperVerity();
  if (dmExists(name)) throw new TrustvolError("EBUSY", `verity: a device-mapper device named ${name} already exists`, `choose another name, or close it first (trustvol verity close ${name})`);
  const sbHex = (p.uuid ?? randomBytes(16).toString("hex")).replace(/-/g, "");
  let dmUuid = `${VERITY_DM_UUID_PREFIX}${sbHex}-${name}`;
  if (dmUuid.length > 128) dmUuid = `${VERITY_DM_UUID_PREFIX}${sbHex}-${createHash("sha256").update(name).digest("hex").slice(0, 32)}`;

  const handles: LoopHandle[] = [];
  const attach = (path: string) => {
    const h = loopAttach(path, { readOnly: true });
    handles.push(h);
    return h.device;
  };
  let keySerial: number | undefined;
  try {
    const dataDev = dataIsFile ? attach(data) : data;
    let hashDev: string;
    if (hashIsFile && dataIsFile && realpathSync(hash) === realpathSync(data)) hashDev = dataDev;
    else if (hashIsFile) hashDev = attach(hash);
    else hashDev = hash;

    let fecDev: string | undefined;
    if (o.fec && fecLayout) {
      if (fecIsFile && realpathSync(o.fec.device) === realpathSync(hash) && hashIsFile) fecDev = hashDev;
      else if (fecIsFile && dataIsFile && realpathSync(o.fec.device) === realpathSync(data)) fecDev = dataDev;
      else if (fecIsFile) fecDev = attach(o.fec.device);
      else fecDev = o.fec.device;
    }

    let keyDesc: string | undefined;
    if (o.signature !== undefined) {
      keyDesc = `trustvol:verity:${name}:${randomBytes(6).toString("hex")}`;
      // The kernel looks the key up from the ioctl caller (dmsetup): @u is reachable from the user session keyring.
      keySerial = paddKey("user", keyDesc, o.signature, "@u");
    }
    const table = verityTable(dataDev, hashDev, p, root, {
      ...(o.table ?? {}),
      ...(keyDesc ? { rootHashSigKeyDesc: keyDesc } : {}),
      ...(fecDev && fecLayout ? { fec: { device: fecDev, start: fecLayout.start, blocks: fecLayout.fecBlocks, roots: fecLayout.roots } } : {}),
    });
    const loops = handles.map((h) => h.device);
    dmCreate(name, table, { readOnly: true, uuid: dmUuid }, { explain: (stderr, kernel) => mapCreateError(name, stderr, kernel, o.signature !== undefined) });
    for (const h of handles) h.release(); // the mapping holds them now: autoclear detaches them at close
    const device = `/dev/mapper/${name}`;
    try {
      rememberMapping({ name, dmUuid, loops: loops.map((l) => ({ device: l, backing: loopBackingFile(l) })) });
    } catch (e) {
      dmRemove(name);
      throw e;
    }
    const flag = dmStatus(name).split(/\s+/)[3];
    return {
      name,
      device,
      dmUuid,
      dataDevice: dataDev,
      hashDevice: hashDev,
      loops,
      table,
      status: flag === "V" ? "verified" : flag === "C" ? "corrupted" : "unknown",
      signed: o.signature !== undefined,
    };
  } catch (e) {
    for (const h of handles.reverse()) h.detach();
    throw e;
  } finally {
    if (keySerial !== undefined) {
      // Only needed while the table was loaded; do not leave the signature lying in the user keyring.
      try { invalidateKey(keySerial); } catch { try { unlinkKey(keySerial, "@u"); } catch { /* gone */ } }
    }
  }
}

// ---------------------------------------------------------------- close
export interface VerityCloseResult {
  name: string;
  /** Loop devices detached. */
  detached: string[];
}

/** Remove the dm-verity mapping <name> and detach the loop devices verity open attached for it. */
export async function verityClose(name: string): Promise<VerityCloseResult> {
  checkName(name);
  checkDeviceMapperVerity();
  let r;
  try {
    r = closeMapping(name, { target: "verity" });
  } catch (e) {
    throw verityError(e, name);
  }
  if (r.failed.length)
    throw new TrustvolError("EBUSY", `verity: ${name} was removed but loop device(s) ${r.failed.join(", ")} could not be detached`, `detach them with losetup -d ${r.failed.join(" ")}`);
  return { name, detached: r.detached };
}

/** Say "verity:" and point at the verity listing for the generic device-mapper errors. */
function verityError(e: unknown, name: string): unknown {
  if (!(e instanceof TrustvolError)) return e;
  if (e.code === "ENOENT") return new TrustvolError("ENOENT", `verity: no device-mapper device named ${name}`, "list them with dmsetup ls --target verity");
  return new TrustvolError(e.code, `verity: ${e.message}`, e.hint);
}

// ---------------------------------------------------------------- status
export interface VerityStatus {
  name: string;
  device: string;
  dmUuid: string;
  /** The kernel's verdict so far: V = no corruption seen, C = a corrupted block was read. */
  status: "verified" | "corrupted" | "unknown";
  /** The active table (devices as major:minor). */
  table: string;
  hashAlgorithm: string;
  rootHash: string;
  dataBlocks: bigint;
  dataBlockSize: number;
  hashBlockSize: number;
  fec: boolean;
  signed: boolean;
  /** Loop devices verity open attached (from its state file), if any. */
  loops: string[];
}

/** What the kernel says about an active dm-verity mapping (veritysetup status). */
export async function verityStatus(name: string): Promise<VerityStatus> {
  checkName(name);
  checkDeviceMapperVerity();
  let table: string, status: string;
  let dmUuid = "";
  try {
    table = dmTable(name);
    const f0 = table.split(/\s+/);
    if (f0[2] !== "verity") throw usage(`verity: ${name} is not a dm-verity device (target ${f0[2] ?? "none"})`);
    status = dmStatus(name);
    dmUuid = dmInfo(name)?.uuid ?? "";
  } catch (e) {
    throw verityError(e, name);
  }
  const f = table.split(/\s+/);
  const flag = status.split(/\s+/)[3];
  const loops = recallMapping(name, dmUuid)?.loops.map((l) => l.device) ?? [];
  return {
    name,
    device: `/dev/mapper/${name}`,
    dmUuid,
    status: flag === "V" ? "verified" : flag === "C" ? "corrupted" : "unknown",
    table,
    hashAlgorithm: f[10] ?? "",
    rootHash: f[11] ?? "",
    dataBlocks: BigInt(f[8] ?? "0"),
    dataBlockSize: Number(f[6] ?? 0),
    hashBlockSize: Number(f[7] ?? 0),
    fec: /\buse_fec_from_device\b/.test(table),
    signed: /\broot_hash_sig_key_desc\b/.test(table),
    loops,
  };
}
