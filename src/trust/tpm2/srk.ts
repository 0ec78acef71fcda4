// The persistent storage root key systemd 255+ seals under (0x81000001, the TCG SRK template with noDA), found or
// created the way systemd-cryptenroll does, and recorded in tokens as `tpm2_srk` (a serialized ESYS_TR).
import { TrustvolError } from "../../util/errors.js";
import { constantTimeEqual } from "../../util/secret.js";
import { TPMA_OBJECT, TPM_ALG, TPM_RH } from "./constants.js";
import * as C from "./commands.js";
import { encodeSerializedKeyHandle } from "./esys-tr.js";
import { TpmRcError } from "./rc.js";
import { objectName, storagePrimaryTemplate, type PrimaryAlg, type TpmtPublic } from "./structures.js";
import type { LoadedKey, Tpm } from "./tpm.js";

export const SYSTEMD_SRK_HANDLE = 0x81000001;

/** systemd's SRK template: the TCG provisioning guidance's storage key, noDA set (tpm2_get_srk_template). */
export function systemdSrkTemplate(alg: PrimaryAlg = "ecc"): TpmtPublic {
  const t = storagePrimaryTemplate(alg, "sha256");
  return { ...t, objectAttributes: t.objectAttributes | TPMA_OBJECT.noDA };
}

function isStorageKey(p: TpmtPublic): boolean {
  const need = TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt | TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent;
  return (p.type === TPM_ALG.ECC || p.type === TPM_ALG.RSA) && (p.objectAttributes & need) === need && (p.objectAttributes & TPMA_OBJECT.sign) === 0;
}

/** The key at 0x81000001 when there is one (it must be a storage key), else a new one made persistent there. */
export async function getOrCreateSrk(tpm: Tpm, alg: PrimaryAlg = "ecc"): Promise<{ key: LoadedKey; serialized: Buffer; created: boolean }> {
  const existing = await tpm.readPublicVerified(SYSTEMD_SRK_HANDLE).catch((e) => {
    if (e instanceof TpmRcError) return undefined; // nothing persisted there yet
    throw e;
  });
  if (existing) {
    if (!isStorageKey(existing.public)) throw new TrustvolError("EDEVICE", "the TPM object at 0x81000001 is not a storage key", "it is not systemd's SRK; evict it (tpm2_evictcontrol) or enroll without --srk");
    return { key: existing, serialized: encodeSerializedKeyHandle({ handle: SYSTEMD_SRK_HANDLE, name: existing.name, public: existing.public }), created: false };
  }
  const template = systemdSrkTemplate(alg);
  const res = await tpm.run(C.CreatePrimary, { primaryHandle: C.permanentHandle(TPM_RH.OWNER), inSensitive: { userAuth: Buffer.alloc(0), data: Buffer.alloc(0) }, inPublic: template });
  try {
    const pub = res.outPublic.value;
    if (!constantTimeEqual(objectName(pub), res.name) || pub.objectAttributes !== template.objectAttributes || pub.type !== template.type)
      throw new TrustvolError("EDEVICE", "the TPM returned a storage key that does not match the SRK template or its name", "do not trust this TPM connection");
    await tpm.evictControl({ handle: res.handle, public: pub, name: res.name }, SYSTEMD_SRK_HANDLE);
  } finally {
    await tpm.flushQuiet(res.handle);
  }
  const key = await tpm.readPublicVerified(SYSTEMD_SRK_HANDLE);
  if (!constantTimeEqual(key.name, res.name)) throw new TrustvolError("EDEVICE", "the persisted SRK is not the key just created", "do not trust this TPM connection");
  return { key, serialized: encodeSerializedKeyHandle({ handle: SYSTEMD_SRK_HANDLE, name: key.name, public: key.public }), created: true };
}
