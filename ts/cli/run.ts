// `ppc-gpt run`: the whole federated flow on one machine, as two real processes on loopback: a
// `ppc-gpt server` (free port, fresh token, temporary data dir) and a `ppc-gpt client run` talking
// to it over HTTP, with a small private ARC-Easy set. Prints what went where.
import {spawn, type ChildProcess} from "node:child_process";
import readline from "node:readline";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {Command, Option} from "commander";
import {datasetNames} from "../data/loaders/index.js";
import type {RunSummary} from "../federated/client/flow.js";
import {jobStrategies, privacyMechanisms, tokenEnvVar} from "../federated/protocol.js";
import {labelDefaults, specHelp} from "./options.js";
import {formatBytes, parseNumber, printJson, table, UsageError} from "./output.js";

const mainJs = path.join(path.dirname(fileURLToPath(import.meta.url)), "main.js");
const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** PPC_SHARED_DIR, else ../shared beside the package. */
function sharedDir(): string {
    return process.env.PPC_SHARED_DIR ? path.resolve(process.env.PPC_SHARED_DIR) : path.resolve(packageRoot, "..", "shared");
}

interface RunOptions {
    model?: string;
    generatorModel?: string;
    generatorUrl?: string;
    generatorRemoteModel?: string;
    generatorConcurrency: string;
    task: string;
    split: string;
    limit: string;
    evalSplit?: string;
    evalLimit: string;
    epsilon: string;
    mechanism: string;
    ratio: string;
    quantize?: string;
    strategy?: string;
    k: string;
    serverSteps: string;
    batchSize: string;
    lr?: string;
    r?: string;
    loraAlpha?: string;
    clientSteps: string;
    clientLr?: string;
    threads?: string;
    keep?: boolean;
    json?: boolean;
}

/**
 * The numbers are passed on to the server and client processes, which check them too; checked
 * here first, a mistake is a usage error of `run` (exit 2) before any process starts.
 */
function checkRunNumbers(o: RunOptions): void {
    const positiveInt = (x: number) => Number.isInteger(x) && x >= 1;
    const positive = (x: number) => x > 0;
    const checks: [string | undefined, string, (x: number) => boolean, string][] = [
        [o.generatorConcurrency, "--generator-concurrency", positiveInt, "a positive integer"],
        [o.limit, "--limit", positiveInt, "a positive integer"],
        [o.evalLimit, "--eval-limit", positiveInt, "a positive integer"],
        [o.epsilon, "--epsilon", positive, "a number > 0"],
        [o.ratio, "--ratio", (x) => x >= 0 && x < 1, "a number in [0, 1)"],
        [o.k, "--k", positiveInt, "a positive integer"],
        [o.serverSteps, "--server-steps", positiveInt, "a positive integer"],
        [o.batchSize, "--batch-size", positiveInt, "a positive integer"],
        [o.lr, "--lr", positive, "a positive number"],
        [o.r, "--r", positiveInt, "a positive integer"],
        [o.loraAlpha, "--lora-alpha", positive, "a positive number"],
        [o.clientSteps, "--client-steps", positiveInt, "a positive integer"],
        [o.clientLr, "--client-lr", positive, "a positive number"],
        [o.threads, "--threads", (x) => positiveInt(x) && x <= 1024, "an integer in [1, 1024]"],
    ];
    for (const [value, name, ok, expect] of checks)
        if (value !== undefined)
            parseNumber(value, name, ok, expect);
}

/** Runs a CLI child to completion, returning stdout (stderr passed through line by line). */
function runChild(args: string[], env: NodeJS.ProcessEnv, onStderr: (line: string) => void, children: Set<ChildProcess>):
    Promise<string> {
    return new Promise((resolve, reject) => {
        const child = spawn(process.execPath, [mainJs, ...args], {stdio: ["ignore", "pipe", "pipe"], env});
        children.add(child);
        let out = "", err = "";
        child.stdout!.on("data", (d) => { out += d; });
        child.stderr!.on("data", (d) => { err += d; });
        readline.createInterface({input: child.stderr!}).on("line", onStderr);
        child.once("close", (code) => {
            children.delete(child);
            if (code === 0)
                return resolve(out);
            let message = `ppc-gpt ${args[0]} ${args[1] ?? ""} exited with ${code}`;
            try {
                message = JSON.parse(out.trim().split("\n").pop() ?? "").error ?? message;
            } catch {
                // not JSON
            }
            reject(new Error(`${message}${err && !out ? `\n${err.slice(-2000)}` : ""}`));
        });
    });
}

