#!/usr/bin/env node
// ppc-gpt command line: one file per verb, each a thin layer over the library.
import {Command, CommanderError} from "commander";
import {biCommand} from "./bi.js";
import {evalCommand} from "./eval.js";
import {inspectCommand} from "./inspect.js";
import {UsageError} from "./output.js";
import {perplexityCommand} from "./perplexity.js";
import {pruneCommand} from "./prune.js";

function fail(verb: string, err: unknown): never {
    const usage = err instanceof UsageError;
    const message = err instanceof Error ? err.message : String(err);
    if (process.argv.includes("--json"))
        process.stdout.write(JSON.stringify({error: message, usage}) + "\n");
    process.stderr.write(`ppc-gpt${verb ? ` ${verb}` : ""}: error: ${message}\n`);
    if (usage)
        process.stderr.write(`Try 'ppc-gpt ${verb ? `${verb} ` : ""}--help'.\n`);
    process.exit(usage ? 2 : 1);
}

const program = new Command("ppc-gpt")
    .description("Compress large language models into private, task-specific small ones (PPC-GPT, PruFed) on llama.cpp")
    .exitOverride()
    .showHelpAfterError(false)
    .addHelpText("after", `
Exit codes: 0 done, 1 failed, 2 usage error.
Run 'ppc-gpt <command> --help' for a command's options and examples.`);

for (const cmd of [pruneCommand(), inspectCommand(), biCommand()])
    program.addCommand(cmd.exitOverride());
program.addCommand(evalCommand().exitOverride());
program.addCommand(perplexityCommand().exitOverride());

try {
    await program.parseAsync(process.argv);
} catch (err) {
    if (err instanceof CommanderError) {
        if (err.code === "commander.helpDisplayed" || err.code === "commander.version" || err.code === "commander.help")
            process.exit(0);
        process.exit(2);  // commander already printed the message
    }
    const verb = program.args[0] && !program.args[0].startsWith("-") ? program.args[0] : "";
    fail(verb, err);
}
