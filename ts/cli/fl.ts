import fs from "node:fs";
import path from "node:path";
import {Command, Option} from "commander";
import {pruningStrategies, type PruningStrategy} from "../prune/plan.js";
import {writeFileDurable, writeFileDurableSync} from "../durable-file.js";
import {roundsSvg} from "../federated/prufed/plot.js";
import {accuracyByDepth, simulate, simulationModes, type SimulateEvent, type SimulationMode} from "../federated/prufed/simulate.js";
import {aliasedOption, checkOutputFolder, checkTlsFiles, parseIndexList, parseNumber, printJson, table, UsageError} from "./output.js";
import {aggregationMethods, strategyFor, type AggregationMethod} from "../federated/prufed/aggregate.js";
import type {FlServerOptions} from "../federated/prufed/http-server.js";
import type {FlClientOptions} from "../federated/prufed/http-client.js";
import {FederatedError, readToken, serverBase} from "../federated/client/http.js";
import {addHttpLimitOptions, httpLimitsOf, startRefusingCleartext, type HttpLimitCliOptions} from "./http-limits.js";
import {prufedDefaults} from "../federated/prufed/defaults.js";
import {addTableOptions, tableOption, useDefaultSet} from "./options.js";

interface SimulateCliOptions {
    base: string;
    depths: string;
    clients: string;
    data: string;
    evalData?: string;
    rounds: string;
    seed: string;
    out: string;
    aggregation: SimulationMode;
    localSteps: string;
    strategy: PruningStrategy;
    clientsPerRound?: string;
    minClients?: string;
    heldOut: string;
    r: string;
    loraAlpha: string;
    ranks?: string;
    targetModules?: string;
    lr: string;
    batch: string;
    batchSize?: string;
    loraDropout: string;
    clipNorm?: string;
    secureAggregation?: boolean;
    secaggThreshold?: string;
    dropAfterMasking?: string;
    threads?: string;
    plot?: string;
    compare?: boolean;
    seeds?: string;
    json?: boolean;
}

const positiveInt = (x: number) => Number.isInteger(x) && x >= 1;
const int = (text: string, name: string) => parseNumber(text, name, positiveInt, "a positive integer");

/** The fl verbs' defaults are PruFed's named set, shown in --help as "(default: 16, prufedDefaults)". */
const withPrufedDefaults = (cmd: Command) => useDefaultSet(cmd, "prufedDefaults", prufedDefaults,
    {lr: "learningRate", batch: "batchSize", batchSize: "", heldOut: "heldOutShare"});

const accuracy = (x: unknown) => typeof x === "number" ? x.toFixed(3) : "-";

/**
 * One readable line per `fl server` / `fl client` event (the log without --json: on a terminal or
 * in a service's journal alike); events without a line of their own print as their JSON.
 */
export function flEventLine(e: Record<string, any>): string {
    switch (e.event) {
        case "registered":
            return e.client !== undefined
                ? `client ${e.client} registered: base layers ${e.layers.join(",")}, weight ${e.weight}`
                : `registered as ${e.id}${e.rejoined ? " (rejoined)" : ""}: base layers ${e.layers.join(",")}, ${e.train} training and ${e.held_out} held-out items`;
        case "round_started":
            return e.sampled !== undefined
                ? `round ${e.round} started: ${e.sampled.join(", ")}${e.deadline ? `, deadline ${new Date(e.deadline).toISOString()}` : ""}`
                : `round ${e.round}: training locally`;
        case "upload_accepted":
            return `round ${e.round}: upload of ${e.client} accepted (${e.bytes} bytes)`;
        case "upload_rejected":
            return `round ${e.round}: upload of ${e.client} rejected (${e.code}): ${e.error}`;
        case "round_closed":
            return `round ${e.round} closed${e.aggregated ? "" : " without aggregation"}: ` +
                (e.clients as {id: string; metrics?: {accuracy?: number}}[]).map((c) => `${c.id} acc ${accuracy(c.metrics?.accuracy)}`).join(", ") +
                (e.missing.length ? `; missing ${e.missing.join(", ")}` : "") + (e.note ? ` (${e.note})` : "") + ` -> ${e.file}`;
        case "uploaded":
        case "upload_refused":
            return `round ${e.round}: loss ${Number(e.trainLoss).toFixed(4)}, held-out acc ${accuracy(e.accuracyBefore)} -> ${accuracy(e.accuracy)}, ` +
                (e.evalSet ? `eval-data acc ${accuracy(e.evalSetBefore?.acc)} -> ${accuracy(e.evalSet.acc)} ± ${accuracy(e.evalSet.acc_stderr)}, ` : "") +
                `${e.bytesDown} bytes down, ${e.bytesUp} up${e.secure ? " (masked)" : ""}, ${Number(e.seconds).toFixed(1)} s: ` +
                (e.accepted ? "accepted" : `refused: ${e.error}`);
        case "finished":
            return `federation finished (${e.rounds ?? e.completed} rounds)`;
        default:
            return JSON.stringify(e);
    }
}

