// Editing LUKS2 test images below the validation layer: rewrite the JSON of both copies and re-seal the checksums.
import { sealChecksum } from "../../src/luks2/binary-header.js";

/** Replace the JSON text of both header copies (edit gets the parsed JSON, or raw text replaces it), re-checksummed. */
export function withJson(img: Buffer, edit: (j: any) => any, raw?: string): Buffer {
  const out = Buffer.from(img);
  const hdr = Number(out.readBigUInt64BE(8));
  for (const off of [0, hdr]) {
    const area = out.subarray(off, off + hdr);
    const json = area.subarray(4096);
    const text = json.subarray(0, json.indexOf(0)).toString();
    const next = raw ?? JSON.stringify(edit(JSON.parse(text)));
    json.fill(0);
    json.write(next.slice(0, json.length), "utf8");
    sealChecksum(area, "sha256");
  }
  return out;
}

/** Re-seal both copies after a raw edit of the header bytes (checksum algorithm sha256). */
export function reseal(img: Buffer): Buffer {
  const hdr = Number(img.readBigUInt64BE(8));
  if (hdr < 4096 || hdr > 4 << 20) return img; // a mutated hdr_size names no area to seal
  for (const off of [0, hdr]) if (off + hdr <= img.length) sealChecksum(img.subarray(off, off + hdr), "sha256");
  return img;
}
