// A TPM 2.0 client in the style of go-tpm's direct API: run(CommandDef, request, sessions) marshals the command,
// computes cpHash and session HMACs, encrypts/decrypts the first parameter, checks response HMACs and decodes.
import { randomFillSync } from "node:crypto";
import { TrustvolError } from "../../util/errors.js";
import { constantTimeEqual, wipe } from "../../util/secret.js";
import { HASH_SIZE, TPMA_SESSION, TPM_ALG, TPM_CAP, TPM_PT, TPM_RH, TPM_SE, TPM_ST, TPM_SU, hashNameOf, type HashName } from "./constants.js";
import * as C from "./commands.js";
import * as P from "./policy.js";
import { makeSalt, hashOf } from "./crypto.js";
import { TpmReader, TpmWriter } from "./marshal.js";
import { tpmError, TpmRcError } from "./rc.js";
import { AuthSession, PasswordSession, type Session } from "./session.js";
import { AUTH_RESPONSE, encodePublicArea, objectName, storagePrimaryTemplate, type PcrSelection, type PrimaryAlg, type TpmtPublic } from "./structures.js";
import type { Tpm2Transport } from "./transport.js";

const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};

/** A loaded key the TPM holds: handle, public area and its (verified) name. */
export interface LoadedKey {
  handle: number;
  public: TpmtPublic;
  name: Buffer;
}

export class Tpm {
  constructor(readonly transport: Tpm2Transport) {}