/** Starts the server child and resolves with its URL once it listens. */
function startServer(args: string[], children: Set<ChildProcess>, log: (s: string) => void): Promise<{url: string; child: ChildProcess}> {
    return new Promise((resolve, reject) => {
        const child = spawn(process.execPath, [mainJs, "server", ...args, "--port", "0", "--host", "127.0.0.1", "--json"],
            {stdio: ["ignore", "pipe", "pipe"]});
        children.add(child);
        let err = "";
        child.stderr!.on("data", (d) => { err += d; });
        readline.createInterface({input: child.stdout!}).on("line", (line) => {
            try {
                const v = JSON.parse(line);
                if (v.event === "listening")
                    resolve({url: v.url, child});
                else if (v.event)
                    log(`server: ${line}`);
            } catch {
                // a plain line
            }
        });
        child.once("exit", (code) => {
            children.delete(child);
            reject(new Error(`the server exited with ${code}: ${err.slice(-2000)}`));
        });
    });
}

/** SIGTERM, then SIGKILL after 10 s; resolves once the child exited (at once if it already has). */
export async function stopChild(child: ChildProcess): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null)
        return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(t);
}

function dirBytes(dir: string): number {
    let n = 0;
    for (const e of fs.readdirSync(dir, {withFileTypes: true})) {
        const p = path.join(dir, e.name);
        n += e.isDirectory() ? dirBytes(p) : e.isFile() ? fs.statSync(p).size : 0;
    }
    return n;
}

const RUN_HELP = `
Steps: a temporary folder; 'ppc-gpt server token create' makes a fresh token; 'ppc-gpt server
--port 0' listens on a free loopback port with the source model and the generator; 'ppc-gpt
client run' loads the private items, perturbs them locally with the server's perturbation kit,
uploads only the perturbed texts under random ids, follows the job (synthetic data, Block
Influence, pruning, CoT retraining, merge), downloads the model (sha256 checked), retrains it
on the private labels and evaluates it on held-out items before (S) and after (C). Then both
processes stop and the folder is removed (unless --keep).

Examples:
  ppc-gpt run
  ppc-gpt run --epsilon 1 --limit 32 --json
  ppc-gpt run --model source.gguf --generator-model big.gguf --k 8 --server-steps 300 --keep`;

/** The source model (--model, else stories260K of the shared folder) once the flags are checked. */
function checkRunFlags(o: RunOptions): string {
    const model = o.model ?? path.join(sharedDir(), "models", "stories260K.gguf");
    if (!fs.existsSync(model))
        throw new UsageError(`no source model at ${model}: give --model, or set PPC_SHARED_DIR to the folder holding models/stories260K.gguf`);
    if (o.generatorUrl && o.generatorModel)
        throw new UsageError("give --generator-model or --generator-url, not both");
    if (o.generatorUrl && !o.generatorRemoteModel)
        throw new UsageError("--generator-url needs --generator-remote-model");
    checkRunNumbers(o);
    return model;
}

/** The `server` child's arguments: data dir, source model, generator, threads. */
function serverArgs(o: RunOptions, model: string, srvDir: string, threads: string[]): string[] {
    const generator = o.generatorUrl ? ["--generator-url", o.generatorUrl, "--generator-remote-model", o.generatorRemoteModel!]
        : ["--generator-model", o.generatorModel ?? model];
    generator.push("--generator-concurrency", o.generatorConcurrency);
    return ["--data-dir", srvDir, "--model", model, ...generator, ...threads];
}

/** The `client run` child's arguments: the private data, the perturbation, the job spec and the client's retraining. */
function clientArgs(o: RunOptions, url: string, state: string, threads: string[]): string[] {
    const spec = [
        "--ratio", o.ratio, "--k", o.k, "--server-steps", o.serverSteps, "--batch-size", o.batchSize,
        ...(o.strategy ? ["--strategy", o.strategy] : []), ...(o.lr ? ["--lr", o.lr] : []), ...(o.r ? ["--r", o.r] : []),
        ...(o.loraAlpha ? ["--lora-alpha", o.loraAlpha] : []), ...(o.quantize ? ["--quantize", o.quantize] : []),
    ];
    return ["client", "run", "--server", url, "--task", o.task, "--split", o.split, "--limit", o.limit,
        ...(o.evalSplit ? ["--eval-split", o.evalSplit] : []), "--eval-limit", o.evalLimit, "--epsilon", o.epsilon, "--mechanism", o.mechanism, ...spec,
        "--client-steps", o.clientSteps, ...(o.clientLr ? ["--client-lr", o.clientLr] : []), "--state-dir", state, ...threads,
        ...(o.json ? ["--json"] : [])];
}

/** The temporary folder (the server's data dir and the client's state dir in it), the children and the log. */
interface RunWork {
    work: string;
    srvDir: string;
    state: string;
    children: Set<ChildProcess>;
    log: (s: string) => void;
}

