// How TPM command bytes reach a TPM: the Transport interface, and helpers to wrap one (e.g. a bus recorder in tests).
export interface Tpm2Transport {
  /** e.g. "swtpm (unix socket /tmp/x/sock)", "/dev/tpmrm0". */
  readonly description: string;
  /** False for simulators. */
  readonly hardwareBacked: boolean;
  /** True when a kernel resource manager virtualises handles (/dev/tpmrm0): no leftovers survive a crash of ours. */
  readonly resourceManaged: boolean;
  /** Send one complete command, get one complete response (bytes exactly as on the bus). */
  transmit(command: Buffer): Promise<Buffer>;
  close(): Promise<void>;
}

/** Largest response we accept (TPM2 responses are at most a few KiB; MAX_COMMAND_SIZE is 4096 on most chips). */
export const MAX_RESPONSE = 64 * 1024;

/** Wrap a transport and observe every byte both ways (tests use it to sniff the "bus"). */
export function tapTransport(inner: Tpm2Transport, tap: (dir: "cmd" | "rsp", bytes: Buffer) => void): Tpm2Transport {
  return {
    description: `${inner.description} (tapped)`,
    hardwareBacked: inner.hardwareBacked,
    resourceManaged: inner.resourceManaged,
    async transmit(command) {
      tap("cmd", Buffer.from(command));
      const rsp = await inner.transmit(command);
      tap("rsp", Buffer.from(rsp));
      return rsp;
    },
    close: () => inner.close(),
  };
}
