import fs from "node:fs";
import path from "node:path";
import {Command} from "commander";
import {jobCapDefaults, serverDefaults, startFederatedServer, type FederatedServerOptions, type GeneratorConfig} from "../federated/server.js";
import {SqliteJobStore, type JobStore} from "../federated/store.js";
import {isPostgresUrl, PostgresJobStore} from "../federated/store-postgres.js";
import {queueDefaults, type QueueSettings} from "../federated/distributed.js";
import {createToken} from "../federated/tokens.js";
import {checkGgufFile} from "./model-options.js";
import {checkTlsFiles, parseNumber, printJson, table, UsageError} from "./output.js";
import {addHttpLimitOptions, httpLimitsOf, startRefusingCleartext, type HttpLimitCliOptions} from "./http-limits.js";

/** The generator flags `server` and `worker` share (addGeneratorOptions); `generatorConfig` reads them. */
export interface GeneratorCliOptions {
    generatorModel?: string;
    generatorUrl?: string;
    generatorRemoteModel?: string;
    generatorApiKeyEnv?: string;
    generatorConcurrency?: string;
    contextSize?: string;
}

/** Declares the generator flags; the embedded model's and the URL's help say which stage uses them. */
export function addGeneratorOptions(cmd: Command, help: {model: string; url: string}): Command {
    return cmd
        .option("--generator-model <big.gguf>", help.model)
        .option("--generator-url <url>", help.url)
        .option("--generator-remote-model <name>", "model name to request from --generator-url")
        .option("--generator-api-key-env <name>", "environment variable holding the generator's API key")
        .option("--generator-concurrency <n>", "parallel sequences (embedded, default 4) or requests (remote, default 8)")
        .option("--context-size <n>", "context tokens per sequence of the embedded generator");
}

interface ServerCliOptions extends HttpLimitCliOptions, GeneratorCliOptions {
    host: string;
    port: string;
    dataDir?: string;
    model?: string;
    tlsCert?: string;
    tlsKey?: string;
    maxBodyMb: string;
    maxItems: string;
    maxConcurrentJobs: string;
    workers?: string;
    store?: string;
    heartbeatSeconds?: string;
    leaseSeconds?: string;
    threads?: string;
    checkpointEvery: string;
    synthMaxTokens?: string;
    json?: boolean;
    maxSteps: string;
    maxK: string;
    maxRank: string;
    maxBatchSize: string;
    maxSequenceLength: string;
    jobTimeBudget?: string;
    retention: string;
}

const int = (v: string, name: string, min: number) =>
    parseNumber(v, name, (x) => Number.isInteger(x) && x >= min, min === 0 ? "a non-negative integer" : `an integer >= ${min}`);

export function generatorConfig(opts: GeneratorCliOptions, threads: number | undefined): GeneratorConfig {
    if ((opts.generatorModel === undefined) === (opts.generatorUrl === undefined))
        throw new UsageError("choose the generator: --generator-model <big.gguf> or --generator-url <url> --generator-remote-model <name>");
    const concurrency = opts.generatorConcurrency === undefined ? undefined : int(opts.generatorConcurrency, "--generator-concurrency", 1);
    if (opts.generatorModel !== undefined) {
        if (opts.generatorRemoteModel !== undefined || opts.generatorApiKeyEnv !== undefined)
            throw new UsageError("--generator-remote-model and --generator-api-key-env go with --generator-url");
        return {kind: "embedded", modelPath: opts.generatorModel, sequences: concurrency ?? 4, threads,
            contextSize: opts.contextSize === undefined ? undefined : int(opts.contextSize, "--context-size", 64)};
    }
    if (!opts.generatorRemoteModel)
        throw new UsageError("--generator-url needs --generator-remote-model <name>");
    return {kind: "remote", baseUrl: opts.generatorUrl!, model: opts.generatorRemoteModel, apiKeyEnv: opts.generatorApiKeyEnv,
        concurrency: concurrency ?? 8};
}

function postgresUrl(store: string): string {
    if (!isPostgresUrl(store))
        throw new UsageError(`--store must be a postgres:// URL (got "${store}"); without --store the embedded store under --data-dir is used`);
    return store;
}