function reporter(json: boolean): (e: SimulateEvent) => void {
    const tty = process.stderr.isTTY && !json;
    return (e) => {
        if (json) {
            process.stderr.write(JSON.stringify({event: e.type, ...e}) + "\n");
            return;
        }
        if (!tty)
            return;
        if (e.type === "setup")
            process.stderr.write(`${e.clients.length} clients: ${e.clients.map((c) => `${c.id} (${c.items} items, layers ${c.layerMap.join(",")})`).join("; ")}\n`);
        else if (e.type === "client")
            process.stderr.write(`round ${e.round}: ${e.metrics.id} loss ${e.metrics.trainLoss.toFixed(4)} ` +
                `acc ${e.metrics.accuracyBefore?.toFixed(3)} -> ${e.metrics.accuracy?.toFixed(3)} (${e.metrics.seconds.toFixed(1)} s)\n`);
        else
            process.stderr.write(`round ${e.round.round} done in ${e.round.seconds.toFixed(1)} s: ` +
                e.round.evaluation.map((x) => `${x.id} ${x.accuracy.toFixed(3)}`).join(", ") + "\n");
    };
}

function simulateCommand(): Command {
    const cmd = new Command("simulate")
        .exitOverride()
        .description("run a PruFed federation in one process: clients pruned to different depths, local LoRA rounds, aggregation by base layer")
        .requiredOption("--base <model.gguf>", "full-depth base model the clients' models are cut from")
        .requiredOption("--depths <list>", "kept layers of the client models, cycled over the clients (e.g. 5,4,3)")
        .requiredOption("--clients <n>", "number of clients")
        .requiredOption("--data <items.jsonl>", "task items (task-item JSONL), split across the clients")
        .requiredOption("--out <dir>", "new folder: models/ (cut models), server/ (round files), clients/<id>/ (uploads)")
        .option("--eval-data <items.jsonl>", "one held-out set scored for every client after every round, besides its own split (the plot draws it)")
        .option("--rounds <n>", "federated rounds")
        .option("--seed <n>", "seed of the split, sampling, adapter init and local training")
        .addOption(new Option("--aggregation <method>", "layerwise (PruFed), fedavg (one depth only), flexlora (mixed ranks; --r is the global rank), local (no federation: baseline)")
            .choices([...simulationModes]).default("layerwise"))
        .addOption(tableOption("--local-steps", "fl simulate"))
        .addOption(new Option("--strategy <name>", "pruning strategy of the client models").choices(pruningStrategies.filter((s) => s !== "scores" && s !== "bi"))
            .default("top"))
        .option("--clients-per-round <m>", "clients sampled per round (seeded; default all)")
        .option("--min-clients <q>", "uploads a round needs to be aggregated (default 1)")
        .addOption(tableOption("--held-out", "fl simulate"));
    return addTableOptions(cmd, "fl simulate", "--r", "--lora-alpha", "--target-modules", "--lr", "--batch", "--batch-size", "--lora-dropout")
        .option("--ranks <list>", "flexlora: each client's own rank, cycled over the clients (alpha scales with it)")
        .option("--clip-norm <c>", "clip each client's update to this L2 norm (layerwise, fedavg)")
        .option("--secure-aggregation", "pairwise-masked aggregation (X25519 + Shamir): the server sees only per-layer sums")
        .option("--secagg-threshold <t>", "Shamir threshold of secure aggregation (default: a majority of the round's clients)")
        .addOption(new Option("--secure-threshold <t>").hideHelp())  // the old name of --secagg-threshold, still accepted
        .option("--drop-after-masking <ids>", "secure aggregation: these client ids drop out after masking every round (recovered from shares)")
        .addOption(tableOption("--threads", "fl simulate"))
        .option("--plot <rounds.svg>", "write held-out accuracy by round, one line per client depth")
        .option("--compare", "the paper's comparison: layerwise vs FedAvg with every client at each depth vs each client alone, over --seeds; "
            + "--out is a cache (rerun to resume)")
        .option("--seeds <list>", "with --compare: the seeds (e.g. 1,2,3)")
        .option("--json", "print the result as JSON (events as JSON lines on stderr)")
        .addHelpText("after", `
Clients' models are cut from the base with ts/prune (--strategy, default top) to the --depths given;
client i gets depth depths[i mod k] and the id c<i>-d<depth>. Items are shuffled (seeded) and dealt
round-robin; each client holds out --held-out of its items and measures accuracy on them as
'ppc-gpt eval' scores (the mc format local training uses: the gold choice text must score highest).
--eval-data scores one more set, the same items for every client, so depths compare on one set;
the JSON has acc, acc_norm and standard errors of both (heldOut, evalSet), the plot ± 1 stderr.
Every round: seeded sample of clients; each starts from the global adapter's part for its layers
(mapped through ppc_gpt.pruning.original_layers), trains --local-steps steps, uploads; the server
aggregates by base layer and writes <out>/server/rounds/round-N.gguf (base numbering, full depth);
each client keeps its upload as <out>/clients/<id>/round-N.gguf. Same seed, same round files.

Examples:
  ppc-gpt fl simulate --base base.gguf --depths 5,4,3 --clients 6 --data items.jsonl --rounds 8 --seed 1 --out sim --plot rounds.svg
  ppc-gpt fl simulate --base base.gguf --depths 5,4,3 --clients 6 --data items.jsonl --aggregation local --out sim-local
  ppc-gpt fl simulate --base base.gguf --depths 5 --clients 4 --data items.jsonl --aggregation fedavg --out sim-fedavg
  ppc-gpt fl simulate --base base.gguf --depths 5,3 --clients 4 --data items.jsonl --aggregation flexlora --r 8 --ranks 8,4 --out sim-flex
  ppc-gpt fl simulate --base base.gguf --depths 5,4,3 --clients 6 --data items.jsonl --secure-aggregation --drop-after-masking c5-d3 --out sim-sec
  ppc-gpt fl simulate --base base.gguf --depths 5,4,3 --clients 6 --data items.jsonl --eval-data eval.jsonl --rounds 10 \
      --compare --seeds 1,2,3 --out cmp --plot cmp.svg

--compare runs, per seed, layerwise on the mixed depths, fedavg with every client at depth D for
each D, and every client alone (local), on the same clients and items; it prints the mean final
accuracy per depth with its spread over seeds (also <out>/compare.md, compare.json) and the FL
round overhead (round time without accuracy measurement / local training time). Each simulation
is cached under <out>/stages/: a killed comparison resumes where it stopped.`)
        .action(simulateAction);
}

