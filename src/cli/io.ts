// Where the CLI prints. Commands write through here (not process.stdout directly) so an in-process caller can capture.
export const io = {
  out: (s: string | Uint8Array): void => void process.stdout.write(s),
  err: (s: string | Uint8Array): void => void process.stderr.write(s),
};
