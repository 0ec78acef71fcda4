// Hostile input: random TPM responses, mutated blobs and mutated token JSON must only ever raise TrustvolError.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Tpm } from "../../../src/trust/tpm2/tpm.js";
import * as C from "../../../src/trust/tpm2/commands.js";
import { TPM_CAP } from "../../../src/trust/tpm2/constants.js";
import { encodePublic2B, sealedObjectTemplate } from "../../../src/trust/tpm2/structures.js";
import { joinBlob, splitBlob } from "../../../src/trust/tpm2/seal.js";
import { decodeSystemdTpm2Token } from "../../../src/tokens/systemd-tpm2.js";
import { decodeClevisToken } from "../../../src/tokens/clevis.js";
import { TrustvolError } from "../../../src/util/errors.js";
import type { Tpm2Transport } from "../../../src/trust/tpm2/transport.js";

function prng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 0x100000000;
  };
}
const rnd = prng(0x7f4a7c15);
const int = (n: number) => Math.floor(rnd() * n);
const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));

function onlyTrustvolErrors(fn: () => unknown, what: string) {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof TrustvolError, `${what}: ${String(e)}`);
  }
}

test("random TPM responses never escape as anything but TrustvolError", async () => {
  let next: Buffer = Buffer.alloc(0);
  const fake: Tpm2Transport = { description: "fake", hardwareBacked: false, resourceManaged: false, transmit: async () => next, close: async () => {} };
  const tpm = new Tpm(fake);
  const calls: (() => Promise<unknown>)[] = [
    () => tpm.run(C.ReadPublic, { objectHandle: 0x81000001 }),
    () => tpm.run(C.GetCapability, { capability: TPM_CAP.PCRS, property: 0, propertyCount: 1 }),
    () => tpm.run(C.GetCapability, { capability: TPM_CAP.TPM_PROPERTIES, property: 0x100, propertyCount: 8 }),
    () => tpm.run(C.PCR_Read, { selections: [{ hash: "sha256", pcrs: [7] }] }),
    () => tpm.run(C.Load, { parentHandle: C.permanentHandle(0x80000000), inPrivate: Buffer.alloc(4), inPublic: Buffer.alloc(2) }),
    () => tpm.run(C.StartAuthSession, { tpmKey: 0x40000007, bind: 0x40000007, nonceCaller: Buffer.alloc(32), encryptedSalt: Buffer.alloc(0), sessionType: 1, symmetric: { algorithm: 0x10 }, authHash: "sha256" }),
    () => tpm.createStoragePrimary("ecc"),
  ];
  for (let i = 0; i < 3000; i++) {
    const body = bytes(int(200));
    // make GetCapability / PCR_Read bodies plausible often enough to reach their list parsers
    if (rnd() < 0.3 && body.length > 8) body.writeUInt32BE([TPM_CAP.PCRS, TPM_CAP.TPM_PROPERTIES, TPM_CAP.ALGS, TPM_CAP.HANDLES][int(4)]!, 1);
    const hdr = Buffer.alloc(10);
    hdr.writeUInt16BE(rnd() < 0.8 ? 0x8001 : rnd() < 0.5 ? 0x8002 : int(0x10000), 0);
    hdr.writeUInt32BE(rnd() < 0.9 ? 10 + body.length : int(1000), 2);
    hdr.writeUInt32BE(rnd() < 0.7 ? 0 : int(0x1000), 6);
    next = Buffer.concat([hdr, body]);
    if (rnd() < 0.05) next = next.subarray(0, int(next.length));
    try {
      await calls[i % calls.length]!();
    } catch (e) {
      assert.ok(e instanceof TrustvolError, `call ${i % calls.length}, response ${next.toString("hex")}: ${String(e)}`);
    }
  }
});

test("mutated sealed blobs: only TrustvolError", () => {
  const blob = joinBlob(bytes(0x9e), encodePublic2B(sealedObjectTemplate({ authPolicy: bytes(32) })));
  for (let i = 0; i < 5000; i++) {
    const m = Buffer.from(blob);
    for (let k = 0, n = 1 + int(4); k < n; k++) m[int(m.length)] = int(256);
    onlyTrustvolErrors(() => splitBlob(rnd() < 0.2 ? m.subarray(0, int(m.length)) : m), `blob ${m.toString("hex")}`);
  }
});

const SAMPLES: unknown[] = [null, true, false, 0, -1, 7, 1.5, 1e308, "", "7", "sha256", "ecc", "!!", "AAAA", "A".repeat(10000), [], [7], ["1"], [[]], {}, { a: 1 }];

function mutate(o: Record<string, unknown>): Record<string, unknown> {
  const c: Record<string, unknown> = structuredClone(o);
  const keys = Object.keys(c);
  const k = rnd() < 0.1 ? `x${int(5)}` : keys[int(keys.length)]!;
  if (rnd() < 0.2) delete c[k];
  else c[k] = SAMPLES[int(SAMPLES.length)];
  return c;
}

test("mutated systemd-tpm2 token JSON: only TrustvolError", () => {
  const base = {
    type: "systemd-tpm2",
    keyslots: ["1"],
    "tpm2-blob": joinBlob(bytes(0x9e), encodePublic2B(sealedObjectTemplate({ authPolicy: bytes(32) }))).toString("base64"),
    "tpm2-pcrs": [7],
    "tpm2-pcr-bank": "sha256",
    "tpm2-primary-alg": "ecc",
    "tpm2-policy-hash": bytes(32).toString("hex"),
    "tpm2-pin": false,
  };
  decodeSystemdTpm2Token(base);
  for (let i = 0; i < 5000; i++) {
    let m = mutate(base);
    if (rnd() < 0.3) m = mutate(m);
    onlyTrustvolErrors(() => decodeSystemdTpm2Token(m), JSON.stringify(m).slice(0, 200));
    const s = JSON.stringify(base);
    const cut = s.slice(0, int(s.length)) + (rnd() < 0.5 ? "}" : "");
    onlyTrustvolErrors(() => decodeSystemdTpm2Token(cut), cut);
  }
});

test("mutated clevis JWE headers and tokens: only TrustvolError", () => {
  const tpm2 = { hash: "sha256", jwk_priv: Buffer.concat([Buffer.from([0, 20]), bytes(20)]).toString("base64url"), jwk_pub: encodePublic2B(sealedObjectTemplate({ authPolicy: bytes(32) })).toString("base64url"), key: "ecc", pcr_bank: "sha256", pcr_ids: "7" };
  const header = { alg: "dir", clevis: { pin: "tpm2", tpm2 }, enc: "A256GCM" };
  const jwe = (h: unknown) => ({ ciphertext: "AAAA", encrypted_key: "", iv: bytes(12).toString("base64url"), protected: Buffer.from(JSON.stringify(h)).toString("base64url"), tag: bytes(16).toString("base64url") });
  decodeClevisToken({ type: "clevis", keyslots: ["1"], jwe: jwe(header) });
  for (let i = 0; i < 3000; i++) {
    const t2 = mutate(tpm2);
    const h = rnd() < 0.5 ? { ...header, clevis: { pin: "tpm2", tpm2: t2 } } : mutate(header);
    const tok = rnd() < 0.5 ? { type: "clevis", keyslots: ["1"], jwe: mutate(jwe(h)) } : mutate({ type: "clevis", keyslots: ["1"], jwe: jwe(h) });
    onlyTrustvolErrors(() => decodeClevisToken(tok), JSON.stringify(tok).slice(0, 200));
  }
});
