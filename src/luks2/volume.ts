// A LUKS2 volume: its header plus the operations cryptsetup offers on keyslots and tokens.
// Every mutation follows one order: write new keyslot material to free space → commit the header → wipe old material,
// so a power cut at any instant leaves a header that opens with the old or the new passphrase.
import type { BlockDevice } from "../blockdev/types.js";
import { TrustvolError } from "../util/errors.js";
import { wipe } from "../util/secret.js";
import { encodeHeaderCopies, readHeader, writeHeader, writeHeaderCopies, type Luks2Header, type ReadResult } from "./header.js";
import { openKeyslotCandidate, buildKeyslot, wipeArea, type NewKeyslotOptions } from "./keyslot.js";
import { verifyDigest, digestForSegment } from "./digest.js";
import { unknownRequirements, keyslotPriority, u64Num, parseU64String, type Luks2Metadata, type Luks2Segment, type Luks2Keyslot, type Luks2Token, type Json } from "./metadata.js";
import { KNOWN_REQUIREMENTS, LUKS2_KEYSLOTS_MAX, LUKS2_TOKENS_MAX } from "./constants.js";

export interface UnlockResult {
  volumeKey: Buffer;
  keyslot: number;
}

export class Luks2Volume {
  private constructor(
    public readonly dev: BlockDevice,
    public header: Luks2Header,
    public readonly readStatus: ReadResult,
  ) {}

  static async open(dev: BlockDevice): Promise<Luks2Volume> {
    const r = await readHeader(dev);
    return new Luks2Volume(dev, r.header, r);
  }

  /** Wrap a header that was built in memory (format) — nothing is read from dev. */
  static fromHeader(dev: BlockDevice, header: Luks2Header): Luks2Volume {
    const ok = { offset: 0, ok: true, seqid: header.seqid };
    return new Luks2Volume(dev, header, { header, primary: ok, secondary: { ...ok, offset: header.hdrSize }, needsRepair: false });
  }

  get metadata(): Luks2Metadata {
    return this.header.metadata;
  }
  get uuid(): string {
    return this.header.uuid;
  }

  /** The active data segment (the crypt segment not flagged as a backup). */
  dataSegment(): { id: string; seg: Luks2Segment } {
    const ids = Object.keys(this.metadata.segments).sort((a, b) => Number(a) - Number(b));
    for (const id of ids) {
      const seg = this.metadata.segments[id]!;
      if (!(seg.flags ?? []).some((f) => f.startsWith("backup-"))) return { id, seg };
    }
    throw new TrustvolError("ECORRUPT", "LUKS2 metadata has no data segment");
  }

  /**
   * The segment whose key a passphrase opens by default: the data segment; mid-re-encryption, while the data segments
   * are all plain (an --encrypt before its first hotzone, or its not-yet-encrypted head first), the first crypt one of
   * data, backup-final, backup-previous (cryptsetup's activation unlocks the keys of the run, not of segment 0).
   */
  private unlockSegment(): string {
    const { id, seg } = this.dataSegment();
    if (seg.type === "crypt" || !this.inReencryption()) return id;
    const ids = Object.keys(this.metadata.segments).sort((a, b) => Number(a) - Number(b));
    const flagsOf = (k: string) => this.metadata.segments[k]!.flags ?? [];
    const order = [...ids.filter((k) => !flagsOf(k).some((f) => f.startsWith("backup-"))), ...ids.filter((k) => flagsOf(k).includes("backup-final")), ...ids.filter((k) => flagsOf(k).includes("backup-previous"))];
    return order.find((k) => this.metadata.segments[k]!.type === "crypt" && digestForSegment(this.metadata, k)) ?? id;
  }

