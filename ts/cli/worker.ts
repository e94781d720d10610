import {Command} from "commander";
import {queueDefaults} from "../federated/distributed.js";
import {stageNames, type StageName} from "../federated/protocol.js";
import {isPostgresUrl, redactUrl} from "../federated/store-postgres.js";
import {startWorker, type RunningWorker, type WorkerOptions} from "../federated/worker.js";
import {checkGgufFile} from "./model-options.js";
import {parseNumber, UsageError} from "./output.js";
import {addGeneratorOptions, generatorConfig, queueOptions, type GeneratorCliOptions} from "./server.js";

interface WorkerCliOptions extends GeneratorCliOptions {
    store?: string;
    artifacts?: string;
    model?: string;
    stages: string;
    concurrency: string;
    threads?: string;
    checkpointEvery: string;
    synthMaxTokens?: string;
    heartbeatSeconds: string;
    leaseSeconds: string;
    drainSeconds: string;
    storeWaitSeconds: string;
    json?: boolean;
}

const int = (v: string, name: string, min: number) =>
    parseNumber(v, name, (x) => Number.isInteger(x) && x >= min, min === 0 ? "a non-negative integer" : `an integer >= ${min}`);

const seconds = (v: string, name: string) => parseNumber(v, name, (x) => x >= 0 && x <= 86400, "a number of seconds in [0, 86400]");

function parseStages(v: string): StageName[] {
    const list = v.split(",").map((s) => s.trim()).filter(Boolean);
    const bad = list.filter((s) => !(stageNames as readonly string[]).includes(s));
    if (list.length === 0 || bad.length > 0)
        throw new UsageError(`--stages: ${bad.length ? `unknown stage(s) ${bad.join(", ")}` : "empty"}; choose among ${stageNames.join(",")}`);
    return [...new Set(list)] as StageName[];
}

const WORKER_HELP = `
A worker claims stages (synth, bi, prune, train, merge) of any job from the queue in PostgreSQL,
keeps a lease on them with a heartbeat, and writes each stage's output to the shared directory
before marking it done. A worker killed mid-stage loses its lease after --lease-seconds and
another worker resumes the job from its last finished stage (training from its last checkpoint).
SIGTERM drains: no new stages; the running ones finish within --drain-seconds or are handed back.

Examples:
  ppc-gpt worker --store postgres://ppc@db/ppc --artifacts /mnt/ppc --model source.gguf \\
      --generator-url http://gen:8000/v1 --generator-remote-model big          # every stage
  ppc-gpt worker --store postgres://ppc@db/ppc --artifacts /mnt/ppc --model source.gguf \\
      --stages bi,prune,train,merge --concurrency 2                             # a GPU machine`;

/** The command line as startWorker's options, checked before the worker connects. */
async function workerOptionsFrom(opts: WorkerCliOptions): Promise<WorkerOptions> {
    if (!opts.store || !isPostgresUrl(opts.store))
        throw new UsageError("--store postgres://… is required (the server's PostgreSQL store)");
    if (!opts.artifacts)
        throw new UsageError("--artifacts <dir> is required (the directory every machine mounts)");
    if (!opts.model)
        throw new UsageError("--model <source.gguf> is required");
    const stages = parseStages(opts.stages);
    const threads = opts.threads === undefined ? undefined : int(opts.threads, "--threads", 1);
    const wantsGenerator = opts.generatorModel !== undefined || opts.generatorUrl !== undefined;
    if (stages.includes("synth") && !wantsGenerator)
        throw new UsageError("the synth stage needs a generator: --generator-url <url> --generator-remote-model <name>, or --generator-model " +
            "<big.gguf>; or leave synth out of --stages");
    if (opts.generatorModel !== undefined)
        await checkGgufFile(opts.generatorModel, "--generator-model");
    const storeWaitSeconds = seconds(opts.storeWaitSeconds, "--store-wait-seconds");
    return {
        store: opts.store, artifacts: opts.artifacts, model: opts.model, stages,
        generator: wantsGenerator ? generatorConfig(opts, threads) : undefined,
        concurrency: int(opts.concurrency, "--concurrency", 1), threads, checkpointEvery: int(opts.checkpointEvery, "--checkpoint-every", 1),
        synthMaxTokens: opts.synthMaxTokens === undefined ? undefined : int(opts.synthMaxTokens, "--synth-max-tokens", 16),
        queue: queueOptions(opts), storeWaitMs: storeWaitSeconds * 1000,
    };
}

