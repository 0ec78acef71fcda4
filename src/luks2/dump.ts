// `luksDump`-style text (mirrors cryptsetup 2.6's layout so scripts and eyes find the same fields) and a JSON view.
import type { Luks2Volume } from "./volume.js";
import { keyslotPriority, type Luks2Keyslot, type Luks2Token } from "./metadata.js";

function hexLines(b: Buffer, indent: string): string {
  const out: string[] = [];
  for (let i = 0; i < b.length; i += 16) out.push([...b.subarray(i, i + 16)].map((x) => x.toString(16).padStart(2, "0")).join(" ") + " ");
  return out.join(`\n${indent}`);
}

const PRIO = ["ignored", "normal", "prefer"];

/** cryptsetup reenc_keyslot_dump: "%-12s%s" lines; the shift size has no space before "[bytes]". */
function reencryptKeyslotLines(ks: Luks2Keyslot): string[] {
  const a = ks.area;
  const l = [`\t${"Mode:".padEnd(12)}${String(ks.mode)}`, `\t${"Direction:".padEnd(12)}${String(ks.direction)}`, `\t${"Resilience:".padEnd(12)}${String(a.type)}`];
  if (a.type === "checksum") l.push(`\t${"Hash:".padEnd(12)}${String(a.hash)}`, `\t${"Hash data:".padEnd(12)}${String(a.sector_size)} [bytes]`);
  else if (a.type === "datashift") l.push(`\t${"Shift size:".padEnd(12)}${String(a.shift_size)}[bytes]`);
  return l;
}

function keyslotText(id: string, ks: Luks2Keyslot, digestId: string | undefined, bound: boolean): string {
  const l: string[] = [`  ${id}: ${ks.type}${bound ? "" : " (unbound)"}`];
  if (ks.type === "luks2" && ks.kdf && ks.af) {
    l.push(`\tKey:        ${ks.key_size * 8} bits`);
    l.push(`\tPriority:   ${(PRIO[keyslotPriority(ks.priority)] ?? String(keyslotPriority(ks.priority)))}`);
    l.push(`\tCipher:     ${ks.area.encryption}`);
    l.push(`\tCipher key: ${(ks.area.key_size as number) * 8} bits`);
    l.push(`\tPBKDF:      ${ks.kdf.type}`);
    if (ks.kdf.type === "pbkdf2") {
      l.push(`\tHash:       ${ks.kdf.hash}`);
      l.push(`\tIterations: ${ks.kdf.iterations}`);
    } else if (ks.kdf.type === "argon2i" || ks.kdf.type === "argon2id") {
      l.push(`\tTime cost:  ${ks.kdf.time}`);
      l.push(`\tMemory:     ${ks.kdf.memory}`);
      l.push(`\tThreads:    ${ks.kdf.cpus}`);
    }
    l.push(`\tSalt:       ${hexLines(Buffer.from(ks.kdf.salt, "base64"), "\t            ")}`);
    l.push(`\tAF stripes: ${ks.af.stripes}`);
    l.push(`\tAF hash:    ${ks.af.hash}`);
  } else {
    l.push(`\tKey:        ${ks.key_size * 8} bits`);
    l.push(`\tPriority:   ${(PRIO[keyslotPriority(ks.priority)] ?? String(keyslotPriority(ks.priority)))}`);
    if (ks.type === "reencrypt") l.push(...reencryptKeyslotLines(ks));
  }
  l.push(`\tArea offset:${ks.area.offset} [bytes]`);
  l.push(`\tArea length:${ks.area.size} [bytes]`);
  if (digestId !== undefined) l.push(`\tDigest ID:  ${digestId}`);
  return l.join("\n");
}

function tokenText(id: string, t: Luks2Token): string {
  const l = [`  ${id}: ${t.type}`];
  for (const [k, v] of Object.entries(t)) {
    if (k === "type" || k === "keyslots") continue;
    if (typeof v === "string" && v.length > 64) l.push(`\t${k}: ${v.slice(0, 61)}...`);
    else l.push(`\t${k}: ${typeof v === "object" ? JSON.stringify(v).slice(0, 64) : String(v)}`);
  }
  for (const k of t.keyslots) l.push(`\tKeyslot:    ${k}`);
  return l.join("\n");
}

