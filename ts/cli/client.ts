// `ppc-gpt client`: the enterprise side of federated PPC-GPT (docs/federated.md).
import path from "node:path";
import {Command, Option} from "commander";
import {datasetNames, type DatasetName} from "../data/loaders/index.js";
import {loadPrivateData, type PrivateDataOptions} from "../federated/client/data.js";
import {finishModel, type FinishReport} from "../federated/client/finish.js";
import {ClientFlow, fetchModel, waitForJob, type ClientEvent, type ClientSettings, type RunSummary} from "../federated/client/flow.js";
import {FederatedClient, FederatedError, readToken, type TrafficCounters} from "../federated/client/http.js";
import {jobQuantizeTypes, jobSpecSchema, jobStrategies, privacyMechanisms, tokenEnvVar, type JobSpec, type JobStatus, type PrivacyMechanism} from "../federated/protocol.js";
import {specHelp, tableOption, type SpecDefaultField} from "./options.js";
import {formatBytes, parseNumber, printJson, progressReporter, table, UsageError} from "./output.js";

type Opts = Record<string, string | boolean | undefined>;

/** Job-spec flags: one per field, ranges read from the protocol's schema. */
const specFlags: {flag: string; field: keyof JobSpec; help: string}[] = [
    {flag: "--ratio <r>", field: "ratio", help: "share of parameters to remove, 0 <= r < 1"},
    {flag: "--k <n>", field: "k", help: "synthetic items per perturbed item"},
    {flag: "--server-steps <n>", field: "server_steps", help: "server CoT retraining steps"},
    {flag: "--batch-size <n>", field: "batch_size", help: "server training batch size"},
    {flag: "--lr <x>", field: "learning_rate", help: "server learning rate"},
    {flag: "--r <n>", field: "r", help: "LoRA rank (server and client)"},
    {flag: "--lora-alpha <a>", field: "lora_alpha", help: "LoRA alpha (server and client)"},
    {flag: "--lora-dropout <p>", field: "lora_dropout", help: "LoRA dropout (server and client)"},
    {flag: "--rationale-weight <λ>", field: "rationale_weight", help: "weight of the rationale loss"},
    {flag: "--max-input-length <n>", field: "max_input_length", help: "prompt tokens kept per example"},
    {flag: "--max-target-length <n>", field: "max_target_length", help: "target tokens kept per example"},
    {flag: "--seed <n>", field: "seed", help: "seed of the server's job (synthesis, training)"},
];

const camel = (flag: string) => flag.replace(/^--/, "").split(" ")[0].replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

function addServerOptions(cmd: Command): Command {
    return cmd
        .option("--server <url>", "server URL, e.g. http://127.0.0.1:8080 (https:// for TLS; NODE_EXTRA_CA_CERTS=ca.pem trusts a private CA)")
        .option("--token-file <file>", `file whose first line is the bearer token (default: $${tokenEnvVar})`)
        .addOption(new Option("--token <token>").hideHelp())
        .option("--insecure", "allow plain http:// to a server on another machine (the token and items cross unencrypted)")
        .option("--json", "print JSON (progress and events as JSON lines on stderr)");
}

function addDataOptions(cmd: Command): Command {
    return cmd
        .option("--data <file>", "private data: task-item JSONL, or a dataset file in its original format with --task")
        .option("--task <name>", `a dataset the loaders know: ${datasetNames.join(", ")}`)
        .option("--split <split>", "split of --task read as private data (default train)")
        .option("--limit <n>", "only the first N private items")
        .option("--eval-data <file>", "held-out items for the S/C evaluation (never uploaded)")
        .option("--eval-split <split>", "held-out split of --task (default: the split lm-evaluation-harness evaluates, e.g. test)")
        .option("--holdout <share>", "hold out this share of --data (by id) for evaluation when no other held-out set is given (default 0.2)")
        .option("--eval-limit <n>", "at most N held-out items (default 200)");
}