  /** Data area [offset, offset+length) in bytes on the device that holds the data. */
  dataArea(dataDevSize = this.dev.size): { offset: number; length: number; sectorSize: number; cipher: string; ivTweak: bigint } {
    const { seg } = this.dataSegment();
    const offset = u64Num(seg.offset, "segment.offset");
    const size = seg.size === "dynamic" ? undefined : parseU64String(seg.size, "segment.size");
    // A fixed size beyond what the device holds (up to 2^64-1 is valid metadata) is checked against the device.
    const length = size === undefined ? dataDevSize - offset : size > BigInt(dataDevSize - offset) ? -1 : Number(size);
    if (length < 0 && size !== undefined && offset <= dataDevSize) throw new TrustvolError("ETRUNCATED", `the data segment (${size} bytes at ${offset}) runs past the end of the device (${dataDevSize} bytes)`, "the image is truncated");
    if (length < 0) throw new TrustvolError("ETRUNCATED", `the device (${dataDevSize} bytes) ends before the data segment offset ${offset}`, "the image is truncated");
    if (seg.type !== "crypt") throw new TrustvolError("EUNSUPPORTED", `data segment type "${seg.type}" is not supported`);
    const sectorSize = seg.sector_size ?? 512;
    return { offset, length: length - (length % sectorSize), sectorSize, cipher: seg.encryption!, ivTweak: BigInt(seg.iv_tweak ?? "0") };
  }

  /** Volume key length in bytes (from the segment's digest-bound keyslots). */
  volumeKeySize(): number {
    const { id } = this.dataSegment();
    const d = digestForSegment(this.metadata, id);
    const slot = d ? this.metadata.digests[d]!.keyslots.find((k) => this.metadata.keyslots[k]?.type === "luks2") : undefined;
    if (slot) return this.metadata.keyslots[slot]!.key_size;
    const enc = this.dataSegment().seg.encryption ?? "";
    return /xts/.test(enc) ? 64 : 32;
  }

  keyslotIds(): number[] {
    return Object.keys(this.metadata.keyslots).map(Number).sort((a, b) => a - b);
  }
  tokenIds(): number[] {
    return Object.keys(this.metadata.tokens).map(Number).sort((a, b) => a - b);
  }

  /** Requirements we can't honour: writing or activating such a volume would damage it. */
  checkRequirements(op: "write" | "activate"): void {
    const unknown = unknownRequirements(this.metadata, KNOWN_REQUIREMENTS);
    if (unknown.length) throw new TrustvolError("EUNSUPPORTED", `volume requires unsupported feature(s): ${unknown.join(", ")}; refusing to ${op}`, "use a newer cryptsetup");
    if (op === "activate" && (this.metadata.config.requirements?.mandatory ?? []).some((r) => r.startsWith("online-reencrypt")))
      throw new TrustvolError("EBUSY", "volume is in the middle of re-encryption", "finish it first (`trustvol reencrypt --resume-only`, or cryptsetup's)");
  }

  /** Is the volume marked for re-encryption (an online-reencrypt requirement)? */
  inReencryption(): boolean {
    return (this.metadata.config.requirements?.mandatory ?? []).some((r) => r.startsWith("online-reencrypt"));
  }

  /**
   * Keyslot/token changes are refused mid-re-encryption, as cryptsetup 2.6.1 does for luksAddKey, luksChangeKey,
   * token import/add, config ("Operation incompatible with device marked for LUKS2 reencryption"): the keyslots area
   * holds the re-encryption area and the re-encryption digest binds the keys.
   */
  refuseInReencryption(op: string): void {
    if (this.inReencryption())
      throw new TrustvolError("EBUSY", `${op} refused: ${this.dev.name} is in the middle of re-encryption`, `finish or resume the re-encryption first: trustvol reencrypt --resume-only ${this.dev.name}`);
  }

  /** Check a candidate volume key against the segment digest; returns the digest id. */
  verifyVolumeKey(vk: Uint8Array): string {
    const { id } = this.dataSegment();
    const d = digestForSegment(this.metadata, id);
    if (!d || !verifyDigest(this.metadata.digests[d]!, vk)) throw new TrustvolError("EBADPASS", "volume key does not match this volume");
    return d;
  }