/** `fl simulate`: one simulation (or --compare), its plot and its table. */
async function simulateAction(opts: SimulateCliOptions, cmd: Command): Promise<void> {
    const batch = aliasedOption(cmd, "batch", "batchSize");
    const threshold = aliasedOption(cmd, "secaggThreshold", "secureThreshold");
    const depths = parseIndexList(opts.depths, "--depths", "depths");
    if (opts.seeds !== undefined && !opts.compare)
        throw new UsageError("--seeds goes with --compare (one simulation takes --seed)");
    if (opts.compare)
        return compareAction(opts, cmd, depths, int(batch.value!, batch.flag));
    if (fs.existsSync(path.join(opts.out, "server", "state.json")))
        throw new UsageError(`--out ${opts.out} already holds a simulation; give a new folder`);
    const options = simulationOptions(opts, depths, batch, threshold);
    const created = !fs.existsSync(opts.out);
    const result = await simulate(options).catch((err: unknown) => {
        removeFailedSimulation(opts.out, created);
        throw err;
    });
    if (opts.plot)
        writeRoundsPlot(opts.plot, result);
    if (opts.json) {
        printJson(result);
        return;
    }
    process.stdout.write(simulationSummary(result, opts.out));
}

/** The command line as simulate()'s options, checked before anything is written under --out. */
function simulationOptions(opts: SimulateCliOptions, depths: number[], batch: Aliased, threshold: Aliased): Parameters<typeof simulate>[0] {
    const share = parseNumber(opts.heldOut, "--held-out", (x) => x > 0 && x < 1, "in (0, 1)");
    const r = int(opts.r, "--r"), clients = int(opts.clients, "--clients");
    const ranks = opts.ranks !== undefined ? parseIndexList(opts.ranks, "--ranks", "ranks") : undefined;
    if (ranks?.some((x) => x < 1 || x > r))
        throw new UsageError(`--ranks must be integers in [1, --r = ${r}] (got ${opts.ranks})`);
    const dropAfterMasking = opts.dropAfterMasking?.split(",").map((s) => s.trim()).filter(Boolean);
    const ids = Array.from({length: clients}, (_, i) => `c${i}-d${depths[i % depths.length]}`);
    const unknown = dropAfterMasking?.filter((id) => !ids.includes(id)) ?? [];
    if (unknown.length > 0)
        throw new UsageError(`--drop-after-masking: no client ${unknown.join(", ")}; the clients are ${ids.join(", ")}`);
    checkOutputFolder(opts.plot, "--plot");
    if (opts.evalData !== undefined && !fs.existsSync(opts.evalData))
        throw new UsageError(`--eval-data ${opts.evalData} does not exist`);
    return {
        base: opts.base, depths, clients, data: opts.data, evalData: opts.evalData, rounds: int(opts.rounds, "--rounds"),
        seed: parseNumber(opts.seed, "--seed", (x) => Number.isSafeInteger(x) && x >= 0, "a non-negative integer"),
        aggregation: opts.aggregation, localSteps: int(opts.localSteps, "--local-steps"), outDir: opts.out, strategy: opts.strategy,
        clientsPerRound: opts.clientsPerRound !== undefined ? int(opts.clientsPerRound, "--clients-per-round") : undefined,
        minClients: opts.minClients !== undefined ? int(opts.minClients, "--min-clients") : undefined,
        heldOutShare: share, r, loraAlpha: parseNumber(opts.loraAlpha, "--lora-alpha", (x) => x > 0, "positive"),
        ranks,
        targetModules: opts.targetModules?.split(",").map((s) => s.trim()).filter(Boolean),
        clipNorm: opts.clipNorm !== undefined ? parseNumber(opts.clipNorm, "--clip-norm", (x) => x > 0, "positive") : undefined,
        secureAggregation: opts.secureAggregation,
        secureThreshold: threshold.value !== undefined ? int(threshold.value, threshold.flag) : undefined,
        dropAfterMasking,
        train: {
            learningRate: parseNumber(opts.lr, "--lr", (x) => x > 0, "positive"), batchSize: int(batch.value!, batch.flag),
            loraDropout: parseNumber(opts.loraDropout, "--lora-dropout", (x) => x >= 0 && x <= 0.99, "a number in [0, 0.99]"),
            ...(opts.threads !== undefined ? {threads: int(opts.threads, "--threads")} : {}),
        },
        onEvent: reporter(Boolean(opts.json)),
    };
}

