// `ppc-gpt run` checks its own numbers before it starts a server or a client: a mistake is exit 2
// naming the option of `run`, and no temporary folder is left.
import fs from "node:fs";
import os from "node:os";
import test from "ava";
import {hasShared, runCli, stories260K} from "../helpers.js";

(hasShared ? test : test.skip)("run: out-of-range numbers are usage errors of run, before any process starts", async (t) => {
    const runDirs = () => fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith("ppc-gpt-run-")).sort();
    const before = runDirs();
    const cases: [string[], RegExp][] = [
        [["--limit", "0"], /--limit must be a positive integer \(got "0"\)/],
        [["--epsilon", "-1"], /--epsilon must be a number > 0 \(got "-1"\)/],
        [["--ratio", "1.5"], /--ratio must be a number in \[0, 1\) \(got "1\.5"\)/],
        [["--k", "0"], /--k must be a positive integer/],
        [["--server-steps", "x"], /--server-steps must be a positive integer/],
        [["--client-lr", "-1"], /--client-lr must be a positive number/],
        [["--threads", "0"], /--threads must be an integer in \[1, 1024\]/],
    ];
    for (const [args, message] of cases) {
        const r = await runCli(["run", "--model", stories260K, ...args]);
        t.is(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, new RegExp(`^ppc-gpt run: error: ${message.source}`));
        t.notRegex(r.stderr, /ppc-gpt (server|client)|listening/, "no process was started");
    }
    t.deepEqual(runDirs(), before);
});
