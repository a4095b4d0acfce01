// node reclaimer.mjs FILE MARKER: per "go" line on stdin, acquires FILE's sidecar
// lock with staleRecovery "remove-if-unchanged" (fs-safe's reclaimer), proves
// exclusivity by O_EXCL-creating MARKER while held, prints "done" or "OVERLAP".
import fs from "node:fs";
import readline from "node:readline";
import { withFileLock } from "./common.mjs";
const [file, marker] = [process.argv[2], process.argv[3]];
const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  if (line !== "go") break;
  let overlap = false;
  await withFileLock(file, {
    staleMs: 1000, staleRecovery: "remove-if-unchanged", timeoutMs: 20000,
    retry: { minTimeout: 1, maxTimeout: 10, factor: 1.5 },
    payload: () => ({ pid: process.pid, createdAt: new Date().toISOString() }),
  }, async () => {
    try { fs.writeFileSync(marker, "", { flag: "wx" }); } catch { overlap = true; return; }
    await new Promise((r) => setTimeout(r, 20));
    fs.rmSync(marker);
  });
  console.log(overlap ? "R:OVERLAP" : "R:done");
}