  /** Try keyslots in cryptsetup's order (prefer, then normal, each by id); others (ignore, odd values) only when named. */
  private candidateSlots(slot?: number): string[] {
    if (slot !== undefined) {
      const ks = this.metadata.keyslots[String(slot)];
      if (!ks) throw new TrustvolError("ENOENT", `keyslot ${slot} is not in use`, `see \`trustvol dump ${this.dev.name}\``);
      return [String(slot)];
    }
    const ids = Object.keys(this.metadata.keyslots).filter((k) => this.metadata.keyslots[k]!.type === "luks2");
    const prio = (k: string) => keyslotPriority(this.metadata.keyslots[k]!.priority);
    return ids.filter((k) => prio(k) === 1 || prio(k) === 2).sort((a, b) => prio(b) - prio(a) || Number(a) - Number(b));
  }

  /**
   * Unlock with a passphrase; the caller wipes both the passphrase and the returned key.
   * Only keyslots whose digest covers `segment` (default: the data segment) count: an unbound keyslot's key
   * decrypts nothing, and trusting it would hand garbage to the data path (cryptsetup: "No usable keyslot").
   */
  async unlock(passphrase: Uint8Array, opts: { slot?: number; segment?: string } = {}): Promise<UnlockResult> {
    const segment = opts.segment ?? this.unlockSegment();
    const dId = digestForSegment(this.metadata, segment);
    const bound = new Set(dId ? this.metadata.digests[dId]!.keyslots : []);
    const slots = this.candidateSlots(opts.slot).filter((id) => bound.has(id));
    if (!slots.length) {
      // a finished decryption's header (cryptsetup keeps its keyslots unbound; trustvol keeps none): nothing to unlock
      if (!dId && this.metadata.segments[segment]?.type === "linear") throw new TrustvolError("ENOKEY", `data segment ${segment} is not encrypted: the volume was decrypted`, "the data device holds plain data: use it directly, no mapping is needed");
      if (opts.slot !== undefined) throw new TrustvolError("EBADPASS", `no key available with this passphrase in keyslot ${opts.slot} (it is not bound to data segment ${segment})`, "use a keyslot bound to the data segment");
      throw new TrustvolError("ENOKEY", "no usable keyslot is available", "no passphrase keyslot is bound to the data segment; unlock with a token or the recovery key");
    }
    let unusable: TrustvolError | undefined;
    let tried = 0;
    for (const id of slots) {
      let cand: Buffer;
      try {
        cand = await openKeyslotCandidate(this.dev, this.metadata.keyslots[id]!, passphrase);
      } catch (e) {
        // One keyslot we cannot use (unknown KDF, type or hash) must not hide the others.
        if (!(e instanceof TrustvolError) || (e.code !== "EUNSUPPORTED" && e.code !== "ECORRUPT") || opts.slot !== undefined) throw e;
        unusable ??= e;
        continue;
      }
      tried++;
      if (verifyDigest(this.metadata.digests[dId!]!, cand)) return { volumeKey: cand, keyslot: Number(id) };
      wipe(cand);
    }
    if (unusable && !tried) throw unusable;
    throw new TrustvolError("EBADPASS", opts.slot !== undefined ? `no key available with this passphrase in keyslot ${opts.slot}` : "no key available with this passphrase", "check the passphrase (or key file) and try again");
  }

  freeKeyslot(): number {
    for (let i = 0; i < LUKS2_KEYSLOTS_MAX; i++) if (!(String(i) in this.metadata.keyslots)) return i;
    throw new TrustvolError("ENOSPC", "all 32 keyslots are in use", "remove one first");
  }
  freeTokenId(): number {
    for (let i = 0; i < LUKS2_TOKENS_MAX; i++) if (!(String(i) in this.metadata.tokens)) return i;
    throw new TrustvolError("ENOSPC", "all 32 token slots are in use", "remove one first");
  }

