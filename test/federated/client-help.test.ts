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

test("client finish takes the options of the client's own retraining, not the server job's", async (t) => {
    const help = (await runCli(["client", "finish", "--help"])).stdout;
    for (const flag of ["--r <n>", "--lora-alpha", "--lora-dropout", "--target-modules", "--max-input-length", "--client-steps"])
        t.true(help.includes(flag), flag);
    for (const flag of ["--ratio", "--k <n>", "--server-steps", "--strategy", "--no-rationales", "--no-server-retraining", "--rationale-weight"])
        t.false(help.includes(flag), flag);
    const r = await runCli(["client", "finish", "--ratio", "0.3", "--model", "m.gguf", "-o", "a.gguf"]);
    t.is(r.code, 2, r.stderr);
    t.regex(r.stderr, /unknown option '--ratio'/);
    // usage errors of nested subcommands exit 2 like every verb's
    const token = await runCli(["server", "token", "create", "--data-dir", "d"]);
    t.is(token.code, 2, token.stderr);
    t.regex(token.stderr, /required option '--name <name>' not specified/);
});