/** Starts the worker; after 3 s without a start it says on stderr what it waits for. */
async function startWorkerSaying(options: WorkerOptions, json: boolean): Promise<RunningWorker> {
    // a store that is down is waited for (a worker may start before its database), and a large model takes a while
    // to hash: a start that takes long says what it waits for instead of hanging silently
    const storeWaitSeconds = options.storeWaitMs! / 1000;
    const waiting = setTimeout(() => process.stderr.write(json
        ? JSON.stringify({event: "starting", store: redactUrl(options.store), store_wait_seconds: storeWaitSeconds}) + "\n"
        : `ppc-gpt worker: starting: connecting to ${redactUrl(options.store)} (a store that cannot be reached is retried for up to ` +
          `${storeWaitSeconds} s, --store-wait-seconds), then hashing the model and loading the generator\n`), 3000);
    return await startWorker(options).finally(() => clearTimeout(waiting));
}

/** Until a signal: the first drains within drainMs, a second hands back at once. */
function drainOnSignals(running: RunningWorker, drainMs: number): Promise<void> {
    return new Promise<void>((resolve) => {
        let signals = 0;
        const stop = () => {
            signals++;
            // a second signal: hand back at once
            void running.drain(signals > 1 ? 0 : drainMs).then(resolve);
            if (signals > 1)
                void running.worker.drain(0);
        };
        process.on("SIGINT", stop);
        process.on("SIGTERM", stop);
    });
}

/** `worker`: start, print each stage event, drain on a signal. */
async function workerAction(opts: WorkerCliOptions): Promise<void> {
    const options = await workerOptionsFrom(opts);
    const running = await startWorkerSaying(options, Boolean(opts.json));
    const w = running.worker;
    // one line per stage event: JSON lines with --json, else a human line on stderr
    w.on("stage", (e) => {
        if (opts.json)
            process.stdout.write(JSON.stringify({...e, worker: w.id}) + "\n");
        else
            process.stderr.write(`${new Date().toISOString()} ${e.event} ${e.stage} of ${e.job_id}` +
                `${e.event === "claimed" ? "" : ` after ${e.seconds.toFixed(1)} s`}${e.error ? `: ${e.error}` : ""}\n`);
    });
    if (opts.json)
        process.stdout.write(JSON.stringify({event: "started", id: w.id, pid: process.pid, stages: w.stages, concurrency: w.concurrency}) + "\n");
    else
        process.stdout.write(`ppc-gpt worker ${w.id} takes ${w.stages.join(",")} (x${w.concurrency}) from ${redactUrl(options.store)}\n`);
    await drainOnSignals(running, seconds(opts.drainSeconds, "--drain-seconds") * 1000);
    if (opts.json)
        process.stdout.write(JSON.stringify({event: "stopped", id: w.id}) + "\n");
}

export function workerCommand(): Command {
    const cmd = new Command("worker")
        .description("Claim and run stages of the server's jobs from a PostgreSQL store (scale-out; docs/federated.md)")
        .option("--store <postgres-url>", "the server's store (the same URL as its --store)")
        .option("--artifacts <dir>", "the directory every machine mounts: the server's --data-dir")
        .option("--model <source.gguf>", "the source model M_S (the server's file, or a copy with the same sha256)")
        .option("--stages <list>", "stages this worker takes, e.g. bi,prune,train for a GPU machine", stageNames.join(","))
        .option("--concurrency <n>", "stages run at once", "1");
    return addGeneratorOptions(cmd, {model: "for the synth stage: generate with this local GGUF", url: "for the synth stage: an OpenAI-compatible server"})
        .option("--threads <n>", "CPU threads of generation, scoring and training (default: all cores)")
        .option("--checkpoint-every <n>", "training checkpoint interval in steps (a dead worker's successor loses at most this many)", "50")
        .option("--synth-max-tokens <n>", "token limit of every generator reply (as the server's option)")
        .option("--heartbeat-seconds <s>", "seconds between heartbeats", String(queueDefaults.heartbeatSeconds))
        .option("--lease-seconds <s>", "a worker silent this long is dead and its stage goes to another", String(queueDefaults.leaseSeconds))
        .option("--drain-seconds <s>", "on SIGTERM, wait this long for running stages before handing them back", "60")
        .option("--store-wait-seconds <s>", "how long to wait for a database that went away before giving a stage back", "600")
        .option("--json", "JSON lines on stdout: started, each stage claimed/done/failed/handed-back, stopped")
        .addHelpText("after", WORKER_HELP)
        .action(workerAction);
}
