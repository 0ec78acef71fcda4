// `trustvol provision` (first-boot state machine, docs/provisioning.md) and `trustvol recovery decrypt` (fleet side of
// the recovery escrow). Parses and prints only; the logic is src/ops/provision.ts.
import { Option, type Command } from "commander";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { io, status } from "../io.js";
import { ExitCode, TrustvolError } from "../../util/errors.js";
import { wipe } from "../../util/secret.js";
import { parseSize, printJson } from "../common.js";
import { progressBar, progressMode } from "../progress.js";
import { promptHidden } from "../../util/tty.js";


export function registerProvisionCommands(program: Command): void {
  program
    .command("provision")
    .description("first-boot provisioning: encrypt in place, enroll the trust source, wipe the factory secret, rotate the key, back up the header — idempotent, resumes after a power cut")
    .option("--config <file>", "provisioning config", "/etc/trustvol/provision.json")
    .option("--volume <name>", "only this volume of the config")
    .addOption(new Option("--stage <stage>", "initramfs: up to opening /dev/mapper/NAME; system: finish the rotation, back up the header").choices(["initramfs", "system"]).default("initramfs"))
    .option("--dry-run", "print the state read from each device and the steps that would run; change nothing")
    .option("--no-open", "do not open /dev/mapper/NAME (image files, or a boot script that opens it itself)")
    .option("--hotzone-size <size>", "largest re-encryption hotzone of a key rotation (e.g. 4M; default 24M): smaller ones pause I/O to the range for less time", parseSize("--hotzone-size"))
    .option("--json", "print the report as JSON")
    .option("--progress-json", "progress as JSON lines on stderr")
    .option("--no-progress", "no progress bar")
    .addHelpText("after", `
States read from the device: plain, encrypting, factory, enrolled, rotate-pending,
rotating, needs-recovery, provisioned (docs/provisioning.md).
Exit status: 0 done for this stage (initramfs: /dev/mapper/NAME open unless
--no-open; system: every volume provisioned, header backed up); 7 the system
stage was stopped (SIGTERM, resumable) or left something for the next boot;
9 a volume was left unencrypted because its config says on_failure:
continue-unencrypted (mount the plain device); otherwise the codes of
\`trustvol --help\` (2 bad config, 3 no key / posture refused, 5 device, TPM
or token missing).`)
    .action(async (o: Record<string, unknown>) => {
      const { loadProvisionConfig } = await import("../../provision/config.js");
      const { provision } = await import("../../ops/provision.js");
      const config = loadProvisionConfig(o.config as string);
      const mode = progressMode(o);
      // SIGTERM (shutdown) / SIGINT: the re-encryption stops after its current hotzone, resumable (exit 7).
      const ac = new AbortController();
      const onSig = () => ac.abort();
      process.on("SIGINT", onSig);
      process.on("SIGTERM", onSig);
      const stop = { done: () => { process.off("SIGINT", onSig); process.off("SIGTERM", onSig); } };
      let bar: ReturnType<typeof progressBar> | undefined;
      let barKey = "";
      const log = (s: string) => io.err(`${s}\n`);
      try {
        const r = await provision({
          config,
          stage: o.stage as "initramfs" | "system",
          ...(o.volume ? { volume: o.volume as string } : {}),
          dryRun: !!o.dryRun,
          open: o.open !== false,
          signal: ac.signal,
          // trusted-key / CAAM data volumes: their trustvol-volume@NAME.service config beside provision.json
          volumesDir: join(dirname(resolve(o.config as string)), "volumes"),
          ...(o.hotzoneSize !== undefined ? { hotzoneSize: o.hotzoneSize as number } : {}),
          log: (s) => {
            bar?.end();
            bar = undefined;
            log(s);
          },
          onProgress: (p) => {
            const key = `${p.step} ${p.volume}`;
            if (key !== barKey) {
              bar?.end();
              bar = progressBar(`${p.step === "encrypt" ? "Encrypting" : "Rotating key of"} ${p.volume}`, mode);
              barKey = key;
            }
            bar!.update(p.done, p.total);
          },
          showRecoveryKey: (name, key) => {
            // Printed once on the console (stderr: never captured by a --json consumer's stdout); not stored anywhere.
            io.err(`\n${name}: recovery key (shown once, write it down now):\n    `);
            io.err(key);
            io.err("\n\n");
          },
          askRecoveryKey: (name) => promptHidden(`Recovery key for ${name}: `, { max: 512, noTerminalHint: "no console to ask for the recovery key on" }),
          // PIN sources are read before any write, synchronously, on the console.
          promptPin: (what) => promptHidden(`PIN (${what}): `, { max: 256, noTerminalHint: "give the PIN in a file (trust.pin.file)" }),
        });
        bar?.end();
        // A volume left unencrypted as configured (exit 9) and a system stage that left something for the next boot
        // (exit 7) are outcomes, not errors: the report is still the one JSON document (as doctor's exit 8), and the
        // reason is one line on stderr.
        let outcome: TrustvolError | undefined;
        const left = r.volumes.filter((v) => v.unencrypted).map((v) => v.name);
        // The system stage's service disables itself on exit 0: only when every volume is really done.
        const open = r.volumes.filter((v) => v.state !== "provisioned" && v.state !== "trusted-volume");
        if (left.length) outcome = new TrustvolError("EPOLICY", `left unencrypted as configured (on_failure: continue-unencrypted): ${left.join(", ")}`);
        else if (o.stage === "system" && !o.dryRun && open.length)
          outcome = new TrustvolError("EBUSY", `provisioning not finished: ${open.map((v) => `${v.name} (${v.state})`).join(", ")}`, "the next boot's initramfs stage continues it");
        const exitCode = left.length ? ExitCode.UNENCRYPTED : outcome ? outcome.exitCode : ExitCode.OK;
        if (o.json) printJson({ ...r, exitCode });
        else
          for (const v of r.volumes)
            io.out(`${v.name}: ${v.stateBefore} -> ${v.state}${v.steps.length ? ` (${o.dryRun ? "would run" : "ran"}: ${v.steps.join(", ")})` : ""}${v.mapped ? `, open as ${v.mapped}` : ""}${v.headerBackup ? `, header backup ${v.headerBackup}` : ""}${v.unencrypted ? `, LEFT UNENCRYPTED: ${v.unencrypted}` : ""}\n`);
        if (outcome) {
          io.err(`trustvol: ${outcome.oneLine().replace(/\s*\n\s*/g, " ")}\n`);
          status.exitCode = exitCode;
        }
      } finally {
        bar?.end();
        stop.done();
      }
    });

  const rec = program.command("recovery").description("recovery keys escrowed to a fleet key (provision recovery: escrow)");
  rec
    .command("decrypt")
    .description("decrypt an escrow file written by `trustvol provision` with the fleet's private key; prints the recovery key")
    .argument("<escrow-file>", "the JSON escrow file from the device")
    .requiredOption("--private-key <pem>", "the fleet's RSA private key (PEM file)")
    .option("--json", "print {volume, volume_uuid, recovery_key} as JSON")
    .action(async (file: string, o: Record<string, unknown>) => {
      const { decryptEscrow } = await import("../../provision/escrow.js");
      const pem = readFileSync(o.privateKey as string);
      try {
        const { recoveryKey, file: f } = decryptEscrow(readFileSync(file, "utf8"), pem, file);
        try {
          if (o.json) printJson({ volume: f.volume, volume_uuid: f.volume_uuid, recovery_key: recoveryKey.toString("latin1") });
          else {
            io.out(recoveryKey);
            io.out("\n");
          }
        } finally {
          wipe(recoveryKey);
        }
      } finally {
        wipe(pem);
      }
    });
}