export function queueOptions(opts: {heartbeatSeconds?: string; leaseSeconds?: string}): Partial<QueueSettings> {
    const seconds = (v: string, name: string) => parseNumber(v, name, (x) => x > 0 && x <= 3600, "a number of seconds in (0, 3600]");
    const heartbeatSeconds = seconds(opts.heartbeatSeconds ?? String(queueDefaults.heartbeatSeconds), "--heartbeat-seconds");
    const leaseSeconds = seconds(opts.leaseSeconds ?? String(queueDefaults.leaseSeconds), "--lease-seconds");
    if (leaseSeconds < 2 * heartbeatSeconds)
        throw new UsageError(`--lease-seconds (${leaseSeconds}) must be at least twice --heartbeat-seconds (${heartbeatSeconds})`);
    return {heartbeatSeconds, leaseSeconds};
}

function dataDirOf(opts: {dataDir?: string}): string {
    if (!opts.dataDir)
        throw new UsageError("--data-dir <dir> is required");
    return opts.dataDir;
}

/**
 * The token verbs' store: --store postgres://… when given, else the embedded store under
 * --data-dir (which must exist unless `create`: revoke and list never create one).
 */
async function tokenStore(opts: {dataDir?: string; store?: string}, create = false): Promise<JobStore> {
    if (opts.store !== undefined) {
        if (!isPostgresUrl(opts.store))
            throw new UsageError(`--store must be a postgres:// URL (got "${opts.store}")`);
        return PostgresJobStore.open(opts.store);
    }
    if (!opts.dataDir)
        throw new UsageError("--data-dir <dir> (or --store postgres://…) is required");
    if (!create && !fs.existsSync(path.join(opts.dataDir, "store.db")))
        throw new UsageError(`${opts.dataDir} holds no server store (store.db); check --data-dir`);
    return SqliteJobStore.open(opts.dataDir);
}

function tokenCommand(): Command {
    const token = new Command("token").description("Create, revoke and list client tokens (works while the server runs)");
    token.command("create")
        .description("Create a token for a client; it is printed once and only its sha256 is stored")
        .requiredOption("--name <name>", "client name (letters, digits, . _ -)")
        .option("--data-dir <dir>", "the server's data dir")
        .option("--store <postgres-url>", "the server's PostgreSQL store instead of --data-dir")
        .option("--admin", "mark the token as an admin token (it may read GET /v1/workers)")
        .option("--json", "print {id, name, token} as JSON")
        .action(async (opts: {name: string; dataDir?: string; store?: string; admin?: boolean; json?: boolean}) => {
            const store = await tokenStore(opts, true);
            try {
                let made;
                try {
                    made = await createToken(store, opts.name, {admin: opts.admin});
                } catch (err) {
                    throw new UsageError((err as Error).message);
                }
                if (opts.json)
                    return printJson({id: made.record.id, name: made.record.name, admin: made.record.admin, token: made.token});
                process.stdout.write(made.token + "\n");
                process.stderr.write(`token ${made.record.id} for "${opts.name}" created; it is shown only now. Give it to the client as ` +
                    `PPC_GPT_TOKEN or in a --token-file.\n`);
            } finally {
                await store.close();
            }
        });
    token.command("revoke")
        .description("Revoke every live token with this name, or the token with this id")
        .argument("<name-or-id>")
        .option("--data-dir <dir>", "the server's data dir")
        .option("--store <postgres-url>", "the server's PostgreSQL store instead of --data-dir")
        .option("--json", "print the revoked tokens as JSON")
        .action(async (nameOrId: string, opts: {dataDir?: string; store?: string; json?: boolean}) => {
            const store = await tokenStore(opts);
            try {
                const revoked = await store.revokeToken(nameOrId, new Date().toISOString());
                if (revoked.length === 0)
                    throw new Error(`no live token named or with id "${nameOrId}"`);
                if (opts.json)
                    return printJson({revoked: revoked.map(({token_sha256: _h, ...r}) => r)});
                process.stdout.write(revoked.map((r) => `revoked ${r.id} (${r.name})`).join("\n") + "\n");
            } finally {
                await store.close();
            }
        });
    token.command("list")
        .description("List tokens (names, ids, dates; never the tokens)")
        .option("--data-dir <dir>", "the server's data dir")
        .option("--store <postgres-url>", "the server's PostgreSQL store instead of --data-dir")
        .option("--json", "print JSON")
        .action(async (opts: {dataDir?: string; store?: string; json?: boolean}) => {
            const store = await tokenStore(opts);
            try {
                const tokens = (await store.listTokens()).map(({token_sha256: _h, ...r}) => r);
                if (opts.json)
                    return printJson({tokens});
                process.stdout.write(table(["id", "name", "admin", "created", "revoked"],
                    tokens.map((t) => [t.id, t.name, t.admin ? "yes" : "", t.created_at, t.revoked_at ?? ""])));
            } finally {
                await store.close();
            }
        });
    return token;
}