type Aliased = ReturnType<typeof aliasedOption>;
type SimulationResult = Awaited<ReturnType<typeof simulate>>;

/** --plot: accuracy by round, one line per client depth (± 1 s.e.), written atomically. */
function writeRoundsPlot(file: string, result: SimulationResult): void {
    const set = result.evalSet ? "evalSet" : "heldOut";
    const series = accuracyByDepth(result, set).map((s) => ({name: `depth ${s.depth}`, values: s.values, stderr: s.stderr}));
    writeFileDurableSync(file, roundsSvg(series, `PruFed ${result.aggregation}: ${result.evalSet ? `accuracy on ${result.evalSet.items} shared items`
        : "held-out accuracy"} by round (± 1 s.e.)`));
}

/** The clients' accuracy before and after, and the mean accuracy by round per depth. */
function simulationSummary(result: SimulationResult, out: string): string {
    const last = result.rounds.at(-1);
    let s = table(["client", "depth", "items", "held-out", "accuracy r0", `accuracy r${last?.round ?? 0}`],
        result.clients.map((c) => [c.id, c.depth, c.items, c.heldOut,
            result.initial.find((x) => x.id === c.id)!.accuracy.toFixed(3),
            (last?.evaluation.find((x) => x.id === c.id)?.accuracy ?? NaN).toFixed(3)]));
    for (const d of accuracyByDepth(result))
        s += `depth ${d.depth}: mean held-out accuracy by round ${d.values.map((v) => v.toFixed(2)).join(" ")}\n`;
    if (result.evalSet)
        for (const d of accuracyByDepth(result, "evalSet"))
            s += `depth ${d.depth}: accuracy on the ${result.evalSet.items} --eval-data items by round ` +
                `${d.values.map((v, i) => `${v.toFixed(2)}±${d.stderr[i].toFixed(2)}`).join(" ")}\n`;
    return s + `${result.rounds.length} rounds (${result.aggregation}) in ${result.seconds.toFixed(1)} s; round files in ${path.join(out, "server", "rounds")}\n`;
}