/** A token, the server child, then the client child to its end; the client's stdout (its summary). */
async function runServerAndClient(o: RunOptions, model: string, w: RunWork): Promise<string> {
    const threads = o.threads ? ["--threads", o.threads] : [];
    const tokenOut = await runChild(["server", "token", "create", "--name", "run", "--data-dir", w.srvDir, "--json"],
        process.env, () => {}, w.children);
    const token = JSON.parse(tokenOut).token as string;
    const server = await startServer(serverArgs(o, model, w.srvDir, threads), w.children, w.log);
    w.log(`server ${server.url} (pid ${server.child.pid}), data ${w.srvDir}`);
    const args = clientArgs(o, server.url, w.state, threads);
    w.log(`client: ppc-gpt ${args.join(" ")}`);
    const out = await runChild(args, {...process.env, [tokenEnvVar]: token}, (line) => process.stderr.write(line + "\n"), w.children);
    // the server stops before the summary counts its data (a child left running on an error is stopped by runAction)
    await stopChild(server.child);
    return out;
}

/** The client's summary, with the server's data size and the folders' fate. */
function printRunSummary(o: RunOptions, out: string, w: RunWork): void {
    if (o.json) {
        const summary = JSON.parse(out) as RunSummary;
        return printJson({...summary, server_data_bytes: dirBytes(w.srvDir), work_dir: o.keep ? w.work : undefined});
    }
    process.stdout.write(out);
    process.stdout.write(table(["", ""], [
        ["server data", `${formatBytes(dirBytes(w.srvDir))} in ${w.srvDir} (jobs, artifacts, perturbed items only)`],
        ["folders", o.keep ? w.work : "removed (--keep keeps them)"],
    ]).split("\n").slice(2).join("\n"));
}

/** `run`: check, then a server and a client child in a temporary folder; their children stop on a signal and at the end. */
async function runAction(o: RunOptions): Promise<void> {
    const model = checkRunFlags(o);
    const work = fs.mkdtempSync(path.join(os.tmpdir(), "ppc-gpt-run-"));
    const json = Boolean(o.json);
    const w: RunWork = {
        work, srvDir: path.join(work, "server"), state: path.join(work, "client"), children: new Set<ChildProcess>(),
        log: (s: string) => process.stderr.write(json ? JSON.stringify({event: "log", message: s}) + "\n" : `ppc-gpt run: ${s}\n`),
    };
    const onSignal = () => {
        for (const c of w.children)
            c.kill("SIGTERM");
    };
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
    try {
        printRunSummary(o, await runServerAndClient(o, model, w), w);
    } finally {
        process.off("SIGINT", onSignal);
        process.off("SIGTERM", onSignal);
        for (const c of w.children)
            await stopChild(c);
        if (!o.keep)
            fs.rmSync(work, {recursive: true, force: true});
    }
}

export function runCommand(): Command {
    // a small demo's settings (stories260K, seconds per stage), not the paper's: --help names them as a set
    return labelDefaults("runDemoDefaults", new Command("run")
        .description("The whole federated PPC-GPT flow on this machine: a server process and a client process on loopback")
        .option("--model <gguf>", "source model M_S (default: stories260K from $PPC_SHARED_DIR or ../shared)")
        .option("--generator-model <gguf>", "embedded generator (default: the source model)")
        .option("--generator-url <url>", "or an OpenAI-compatible generator, e.g. http://127.0.0.1:8000/v1")
        .option("--generator-remote-model <name>", "model name for --generator-url")
        .option("--generator-concurrency <n>", "parallel sequences (embedded) or requests (remote) of the generator", "16")
        .addOption(new Option("--task <name>", "private dataset").choices(datasetNames.filter((n) => n !== "mc")).default("arc-easy"))
        .option("--split <split>", "split the private items come from", "train")
        .option("--limit <n>", "private items uploaded and retrained on", "16")
        .option("--eval-split <split>", "held-out split for the S/C evaluation, never uploaded (default: the split lm-evaluation-harness evaluates, e.g. test)")
        .option("--eval-limit <n>", "held-out items evaluated", "64")
        .option("--epsilon <e>", "ε per token", "3")
        .addOption(new Option("--mechanism <name>", "perturbation mechanism").choices([...privacyMechanisms]).default("custext"))
        .option("--ratio <r>", "share of parameters to remove", "0.3")
        .option("--quantize <type>", "quantize the delivered model on the server (q4_k_m, q8_0, ...; default none)")
        .addOption(new Option("--strategy <name>", "pruning strategy (default bi)").choices([...jobStrategies]))
        .option("--k <n>", "synthetic items per private item", "1")
        .option("--server-steps <n>", "server CoT retraining steps", "20")
        .option("--batch-size <n>", "server batch size", "8")
        .option("--lr <x>", "server learning rate (the paper uses 5e-5 on 7B models; stories260K needs about 1e-3)", "1e-3")
        .option("--r <n>", specHelp("r", "LoRA rank"))
        .option("--lora-alpha <a>", specHelp("lora_alpha", "LoRA alpha"))
        .option("--client-steps <n>", "client label-retraining steps", "20")
        .option("--client-lr <x>", "client learning rate", "1e-3")
        .option("--threads <n>", "CPU threads of each process (default: all cores)")
        .option("--keep", "keep the temporary folder (server data, client state) and print its path")
        .option("--json", "print the summary as JSON (events as JSON lines on stderr)")
        .addHelpText("after", RUN_HELP)
        .action(runAction));
}