function addPerturbOptions(cmd: Command): Command {
    return cmd
        .option("--epsilon <e>", "ε per token of the DP perturbation", "3")
        .addOption(new Option("--mechanism <name>", "perturbation mechanism").choices([...privacyMechanisms]).default("custext"))
        .option("--embeddings <gguf>", "perturb with this local GGUF (model or kit) instead of the server's perturbation kit")
        .option("--custext-k <n>", "custext cluster size K (default 20)")
        .option("--perturb-seed <n>", "reproducible perturbation noise, ids and order (tests and audits only)");
}

/** The spec fields that shape the client's own label retraining (`client finish` takes only these). */
const clientTrainingFields: readonly (keyof JobSpec)[] = ["r", "lora_alpha", "lora_dropout", "max_input_length", "max_target_length"];

function addClientSpecOptions(cmd: Command): Command {
    for (const f of specFlags.filter((x) => clientTrainingFields.includes(x.field)))
        cmd.option(f.flag, specHelp(f.field as SpecDefaultField, f.help));
    return cmd.option("--target-modules <list>", "projections to adapt, e.g. attn_q,attn_v");
}

function addSpecOptions(cmd: Command): Command {
    for (const f of specFlags)
        cmd.option(f.flag, specHelp(f.field as SpecDefaultField, f.help));
    return cmd
        .addOption(new Option("--strategy <name>", "pruning strategy").choices([...jobStrategies]))
        .addOption(new Option("--quantize <type>", "quantize the delivered model on the server (task importance matrix); default none")
            .choices(["none", ...jobQuantizeTypes]))
        .option("--no-rationales", "label loss only on the server (no CoT rationales)")
        .option("--no-server-retraining", "skip the server's train + merge: receive the pruned model")
        .option("--target-modules <list>", "projections to adapt, e.g. attn_q,attn_v");
}

function addClientTrainOptions(cmd: Command): Command {
    return cmd
        .option("--client-steps <n>", "client label-retraining steps (default 30)")
        .option("--client-lr <x>", "client learning rate (default 1e-3)")
        .option("--client-batch-size <n>", "client batch size (default min(8, items))")
        .option("--threads <n>", "CPU threads for perturbation, training and evaluation (default: all cores)")
        .option("--gpu-layers <n>", "layers offloaded to the GPU in a CUDA build (default 0)");
}

function num(v: unknown, name: string, ok: (x: number) => boolean, expect: string): number | undefined {
    return v === undefined ? undefined : parseNumber(String(v), name, ok, expect);
}

const positiveInt = (x: number) => Number.isInteger(x) && x >= 1;

function specFrom(o: Opts): JobSpec {
    const spec: Record<string, unknown> = {};
    for (const f of specFlags) {
        const v = o[camel(f.flag)];
        if (v === undefined)
            continue;
        const s = jobSpecSchema.properties[f.field] as {type: string; minimum?: number; maximum?: number; exclusiveMinimum?: number;
            exclusiveMaximum?: number};
        const lo = s.minimum ?? s.exclusiveMinimum, hi = s.maximum ?? s.exclusiveMaximum;
        const ok = (x: number) => (s.type !== "integer" || Number.isInteger(x)) &&
            (s.minimum === undefined || x >= s.minimum) && (s.exclusiveMinimum === undefined || x > s.exclusiveMinimum) &&
            (s.maximum === undefined || x <= s.maximum) && (s.exclusiveMaximum === undefined || x < s.exclusiveMaximum);
        spec[f.field] = parseNumber(String(v), f.flag.split(" ")[0], ok,
            `${s.type === "integer" ? "an integer" : "a number"} in ${s.exclusiveMinimum !== undefined ? "(" : "["}${lo}, ${hi}${s.exclusiveMaximum !== undefined ? ")" : "]"}`);
    }
    if (o.strategy !== undefined)
        spec.strategy = o.strategy;
    if (o.quantize !== undefined)
        spec.quantize = o.quantize;
    if (o.rationales === false)
        spec.rationales = false;
    if (o.serverRetraining === false)
        spec.server_retraining = false;
    if (typeof o.targetModules === "string")
        spec.target_modules = o.targetModules.split(",").map((s) => s.trim()).filter(Boolean);
    return spec as JobSpec;
}

