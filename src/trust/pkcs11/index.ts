// PKCS#11 trust source (OP-TEE libckteec, SoftHSM2, smart cards): public API.
export { Pkcs11TrustSource, encryptToPublicKey, type Pkcs11SourceOptions } from "./source.js";
export { parsePkcs11Uri, formatPkcs11Uri, isSystemdValidUri, redactUri, type Pkcs11Uri, type Pkcs11ObjectType } from "./uri.js";
export { readPin, pinSourceFromUri, type PinSource } from "./pin.js";
export { discoverP11KitModules, candidateModules, findModuleByName, loadModule, type P11KitModule } from "./module.js";
export { openToken, listTokens, Pkcs11Session, type TokenInfo, type KeyAlgorithm, type KeyAttributes, type RsaPadding } from "./token.js";
export { initToken, generateKeyPair, importCertificate, provisionKey, type InitTokenOptions, type ProvisionOptions } from "./setup.js";
export { buildCsr, buildSelfSignedCert, parseDn, toPem, fromPem, type SanOptions } from "./x509.js";
// device identity on a PKCS#11 token (mTLS key, CSR, certificate)
export { createIdentity, identityCsr, identityImportCert, identityShow } from "../../ops/identity.js";
