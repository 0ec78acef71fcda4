// `trustvol tpm2 …`: TPM2 policy tooling that runs on the vendor's build host, not on the device.
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { io } from "../io.js";
import { usage } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { atomicWriteFileSync } from "../../util/atomic.js";
import { isHashName, type HashName } from "../../trust/tpm2/constants.js";
import { UKI_MEASURED_SECTIONS, pkcs11PolicySigner, signPcrPolicy, type UkiSection } from "../../ops/sign-policy.js";
import { addAlias, pinSourceFrom } from "../common.js";

const collect = (v: string, prev: string[] = []) => [...prev, v];

export function registerTpm2Commands(program: Command): void {
  const tpm2 = program.command("tpm2").description("TPM2 policy tooling for the build host (signed PCR policies)");
  const c = tpm2
    .command("sign-policy")
    .description("sign the PCR 11 values a unified kernel image will produce, per boot phase (systemd-measure sign): prints tpm2-pcr-signature.json")
    .requiredOption("--private-key <file|uri>", "the vendor's PEM RSA signing key, or a pkcs11: URI of one on a token (sha256 bank)")
    .option("--pin-file <file>", "token PIN for a pkcs11: key from FILE (- = stdin); default: prompt on a terminal")
    .option("--module <path>", "PKCS#11 module for a pkcs11: key (default: p11-kit registrations)")
    .option("--public-key <file>", "its PEM public key (checked against the private key; default: derived)")
    .option("--bank <bank>", "PCR bank to sign for (repeatable; default sha1, sha256, sha384, sha512)", collect)
    .option("--phase <phase>", "boot phase path, e.g. enter-initrd (repeatable; default: enter-initrd … sysinit:ready)", collect)
    .option("--append <file>", "add the new signatures to this signature JSON")
    .option("--output <file>", "write the JSON to FILE (atomically) instead of stdout")
    .option("--no-linux-padding", "do not zero-pad a PE kernel to its SizeOfImage (what systemd-measure 257 computes; the stub measures the padding)");
  for (const s of UKI_MEASURED_SECTIONS) c.option(`--${s.slice(1)} <file>`, `file of the UKI's ${s} section`);
  addAlias(c, "--pkcs11-module <path>", "--module"); // one PKCS#11 module option name across commands
  c.action(async (o: Record<string, unknown>) => {
    const sections = new Map<UkiSection, Buffer>();
    for (const s of UKI_MEASURED_SECTIONS) {
      const f = o[s.slice(1)] as string | undefined;
      if (f) sections.set(s, readFileSync(f));
    }
    const banks = ((o.bank as string[] | undefined) ?? []).map((b) => {
      const l = b.toLowerCase();
      if (!isHashName(l)) throw usage(`--bank: unknown bank "${b.slice(0, 20)}" (sha1, sha256, sha384, sha512)`);
      return l as HashName;
    });
    const onToken = (o.privateKey as string).startsWith("pkcs11:");
    const signer = onToken
      ? await pkcs11PolicySigner({ uri: o.privateKey as string, ...(pinSourceFrom(o) ? { pin: pinSourceFrom(o)! } : {}), ...(o.module ? { modulePath: o.module as string } : {}) })
      : undefined;
    const privateKeyPem = onToken ? undefined : readFileSync(o.privateKey as string);
    let json: string;
    try {
      json = signPcrPolicy({
        sections, ...(privateKeyPem ? { privateKeyPem } : {}), ...(signer ? { signer } : {}), banks, phases: (o.phase as string[] | undefined) ?? [], linuxPadding: o.linuxPadding !== false,
        ...(o.publicKey ? { publicKeyPem: readFileSync(o.publicKey as string) } : {}),
        ...(o.append ? { append: readFileSync(o.append as string) } : {}),
      });
    } finally {
      wipe(privateKeyPem);
      signer?.close();
    }
    if (o.output) atomicWriteFileSync(o.output as string, Buffer.from(json + "\n"), 0o644);
    else io.out(json + "\n");
  });
}