function dataFrom(o: Opts): PrivateDataOptions {
    if (o.task !== undefined && !(datasetNames as readonly string[]).includes(String(o.task)))
        throw new UsageError(`--task: unknown dataset "${o.task}"; known: ${datasetNames.join(", ")}`);
    if (o.data === undefined && o.task === undefined)
        throw new UsageError("give the private data: --data FILE or --task NAME [--split S]");
    if (o.split !== undefined && o.data !== undefined)
        throw new UsageError("--split picks a split of --task's shared files; with --data the file is the split");
    if (o.evalData !== undefined && o.evalSplit !== undefined)
        throw new UsageError("give --eval-data or --eval-split, not both");
    if (o.holdout !== undefined && (o.evalData !== undefined || o.evalSplit !== undefined))
        throw new UsageError("--holdout splits --data; it does not go with --eval-data or --eval-split");
    return {
        data: o.data as string | undefined, task: o.task as DatasetName | undefined, split: o.split as string | undefined,
        limit: num(o.limit, "--limit", positiveInt, "a positive integer"),
        evalData: o.evalData as string | undefined, evalSplit: o.evalSplit as string | undefined,
        holdout: num(o.holdout, "--holdout", (x) => x > 0 && x < 1, "a number in (0, 1)"),
        evalLimit: num(o.evalLimit, "--eval-limit", positiveInt, "a positive integer"),
    };
}

function threadsFrom(o: Opts): {threads?: number; gpuLayers?: number} {
    return {
        threads: num(o.threads, "--threads", (x) => positiveInt(x) && x <= 1024, "an integer in [1, 1024]"),
        gpuLayers: num(o.gpuLayers, "--gpu-layers", (x) => Number.isInteger(x) && x >= 0, "a non-negative integer"),
    };
}

function settingsFrom(o: Opts): ClientSettings {
    const t = threadsFrom(o);
    return {
        data: dataFrom(o),
        perturb: {
            mechanism: o.mechanism as PrivacyMechanism,
            epsilon: num(o.epsilon, "--epsilon", (x) => x > 0, "a number > 0")!,
            embeddings: o.embeddings as string | undefined,
            custextK: num(o.custextK, "--custext-k", (x) => positiveInt(x) && x <= 65536, "an integer in [1, 65536]"),
            seed: num(o.perturbSeed, "--perturb-seed", (x) => Number.isSafeInteger(x) && x >= 0, "a non-negative integer"),
        },
        spec: specFrom(o),
        finish: {
            steps: num(o.clientSteps, "--client-steps", positiveInt, "a positive integer"),
            learningRate: num(o.clientLr, "--client-lr", (x) => x > 0 && x <= 10, "a positive number"),
            batchSize: num(o.clientBatchSize, "--client-batch-size", positiveInt, "a positive integer"),
        },
        stateDir: path.resolve(String(o.stateDir ?? "ppc-gpt-client")),
        ...t,
    };
}

function connect(o: Opts, traffic?: TrafficCounters): FederatedClient {
    if (o.token !== undefined)
        throw new UsageError(`never put a token on the command line (other users see it in ps): set ${tokenEnvVar} or use --token-file`);
    if (typeof o.server !== "string")
        throw new UsageError("--server <url> is required");
    let token: string;
    try {
        token = readToken(o.tokenFile as string | undefined);
    } catch (err) {
        throw new UsageError((err as Error).message);
    }
    return clientFor(o, token, traffic);
}

