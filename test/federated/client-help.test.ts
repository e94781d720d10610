// Every `ppc-gpt client` subcommand's --help ends with examples of that subcommand.
import test from "ava";
import {runCli} from "../helpers.js";

test("client <subcommand> --help teaches with examples", async (t) => {
    for (const sub of ["info", "submit", "status", "jobs", "cancel", "wait", "fetch", "finish", "run"]) {
        const r = await runCli(["client", sub, "--help"]);
        t.is(r.code, 0, r.stderr);
        t.regex(r.stdout, new RegExp(`\\nExamples[^\\n]*:\\n {2}ppc-gpt client ${sub} `), sub);
    }
});
