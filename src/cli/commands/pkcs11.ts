// `trustvol identity ...` (seed 003: a device identity whose private key never leaves the token) and
// `trustvol pkcs11 ...` (token set-up like LmP's first boot: init a slot, generate the key-encryption key pair).
import type { Command } from "commander";
import { readFileSync, writeFileSync } from "node:fs";
import { TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import type { KeyAlgorithm } from "../../trust/pkcs11/index.js";
import { readPin, type PinSource } from "../../trust/pkcs11/pin.js";

// The token and X.509 code (pkcs11js, ASN.1 schemas) loads only when one of these commands runs.
const identityOps = () => import("../../ops/identity.js");
const pkcs11Lib = () => import("../../trust/pkcs11/index.js");
import { addAlias, addPinOptions, printJson, int } from "../common.js";
import { io } from "../io.js";
import { pinSourceFrom } from "../common.js";

const ALGS = ["rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384"];
function alg(v: string): KeyAlgorithm {
  if (!ALGS.includes(v)) throw new TrustvolError("EUSAGE", `--algorithm must be one of ${ALGS.join(", ")}`);
  return v as KeyAlgorithm;
}
const list = (v: string, prev: string[] = []) => [...prev, v];

/** Read the PIN once and hand the token code a buffer source (so stdin is read only once). */
function pinOnce(o: Record<string, unknown>): { src: PinSource | undefined; done: () => void } {
  const s = pinSourceFrom(o);
  if (!s) return { src: undefined, done: () => {} };
  const pin = readPin(s);
  return { src: { kind: "buffer", pin }, done: () => wipe(pin) };
}

export function registerPkcs11Commands(program: Command): void {
  const id = program.command("identity").description("device identity on a PKCS#11 token: key on the token, CSR signed by the token, certificate stored beside it");
  const common = (c: Command) => addPinOptions(c.requiredOption("--uri <uri>", "token URI, e.g. pkcs11:token=lmp").option("--module <path>", "PKCS#11 module (default: p11-kit registrations)").option("--label <label>", "key/certificate label", "device"));
  common(id.command("create").description("generate the identity key pair on the token (sensitive, never extractable)"))
    .option("--algorithm <alg>", `key type: ${ALGS.join(", ")}`, alg, "ec-p256")
    .option("--json", "print the result as JSON")
    .action(async (o: Record<string, unknown>) => {
      const p = pinOnce(o);
      try {
        const r = await (await identityOps()).createIdentity({ uri: o.uri as string, pin: p.src, label: o.label as string, algorithm: o.algorithm as KeyAlgorithm, ...(o.module ? { modulePath: o.module as string } : {}) });
        if (o.json) printJson(r);
        else io.out(`Created ${r.keyType.toUpperCase()} key "${r.label}" on the token\nkey URI: ${r.keyUri}\nSPKI sha256: ${r.publicKeySha256}\nextractable: ${r.attributes.extractable}, sensitive: ${r.attributes.sensitive}\n`);
      } finally {
        p.done();
      }
    });
  common(id.command("csr").description("write a PKCS#10 certificate request signed by the on-token key"))
    .requiredOption("--subject <dn>", 'subject, e.g. "CN=device-0042,O=Example"')
    .option("--dns <name>", "DNS subjectAltName (repeatable)", list)
    .option("--ip <addr>", "IP subjectAltName (repeatable)", list)
    .option("--email <addr>", "email subjectAltName (repeatable)", list)
    .option("--san-uri <uri>", "URI subjectAltName (repeatable)", list)
    .option("-o, --out <file>", "write the PEM here (default: stdout)")
    .action(async (o: Record<string, unknown>) => {
      const p = pinOnce(o);
      try {
        const pem = await (await identityOps()).identityCsr({ uri: o.uri as string, pin: p.src, label: o.label as string, subject: o.subject as string, san: { dns: o.dns as string[], ip: o.ip as string[], email: o.email as string[], uri: o.sanUri as string[] }, ...(o.module ? { modulePath: o.module as string } : {}) });
        if (o.out) writeFileSync(o.out as string, pem);
        else io.out(pem);
      } finally {
        p.done();
      }
    });
  common(id.command("import-cert").description("store the CA-signed certificate on the token next to the key (checked against the key first)"))
    .requiredOption("--cert <file>", "PEM or DER certificate")
    .option("--replace", "replace an existing certificate with this label")
    .option("--json", "print the result as JSON")
    .action(async (o: Record<string, unknown>) => {
      const p = pinOnce(o);
      try {
        const r = await (await identityOps()).identityImportCert({ uri: o.uri as string, pin: p.src, label: o.label as string, certificate: readFileSync(o.cert as string), replace: !!o.replace, ...(o.module ? { modulePath: o.module as string } : {}) });
        if (o.json) printJson(r);
        else io.out(`Imported certificate for ${r.subject} (issuer ${r.issuer}, valid until ${r.notAfter})\n`);
      } finally {
        p.done();
      }
    });
  common(id.command("show").description("show the identity key's attributes and certificate"))
    .option("--json", "print the result as JSON")
    .action(async (o: Record<string, unknown>) => {
      const p = pinOnce(o);
      try {
        const r = await (await identityOps()).identityShow({ uri: o.uri as string, pin: p.src, label: o.label as string, ...(o.module ? { modulePath: o.module as string } : {}) });
        if (o.json) printJson(r);
        else {
          io.out(`token: ${r.token.label} (${r.token.manufacturer} ${r.token.model}, serial ${r.token.serial})\nkey: ${r.keyUri} ${r.keyType.toUpperCase()} extractable=${r.attributes.extractable} sensitive=${r.attributes.sensitive}\n`);
          io.out(r.certificate ? `certificate: ${r.certificate.subject}, issuer ${r.certificate.issuer}, ${r.certificate.notBefore} .. ${r.certificate.notAfter}${r.certificate.selfSigned ? " (self-signed)" : ""}\n` : "certificate: none (run `trustvol identity csr`, then `import-cert`)\n");
        }
      } finally {
        p.done();
      }
    });

  const tok = program.command("pkcs11").description("PKCS#11 token set-up (OP-TEE's PKCS#11 TA, SoftHSM, smart cards)");
  tok
    .command("list")
    .description("list tokens of every p11-kit module (or --module)")
    .option("--module <path>", "only this module")
    .option("--json", "print as JSON")
    .action(async (o: Record<string, unknown>) => {
      const ts = (await pkcs11Lib()).listTokens({ ...(o.module ? { modulePath: o.module as string } : {}), includeUninitialized: true });
      if (o.json) printJson({ tokens: ts });
      else for (const t of ts) io.out(`slot ${t.slotId}: ${t.label || "(uninitialized)"}  ${t.manufacturer} ${t.model} serial ${t.serial}  ${t.modulePath}\n`);
    });
  tok
    .command("init-token")
    .description("initialise a token slot with a label, SO PIN and user PIN (destroys what the token held)")
    .requiredOption("--module <path>", "PKCS#11 module, e.g. /usr/lib/libckteec.so.0")
    .requiredOption("--label <label>", "token label, e.g. lmp")
    .requiredOption("--so-pin-file <file>", "security officer PIN from FILE")
    .requiredOption("--pin-file <file>", "user PIN from FILE")
    .option("--slot <n>", "slot id (LmP uses 1)", int("--slot"))
    .option("--force", "re-initialise a token that already holds objects")
    .option("--json", "print as JSON")
    .action(async (o: Record<string, unknown>) => {
      if (o.soPinFile === "-" && o.pinFile === "-") throw new TrustvolError("EUSAGE", "the SO PIN and user PIN cannot both come from stdin");
      const r = (await pkcs11Lib()).initToken({ modulePath: o.module as string, label: o.label as string, soPin: { kind: "file", path: o.soPinFile as string }, userPin: o.pinFile === "-" ? { kind: "stdin" } : { kind: "file", path: o.pinFile as string }, ...(o.slot !== undefined ? { slotId: o.slot as number } : {}), force: !!o.force });
      if (o.json) printJson({ uri: r.uri, slot: r.slotId });
      else io.out(`Token initialised: ${r.uri} (slot ${r.slotId})\n`);
    });
  addPinOptions(
    tok
      .command("keygen")
      .description("generate a non-extractable key pair and a self-signed certificate on the token (LmP: RSA-2048, label luks, CN=LmP)")
      .requiredOption("--uri <uri>", "token URI, e.g. pkcs11:token=lmp")
      .option("--module <path>", "PKCS#11 module")
      .option("--algorithm <alg>", `key type: ${ALGS.join(", ")}`, alg, "rsa-2048")
      .option("--label <label>", "key label", "luks")
      .option("--subject <dn>", "certificate subject", "CN=LmP")
      .option("--json", "print as JSON"),
  ).action(async (o: Record<string, unknown>) => {
    const p = pinOnce(o);
    try {
      if (!p.src) throw new TrustvolError("EUSAGE", "the token's user PIN is needed", "pass --pin-file FILE");
      const r = (await pkcs11Lib()).provisionKey({ uri: o.uri as string, pin: p.src, algorithm: o.algorithm as KeyAlgorithm, label: o.label as string, subject: o.subject as string, ...(o.module ? { modulePath: o.module as string } : {}) });
      if (o.json) printJson({ uri: r.uri, id: r.id.toString("hex"), label: r.label, key_type: r.keyType });
      else io.out(`Key pair generated: ${r.uri}\n`);
    } finally {
      p.done();
    }
  });
  // One name across commands: --pkcs11-module / --pkcs11-uri (as unlock and verity sign spell them) work here too.
  for (const c of [...id.commands, ...tok.commands]) {
    if (c.options.some((x) => x.long === "--module")) addAlias(c, "--pkcs11-module <path>", "--module");
    if (c.options.some((x) => x.long === "--uri")) addAlias(c, "--pkcs11-uri <uri>", "--uri");
  }
}