/** The client of --server; http:// to another machine without --insecure is a usage error. */
function clientFor(o: Opts, token: string, traffic?: TrafficCounters): FederatedClient {
    try {
        return new FederatedClient({server: String(o.server), token, traffic, insecure: Boolean(o.insecure)});
    } catch (err) {
        throw err instanceof FederatedError ? new UsageError(err.message) : err;
    }
}

/** Prints client events: progress bars and status lines on a TTY, JSON lines on stderr with --json. */
function eventPrinter(json: boolean): (e: ClientEvent) => void {
    const bars = new Map<string, ReturnType<typeof progressReporter>>();
    const say = (s: string) => process.stderr.write(`ppc-gpt client: ${s}\n`);
    return (e) => {
        if (json) {
            if (e.event !== "train" || e.train.type !== "step" || e.train.step % 5 === 0 || e.train.step === e.train.steps)
                process.stderr.write(JSON.stringify(e.event === "train" ? {event: "progress", stage: "client-train", ...e.train} : e) + "\n");
            return;
        }
        switch (e.event) {
            case "progress": {
                let bar = bars.get(e.stage);
                if (!bar) {
                    bar = progressReporter({json}, e.stage, e.unit === "bytes" ? "bytes" : "items");
                    bars.set(e.stage, bar);
                }
                bar.update(e.done, e.total);
                if (e.done >= e.total && e.total > 0) {
                    bar.finish();
                    bars.delete(e.stage);
                }
                return;
            }
            case "info":
                return say(`server ${e.server}: model ${e.model.name} (${e.model.layers} layers, ${e.model.parameters.toLocaleString("en-US")} parameters), ` +
                    `generator ${e.generator.kind} ${e.generator.name}`);
            case "kit":
                return say(`perturbation kit ${e.sha256.slice(0, 16)} (${formatBytes(e.size)}${e.cached ? ", cached" : ""})`);
            case "perturbed":
                return say(`perturbed ${e.items} items locally (ε ${e.epsilonPerToken} per token; per record mean ${e.epsilonPerRecord.mean.toFixed(1)}, ` +
                    `max ${e.epsilonPerRecord.max}); ${e.heldOut} held-out items stay local` +
                    (e.clipped > 0 ? `; ${e.clipped} perturbed texts cut to the upload's field limits` : ""));
            case "submitted":
                return say(`job ${e.job} ${e.resumed ? "(same job as before)" : "submitted"}: ${formatBytes(e.bytes)} of perturbed text`);
            case "status":
                return say(`job ${e.job}: ${e.status}${e.stage ? ` (${e.stage})` : ""}`);
            case "downloaded":
                return say(`model ${e.path}: ${formatBytes(e.size)}, sha256 ${e.sha256.slice(0, 16)} verified` +
                    `${e.resumedFrom ? `, resumed at ${formatBytes(e.resumedFrom)}` : ""}`);
            case "train":
                if (e.train.type === "step") {
                    const key = "client train";
                    let bar = bars.get(key);
                    if (!bar) {
                        bar = progressReporter({json}, key, "items");
                        bars.set(key, bar);
                    }
                    bar.update(e.train.step, e.train.steps);
                    if (e.train.step >= e.train.steps) {
                        bar.finish();
                        bars.delete(key);
                    }
                }
                return;
            case "finished":
                return;
        }
    };
}