  /** Add a passphrase keyslot for an already verified volume key; returns its id. */
  async addKeyslot(volumeKey: Uint8Array, passphrase: Uint8Array, opts: NewKeyslotOptions & { slot?: number } = {}): Promise<number> {
    const slot = this.newSlotId(opts.slot);
    await this.storeKeyslot(volumeKey, passphrase, slot, opts);
    return slot;
  }

  /**
   * Add a keyslot and the token that unlocks it in ONE header commit (systemd-cryptenroll's result), so a power cut
   * never leaves a keyslot without its token or a token pointing at nothing. `makeToken` gets the chosen slot id.
   */
  async addKeyslotWithToken(
    volumeKey: Uint8Array,
    makeToken: (slot: number) => Promise<{ tokenJson: Record<string, unknown>; passphrase: Buffer }>,
    opts: NewKeyslotOptions & { slot?: number; tokenId?: number; /** drop these keyslots in the same commit (--wipe-slot) */ removeSlots?: number[] } = {},
  ): Promise<{ keyslot: number; tokenId: number; removed: number[] }> {
    const slot = this.newSlotId(opts.slot);
    const tokenId = opts.tokenId ?? this.freeTokenId();
    if (String(tokenId) in this.metadata.tokens) throw new TrustvolError("EBUSY", `token ${tokenId} is already in use`);
    const removed = [...new Set(opts.removeSlots ?? [])].filter((k) => k !== slot);
    for (const k of removed) if (!(String(k) in this.metadata.keyslots)) throw new TrustvolError("ENOENT", `keyslot ${k} is not in use`, "nothing was changed");
    const areas = removed.map((k) => this.metadata.keyslots[String(k)]!.area);
    const { tokenJson, passphrase } = await makeToken(slot);
    try {
      await this.storeKeyslot(volumeKey, passphrase, slot, opts, (m) => {
        m.tokens[String(tokenId)] = structuredClone(tokenJson) as Luks2Token;
        // like systemd-cryptenroll --wipe-slot: a token whose keyslots all went goes too, whatever its type
        const emptied = Object.keys(m.tokens).filter((id) => m.tokens[id]!.keyslots.some((k) => removed.includes(Number(k))));
        for (const k of removed) dropKeyslot(m, String(k));
        for (const id of emptied) if (!m.tokens[id]?.keyslots.length) delete m.tokens[id];
      });
    } finally {
      wipe(passphrase);
    }
    // The header no longer references them: now their key material can go.
    for (const a of areas) await wipeArea(this.dev, u64Num(a.offset, "area.offset"), u64Num(a.size, "area.size"));
    return { keyslot: slot, tokenId, removed };
  }

  private newSlotId(wanted?: number): number {
    this.checkRequirements("write");
    this.refuseInReencryption("adding a keyslot");
    const slot = wanted ?? this.freeKeyslot();
    if (slot < 0 || slot >= LUKS2_KEYSLOTS_MAX) throw new TrustvolError("EUSAGE", `keyslot ${slot} is out of range (0..31)`);
    if (String(slot) in this.metadata.keyslots) throw new TrustvolError("EBUSY", `keyslot ${slot} is already in use`, "pick another slot or remove it first");
    return slot;
  }

  /**
   * Bring a stale or damaged header copy up to date before anything else is written (cryptsetup repairs on load too).
   * Otherwise free space chosen from the newest copy could still be referenced by the stale one, and a torn write of
   * the next commit would fall back to a copy whose keyslot area we just overwrote.
   */
  private async syncCopies(): Promise<void> {
    if (!this.readStatus.needsRepair) return;
    this.checkRequirements("write");
    const p = this.readStatus.primary, s = this.readStatus.secondary;
    const primaryIsStale = !p.ok || (s.ok && (s.seqid ?? 0n) > (p.seqid ?? 0n));
    await writeHeader(this.dev, this.header, { firstCopy: primaryIsStale ? "primary" : "secondary" });
    this.readStatus.primary = { offset: 0, ok: true, seqid: this.header.seqid };
    this.readStatus.secondary = { offset: this.header.hdrSize, ok: true, seqid: this.header.seqid };
    this.readStatus.needsRepair = false;
  }

