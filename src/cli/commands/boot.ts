// `trustvol boot`: generate the boot integration (initramfs-tools hook + script, dracut module, systemd units,
// /etc/trustvol/boot.conf, /etc/crypttab lines) and print or install it.
import type { Command } from "commander";
import { Option } from "commander";
import { io, printJson } from "../io.js";
import { TrustvolError } from "../../util/errors.js";
import { bootFiles, crypttabLine, installBootFiles, runtimeLayout, BOOT_CONF_KEYS, type BootConf, type BootTarget } from "../../boot/index.js";

type Opts = Record<string, unknown>;

function targetsOf(o: Opts): BootTarget[] {
  const t: BootTarget[] = [];
  if (o.initramfsTools) t.push("initramfs-tools");
  if (o.dracut) t.push("dracut");
  if (o.systemd) t.push("systemd");
  return t;
}

function confOf(o: Opts): BootConf | undefined {
  if (o.device === undefined && o.name === undefined) return undefined;
  if (!o.device || !o.name) throw new TrustvolError("EUSAGE", "boot config needs both --device and --name", "e.g. --device PARTLABEL=root --name root");
  return {
    name: String(o.name),
    device: String(o.device),
    ...(o.mode ? { mode: o.mode as "open" | "provision" } : {}),
    ...(o.onFail ? { onFail: o.onFail as "recovery" | "fail" } : {}),
    ...(o.headerBackup ? { headerBackup: String(o.headerBackup) } : {}),
    ...(o.tpm2Device ? { tpm2Device: String(o.tpm2Device) } : {}),
    ...(o.pkcs11Module ? { pkcs11Module: String(o.pkcs11Module) } : {}),
    ...(o.timeout ? { timeout: Number(o.timeout) } : {}),
    ...(o.provisionConfig ? { provisionConfig: String(o.provisionConfig) } : {}),
  };
}

function confOptions(c: Command): Command {
  return c
    .option("--device <dev>", "boot.conf: the volume (/dev/..., PARTUUID=, PARTLABEL=, UUID=, LABEL=)")
    .option("--name <name>", "boot.conf: mapping name (/dev/mapper/NAME = root=)")
    .addOption(new Option("--mode <mode>", "boot.conf: open a provisioned volume, or provision it").choices(["open", "provision"]))
    .addOption(new Option("--on-fail <policy>", "boot.conf: no token unlocks: ask the recovery key on the console, or stop the boot").choices(["recovery", "fail"]))
    .option("--header-backup <spec>", "boot.conf: header backup for a damaged header: DEVICE:/PATH (mounted read-only) or a path")
    .option("--tpm2-device <dev>", "boot.conf: TPM (default auto)")
    .option("--pkcs11-module <path>", "boot.conf: PKCS#11 module for systemd-pkcs11 tokens")
    .option("--timeout <s>", "boot.conf: seconds to wait for the device (default 30)")
    .option("--provision-config <file>", "boot.conf: provisioning config (default /etc/trustvol/provision.json)");
}

