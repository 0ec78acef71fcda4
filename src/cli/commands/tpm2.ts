// `trustvol tpm2 …`: TPM2 policy tooling that runs on the vendor's build host, not on the device.
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { io } from "../io.js";
import { usage } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { atomicWriteFileSync } from "../../util/atomic.js";
import { isHashName, type HashName } from "../../trust/tpm2/constants.js";
import { UKI_MEASURED_SECTIONS, pkcs11PolicySigner, signPcrPolicy, type UkiSection } from "../../ops/sign-policy.js";
import { addAlias, addPinOptions, addUnlockOptions, pinSourceFrom, printJson } from "../common.js";
import { enrollUnlock, pcrSpec } from "./enroll.js";

const collect = (v: string, prev: string[] = []) => [...prev, v];

export function registerTpm2Commands(program: Command): void {
  const tpm2 = program.command("tpm2").description("TPM2 policy tooling: signed PCR policies, PCR prediction, OTA re-enrolment");
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

  const p = tpm2
    .command("predict")
    .description("predict PCR values of the next boot from what an update installs: PCR 7 (Secure Boot variables) and PCR 4 (EFI binaries) by replaying the firmware event log, PCR 11 from a UKI's sections (systemd-measure calculate); prints PCR:BANK=HEX for enroll tpm2 --pcrs")
    .option("--pcrs <list>", "PCRs to predict (default: those the inputs cover)", (v: string) => v.split(/[,+]/).map((x) => {
      if (!/^[0-9]+$/.test(x) || Number(x) > 23) throw usage(`--pcrs: "${x}" is not a PCR index (0..23)`);
      return Number(x);
    }))
    .option("--bank <bank>", "PCR bank", "sha256")
    .option("--eventlog <file>", "firmware event log (default /sys/kernel/security/tpm0/binary_bios_measurements when PCR 4 or 7 is predicted)")
    .option("--efi-var <name=file>", "PCR 7: a Secure Boot variable's new contents (PK, KEK, db, dbx; the variable data without its authentication header); repeatable", collect)
    .option("--pe <file>", "PCR 4: an EFI binary the firmware will load (shim, boot loader, UKI), in load order; repeatable", collect)
    .option("--phase <phase>", "PCR 11: boot phase (default enter-initrd, where the root volume is unlocked)", "enter-initrd")
    .option("--no-linux-padding", "PCR 11: do not zero-pad a PE kernel to its SizeOfImage (systemd-measure 257)")
    .option("--extend <pcr=hex>", "a known measurement the update adds: PCR N's current value (read from the TPM) extended by this digest; repeatable, in order", collect)
    .option("--tpm2-device <dev>", "TPM to read current values from for --extend: auto (default), a path, or swtpm:path=SOCKET")
    .option("--json", "print JSON");
  for (const s of UKI_MEASURED_SECTIONS) p.option(`--${s.slice(1)} <file>`, `PCR 11: file of the UKI's ${s} section`);
  p.action(async (o: Record<string, unknown>) => {
    const bank = String(o.bank).toLowerCase();
    if (!isHashName(bank)) throw usage(`--bank: unknown bank "${bank.slice(0, 20)}" (sha1, sha256, sha384, sha512)`);
    const { parseEventLog, predictFromLog } = await import("../../trust/tpm2/predict.js");
    const { predictPcr11 } = await import("../../ops/sign-policy.js");
    const sections = new Map<UkiSection, Buffer>();
    for (const s of UKI_MEASURED_SECTIONS) {
      const f = o[s.slice(1)] as string | undefined;
      if (f) sections.set(s, readFileSync(f));
    }
    const efiVars = new Map<string, Buffer>();
    for (const e of (o.efiVar as string[] | undefined) ?? []) {
      const i = e.indexOf("=");
      if (i < 1) throw usage(`--efi-var: "${e.slice(0, 40)}" is not NAME=FILE`);
      efiVars.set(e.slice(0, i), readFileSync(e.slice(i + 1)));
    }
    const peImages = ((o.pe as string[] | undefined) ?? []).map((f) => readFileSync(f));
    const extend = new Map<number, Buffer[]>();
    for (const e of (o.extend as string[] | undefined) ?? []) {
      const m = /^([0-9]+)=([0-9a-fA-F]+)$/.exec(e);
      if (!m || Number(m[1]) > 23) throw usage(`--extend: "${e.slice(0, 40)}" is not PCR=HEX`);
      const d = Buffer.from(m[2]!, "hex");
      if (d.length !== { sha1: 20, sha256: 32, sha384: 48, sha512: 64 }[bank as HashName]) throw usage(`--extend: PCR ${m[1]}: not a ${bank} digest`);
      extend.set(Number(m[1]), [...(extend.get(Number(m[1])) ?? []), d]);
    }
    const pcrs: number[] = (o.pcrs as number[] | undefined) ?? [...new Set([...(efiVars.size ? [7] : []), ...(peImages.length ? [4] : []), ...(sections.size ? [11] : []), ...extend.keys()])].sort((a, b) => a - b);
    if (!pcrs.length) throw usage("nothing to predict", "give --efi-var (PCR 7), --pe (PCR 4) or UKI sections such as --linux (PCR 11), or --pcrs");
    const logPcrs = pcrs.filter((x) => x !== 11 && !extend.has(x));
    let current = new Map<number, Buffer>();
    if (extend.size) {
      const { Tpm2TrustSource } = await import("../../trust/tpm2/index.js");
      const src = new Tpm2TrustSource(o.tpm2Device ? { device: o.tpm2Device as string } : {});
      try {
        current = await src.tpm.pcrRead(bank as HashName, [...extend.keys()]);
      } finally {
        await src.close();
      }
    }
    const { predictPcr } = await import("../../trust/tpm2/policy.js");
    const log = logPcrs.length ? parseEventLog(readFileSync((o.eventlog as string | undefined) ?? "/sys/kernel/security/tpm0/binary_bios_measurements")) : undefined;
    const out: { pcr: number; bank: string; value: Buffer }[] = [];
    for (const pcr of pcrs) {
      let v: Buffer;
      if (extend.has(pcr)) v = predictPcr(bank as HashName, extend.get(pcr)!, current.get(pcr));
      else if (pcr === 11) {
        if (!sections.size) throw usage("PCR 11 needs the UKI's sections", "pass --linux FILE and the other sections the UKI has");
        v = predictPcr11(bank as HashName, sections, String(o.phase), o.linuxPadding !== false);
      } else v = predictFromLog(pcr, { log: log!.events, startupLocality: log!.startupLocality, bank: bank as HashName, efiVars, ...(peImages.length ? { peImages } : {}) });
      out.push({ pcr, bank, value: v });
    }
    if (o.json) printJson({ pcrs: out }); // {"version": 1, "pcrs": [{"pcr": 7, "bank": "sha256", "value": HEX}, ...]}
    else io.out(out.map((x) => `${x.pcr}:${x.bank}=${x.value.toString("hex")}`).join(",") + "\n");
  });

  // ---- OTA-transactional re-enrolment ----
  const stage = addPinOptions(
    addUnlockOptions(
      tpm2
        .command("stage-update")
        .description("before an update commits: add a TPM2 token sealed to the next boot chain's PCR values (from tpm2 predict), keeping the current one; unlocks with the current token unless a key is given")
        .argument("<device>")
        .requiredOption("--pcrs <list>", "PCRs of the next chain, with their predicted values: 7:sha256=HEX,4:sha256=HEX (PCRs without a value are sealed to their current value)", pcrSpec)
        .option("--pcr-bank <bank>", "PCR bank", "sha256")
        .option("--tpm2-device <dev>", "auto (default), a device path like /dev/tpmrm0, or swtpm:path=SOCKET")
        .option("--srk", "seal under the persistent SRK at 0x81000001, as systemd 255+")
        .option("--header <file>", "detached header")
        .option("--json", "print the result as JSON"),
    ),
  );
  stage.action(async (device: string, o: Record<string, unknown>) => {
    const spec = o.pcrs as ReturnType<typeof pcrSpec>;
    const { stageTpm2Update } = await import("../../ops/tpm2-update.js");
    // unattended OTA: the current boot's token opens the volume unless a key is given
    const u = enrollUnlock(device, o.keyFile || o.unlockVolumeKeyFile ? o : { ...o, unlockToken: true });
    try {
      const r = await stageTpm2Update(device, {
        unlock: u, ...(o.header ? { header: o.header as string } : {}),
        pcrs: spec.pcrs, ...(spec.values ? { pcrValues: spec.values } : {}), bank: (spec.bank ?? o.pcrBank) as HashName,
        ...(o.tpm2Device ? { tpm2Device: o.tpm2Device as string } : {}), ...(o.srk ? { srk: true } : {}),
      });
      if (o.json) printJson({ keyslot: r.keyslot, token: r.tokenId, staged: true });
      else io.err(`Staged TPM2 token ${r.tokenId} (key slot ${r.keyslot}) for the next boot chain; run tpm2 commit-update once it has booted.\n`);
    } finally {
      if ("volumeKey" in u) wipe(u.volumeKey);
    }
  });
  const report = (o: Record<string, unknown>, r: { committed: number[]; removedTokens: number[]; removedKeyslots: number[] }, what: string) => {
    if (o.json) printJson({ committed_tokens: r.committed, removed_tokens: r.removedTokens, removed_keyslots: r.removedKeyslots });
    else if (!r.committed.length && !r.removedTokens.length) io.err("No update is staged; nothing to do.\n");
    else io.err(`${what}: removed token(s) ${r.removedTokens.join(", ") || "none"}, key slot(s) ${r.removedKeyslots.join(", ") || "none"}.\n`);
  };
  addPinOptions(
    tpm2
      .command("commit-update")
      .description("after the updated chain booted: check the staged token unlocks now, then retire the old TPM2 token(s) in one header commit")
      .argument("<device>")
      .option("--tpm2-device <dev>", "auto (default), a device path, or swtpm:path=SOCKET")
      .option("--header <file>", "detached header")
      .option("--json", "print the result as JSON"),
  ).action(async (device: string, o: Record<string, unknown>) => {
    const { commitTpm2Update } = await import("../../ops/tpm2-update.js");
    const src = pinSourceFrom(o);
    const pin = o.pinFile && src ? (await import("../../trust/pkcs11/pin.js")).readPin(src) : undefined;
    try {
      report(o, await commitTpm2Update(device, { ...(o.header ? { header: o.header as string } : {}), ...(o.tpm2Device ? { tpm2Device: o.tpm2Device as string } : {}), ...(pin ? { pin } : {}) }), "Update committed");
    } finally {
      wipe(pin);
    }
  });
  tpm2
    .command("abort-update")
    .description("the update was abandoned: drop the staged TPM2 token and its key slot; the current token stays")
    .argument("<device>")
    .option("--header <file>", "detached header")
    .option("--json", "print the result as JSON")
    .action(async (device: string, o: Record<string, unknown>) => {
      const { abortTpm2Update } = await import("../../ops/tpm2-update.js");
      report(o, await abortTpm2Update(device, o.header ? { header: o.header as string } : {}), "Update aborted");
    });
}
