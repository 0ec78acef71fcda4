// Preload for measuring a child's peak memory: writes its maxRSS (KiB) to $TRUSTVOL_RSS_FILE at exit.
import { writeFileSync } from "node:fs";
process.on("exit", () => {
  if (process.env.TRUSTVOL_RSS_FILE) writeFileSync(process.env.TRUSTVOL_RSS_FILE, String(process.resourceUsage().maxRSS));
});