function statusRows(s: JobStatus): (string | number)[][] {
    const rows: (string | number)[][] = [
        ["job", s.id], ["status", s.status + (s.stage ? ` (${s.stage})` : "")], ["items", s.items],
        ["created", s.created_at], ["updated", s.updated_at],
    ];
    if (s.progress)
        rows.push(["progress", `${s.progress.stage} ${s.progress.done}/${s.progress.total}`]);
    for (const st of s.stages)
        rows.push([`  ${st.name}`, `${st.status}${st.seconds !== null ? ` ${st.seconds.toFixed(1)} s` : ""}`]);
    if (s.synth)
        rows.push(["synthetic", `${s.synth.accepted} accepted, ${s.synth.rejected} rejected`]);
    const plan = s.plan as {layersBefore?: number; layersAfter?: number; originalRemoved?: number[]} | null;
    if (plan?.layersBefore !== undefined)
        rows.push(["layers", `${plan.layersBefore} -> ${plan.layersAfter} (removed ${plan.originalRemoved?.join(", ")})`]);
    if (s.model)
        rows.push(["model", `${formatBytes(s.model.size)}, ${s.model.layers} layers, sha256 ${s.model.sha256}`]);
    if (s.error)
        rows.push(["error", s.error]);
    return rows;
}

const kv = (rows: (string | number)[][]) => table(["", ""], rows).split("\n").slice(2).join("\n");

function pct(x: number, se: number): string {
    return `${(100 * x).toFixed(1)}%${Number.isFinite(se) ? ` ± ${(100 * se).toFixed(1)}` : ""}`;
}

function finishRows(r: FinishReport): (string | number)[][] {
    return [
        ["S accuracy (as received)", `${pct(r.S.acc, r.S.acc_stderr)} (acc_norm ${pct(r.S.acc_norm, r.S.acc_norm_stderr)}) on ${r.S.items} held-out items`],
        ["C accuracy (retrained)", `${pct(r.C.acc, r.C.acc_stderr)} (acc_norm ${pct(r.C.acc_norm, r.C.acc_norm_stderr)})`],
        ["client retraining", `${r.training.steps} steps on ${r.training.items} private items, loss ${r.training.trainLoss.toFixed(4)}, ${r.training.seconds.toFixed(1)} s`],
        ["client adapter", r.adapter],
    ];
}

function quantizationRows(q: RunSummary["quantization"]): string[][] {
    if (!q)
        return [];
    return [["quantized", `${q.type} with a task importance matrix (${q.imatrix_entries} tensors) on the server: ` +
        `${formatBytes(q.size_before)} -> ${formatBytes(q.size_after)} (${(100 * q.size_after / q.size_before).toFixed(1)}%)`]];
}

export function runSummaryRows(s: RunSummary): (string | number)[][] {
    const p = s.privacy, st = s.job_status;
    return [
        ["server", s.server],
        ["job", `${s.job} ${st.status} (${st.stages.map((x) => `${x.name} ${x.status}${x.seconds !== null ? ` ${x.seconds.toFixed(1)}s` : ""}`).join(", ")})`],
        ["client -> server", `${formatBytes(s.traffic.sent_bytes)} of request bodies: ${s.upload.items} perturbed items ` +
            `(${formatBytes(s.upload.bytes)} gzip), random ids only; no answers, no original ids`],
        ["server -> client", `${formatBytes(s.traffic.received_bytes)} in ${s.traffic.requests} responses (kit, status, events, model)`],
        ["stayed local", `answers, original ids, ${s.held_out_items} held-out items, id map ${p.id_map}, privacy report ${p.report}`],
        ["ε spent", `${p.mechanism} ε = ${p.epsilon_per_token} per token; per record min ${p.epsilon_per_record.min}, ` +
            `mean ${p.epsilon_per_record.mean.toFixed(1)}, max ${p.epsilon_per_record.max}; dataset total ${p.epsilon_total}`],
        ["synthetic data", st.synth ? `${st.synth.accepted} items accepted, ${st.synth.rejected} rejected (server side, from the perturbed items)` : "n/a"],
        ["layers", s.layers ? `${s.layers.before} -> ${s.layers.after} (removed ${s.layers.removed.join(", ") || "none"})` : "n/a"],
        ...quantizationRows(s.quantization),
        ["model received", `${s.model.path} (${formatBytes(s.model.size)}, sha256 ${s.model.sha256.slice(0, 16)}… verified)`],
        ...finishRows(s.finish),
    ];
}