  /** Write the new keyslot's material into free space, then commit the metadata that references it (plus `extra`). */
  private async storeKeyslot(volumeKey: Uint8Array, passphrase: Uint8Array, slot: number, opts: NewKeyslotOptions, extra?: (m: Luks2Metadata) => void): Promise<void> {
    await this.syncCopies();
    const digestId = this.verifyVolumeKey(volumeKey);
    const { keyslot, areaOffset, areaData } = await buildKeyslot(this.metadata, this.header.hdrSize, volumeKey, passphrase, {
      areaEncryption: this.dataSegment().seg.encryption,
      ...opts,
    });
    // From the first byte written until the header references it, any failure must take the material with it.
    await this.withAreaRollback(areaOffset, keyslot, areaData, async () => {
      const m = structuredClone(this.metadata);
      m.keyslots[String(slot)] = keyslot;
      m.digests[digestId]!.keyslots.push(String(slot));
      m.digests[digestId]!.keyslots.sort((a, b) => Number(a) - Number(b));
      extra?.(m);
      await this.commit(m);
    });
  }

  /** Write a new keyslot area, run `commit`; on any failure overwrite the area (nothing references it) and rethrow. */
  private async withAreaRollback(areaOffset: number, keyslot: Luks2Keyslot, areaData: Buffer, commit: () => Promise<void>): Promise<void> {
    try {
      await this.dev.write(areaData, areaOffset);
      await this.dev.flush();
      wipe(areaData);
      await commit();
    } catch (e) {
      wipe(areaData);
      // A commit that failed after one header copy landed may already reference the area: then it is live, keep it.
      const live = await readHeader(this.dev).then((r) => Object.values(r.header.metadata.keyslots).some((k) => k.area?.offset === String(areaOffset)), () => false);
      if (!live) await wipeArea(this.dev, areaOffset, u64Num(keyslot.area.size, "area.size")).catch(() => {});
      throw e;
    }
  }

  /** Replace the passphrase of a keyslot (same id, new area), like `cryptsetup luksChangeKey`. */
  async changeKeyslot(slot: number, oldPass: Uint8Array, newPass: Uint8Array, opts: NewKeyslotOptions = {}): Promise<void> {
    this.checkRequirements("write");
    this.refuseInReencryption("changing a keyslot");
    await this.syncCopies();
    const { volumeKey } = await this.unlock(oldPass, { slot });
    try {
      const id = String(slot);
      const old = this.metadata.keyslots[id]!;
      const { keyslot, areaOffset, areaData } = await buildKeyslot(this.metadata, this.header.hdrSize, volumeKey, newPass, {
        areaEncryption: old.area.encryption as string,
        areaKeySize: old.area.key_size as number,
        afHash: old.af?.hash,
        priority: old.priority,
        ...opts,
      });
      await this.withAreaRollback(areaOffset, keyslot, areaData, async () => {
        const m = structuredClone(this.metadata);
        m.keyslots[id] = keyslot;
        await this.commit(m);
      });
      await wipeArea(this.dev, u64Num(old.area.offset, "area.offset"), u64Num(old.area.size, "area.size"));
    } finally {
      wipe(volumeKey);
    }
  }