  /** Execute one command. sessions[i] authorises handles[i] for i < def.authHandles (default: empty password). */
  async run<Req, Rsp>(def: C.CommandDef<Req, Rsp>, req: Req, sessions: Session[] = []): Promise<Rsp> {
    // TPM_RC_RETRY / TESTING / YIELDED are warnings: the command was not executed; send it again (fresh nonces).
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.runOnce(def, req, sessions);
      } catch (e) {
        if (!(e instanceof TpmRcError) || !["RETRY", "TESTING", "YIELDED"].includes(e.rcName) || attempt >= 50) throw e;
        await new Promise((r) => setTimeout(r, Math.min(5 + attempt * 10, 200)));
      }
    }
  }

  private async runOnce<Req, Rsp>(def: C.CommandDef<Req, Rsp>, req: Req, sessions: Session[]): Promise<Rsp> {
    const handles = def.handles(req);
    const sess = [...sessions];
    while (sess.length < def.authHandles) sess.push(new PasswordSession());
    const authOf = (i: number) => (i < def.authHandles ? handles[i]?.authValue : undefined);

    const pw = new TpmWriter(512);
    def.params(req, pw);
    let params = pw.finish();
    for (const s of sess) if (s instanceof AuthSession) s.prepare();

    // Command parameter encryption (session attribute "decrypt": the TPM decrypts it).
    const decIdx = sess.findIndex((s) => s.attributes & TPMA_SESSION.decrypt);
    const encIdx = sess.findIndex((s) => s.attributes & TPMA_SESSION.encrypt);
    if ((decIdx > 0 || encIdx > 0) && sess[0] instanceof AuthSession) throw new TrustvolError("EINTERNAL", "parameter encryption is only supported on the first session");
    if (decIdx >= 0 && def.encCommand && params.length >= 2) {
      const n = params.readUInt16BE(0);
      const body = params.subarray(2, 2 + n);
      const enc = sess[decIdx]!.paramCrypt!(false, Buffer.from(body), authOf(decIdx), decIdx < def.authHandles, "cmd");
      body.fill(0);
      enc.copy(params, 2);
      wipe(enc);
    }

    const cpHashFor = (h: HashName) => hashOf(h, u32(def.cc), ...handles.map((x) => x.name), params);
    const auths = sess.map((s, i) => s.commandAuth(cpHashFor, authOf(i), i < def.authHandles));
    const authBytes = Buffer.concat(auths);
    wipe(...auths);

    const w = new TpmWriter(64 + params.length + authBytes.length);
    w.u16(sess.length ? TPM_ST.SESSIONS : TPM_ST.NO_SESSIONS).u32(0).u32(def.cc);
    for (const h of handles) w.u32(h.handle);
    if (sess.length) w.u32(authBytes.length).bytes(authBytes);
    w.bytes(params);
    const cmd = w.finish();
    cmd.writeUInt32BE(cmd.length, 2);
    wipe(params, authBytes);

    let rsp: Buffer;
    try {
      rsp = await this.transport.transmit(cmd);
    } finally {
      wipe(cmd);
    }
    try {
      const r = new TpmReader(rsp);
      const tag = r.u16();
      const size = r.u32();
      const rc = r.u32();
      if (size !== rsp.length) throw new TrustvolError("EDEVICE", `TPM response size field ${size} but ${rsp.length} bytes received`);
      if (rc !== 0) throw tpmError(rc, def.cc);
      const outHandles: number[] = [];
      for (let i = 0; i < def.responseHandles; i++) outHandles.push(r.u32());
      let rparams: Buffer;
      if (tag === TPM_ST.SESSIONS) {
        const psize = r.u32();
        rparams = Buffer.from(r.bytes(psize));
        const rpHashFor = (h: HashName) => hashOf(h, u32(0), u32(def.cc), rparams);
        for (let i = 0; i < sess.length; i++) {
          const a = AUTH_RESPONSE.read(r);
          sess[i]!.responseAuth(rpHashFor, a.nonce, a.sessionAttributes, a.hmac, authOf(i), i < def.authHandles);
        }
        r.end();
      } else {
        if (sess.length) throw new TrustvolError("EDEVICE", "TPM answered a command with sessions without an authorization area");
        rparams = Buffer.from(r.bytes(r.remaining));
      }
      if (encIdx >= 0 && def.encResponse && rparams.length >= 2) {
        const n = rparams.readUInt16BE(0);
        if (2 + n > rparams.length) throw new TrustvolError("EDEVICE", "TPM response parameter size out of range");
        const body = rparams.subarray(2, 2 + n);
        const dec = sess[encIdx]!.paramCrypt!(true, Buffer.from(body), authOf(encIdx), encIdx < def.authHandles, "rsp");
        dec.copy(body);
        wipe(dec);
      }
      try {
        const pr = new TpmReader(rparams, `TPM2 response parameters`);
        const out = def.parse(pr, outHandles);
        pr.end();
        return out;
      } finally {
        wipe(rparams);
      }
    } finally {
      wipe(rsp);
    }
  }

  // ---------- conveniences ----------

  /** TPM2_Startup(CLEAR); "already started" is fine. */
  async startup(type: number = TPM_SU.CLEAR): Promise<void> {
    try {
      await this.run(C.Startup, { startupType: type });
    } catch (e) {
      if (e instanceof TpmRcError && e.rcName === "INITIALIZE") return;
      throw e;
    }
  }

  async getRandom(n: number, session?: Session): Promise<Buffer> {
    const out = Buffer.allocUnsafeSlow(n);
    let off = 0;
    while (off < n) {
      const { randomBytes: chunk } = await this.run(C.GetRandom, { bytesRequested: Math.min(32, n - off) }, session ? [session] : []);
      if (!chunk.length) throw new TrustvolError("EDEVICE", "TPM returned no random bytes");
      chunk.copy(out, off, 0, Math.min(chunk.length, n - off));
      off += chunk.length;
      wipe(chunk);
    }
    return out;
  }

  async getProperties(first: number, count: number): Promise<Map<number, number>> {
    const { data } = await this.run(C.GetCapability, { capability: TPM_CAP.TPM_PROPERTIES, property: first, propertyCount: count });
    const m = new Map<number, number>();
    if ("properties" in data) for (const p of data.properties) m.set(p.property, p.value);
    return m;
  }

  async pcrBanks(): Promise<PcrSelection[]> {
    const { data } = await this.run(C.GetCapability, { capability: TPM_CAP.PCRS, property: 0, propertyCount: 1 });
    return "pcrs" in data ? data.pcrs : [];
  }

  /** Read PCR values of one bank (PCR_Read returns at most 8 per call; loops). */
  async pcrRead(bank: HashName, pcrs: number[]): Promise<Map<number, Buffer>> {
    const out = new Map<number, Buffer>();
    let todo = [...new Set(pcrs)].sort((a, b) => a - b);
    while (todo.length) {
      const res = await this.run(C.PCR_Read, { selections: [{ hash: bank, pcrs: todo }] });
      const got = res.selections.find((s) => s.hash === bank)?.pcrs ?? [];
      if (!got.length) throw new TrustvolError("EUNSUPPORTED", `the TPM has no ${bank} PCR bank (or PCRs ${todo.join(",")} are not allocated)`, "enroll with a PCR bank the TPM has (tpm2_pcrread shows them)");
      got.forEach((p, i) => out.set(p, res.digests[i]!));
      todo = todo.filter((p) => !got.includes(p));
    }
    return out;
  }

  async pcrExtend(pcr: number, bank: HashName, digest: Buffer): Promise<void> {
    await this.run(C.PCR_Extend, { pcr, digests: [{ hash: bank, digest }] });
  }

  async flush(handle: number): Promise<void> {
    await this.run(C.FlushContext, { flushHandle: handle });
  }
  /** Flush, ignoring failures (the handle may already be gone). */
  async flushQuiet(handle: number | undefined): Promise<void> {
    if (handle === undefined) return;
    try {
      await this.flush(handle);
    } catch {
      /* already flushed */
    }
  }

  /**
   * Create the storage primary of the TCG provisioning template under the owner hierarchy and verify what came back:
   * the public area must be the template we asked for (plus the key) and the name must hash from it.
   */
  async createStoragePrimary(alg: PrimaryAlg = "ecc", nameAlg: HashName = "sha256", ownerAuth?: Uint8Array, session?: Session): Promise<LoadedKey> {
    const template = storagePrimaryTemplate(alg, nameAlg);
    const res = await this.run(
      C.CreatePrimary,
      { primaryHandle: C.permanentHandle(TPM_RH.OWNER, ownerAuth), inSensitive: { userAuth: Buffer.alloc(0), data: Buffer.alloc(0) }, inPublic: template },
      session ? [session] : [],
    );
    const check = { ...res.outPublic.value, unique: Buffer.alloc(0), eccPoint: template.eccPoint } as TpmtPublic;
    if (alg === "ecc") check.eccPoint = { x: Buffer.alloc(0), y: Buffer.alloc(0) };
    const sameTemplate = encodePublicArea(check).equals(encodePublicArea(template));
    const name = objectName(res.outPublic.value);
    if (!sameTemplate || !constantTimeEqual(name, res.name)) {
      await this.flushQuiet(res.handle);
      throw new TrustvolError("EDEVICE", "the TPM returned a storage key that does not match the requested template or its name", "something between trustvol and the TPM is interfering; do not trust this TPM connection");
    }
    return { handle: res.handle, public: res.outPublic.value, name };
  }

  /** Read back a loaded object's public area and check its name (e.g. a persistent SRK at 0x81000001). */
  async readPublicVerified(handle: number): Promise<LoadedKey> {
    const res = await this.run(C.ReadPublic, { objectHandle: handle });
    const name = objectName(res.outPublic.value);
    if (!constantTimeEqual(name, res.name)) throw new TrustvolError("EDEVICE", `TPM object 0x${handle.toString(16)}: name does not match its public area`, "the TPM connection is not trustworthy");
    return { handle, public: res.outPublic.value, name };
  }

  /**
   * StartAuthSession. With `saltKey`, the session is salted to that (verified) key: only the TPM that holds its
   * private part learns the session key. symmetric: AES-128-CFB parameter encryption.
   */
  async startSession(opts: { type: "hmac" | "policy" | "trial"; saltKey?: LoadedKey; hash?: HashName; symmetric?: boolean }): Promise<AuthSession> {
    const hash = opts.hash ?? "sha256";
    const nonceCaller = Buffer.alloc(HASH_SIZE[hash]);
    randomFillSync(nonceCaller);
    // The salt is sized and derived with the salt key's nameAlg (Part 1 §24.3), not the session's authHash.
    const salt = opts.saltKey ? makeSalt(opts.saltKey.public, hashNameOf(opts.saltKey.public.nameAlg)) : undefined;
    const sessionType = opts.type === "hmac" ? TPM_SE.HMAC : opts.type === "policy" ? TPM_SE.POLICY : TPM_SE.TRIAL;
    const symmetric = opts.symmetric === false ? { algorithm: TPM_ALG.NULL } : { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB };
    try {
      const res = await this.run(C.StartAuthSession, {
        tpmKey: opts.saltKey ? { handle: opts.saltKey.handle, name: opts.saltKey.name } : TPM_RH.NULL,
        bind: TPM_RH.NULL,
        nonceCaller,
        encryptedSalt: salt?.encrypted ?? Buffer.alloc(0),
        sessionType,
        symmetric,
        authHash: hash,
      });
      const key = AuthSession.deriveSessionKey(hash, Buffer.alloc(0), salt?.salt ?? Buffer.alloc(0), res.nonceTPM, nonceCaller);
      return new AuthSession(res.handle, sessionType, hash, res.nonceTPM, nonceCaller, key, opts.symmetric === false ? 0 : 128);
    } finally {
      if (salt) wipe(salt.salt);
    }
  }

  // shorthands for single policy steps (policy.ts describes each step once)
  async policyPCR(session: AuthSession, sel: PcrSelection): Promise<void> {
    await P.PolicyPCR(sel).execute(this, session);
  }
  async policyAuthValue(session: AuthSession): Promise<void> {
    await P.PolicyAuthValue().execute(this, session);
  }
  async policyPassword(session: AuthSession): Promise<void> {
    await P.PolicyPassword().execute(this, session);
  }
  async policyGetDigest(session: AuthSession): Promise<Buffer> {
    return (await this.run(C.PolicyGetDigest, { policySession: session.handle })).policyDigest;
  }

  /** Make a transient object persistent at `persistent` (0x81xxxxxx), or evict a persistent one (object = persistent). */
  async evictControl(object: LoadedKey | number, persistent: number, ownerAuth?: Uint8Array): Promise<void> {
    // cpHash uses the object's name, not its handle (matters once the auth is an HMAC session)
    const obj = typeof object === "number" ? await this.readPublicVerified(object) : object;
    await this.run(C.EvictControl, { auth: C.permanentHandle(TPM_RH.OWNER, ownerAuth), objectHandle: { handle: obj.handle, name: obj.name }, persistentHandle: persistent });
  }

  async lockoutInfo(): Promise<{ counter: number; maxTries: number; interval: number; recovery: number }> {
    const p = await this.getProperties(TPM_PT.LOCKOUT_COUNTER, 4);
    return { counter: p.get(TPM_PT.LOCKOUT_COUNTER) ?? 0, maxTries: p.get(TPM_PT.MAX_AUTH_FAIL) ?? 0, interval: p.get(TPM_PT.LOCKOUT_INTERVAL) ?? 0, recovery: p.get(TPM_PT.LOCKOUT_RECOVERY) ?? 0 };
  }
}
