// Folders that hold private data (a client's --state-dir and --work-dir, a server's --data-dir) are
// created readable by their owner only: other users of the machine read no items, answers, id maps,
// uploads or token hashes. An existing folder keeps the mode its owner gave it.
import fs from "node:fs";

/** Owner-only: rwx------. */
export const privateDirMode = 0o700;

/** Creates `dir` (and missing parents) 0700. */
export function makePrivateDir(dir: string): void {
    fs.mkdirSync(dir, {recursive: true, mode: privateDirMode});
}