  /** Remove a keyslot: drop it (and token references) from the metadata first, then wipe its area. */
  async removeKeyslot(slot: number, opts: { allowLast?: boolean } = {}): Promise<void> {
    this.checkRequirements("write");
    const id = String(slot);
    const ks = this.metadata.keyslots[id];
    if (!ks) throw new TrustvolError("ENOENT", `keyslot ${slot} is not in use`);
    if (this.inReencryption()) {
      // cryptsetup 2.6.1 lets luksKillSlot remove any keyslot here, even the reencrypt keyslot or the last keyslot of
      // the new key (then nothing can finish the run); trustvol refuses those and allows the rest, as cryptsetup does.
      const d = Object.values(this.metadata.digests).find((x) => x.keyslots.includes(id));
      const lastOfDigest = !!d && d.keyslots.filter((k) => k !== id && this.metadata.keyslots[k]?.type === "luks2").length === 0 && ks.type === "luks2";
      if (ks.type === "reencrypt" || lastOfDigest)
        throw new TrustvolError("EBUSY", `removing keyslot ${slot} refused: ${this.dev.name} is in the middle of re-encryption and needs it (${ks.type === "reencrypt" ? "the re-encryption state" : "the last keyslot of one of its volume keys"})`, `finish or resume the re-encryption first: trustvol reencrypt --resume-only ${this.dev.name}`);
    }
    const remaining = Object.keys(this.metadata.keyslots).filter((k) => k !== id && this.metadata.keyslots[k]!.type === "luks2");
    if (!remaining.length && !opts.allowLast)
      throw new TrustvolError("EUSAGE", `keyslot ${slot} is the last keyslot: removing it makes the data unrecoverable`, "add another key first, or pass --force if that is really what you want");
    const m = structuredClone(this.metadata);
    dropKeyslot(m, id);
    await this.commit(m);
    await wipeArea(this.dev, u64Num(ks.area.offset, "area.offset"), u64Num(ks.area.size, "area.size"));
  }

  /**
   * One header commit that drops `slots` (and their references) and applies `edit` to the tokens; only then are the
   * dropped keyslots' areas wiped. A power cut leaves the old metadata or the new, never a token without its keyslot.
   */
  async editTokensDroppingSlots(slots: number[], edit: (tokens: Luks2Metadata["tokens"]) => void): Promise<void> {
    this.checkRequirements("write");
    const drop = [...new Set(slots)];
    for (const k of drop) if (!(String(k) in this.metadata.keyslots)) throw new TrustvolError("ENOENT", `keyslot ${k} is not in use`, "nothing was changed");
    const areas = drop.map((k) => this.metadata.keyslots[String(k)]!.area);
    const m = structuredClone(this.metadata);
    for (const k of drop) dropKeyslot(m, String(k));
    edit(m.tokens);
    await this.commit(m);
    for (const a of areas) await wipeArea(this.dev, u64Num(a.offset, "area.offset"), u64Num(a.size, "area.size"));
  }

  async setPriority(slot: number, priority: 0 | 1 | 2): Promise<void> {
    const m = structuredClone(this.metadata);
    const ks = m.keyslots[String(slot)];
    if (!ks) throw new TrustvolError("ENOENT", `keyslot ${slot} is not in use`);
    if (priority === 1) delete ks.priority;
    else ks.priority = priority;
    await this.commit(m);
  }

  /** Add (import) a token object; validated like cryptsetup's `token import`. Returns its id. */
  async addToken(token: unknown, opts: { tokenId?: number; replace?: boolean } = {}): Promise<number> {
    this.checkRequirements("write");
    this.refuseInReencryption("importing a token");
    if (typeof token !== "object" || token === null || Array.isArray(token)) throw new TrustvolError("EUSAGE", "token must be a JSON object");
    const t = token as Luks2Token;
    if (typeof t.type !== "string" || !t.type) throw new TrustvolError("EUSAGE", 'token has no "type"');
    if (!Array.isArray(t.keyslots)) throw new TrustvolError("EUSAGE", 'token has no "keyslots" array');
    const id = opts.tokenId ?? this.freeTokenId();
    if (String(id) in this.metadata.tokens && !opts.replace) throw new TrustvolError("EBUSY", `token ${id} is already in use`, "pick another id or remove it first");
    const m = structuredClone(this.metadata);
    m.tokens[String(id)] = structuredClone(t);
    await this.commit(m, (e) => new TrustvolError("EUSAGE", `token rejected: ${e.message.replace(/^LUKS2 metadata: /, "")}`));
    return id;
  }