async function withSignal<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const controller = new AbortController();
    const onSignal = () => controller.abort(new Error("interrupted"));
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
    try {
        return await fn(controller.signal);
    } finally {
        process.off("SIGINT", onSignal);
        process.off("SIGTERM", onSignal);
    }
}

const stateDirOption = (cmd: Command) => cmd.option("--state-dir <dir>", "local state folder of this run (id map, privacy report, job id, model); default ./ppc-gpt-client");

export function clientCommand(): Command {
    const cmd = new Command("client")
        .description("Federated PPC-GPT, client side: perturb private data locally, submit, wait, fetch the model, retrain and evaluate")
        .addHelpText("after", `
The token comes from $${tokenEnvVar} or --token-file, never from the command line.
What leaves the client: perturbed question and choice texts under fresh random ids, and the job
settings. Answer keys, original ids, held-out items, the id map and the privacy report stay in
--state-dir.

Examples:
  export ${tokenEnvVar}=ppc_...                      # from: ppc-gpt server token create --name acme
  ppc-gpt client run --server http://127.0.0.1:8080 --task arc-easy --limit 64 --epsilon 3 --state-dir acme-run
  ppc-gpt client submit --server URL --data private.jsonl --epsilon 3 --mechanism custext --ratio 0.3 --k 8
  ppc-gpt client wait job_abc --server URL
  ppc-gpt client fetch job_abc --server URL -o model.gguf
  ppc-gpt client finish --model model.gguf --data private.jsonl -o client-lora.gguf`);

    cmd.addCommand(clientInfoCommand());
    cmd.addCommand(clientSubmitCommand());
    cmd.addCommand(clientStatusCommand());
    cmd.addCommand(clientJobsCommand());
    cmd.addCommand(clientCancelCommand());
    cmd.addCommand(clientWaitCommand());
    cmd.addCommand(clientFetchCommand());
    cmd.addCommand(clientFinishCommand());
    cmd.addCommand(clientRunCommand());
    return cmd;
}

/** `client info`: the server's public parameters. */
function clientInfoCommand(): Command {
    return addServerOptions(new Command("info"))
        .description("the server's public parameters (no token needed)")
        .addHelpText("after", `\nExamples:\n  ppc-gpt client info --server http://127.0.0.1:8080\n  ppc-gpt client info --server https://models.example:8443 --json`)
        .action(async (o: Opts) => {
            if (typeof o.server !== "string")
                throw new UsageError("--server <url> is required");
            const info = await clientFor(o, "").info();
            if (o.json)
                return printJson(info);
            process.stdout.write(kv([
                ["protocol", info.protocol], ["model", `${info.model.name} (${info.model.architecture}, ${info.model.layers} layers, ` +
                    `${info.model.parameters.toLocaleString("en-US")} parameters, sha256 ${info.model.sha256.slice(0, 16)}…)`],
                ["generator", `${info.generator.kind} ${info.generator.name}`],
                ["privacy", `${info.privacy.mechanisms.join(", ")}, ε in [${info.privacy.epsilon.min}, ${info.privacy.epsilon.max}]`],
                ["limits", `${formatBytes(info.limits.max_body_bytes)} per body, ${info.limits.max_items_per_job} items per job, ` +
                    `${info.limits.max_concurrent_jobs_per_client} concurrent jobs`],
                ["perturbation kit", `${formatBytes(info.perturbation_kit.size)}, sha256 ${info.perturbation_kit.sha256.slice(0, 16)}…`],
                ["defaults", JSON.stringify(info.job_spec_defaults)],
            ]));
        });
}