export function registerBootCommands(program: Command): void {
  const boot = program.command("boot").description("boot integration: initramfs-tools hook and script, dracut module, systemd units, crypttab lines");
  confOptions(
    boot
      .command("print")
      .description("print the generated boot files (or only boot.conf with --device/--name)")
      .option("--initramfs-tools", "the initramfs-tools hook and local-top script")
      .option("--dracut", "the dracut module")
      .option("--systemd", "trustvol-provision.service, trustvol-volume@.service and trustvol-generator"),
  ).action((o: Opts) => {
    const conf = confOf(o);
    const targets = targetsOf(o);
    if (!targets.length && !conf) throw new TrustvolError("EUSAGE", "nothing to print", "give --initramfs-tools, --dracut, --systemd and/or --device/--name");
    for (const f of bootFiles(targets, runtimeLayout(), conf)) io.out(targets.length + (conf ? 1 : 0) > 1 || targets.length ? `==> ${f.path} (mode ${f.mode.toString(8)})\n${f.content}\n` : f.content);
  });
  confOptions(
    boot
      .command("install")
      .description("write the boot files into the system (or --root DIR); then rebuild the initramfs (update-initramfs -u / dracut -f)")
      .option("--root <dir>", "install into this root file system instead of /", "/")
      .option("--initramfs-tools", "the initramfs-tools hook and local-top script")
      .option("--dracut", "the dracut module")
      .option("--systemd", "trustvol-provision.service, trustvol-volume@.service and trustvol-generator")
      .option("--enable-provision", "enable trustvol-provision.service (multi-user.target)")
      .option("--json", "print the written paths as JSON"),
  ).action((o: Opts) => {
    const conf = confOf(o);
    const targets = targetsOf(o);
    if (!targets.length && !conf) throw new TrustvolError("EUSAGE", "nothing to install", "give --initramfs-tools, --dracut, --systemd and/or --device/--name");
    const layout = runtimeLayout();
    const written = installBootFiles(String(o.root), bootFiles(targets, layout, conf), { layout, enableProvision: !!o.enableProvision });
    if (o.json) printJson({ root: o.root, written });
    else for (const p of written) io.out(`wrote ${p}\n`);
  });
  boot
    .command("crypttab")
    .description("print an /etc/crypttab line for stock systemd-cryptsetup (volumes whose token is a systemd one)")
    .argument("<device>", "the LUKS2 device (/dev/..., UUID=..., PARTUUID=...)")
    .argument("<name>", "mapping name")
    .addOption(new Option("--token <type>", "which systemd token unlocks it").choices(["tpm2", "pkcs11", "fido2"]).default("tpm2"))
    .option("--token-timeout <s>", "seconds to wait for the token before a passphrase prompt", "30")
    .option("--no-headless", "allow a passphrase prompt when no token unlocks (default: headless=true)")
    .action((device: string, name: string, o: Opts) => {
      const n = Number(o.tokenTimeout);
      if (!Number.isInteger(n) || n < 0) throw new TrustvolError("EUSAGE", `--token-timeout "${String(o.tokenTimeout)}" is not a whole number of seconds`);
      io.out(crypttabLine({ name, device, token: o.token as "tpm2", tokenTimeout: n, headless: o.headless !== false }));
    });
  boot
    .command("files")
    .description("list what the initramfs needs for the provisioning config and PKCS#11 module (the hooks copy it): KIND PATH lines, KIND file, secret or library; `mount SPEC MOUNTPOINT FSTYPE` for a SoftHSM token directory's partition")
    .option("--config <file>", "provisioning config (default /etc/trustvol/provision.json; without --pkcs11-module it must exist)")
    .option("--pkcs11-module <path>", "also boot.conf's PKCS#11 module (SoftHSM: its config and token store)")
    .option("--softhsm-conf <file>", "SoftHSM's config", "/etc/softhsm/softhsm2.conf")
    .option("--fstab <file>", "where the token directory's partition is found", "/etc/fstab")
    .action(async (o: Opts) => {
      const { existsSync } = await import("node:fs");
      const { loadProvisionConfig } = await import("../../provision/config.js");
      const { initramfsNeeds } = await import("../../boot/softhsm.js");
      const def = "/etc/trustvol/provision.json";
      const path = o.config !== undefined ? String(o.config) : !o.pkcs11Module || existsSync(def) ? def : undefined;
      const r = initramfsNeeds(path ? loadProvisionConfig(path) : undefined, o.pkcs11Module ? [String(o.pkcs11Module)] : [], { softhsmConf: String(o.softhsmConf), fstab: String(o.fstab) });
      for (const f of r.files) io.out(`${f.kind === "library" ? "library" : f.secret ? "secret" : "file"} ${f.path}\n`);
      for (const m of r.mounts) io.out(`mount ${m.spec} ${m.mountpoint} ${m.fstype}\n`);
    });
  boot
    .command("keys")
    .description("list the keys of /etc/trustvol/boot.conf")
    .action(() => {
      for (const [k, v] of Object.entries(BOOT_CONF_KEYS)) io.out(`${k}\t${v}\n`);
    });
}