const SERVER_HELP = `
The server holds the source model and the generator, takes jobs from clients (perturbed questions
and choices, never answers), and runs each job through synth -> bi -> prune -> train -> merge.
Every stage's output is stored (SQLite + content-addressed files under --data-dir) before the
next starts; a killed server resumes every unfinished job when started again. Clients need a
token: create one with 'ppc-gpt server token create'.

Examples:
  ppc-gpt server token create --name acme --data-dir srv        # prints the token once
  ppc-gpt server --data-dir srv --model source.gguf --generator-model big.gguf --port 8080
  ppc-gpt server --data-dir srv --model source.gguf --port 0 --json \\
      --generator-url http://127.0.0.1:8000/v1 --generator-remote-model qwen2.5-72b-instruct
  ppc-gpt server token list --data-dir srv
  ppc-gpt server token revoke acme --data-dir srv

Scale-out: jobs in PostgreSQL, stages on workers that mount the same --data-dir:
  ppc-gpt server token create --name ops --admin --store postgres://ppc@db/ppc
  ppc-gpt server --store postgres://ppc@db/ppc --data-dir /mnt/ppc --model source.gguf \\
      --generator-url http://gen:8000/v1 --generator-remote-model big
  ppc-gpt worker --store postgres://ppc@db/ppc --artifacts /mnt/ppc --model source.gguf --stages bi,prune,train,merge`;

/** The command line as startFederatedServer's options, checked before the server starts. */
async function serverOptionsFrom(opts: ServerCliOptions): Promise<FederatedServerOptions> {
    const dataDir = dataDirOf(opts);
    if (!opts.model)
        throw new UsageError("--model <source.gguf> is required");
    checkTlsFiles(opts.tlsCert, opts.tlsKey);
    const threads = opts.threads === undefined ? undefined : int(opts.threads, "--threads", 1);
    const port = parseNumber(opts.port, "--port", (x) => Number.isInteger(x) && x >= 0 && x <= 65535, "an integer in [0, 65535]");
    const maxBodyMb = parseNumber(opts.maxBodyMb, "--max-body-mb", (x) => x > 0 && x <= 4096, "a number in (0, 4096]");
    const generator = generatorConfig(opts, threads);
    if (opts.generatorModel !== undefined)
        await checkGgufFile(opts.generatorModel, "--generator-model");
    const limits = httpLimitsOf(opts);
    const jobCaps = {maxSteps: int(opts.maxSteps, "--max-steps", 1), maxK: int(opts.maxK, "--max-k", 1), maxRank: int(opts.maxRank, "--max-rank", 1),
        maxBatchSize: int(opts.maxBatchSize, "--max-batch-size", 1), maxSequenceLength: int(opts.maxSequenceLength, "--max-sequence-length", 2)};
    const positive = (v: string, name: string, what: string) => parseNumber(v, name, (x) => x > 0, `a positive number of ${what}`);
    return {
        dataDir, model: opts.model, generator, host: opts.host, port, insecure: Boolean(opts.insecure), limits, jobCaps,
        retentionSeconds: positive(opts.retention, "--retention", "days") * 86400,
        ...(opts.jobTimeBudget !== undefined ? {jobTimeBudgetSeconds: positive(opts.jobTimeBudget, "--job-time-budget", "seconds")} : {}),
        ...(opts.tlsCert ? {tls: {cert: opts.tlsCert, key: opts.tlsKey!}} : {}),
        maxBodyBytes: Math.floor(maxBodyMb * 1024 * 1024), maxItemsPerJob: int(opts.maxItems, "--max-items", 1),
        maxConcurrentJobsPerClient: int(opts.maxConcurrentJobs, "--max-concurrent-jobs", 1),
        workers: opts.workers === undefined ? undefined : int(opts.workers, "--workers", opts.store === undefined ? 1 : 0),
        ...(opts.store !== undefined ? {store: postgresUrl(opts.store), queue: queueOptions(opts)} : {}),
        threads, checkpointEvery: int(opts.checkpointEvery, "--checkpoint-every", 1),
        synthMaxTokens: opts.synthMaxTokens === undefined ? undefined : int(opts.synthMaxTokens, "--synth-max-tokens", 16),
    };
}