/** `client submit`: perturb locally and submit a job. */
function clientSubmitCommand(): Command {
    return stateDirOption(addSpecOptions(addPerturbOptions(addDataOptions(addServerOptions(new Command("submit"))))))
        .description("perturb private data locally and submit a job (prints the job id)")
        .addHelpText("after", `\nExamples (the token in $${tokenEnvVar} or --token-file):\n  ppc-gpt client submit --server URL --data private.jsonl --epsilon 3 --mechanism custext --ratio 0.3 --k 8 --state-dir acme\n  ppc-gpt client submit --server URL --task arc-easy --limit 500 --epsilon 3 --state-dir acme-arc    # ARC's own files`)
        .option("--threads <n>", "CPU threads for perturbation (default: all cores)")
        .action(async (o: Opts) => {
            const settings = settingsFrom(o);
            const flow = new ClientFlow(connect(o), settings, eventPrinter(Boolean(o.json)));
            const job = await flow.submit();
            if (o.json)
                return printJson({job, state_dir: settings.stateDir, perturbed: flow.state.perturbed, submitted_bytes: flow.state.submitted_bytes});
            process.stdout.write(`${job}\n`);
        });
}

/** `client status`: one job's status. */
function clientStatusCommand(): Command {
    return addServerOptions(new Command("status")).argument("<job>", "job id")
        .description("a job's status, stages, pruning plan and model")
        .addHelpText("after", `\nExamples (the token in $${tokenEnvVar} or --token-file):\n  ppc-gpt client status job_abc --server URL\n  ppc-gpt client status job_abc --server URL --json`)
        .action(async (job: string, o: Opts) => {
            const s = await connect(o).status(job);
            if (o.json)
                return printJson(s);
            process.stdout.write(kv(statusRows(s)));
        });
}

/** `client jobs`: this client's jobs. */
function clientJobsCommand(): Command {
    return addServerOptions(new Command("jobs"))
        .description("this client's jobs")
        .addHelpText("after", `\nExamples (the token in $${tokenEnvVar} or --token-file):\n  ppc-gpt client jobs --server URL`)
        .action(async (o: Opts) => {
            const jobs = await connect(o).jobs();
            if (o.json)
                return printJson({jobs});
            process.stdout.write(table(["job", "status", "stage", "items", "created"], jobs.map((j) => [j.id, j.status, j.stage ?? "", j.items, j.created_at])));
        });
}

/** `client cancel`: cancel and erase a job. */
function clientCancelCommand(): Command {
    return addServerOptions(new Command("cancel")).argument("<job>", "job id")
        .description("cancel a job and erase everything the server stored of it")
        .addHelpText("after", `\nExamples (the token in $${tokenEnvVar} or --token-file):\n  ppc-gpt client cancel job_abc --server URL`)
        .action(async (job: string, o: Opts) => {
            await connect(o).cancel(job);
            if (o.json)
                return printJson({job, cancelled: true});
            process.stdout.write(`${job} cancelled and erased\n`);
        });
}

/** `client wait`: follow a job to its end. */
function clientWaitCommand(): Command {
    return addServerOptions(new Command("wait")).argument("<job>", "job id")
        .description("follow a job to its end (server-sent events, reconnecting; polling as a fallback); exit 1 unless it succeeded")
        .addHelpText("after", `\nExamples (the token in $${tokenEnvVar} or --token-file):\n  ppc-gpt client wait job_abc --server URL            # progress bar on a terminal\n  ppc-gpt client wait job_abc --server URL --json     # events as JSON lines on stderr`)
        .action(async (job: string, o: Opts) => {
            const s = await withSignal((signal) => waitForJob(connect(o), job, eventPrinter(Boolean(o.json)), signal));
            if (o.json)
                printJson(s);
            else
                process.stdout.write(kv(statusRows(s)));
            if (s.status !== "succeeded")
                process.exitCode = 1;
        });
}