/** `fl simulate --compare`: the set-ups of compare.ts over --seeds, cached under --out. */
async function compareAction(opts: SimulateCliOptions, cmd: Command, depths: number[], batchSize: number): Promise<void> {
    for (const flag of ["aggregation", "seed", "ranks", "secureAggregation", "dropAfterMasking", "secureThreshold", "clientsPerRound", "minClients"])
        if (cmd.getOptionValueSource(flag) === "cli")
            throw new UsageError(`--compare chooses the aggregations and seeds itself: drop --${flag.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
    if (opts.seeds === undefined)
        throw new UsageError("--compare needs --seeds (e.g. --seeds 1,2,3)");
    const seeds = parseIndexList(opts.seeds, "--seeds", "seeds");
    for (const [f, name] of [[opts.base, "--base"], [opts.data, "--data"], [opts.evalData, "--eval-data"]] as const)
        if (f !== undefined && !fs.existsSync(f))
            throw new UsageError(`${name} ${f} does not exist`);
    checkOutputFolder(opts.plot, "--plot");
    const json = Boolean(opts.json);
    const {compareFederations, compareTable} = await import("../federated/prufed/compare.js");
    const result = await compareFederations({
        base: opts.base, depths, clients: int(opts.clients, "--clients"), data: opts.data, evalData: opts.evalData, seeds,
        rounds: int(opts.rounds, "--rounds"), localSteps: int(opts.localSteps, "--local-steps"), outDir: opts.out, strategy: opts.strategy,
        heldOutShare: parseNumber(opts.heldOut, "--held-out", (x) => x > 0 && x < 1, "in (0, 1)"), r: int(opts.r, "--r"),
        loraAlpha: parseNumber(opts.loraAlpha, "--lora-alpha", (x) => x > 0, "positive"),
        targetModules: opts.targetModules?.split(",").map((s) => s.trim()).filter(Boolean),
        clipNorm: opts.clipNorm !== undefined ? parseNumber(opts.clipNorm, "--clip-norm", (x) => x > 0, "positive") : undefined,
        train: {
            learningRate: parseNumber(opts.lr, "--lr", (x) => x > 0, "positive"), batchSize,
            loraDropout: parseNumber(opts.loraDropout, "--lora-dropout", (x) => x >= 0 && x < 1, "in [0, 1)"),
            ...(opts.threads !== undefined ? {threads: int(opts.threads, "--threads")} : {}),
        },
        onRun: (r) => process.stderr.write(json ? JSON.stringify({event: "run", ...r}) + "\n"
            : `${r.setup} seed ${r.seed}: ${r.cached ? "cached" : "done"}\n`),
    });
    const table = compareTable(result);
    await writeFileDurable(path.join(opts.out, "compare.md"), table);
    if (opts.plot) {
        const series = result.rows.map((x) => ({name: `${x.setup === `fedavg-d${x.depth}` ? "fedavg" : x.setup} depth ${x.depth}`, values: x.byRound}));
        await writeFileDurable(opts.plot, roundsSvg(series, `PruFed comparison: ${result.scored === "evalSet" ? "shared eval set" : "held-out"} accuracy, mean of ${seeds.length} seeds`));
    }
    if (json)
        return printJson(result);
    const fresh = result.timing.filter((x) => !x.cached);
    process.stdout.write(table);
    if (fresh.length > 0)
        process.stdout.write(`FL round overhead (round time without accuracy measurement / local training): ` +
            `${Math.min(...fresh.map((x) => x.overhead)).toFixed(3)}–${Math.max(...fresh.map((x) => x.overhead)).toFixed(3)}x over ${fresh.length} runs\n`);
    process.stdout.write(`${result.runs.length} simulations (${result.runs.length - fresh.length} cached) in ${result.seconds.toFixed(1)} s; ` +
        `${path.join(opts.out, "compare.md")}\n`);
}

/**
 * A simulation cannot be continued, and a folder holding one is refused: a run that failed before
 * its first round leaves nothing behind, so the corrected command can use the same --out.
 */
function removeFailedSimulation(out: string, created: boolean): void {
    if (!created)
        return;
    const rounds = path.join(out, "server", "rounds");
    const finished = fs.existsSync(rounds) && fs.readdirSync(rounds).some((f) => /^round-([1-9]\d*)\.gguf$/.test(f));
    if (!finished)
        fs.rmSync(out, {recursive: true, force: true});
}

export function flCommand(): Command {
    return new Command("fl")
        .description("PruFed federated LoRA tuning across clients pruned to different depths")
        .addCommand(withPrufedDefaults(simulateCommand()))
        .addCommand(withPrufedDefaults(serverCommand()))
        .addCommand(withPrufedDefaults(clientCommand()))
        .addHelpText("after", `
'fl server' and 'fl client' run a federation over HTTP (tokens: ppc-gpt server token create
--data-dir D --name <client id>); 'fl simulate' runs server and clients in one process. See docs/prufed.md for the round protocol,
the aggregation rules (layerwise, fedavg, flexlora) and secure aggregation.`);
}

interface ServerCliOptions extends HttpLimitCliOptions {
    base: string; rounds: string; clientsPerRound?: string; minClients?: string; roundTimeout?: string; aggregation: AggregationMethod;
    dataDir: string; seed: string; r: string; loraAlpha: string; targetModules?: string; clipNorm?: string; maxUploadMb: string;
    host: string; port: string; tlsCert?: string; tlsKey?: string; plot?: string; json?: boolean; linger: string;
    secureAggregation?: boolean; secaggThreshold?: string; secaggPhaseTimeout?: string;
}

function serverCommand(): Command {
    return addHttpLimitOptions(new Command("server"))
        .exitOverride()
        .description("serve PruFed rounds over HTTP: clients of different depths register, train locally, upload; the server aggregates by base layer")
        .requiredOption("--base <model.gguf>", "full-depth base model the clients' models were cut from")
        .requiredOption("--data-dir <dir>", "state.json, rounds/round-N.gguf (+ .json), uploads/, store.db (tokens); an existing one is resumed")
        .option("--rounds <n>", "federated rounds")
        .option("--clients-per-round <m>", "clients sampled per round (seeded); the first round waits for this many registrations")
        .option("--min-clients <q>", "accepted uploads a round needs to be aggregated (quorum, default 1)")
        .option("--round-timeout <s>", "seconds from a round's start to its deadline; later uploads are dropped", "600")
        .addOption(new Option("--aggregation <method>", "layerwise (PruFed), fedavg (one depth only), flexlora (mixed ranks; --r is the global rank, clients keep their own)")
            .choices([...aggregationMethods]).default("layerwise"))
        .option("--seed <n>", "seed of client sampling and the initial adapter")
        .addOption(tableOption("--r", "fl server"))
        .addOption(tableOption("--lora-alpha", "fl server"))
        .addOption(tableOption("--target-modules", "fl server"))
        .option("--clip-norm <c>", "clip each client's update to this L2 norm (layerwise, fedavg)")
        .option("--max-upload-mb <n>", "largest upload (decompressed)", "256")
        .option("--secure-aggregation", "masked per-layer sums (layerwise, fedavg): the server never sees one client's update; clients follow it")
        .option("--secagg-threshold <t>", "Shamir threshold of secure rounds: survivors needed to unmask (default: a majority of the round's clients)")
        .option("--secagg-phase-timeout <s>", "seconds each secure phase after the keys may last (shares, masked input, unmasking)", "60")
        .option("--host <host>", "address to listen on", "127.0.0.1")
        .option("--port <n>", "port (0: a free one; the URL is printed)", "8080")
        .option("--tls-cert <file>", "serve HTTPS with this certificate (PEM)")
        .option("--tls-key <file>", "and this key (PEM)")
        .option("--plot <rounds.svg>", "held-out accuracy by round, one line per client depth (rewritten after every round)")
        .option("--linger <s>", "seconds to keep answering after the last round, so clients learn it is finished", "3")
        .option("--json", "events as JSON lines on stdout (the first: listening, with the URL)")
        .addHelpText("after", FL_SERVER_HELP)
        .action(flServerAction);
}

const FL_SERVER_HELP = `
Clients authenticate with tokens of this data dir; a client's id is its token's name:
  ppc-gpt server token create --data-dir fl --name hospital-a > a.token

Examples:
  ppc-gpt fl server --base base.gguf --rounds 10 --clients-per-round 3 --min-clients 2 --round-timeout 600 \\
      --aggregation layerwise --data-dir fl --port 8090 --plot rounds.svg
  ppc-gpt fl server --base base.gguf --rounds 2 --clients-per-round 3 --data-dir fl --port 0 --json
  ppc-gpt fl server --base base.gguf --rounds 10 --clients-per-round 5 --secure-aggregation --secagg-threshold 3 \\
      --round-timeout 600 --secagg-phase-timeout 60 --data-dir fl-sec --port 8090

Secure aggregation (--secure-aggregation): a round's keys phase lasts until every sampled client
has trained and sent its public keys, or until --round-timeout; then shares, masked input and
unmasking each last until all clients answered or --secagg-phase-timeout. A client that misses a
phase is dropped from the round (its masks are removed with the others' Shamir shares); each layer
is aggregated over the clients whose masked input arrived, if at least t survivors unmask. A layer
left with one surviving holder keeps its previous value (that client's self-mask seed for it is
never released) while the other layers are aggregated; round-N.json 'secure.layers' says which.
Clients need no flag: they learn it from the round (fl client --require-secure-aggregation refuses
a server without it). A data dir that exists is resumed with its saved configuration: flags that
differ from it are refused (exit 2), each difference named. See docs/prufed.md.`;

/** `fl server` and `fl client` events: JSON lines on stdout with --json, else a line each on stderr. */
function flEventPrinter(json: boolean): (e: Record<string, unknown>) => void {
    return (e) => {
        if (json)
            process.stdout.write(JSON.stringify(e) + "\n");
        else
            process.stderr.write(flEventLine(e) + "\n");
    };
}

/** The federation's settings from the command line (a resumed data dir must agree with them). */
function flServerConfigFrom(opts: ServerCliOptions): FlServerOptions["config"] {
    return {
        base: path.resolve(opts.base), aggregation: opts.aggregation, rounds: int(opts.rounds, "--rounds"),
        clientsPerRound: opts.clientsPerRound !== undefined ? int(opts.clientsPerRound, "--clients-per-round") : undefined,
        minClients: opts.minClients !== undefined ? int(opts.minClients, "--min-clients") : undefined,
        roundTimeout: parseNumber(opts.roundTimeout ?? "600", "--round-timeout", (x) => x > 0, "a positive number of seconds"),
        seed: parseNumber(opts.seed, "--seed", (x) => Number.isSafeInteger(x) && x >= 0, "a non-negative integer"),
        r: int(opts.r, "--r"), loraAlpha: parseNumber(opts.loraAlpha, "--lora-alpha", (x) => x > 0, "positive"),
        targetModules: opts.targetModules?.split(",").map((x) => x.trim()).filter(Boolean),
        clipNorm: opts.clipNorm !== undefined ? parseNumber(opts.clipNorm, "--clip-norm", (x) => x > 0, "positive") : undefined,
        maxUploadBytes: Math.floor(parseNumber(opts.maxUploadMb, "--max-upload-mb", (x) => x > 0 && x <= 4096, "in (0, 4096]") * 1024 * 1024),
        ...(opts.secureAggregation ? {secureAggregation: true,
            secaggPhaseTimeout: parseNumber(opts.secaggPhaseTimeout ?? "60", "--secagg-phase-timeout", (x) => x > 0, "a positive number of seconds"),
            ...(opts.secaggThreshold !== undefined ? {secaggThreshold: int(opts.secaggThreshold, "--secagg-threshold")} : {})} : {}),
    };
}

/** The flag checks that need no file or server: the port and secure aggregation's rules. */
function checkFlServerFlags(opts: ServerCliOptions): number {
    checkTlsFiles(opts.tlsCert, opts.tlsKey);
    if (!fs.existsSync(opts.base))
        throw new UsageError(`--base ${opts.base} does not exist`);
    const port = parseNumber(opts.port, "--port", (x) => Number.isInteger(x) && x >= 0 && x <= 65535, "an integer in [0, 65535]");
    if (opts.secaggThreshold !== undefined && !opts.secureAggregation)
        throw new UsageError("--secagg-threshold needs --secure-aggregation");
    if (opts.secaggThreshold !== undefined && !(Number.isInteger(Number(opts.secaggThreshold)) && Number(opts.secaggThreshold) >= 2))
        throw new UsageError(`--secagg-threshold must be an integer >= 2 (one share would give the server a client's mask seed; got ${opts.secaggThreshold})`);
    if (opts.secureAggregation && (!strategyFor(opts.aggregation).secureAggregation || opts.clipNorm !== undefined))
        throw new UsageError("--secure-aggregation sums per-layer factors: use it with --aggregation layerwise or fedavg and without --clip-norm");
    return port;
}

/** `fl server`: serve the rounds, then linger so that clients learn the federation finished. */
async function flServerAction(opts: ServerCliOptions): Promise<void> {
    const port = checkFlServerFlags(opts);
    const json = Boolean(opts.json);
    checkOutputFolder(opts.plot, "--plot");
    // loaded here: a client process never loads the server (Fastify)
    const {ConfigMismatch, startFlServer} = await import("../federated/prufed/http-server.js");
    const limits = httpLimitsOf(opts);
    const server = await startRefusingCleartext(() => startFlServer({
        dataDir: opts.dataDir, host: opts.host, port, plot: opts.plot, insecure: Boolean(opts.insecure), limits,
        ...(opts.tlsCert ? {tls: {cert: opts.tlsCert, key: opts.tlsKey!}} : {}),
        config: flServerConfigFrom(opts),
        onEvent: flEventPrinter(json),
    })).catch((err) => {
        // flags that contradict the data dir's saved configuration are a usage error (exit 2)
        throw err instanceof ConfigMismatch ? new UsageError(err.message) : err;
    });
    const federation = server.federation;
    if (json)
        process.stdout.write(JSON.stringify({event: "listening", url: server.url, pid: process.pid, completed: federation.completed,
            rounds: federation.config.rounds, resumed_round: federation.current?.round ?? null,
            ...(federation.config.secureAggregation ? {secure_phase: server.securePhase()} : {})}) + "\n");
    else
        process.stdout.write(`ppc-gpt fl server listening on ${server.url} (${federation.config.aggregation}, ` +
            `${federation.completed}/${federation.config.rounds} rounds done, data ${opts.dataDir})\n`);
    const stopped = new Promise<void>((resolve) => {
        process.once("SIGINT", () => resolve());
        process.once("SIGTERM", () => resolve());
    });
    await Promise.race([server.done.then(() => new Promise((r) => setTimeout(r, 1000 * Number(opts.linger)))), stopped]);
    await server.close();
    if (!json)
        process.stdout.write(`${federation.completed} rounds closed; round files in ${path.join(opts.dataDir, "rounds")}\n`);
}

interface ClientCliOptions {
    server: string; model: string; data: string; workDir: string; localSteps: string; tokenFile?: string; r: string; loraAlpha: string;
    lr: string; batch: string; batchSize?: string; loraDropout: string; maxInputLength: string; heldOut: string; evalData?: string; seed: string;
    threads?: string; json?: boolean;
    requireSecureAggregation?: boolean; secaggMinClients: string; secaggMinThreshold?: string; shareMetrics?: boolean;
    insecure?: boolean;
}

function clientCommand(): Command {
    const cmd = new Command("client")
        .exitOverride()
        .description("join an 'fl server' federation with a (pruned) model: train local LoRA rounds on private items, upload adapters")
        .requiredOption("--server <url>", "the fl server, e.g. http://127.0.0.1:8090")
        .requiredOption("--model <model.gguf>", "this client's model (pruned from the federation's base: ppc_gpt.pruning.original_layers)")
        .requiredOption("--data <items.jsonl>", "private task items; --held-out of them measure accuracy, the rest train")
        .requiredOption("--work-dir <dir>", "round-N-start.gguf (received), round-N.gguf (uploaded), round-N.done.json (metrics)")
        .option("--token-file <file>", "bearer token (first line); default: the PPC_GPT_TOKEN environment variable")
        .option("--insecure", "allow plain http:// to a server on another machine (the token and updates cross unencrypted)")
        .addOption(tableOption("--local-steps", "fl client"));
    return addTableOptions(cmd, "fl client", "--r", "--lora-alpha", "--lr", "--batch", "--batch-size", "--lora-dropout", "--max-input-length",
        "--held-out")
        .option("--eval-data <items.jsonl>", "one more held-out set (e.g. the same for every client), scored before and after every local round")
        .option("--seed <n>", "seed of the local split and training")
        .addOption(tableOption("--threads", "fl client"))
        .option("--require-secure-aggregation", "refuse a server or round without secure aggregation (exit 1, nothing uploaded)")
        .option("--secagg-min-clients <n>", "secure rounds: smallest roster this client takes part in", "3")
        .option("--secagg-min-threshold <t>", "secure rounds: a threshold to require on top of max(2, floor(n/2) + 1) (raises it, never lowers it)")
        .option("--share-metrics", "secure rounds: send train loss and accuracy in the clear too (default: only masked; the server learns weighted means)")
        .option("--json", "events as JSON lines on stdout, the result last")
        .addHelpText("after", FL_CLIENT_HELP)
        .action(flClientAction);
}

const FL_CLIENT_HELP = `
The token is never an argument: PPC_GPT_TOKEN=... or --token-file. The client's id is the token's
name. Restart the same command after a crash: it re-registers and resumes the open round.
--r must be the server's, unless the server aggregates with flexlora (each client its own rank).
Against 'fl server --secure-aggregation' it sends its update only masked (keys, sealed shares,
masked matrices, unmasking shares; docs/prufed.md); killed mid secure round, it is dropped from
that round and takes part again from the next. Before releasing anything in a secure round it
checks what the server sent (its own keys in the roster, threshold >= max(2, floor(n/2) + 1), a
roster of at least --secagg-min-clients, a survivor set of at least t that includes it, share boxes
from at least t - 1 others, one unmask answer per round) and stops with an error otherwise.

Examples:
  PPC_GPT_TOKEN=$(cat a.token) ppc-gpt fl client --server http://127.0.0.1:8090 --model depth3.gguf \\
      --data a.jsonl --work-dir a --local-steps 5 --r 8 --lora-alpha 16`;

/** The command line as runFlClient's options (all but the token and the event handler). */
function flClientOptionsFrom(opts: ClientCliOptions, batch: Aliased): Omit<FlClientOptions, "token" | "onEvent"> {
    return {
        server: opts.server, insecure: Boolean(opts.insecure), model: opts.model, data: opts.data, workDir: opts.workDir, localSteps: int(opts.localSteps, "--local-steps"),
        r: int(opts.r, "--r"), loraAlpha: parseNumber(opts.loraAlpha, "--lora-alpha", (x) => x > 0, "positive"),
        heldOutShare: parseNumber(opts.heldOut, "--held-out", (x) => x > 0 && x < 1, "in (0, 1)"), evalData: opts.evalData,
        seed: parseNumber(opts.seed, "--seed", (x) => Number.isSafeInteger(x) && x >= 0, "a non-negative integer"),
        train: {
            learningRate: parseNumber(opts.lr, "--lr", (x) => x > 0, "positive"), batchSize: int(batch.value!, batch.flag),
            loraDropout: parseNumber(opts.loraDropout, "--lora-dropout", (x) => x >= 0 && x <= 0.99, "a number in [0, 0.99]"),
            maxInputLength: int(opts.maxInputLength, "--max-input-length"),
            ...(opts.threads !== undefined ? {threads: int(opts.threads, "--threads")} : {}),
        },
        requireSecure: Boolean(opts.requireSecureAggregation),
        securePolicy: {minClients: parseNumber(opts.secaggMinClients, "--secagg-min-clients", (x) => Number.isInteger(x) && x >= 2, "an integer >= 2"),
            ...(opts.secaggMinThreshold !== undefined ? {minThreshold: parseNumber(opts.secaggMinThreshold, "--secagg-min-threshold",
                (x) => Number.isInteger(x) && x >= 2, "an integer >= 2")} : {})},
        shareMetrics: Boolean(opts.shareMetrics),
    };
}

/** The files exist and the server URL is allowed (https://, or loopback, or --insecure). */
function checkFlClientFlags(opts: ClientCliOptions): void {
    for (const [f, name] of [[opts.model, "--model"], [opts.data, "--data"], [opts.evalData, "--eval-data"]] as const)
        if (f !== undefined && !fs.existsSync(f))
            throw new UsageError(`${name} ${f} does not exist`);
    try {
        serverBase(opts.server, {insecure: opts.insecure});
    } catch (err) {
        throw err instanceof FederatedError ? new UsageError(err.message) : err;
    }
}

type FlClientResult = Awaited<ReturnType<typeof import("../federated/prufed/http-client.js").runFlClient>>;

/** One row per round: loss, accuracy before and after (and on --eval-data), traffic, time. */
function flClientRoundsTable(result: FlClientResult, evalData: boolean): string {
    const withStderr = (a?: {acc: number; acc_stderr: number}) => a ? `${a.acc.toFixed(3)}±${a.acc_stderr.toFixed(3)}` : "";
    return table(["round", "loss", "acc before", "acc after", ...(evalData ? ["eval-data before", "eval-data after"] : []),
        "bytes down", "bytes up", "s", "accepted"],
    result.rounds.map((r) => [r.round, r.trainLoss.toFixed(4), r.accuracyBefore?.toFixed(3) ?? "", r.accuracy?.toFixed(3) ?? "",
        ...(evalData ? [withStderr(r.evalSetBefore), withStderr(r.evalSet)] : []),
        r.bytesDown, r.bytesUp, r.seconds.toFixed(1), r.accepted ? "yes" : `no: ${r.error}`]));
}

/** `fl client`: take part in the federation's rounds until it finishes. */
async function flClientAction(opts: ClientCliOptions, cmd: Command): Promise<void> {
    const batch = aliasedOption(cmd, "batch", "batchSize");
    checkFlClientFlags(opts);
    const token = readToken(opts.tokenFile);
    const json = Boolean(opts.json);
    const {runFlClient} = await import("../federated/prufed/http-client.js");
    // a server that cannot be reached is retried for a minute (it may be restarting): say so instead of a silent minute
    let registered = false;
    const waiting = setTimeout(() => {
        if (!registered)
            process.stderr.write(json ? JSON.stringify({event: "waiting_for_server", server: opts.server}) + "\n"
                : `ppc-gpt fl client: no answer from ${opts.server} yet; a server that cannot be reached is retried for up to a minute\n`);
    }, 5000);
    const print = flEventPrinter(json);
    const result = await runFlClient({
        ...flClientOptionsFrom(opts, batch), token,
        onEvent: (e) => {
            registered = true;
            print(e);
        },
    }).finally(() => clearTimeout(waiting));
    if (json)
        return printJson({event: "result", ...result});
    process.stdout.write(flClientRoundsTable(result, Boolean(opts.evalData)));
}