/** Header strings are hostile input: control characters are shown escaped, never sent to the terminal. */
const printable = (s: string) => s.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);

export function dumpText(v: Luks2Volume): string {
  const h = v.header;
  const m = h.metadata;
  const flags = m.config.flags?.length ? m.config.flags.join(" ") : "(no flags)";
  const reqs = m.config.requirements?.mandatory ?? [];
  const out: string[] = [
    "LUKS header information",
    `Version:       \t2`,
    `Epoch:         \t${h.seqid}`,
    `Metadata area: \t${h.hdrSize} [bytes]`,
    `Keyslots area: \t${m.config.keyslots_size} [bytes]`,
    `UUID:          \t${printable(h.uuid)}`,
    `Label:         \t${printable(h.label) || "(no label)"}`,
    `Subsystem:     \t${printable(h.subsystem) || "(no subsystem)"}`,
    `Flags:       \t${flags}`,
  ];
  if (reqs.length) out.push(`Requirements:\t${reqs.map((r) => `${r} `).join("")}`);
  out.push("", "Data segments:");
  for (const id of Object.keys(m.segments).sort((a, b) => Number(a) - Number(b))) {
    const s = m.segments[id]!;
    if (id !== Object.keys(m.segments).sort((a, b) => Number(a) - Number(b))[0]) out.push(""); // cryptsetup separates segments
    out.push(`  ${id}: ${s.type}`);
    out.push(`\toffset: ${s.offset} [bytes]`);
    out.push(`\tlength: ${s.size === "dynamic" ? "(whole device)" : `${s.size} [bytes]`}`);
    if (s.encryption) out.push(`\tcipher: ${s.encryption}`);
    if (s.sector_size) out.push(`\tsector: ${s.sector_size} [bytes]`);
    if (s.flags?.length) out.push(`\tflags : ${s.flags.join(" ")}`);
  }
  out.push("", "Keyslots:");
  const owner = (k: string) => Object.keys(m.digests).find((d) => m.digests[d]!.keyslots.includes(k));
  // "(unbound)": the keyslot's digest covers no data segment (a new key during re-encryption, the reencrypt keyslot).
  const live = Object.keys(m.segments).filter((s) => !(m.segments[s]!.flags ?? []).some((f) => f.startsWith("backup-")));
  const bound = (k: string) => { const d = owner(k); return d !== undefined && m.digests[d]!.segments.some((s) => live.includes(s)); };
  for (const id of Object.keys(m.keyslots).sort((a, b) => Number(a) - Number(b))) out.push(keyslotText(id, m.keyslots[id]!, owner(id), bound(id)));
  out.push("Tokens:");
  for (const id of Object.keys(m.tokens).sort((a, b) => Number(a) - Number(b))) out.push(tokenText(id, m.tokens[id]!));
  out.push("Digests:");
  for (const id of Object.keys(m.digests).sort((a, b) => Number(a) - Number(b))) {
    const d = m.digests[id]!;
    out.push(`  ${id}: ${d.type}`);
    // hash, digest, salt and iterations are checked when used (as cryptsetup loads them): print only what is there.
    if (typeof d.hash === "string") out.push(`\tHash:       ${d.hash}`);
    if (typeof d.iterations === "number") out.push(`\tIterations: ${d.iterations}`);
    if (typeof d.salt === "string") out.push(`\tSalt:       ${hexLines(Buffer.from(d.salt, "base64"), "\t            ")}`);
    if (typeof d.digest === "string") out.push(`\tDigest:     ${hexLines(Buffer.from(d.digest, "base64"), "\t            ")}`);
  }
  return out.join("\n") + "\n";
}

/** Structured view for `--json`: the binary header fields plus the JSON metadata as stored. */
export function dumpJson(v: Luks2Volume): Record<string, unknown> {
  const h = v.header;
  return {
    version: 2,
    epoch: Number(h.seqid),
    metadata_size: h.hdrSize,
    uuid: h.uuid,
    label: h.label,
    subsystem: h.subsystem,
    checksum_alg: h.checksumAlg,
    header_copies: { primary: v.readStatus.primary.ok, secondary: v.readStatus.secondary.ok, needs_repair: v.readStatus.needsRepair },
    metadata: h.metadata,
  };
}