/** `client fetch`: download a job's model. */
function clientFetchCommand(): Command {
    return addServerOptions(new Command("fetch")).argument("<job>", "job id")
        .description("download a succeeded job's model (resumes an interrupted download; sha256 verified; atomic)")
        .addHelpText("after", `\nExamples (the token in $${tokenEnvVar} or --token-file):\n  ppc-gpt client fetch job_abc --server URL -o model.gguf`)
        .option("-o, --output <file>", "where the model goes")
        .action(async (job: string, o: Opts) => {
            if (typeof o.output !== "string")
                throw new UsageError("-o/--output <model.gguf> is required");
            const client = connect(o);
            const s = await client.status(job);
            const r = await withSignal((signal) => fetchModel(client, s, String(o.output), eventPrinter(Boolean(o.json)), signal));
            if (o.json)
                return printJson(r);
            process.stdout.write(kv([["model", r.path], ["size", formatBytes(r.size)], ["sha256", `${r.sha256} (verified)`],
                ["resumed at", r.resumedFrom ? formatBytes(r.resumedFrom) : "-"]]));
        });
}

/** `client finish`: retrain and evaluate locally. */
function clientFinishCommand(): Command {
    return addClientTrainOptions(addClientSpecOptions(addDataOptions(new Command("finish"))))
        .description("label-retrain the received model on the private data and evaluate it on the held-out items (S and C)")
        .addHelpText("after", `\nExamples:\n  ppc-gpt client finish --model model.gguf --data private.jsonl -o client-lora.gguf\n  ppc-gpt client finish --model model.gguf --task arc-easy --limit 500 -o client-lora.gguf --client-steps 50`)
        .option("--model <gguf>", "the model received from the server")
        .option("-o, --output <adapter.gguf>", "the client LoRA adapter to write")
        .addOption(tableOption("--json", "client finish"))
        .action(async (o: Opts) => {
            if (typeof o.model !== "string" || typeof o.output !== "string")
                throw new UsageError("--model <gguf> and -o/--output <adapter.gguf> are required");
            const settings = settingsFrom({...o, mechanism: "custext", epsilon: "3"});
            const data = await loadPrivateData(settings.data);
            const spec = settings.spec;
            const emit = eventPrinter(Boolean(o.json));
            const r = await withSignal((signal) => finishModel({
                model: String(o.model), train: data.train, heldOut: data.heldOut, evalTask: data.evalTask, output: String(o.output),
                steps: settings.finish.steps, learningRate: settings.finish.learningRate, batchSize: settings.finish.batchSize,
                r: spec.r, loraAlpha: spec.lora_alpha, loraDropout: spec.lora_dropout, targetModules: spec.target_modules,
                maxInputLength: spec.max_input_length, maxTargetLength: spec.max_target_length,
                threads: settings.threads, gpuLayers: settings.gpuLayers,
                onTrain: (e) => emit({event: "train", train: e}),
                onEval: (stage, done, total) => emit({event: "progress", stage: `eval ${stage}`, done, total}),
                signal,
            }));
            if (o.json)
                return printJson(r);
            process.stdout.write(kv(finishRows(r)));
        });
}

/** `client run`: submit, wait, fetch and finish, resumable. */
function clientRunCommand(): Command {
    return stateDirOption(addClientTrainOptions(addSpecOptions(addPerturbOptions(addDataOptions(addServerOptions(new Command("run")))))))
        .description("submit, wait, fetch and finish in one go; killed at any point and re-run with the same arguments, it continues the same job")
        .addHelpText("after", `\nExamples (the token in $${tokenEnvVar} or --token-file):\n  ppc-gpt client run --server URL --task arc-easy --limit 500 --epsilon 3 --state-dir acme-arc\n  ppc-gpt client run --server URL --data private.jsonl --holdout 0.2 --epsilon 3 --k 8 --server-steps 300 --state-dir acme --json`)
        .action(async (o: Opts) => {
            const settings = settingsFrom(o);
            const flow = new ClientFlow(connect(o), settings, eventPrinter(Boolean(o.json)));
            const summary = await withSignal((signal) => flow.run(signal));
            if (o.json)
                return printJson(summary);
            process.stdout.write(kv(runSummaryRows(summary)));
        });
}