  async removeToken(id: number): Promise<void> {
    if (!(String(id) in this.metadata.tokens)) throw new TrustvolError("ENOENT", `token ${id} is not in use`);
    const m = structuredClone(this.metadata);
    delete m.tokens[String(id)];
    await this.commit(m);
  }

  async assignToken(id: number, slot: number, assign: boolean): Promise<void> {
    const m = structuredClone(this.metadata);
    const t = m.tokens[String(id)];
    if (!t) throw new TrustvolError("ENOENT", `token ${id} is not in use`);
    if (!(String(slot) in m.keyslots)) throw new TrustvolError("ENOENT", `keyslot ${slot} is not in use`);
    const ks = new Set(t.keyslots);
    if (assign) ks.add(String(slot));
    else ks.delete(String(slot));
    t.keyslots = [...ks].sort((a, b) => Number(a) - Number(b));
    await this.commit(m);
  }

  exportToken(id: number): Record<string, Json> {
    const t = this.metadata.tokens[String(id)];
    if (!t) throw new TrustvolError("ENOENT", `token ${id} is not in use`);
    return structuredClone(t) as Record<string, Json>;
  }

  /** Validate then write new metadata (both copies); on success it becomes the volume's metadata. */
  async commit(m: Luks2Metadata, mapError?: (e: TrustvolError) => TrustvolError): Promise<void> {
    await this.syncCopies();
    const next: Luks2Header = { ...this.header, metadata: m, seqid: this.header.seqid + 1n };
    let copies: [Buffer, Buffer];
    try {
      copies = encodeHeaderCopies(next); // validates once: never write what we would refuse to read
    } catch (e) {
      // mapError is for what the metadata says (invalid); a JSON area too small stays ENOSPC
      if (e instanceof TrustvolError && mapError && e.code !== "ENOSPC") throw mapError(e);
      throw e;
    }
    await writeHeaderCopies(this.dev, copies, next.hdrSize);
    this.header = next;
  }

  /**
   * Validate and encode a commit of `m` now, write it later: the re-encryption loop prepares its next commit while the
   * thread pool copies a hotzone. `write()` refuses (EINTERNAL) when another commit landed in between; with header
   * copies to repair first it is a plain commit().
   */
  prepareCommit(m: Luks2Metadata): { write(): Promise<void> } {
    if (this.readStatus.needsRepair) return { write: () => this.commit(m) };
    const base = this.header;
    const next: Luks2Header = { ...base, metadata: m, seqid: base.seqid + 1n };
    const copies = encodeHeaderCopies(next); // validates: never write what we would refuse to read
    return {
      write: async () => {
        if (this.header !== base || base.seqid + 1n !== next.seqid) throw new TrustvolError("EINTERNAL", "the header changed after a commit was prepared", "this is a bug in trustvol");
        await writeHeaderCopies(this.dev, copies, base.hdrSize);
        this.header = next;
      },
    };
  }

  /** Rewrite both header copies from the valid one (the one with the highest seqid). */
  async repair(): Promise<boolean> {
    if (!this.readStatus.needsRepair) return false;
    await this.syncCopies();
    return true;
  }
}

/** Remove a keyslot and every reference to it from metadata (in place). */
function dropKeyslot(m: Luks2Metadata, id: string): void {
  delete m.keyslots[id];
  for (const d of Object.values(m.digests)) d.keyslots = d.keyslots.filter((k) => k !== id);
  for (const [tid, t] of Object.entries(m.tokens)) {
    t.keyslots = t.keyslots.filter((k) => k !== id);
    // A token that unlocks nothing any more is dead weight (systemd-cryptenroll --wipe-slot does the same).
    if (!t.keyslots.length && t.type.startsWith("systemd-")) delete m.tokens[tid];
  }
}