/** Resolves on the first SIGINT or SIGTERM. */
function untilStopSignal(): Promise<void> {
    return new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once("SIGINT", stop);
        process.once("SIGTERM", stop);
    });
}

/** `server`: start, say where it listens, serve until a signal. */
async function serverAction(opts: ServerCliOptions): Promise<void> {
    const options = await serverOptionsFrom(opts);
    const server = await startRefusingCleartext(() => startFederatedServer(options));
    if (opts.json)
        process.stdout.write(JSON.stringify({event: "listening", url: server.url, pid: process.pid, model: server.info.model,
            perturbation_kit: server.info.perturbation_kit}) + "\n");
    else
        process.stdout.write(`ppc-gpt server listening on ${server.url} (source ${server.info.model.name}, ` +
            `generator ${server.info.generator.name}, data ${options.dataDir})\n`);
    await untilStopSignal();
    // unfinished jobs stay resumable: they continue when the server starts again
    await server.close();
}

export function serverCommand(): Command {
    const cmd = new Command("server").enablePositionalOptions()
        .description("Run the PPC-GPT server: perturbed items in, a pruned and distilled model out (HTTP API /v1, docs/federated.md)")
        .option("--host <host>", "address to listen on", serverDefaults.host)
        .option("--port <n>", "port to listen on (0: a free one; the URL is printed)", String(serverDefaults.port))
        .option("--data-dir <dir>", "job store, artifacts and work files (created if missing)")
        .option("--model <source.gguf>", "the source model M_S that jobs prune and distill");
    addGeneratorOptions(cmd, {
        model: "generate synthetic data with this local GGUF (embedded llama.cpp)",
        url: "or with an OpenAI-compatible server (vLLM, llama-server…), e.g. http://127.0.0.1:8000/v1",
    })
        .option("--tls-cert <file>", "serve HTTPS with this PEM certificate (with --tls-key)")
        .option("--tls-key <file>", "PEM private key of --tls-cert")
        .option("--max-body-mb <n>", "largest request body in MiB, after gzip decompression", String(serverDefaults.maxBodyBytes / (1024 * 1024)))
        .option("--max-items <n>", "most items per job", String(serverDefaults.maxItemsPerJob))
        .option("--max-concurrent-jobs <n>", "most queued or running jobs per client", String(serverDefaults.maxConcurrentJobsPerClient))
        .option("--workers <n>", `jobs run at once (default ${serverDefaults.workers}; with --store postgres://…: stages run in this process, default 0)`)
        .option("--store <postgres-url>", "keep jobs in PostgreSQL and run stages on 'ppc-gpt worker' processes (docs/federated.md, Scale-out)")
        .option("--heartbeat-seconds <s>", "with --store: seconds between worker heartbeats", String(queueDefaults.heartbeatSeconds))
        .option("--lease-seconds <s>", "with --store: a worker silent this long is dead; its stage goes to another", String(queueDefaults.leaseSeconds))
        .option("--threads <n>", "CPU threads of generation, scoring and training (default: all cores)")
        .option("--checkpoint-every <n>", "training checkpoint interval in steps (a kill loses at most this many)", String(serverDefaults.checkpointEvery))
        .option("--synth-max-tokens <n>", "token limit of every generator reply (default 1024 for questions and answers, 512 for rationales)")
        .option("--max-steps <n>", "most server_steps a job spec may ask (422 spec_over_limit)", String(jobCapDefaults.maxSteps))
        .option("--max-k <n>", "most synthetic items per perturbed item (spec k)", String(jobCapDefaults.maxK))
        .option("--max-rank <n>", "largest LoRA rank (spec r)", String(jobCapDefaults.maxRank))
        .option("--max-batch-size <n>", "largest spec batch_size", String(jobCapDefaults.maxBatchSize))
        .option("--max-sequence-length <n>", "largest spec max_input_length + max_target_length", String(jobCapDefaults.maxSequenceLength))
        .option("--job-time-budget <s>", "a job running longer than this (from its first stage, across restarts) fails (default: no budget)")
        .option("--retention <days>", "finished jobs and their models are erased this many days after they finished",
            String(serverDefaults.retentionSeconds / 86400))
        .option("--json", "print the listening URL as a JSON line");
    addHttpLimitOptions(cmd)
        .addHelpText("after", SERVER_HELP)
        .action(serverAction);
    cmd.addCommand(tokenCommand());
    return cmd;
}
