#!/usr/bin/env node
// ppc-gpt command line: one file per verb, each a thin layer over the library.
import {Command, CommanderError} from "commander";
import {UsageError} from "./output.js";

// Verbs are imported only when used: `ppc-gpt prune` never loads the generation or training stacks.
const verbs: Record<string, () => Promise<Command>> = {
    inspect: async () => (await import("./inspect.js")).inspectCommand(),
    prune: async () => (await import("./prune.js")).pruneCommand(),
    quantize: async () => (await import("./quantize.js")).quantizeCommand(),
    bi: async () => (await import("./bi.js")).biCommand(),
    eval: async () => (await import("./eval.js")).evalCommand(),
    perplexity: async () => (await import("./perplexity.js")).perplexityCommand(),
    perturb: async () => (await import("./perturb.js")).perturbCommand(),
    synth: async () => (await import("./synth.js")).synthCommand(),
    train: async () => (await import("./train.js")).trainCommand(),
    merge: async () => (await import("./merge.js")).mergeCommand(),
    server: async () => (await import("./server.js")).serverCommand(),
    client: async () => (await import("./client.js")).clientCommand(),
    run: async () => (await import("./run.js")).runCommand(),
    worker: async () => (await import("./worker.js")).workerCommand(),
    experiment: async () => (await import("./experiment.js")).experimentCommand(),
    fl: async () => (await import("./fl.js")).flCommand(),
    build: async () => (await import("./build.js")).buildCommand(),
    doctor: async () => (await import("./doctor.js")).doctorCommand(),
};

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

// `ppc-gpt inspect model.gguf | head`: a reader that goes away ends the output, not in a stack trace.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE")
        process.exit(0);
    throw err;
});

// Warnings (ppc-gpt's own, e.g. PPC_GPT_NO_GPU, and any dependency's) read as the CLI's other
// messages do, and as JSON lines with --json, whose stderr carries JSON events; not as Node's
// "(node:PID) Warning: …" followed by a hint about --trace-warnings.
process.removeAllListeners("warning");
process.on("warning", (w: Error & {code?: string}) => {
    process.stderr.write(process.argv.includes("--json") ? JSON.stringify({event: "warning", code: w.code, message: w.message}) + "\n"
        : `ppc-gpt: warning: ${w.message}\n`);
});

const program = new Command("ppc-gpt")
    .description("Compress large language models into private, task-specific small ones (PPC-GPT, PruFed) on llama.cpp")
    .exitOverride()
    .enablePositionalOptions()  // \`server --data-dir D\` and \`server token create --data-dir D\` each get their own
    .showHelpAfterError(false)
    .addHelpText("after", `
Exit codes: 0 done, 1 failed, 2 usage error.
Run 'ppc-gpt <command> --help' for a command's options and examples.`);

/** Commander errors throw instead of exiting, at every depth (`client status`, `server token create`), so usage errors exit 2. */
function throwOnCommanderErrors(cmd: Command): Command {
    cmd.exitOverride();
    for (const sub of cmd.commands)
        throwOnCommanderErrors(sub);
    return cmd;
}

const requested = process.argv[2];
for (const name of requested !== undefined && requested in verbs ? [requested] : Object.keys(verbs))
    program.addCommand(throwOnCommanderErrors(await verbs[name]()));

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
