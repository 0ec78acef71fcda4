// The boot-critical command modules: each runs from its own single-file program (src/cli/boot-*.ts; in the shipped
// CLI dist/cli/boot-*.js: no chunk graph to resolve at start). Kept apart so run.ts can route without loading a program.
/** format, dump, unlock --test, repair → boot-volume.ts */
export const VOLUME_COMMANDS = ["format", "dump", "unlock", "repair"];
/** open (every boot), close, trusted, caam, doctor → boot-kernel.ts */
export const KERNEL_COMMANDS = ["open", "close", "trusted", "caam", "doctor"];
/** reencrypt, provision, recovery (first boot's background rotation: trustvol-provision.service) → boot-lifecycle.ts */
export const LIFECYCLE_COMMANDS = ["reencrypt", "provision", "recovery"];
