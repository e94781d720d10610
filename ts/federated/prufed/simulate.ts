// `fl simulate`: a whole PruFed federation in one process, through the same code the networked
// server and clients use (rounds.ts, client.ts, aggregate.ts), without HTTP. Clients' models are cut
// from the base with ts/prune, the items are split across clients (each keeps a held-out share),
// and every round is deterministic for a seed. aggregation "local" is the baseline without
// federation: each client continues from its own last adapter.
import fs from "node:fs";
import path from "node:path";
import {readTaskItems} from "../../data/jsonl.js";
import type {TaskItem} from "../../data/task-item.js";
import {readGguf} from "../../gguf/read.js";
import {planPruning, type PruningStrategy} from "../../prune/plan.js";
import {removeLayers} from "../../prune/remove.js";
import {readLoraAdapter, writeLoraAdapter, type LoraAdapter} from "../../train/adapter.js";
import {deriveSeed, Random} from "../../random.js";
import {toBaseNumbering} from "./align.js";
import {aggregationMethods, clientPart, strategyFor, type AggregationMethod} from "./aggregate.js";
import {pooledAccuracy, type AccuracySummary} from "../../eval/metrics.js";
import {heldOutAccuracy, runLocalRound, type LocalTrainSettings} from "./client.js";
import {FederationServer, type RoundSummary} from "./rounds.js";
import {secureAggregateRound, type SecureRoundReport} from "./secure.js";
import {prufedDefaults} from "./defaults.js";

export const simulationModes = [...aggregationMethods, "local"] as const;
export type SimulationMode = (typeof simulationModes)[number];

export interface SimulateOptions {
    /** Full-depth base model. */
    base: string;
    /** Depth (kept layers) of each client model, cycled over the clients. */
    depths: number[];
    clients: number;
    /** Task items (JSONL or items), split across the clients. */
    data: string | TaskItem[];
    rounds: number;
    seed: number;
    aggregation: SimulationMode;
    /** Local optimizer steps per round (E). */
    localSteps: number;
    /** Folder for models/, server/ (round files) and clients/<id>/ (uploads). */
    outDir: string;
    /** Pruning strategy the client models are cut with (default top). */
    strategy?: PruningStrategy;
    clientsPerRound?: number;
    minClients?: number;
    /** Share of each client's items held out for accuracy (default 0.25). */
    heldOutShare?: number;
    /** One held-out set (JSONL or items) scored for every client after every round, besides its own split. */
    evalData?: string | TaskItem[];
    /** LoRA rank and alpha (flexlora: the global rank; `ranks` gives the clients' own, cycled like depths). */
    r?: number;
    loraAlpha?: number;
    ranks?: number[];
    targetModules?: string[];
    clipNorm?: number;
    /** Masked aggregation (secure.ts): the server sees only per-layer weighted sums. Layerwise / fedavg. */
    secureAggregation?: boolean;
    /** Shamir threshold of secure aggregation (default: a majority of each round's clients). */
    secureThreshold?: number;
    /** Clients (by id) that drop out after masking in every round: recovered from Shamir shares. */
    dropAfterMasking?: string[];
    train?: LocalTrainSettings;
    onEvent?: (event: SimulateEvent) => void;
}

export interface ClientRoundMetrics {
    id: string;
    depth: number;
    trainLoss: number;
    accuracyBefore?: number;
    accuracy?: number;
    bytesDown: number;
    bytesUp: number;
    /** Of `seconds`: local training, and accuracy measurement. */
    trainSeconds: number;
    evalSeconds: number;
    seconds: number;
}

export interface ClientAccuracy {
    id: string;
    depth: number;
    /** acc on the client's own held-out items (heldOut.acc). */
    accuracy: number;
    /** `ppc-gpt eval`'s scoring of those items: acc, acc_norm and their standard errors. */
    heldOut: AccuracySummary;
    /** The same on the shared evaluation set (`evalData`), the same items for every client. */
    evalSet?: AccuracySummary;
}

export interface SimulatedRound {
    round: number;
    aggregated: boolean;
    sampled: string[];
    clients: ClientRoundMetrics[];
    /** After the round: every client's held-out accuracy with the adapter it would now use. */
    evaluation: ClientAccuracy[];
    file?: string;
    secure?: SecureRoundReport;
    /** Of `seconds`: the clients' local training (one after another here), and all accuracy measurement. */
    trainSeconds: number;
    evalSeconds: number;
    seconds: number;
}

export type SimulateEvent =
    | {type: "setup"; clients: {id: string; depth: number; layerMap: number[]; items: number; heldOut: number; model: string}[]}
    | {type: "client"; round: number; metrics: ClientRoundMetrics}
    | {type: "round"; round: SimulatedRound};

export interface SimulateResult {
    aggregation: SimulationMode;
    seed: number;
    clients: {id: string; depth: number; layerMap: number[]; items: number; heldOut: number; model: string}[];
    /** The shared evaluation set (`evalData`): its file (when given as one) and size. */
    evalSet?: {data?: string; items: number};
    /** Accuracy of every client before any training (the initial adapter). */
    initial: ClientAccuracy[];
    rounds: SimulatedRound[];
    seconds: number;
}

interface SimClient {
    id: string;
    depth: number;
    model: string;
    layerMap: number[];
    items: TaskItem[];
    heldOut: TaskItem[];
    r: number;
    loraAlpha: number;
    dir: string;
}

function checkOptions(o: SimulateOptions, baseLayers: number): void {
    if (!simulationModes.includes(o.aggregation))
        throw new RangeError(`aggregation must be one of ${simulationModes.join(", ")} (got ${o.aggregation})`);
    if (o.depths.length === 0 || o.depths.some((d) => !Number.isInteger(d) || d < 1 || d > baseLayers))
        throw new RangeError(`depths must be integers in [1, ${baseLayers}] (the base has ${baseLayers} layers); got ${o.depths.join(",")}`);
    if (!Number.isInteger(o.clients) || o.clients < 1)
        throw new RangeError(`clients must be a positive integer (got ${o.clients})`);
    if (!Number.isInteger(o.localSteps) || o.localSteps < 1)
        throw new RangeError(`localSteps must be a positive integer (got ${o.localSteps})`);
    const share = o.heldOutShare ?? prufedDefaults.heldOutShare;
    if (!(share > 0 && share < 1))
        throw new RangeError(`heldOutShare must be in (0, 1) (got ${share})`);
    const aggregation = strategyFor(o.aggregation);
    if (o.secureAggregation && !aggregation.secureAggregation)
        throw new RangeError(`secure aggregation sums per-layer factors: use it with layerwise or fedavg, not ${o.aggregation}`);
    if (o.dropAfterMasking?.length && !o.secureAggregation)
        throw new RangeError("dropAfterMasking simulates dropouts of secure aggregation; enable secureAggregation");
    if (aggregation.sameLayers && new Set(o.depths).size > 1)
        throw new RangeError(`${o.aggregation} is the homogeneous baseline: give one depth (got ${o.depths.join(",")}); layerwise aggregates mixed depths`);
    if (o.ranks && !aggregation.mixedRanks)
        throw new RangeError("per-client ranks need flexlora (the other methods average factors of one rank)");
}

/** Cuts one model per distinct depth from the base (strategy `top` by default); the full depth is the base itself. */
async function clientModels(base: string, depths: number[], strategy: PruningStrategy, dir: string): Promise<Map<number, string>> {
    const g = await readGguf(base);
    const out = new Map<number, string>();
    await fs.promises.mkdir(dir, {recursive: true});
    for (const depth of new Set(depths)) {
        if (depth === g.blockCount) {
            out.set(depth, base);
            continue;
        }
        const plan = await planPruning(g, {strategy, count: g.blockCount - depth});
        const file = path.join(dir, `depth-${depth}-${strategy}.gguf`);
        await removeLayers(base, file, plan.removed);
        out.set(depth, file);
    }
    return out;
}

/** Splits items across clients (seeded shuffle, round robin); each client holds out its last share. */
function splitItems(items: TaskItem[], n: number, share: number, seed: number): {items: TaskItem[]; heldOut: TaskItem[]}[] {
    const order = new Random(deriveSeed(seed, "split")).shuffle(items.map((_, i) => i));
    const parts: TaskItem[][] = Array.from({length: n}, () => []);
    order.forEach((idx, k) => parts[k % n].push(items[idx]));
    return parts.map((p, i) => {
        const held = Math.max(1, Math.round(share * p.length));
        if (p.length - held < 1)
            throw new Error(`client ${i} gets ${p.length} item(s): too few to train and hold out (use more data or fewer clients)`);
        return {items: p.slice(0, p.length - held), heldOut: p.slice(p.length - held)};
    });
}

/** A client's accuracy with an adapter, scored as `ppc-gpt eval` scores, in its training format. */
async function accuracyWith(client: SimClient, adapter: LoraAdapter, train?: LocalTrainSettings, evalItems?: TaskItem[]): Promise<ClientAccuracy> {
    const file = path.join(client.dir, "eval.gguf");
    await writeLoraAdapter(file, adapter);
    try {
        const heldOut = (await heldOutAccuracy(client.model, file, client.heldOut, train)).summary;
        const evalSet = evalItems?.length ? (await heldOutAccuracy(client.model, file, evalItems, train)).summary : undefined;
        return {id: client.id, depth: client.depth, accuracy: heldOut.acc, heldOut, ...(evalSet ? {evalSet} : {})};
    } finally {
        await fs.promises.rm(file, {force: true});
    }
}

/** Closes round `n` by secure aggregation of the sampled clients' uploads (as over HTTP, masks and all). */
async function closeSecureRound(server: FederationServer, sampled: SimClient[], uploads: Map<string, string>, n: number,
    o: Omit<Parameters<typeof secureAggregateRound>[2], "round">):
    Promise<{summary: RoundSummary; secure: SecureRoundReport}> {
    const participants = [];
    for (const c of sampled)
        participants.push({id: c.id, weight: c.items.length, layerMap: c.layerMap,
            adapter: toBaseNumbering(await readLoraAdapter(uploads.get(c.id)!), c.layerMap)});
    const res = secureAggregateRound(server.globalAdapter, participants, {
        round: n, threshold: o.threshold, dropAfterMasking: o.dropAfterMasking, method: o.method,
    });
    const r = res.report;
    // recorded as over HTTP, so recomputeRound keeps the single-holder matrices as the round did
    const summary = await server.closeRoundWith(res.adapter, res.targets, res.contributors, r.aborted, {secure: {threshold: r.threshold,
        scaleBits: r.scaleBits, roster: r.clients, dropped: r.dropped, contributors: res.contributors,
        unmasked: r.aborted ? [] : r.clients.filter((id) => !r.dropped.includes(id)), maskedTargets: r.maskedTargets, keptTargets: r.keptTargets,
        layers: r.layers, ...(r.aborted ? {aborted: r.aborted} : {})}});
    return {summary, secure: r};
}

/** PruFed in one process: every client and the server, round by round. */
export async function simulate(options: SimulateOptions): Promise<SimulateResult> {
    const started = performance.now();
    const base = await readGguf(options.base);
    checkOptions(options, base.blockCount);
    const items = typeof options.data === "string" ? await readTaskItems(options.data) : options.data;
    const evalItems = typeof options.evalData === "string" ? await readTaskItems(options.evalData) : options.evalData;
    if (evalItems && evalItems.length === 0)
        throw new RangeError(`the evaluation set${typeof options.evalData === "string" ? ` ${options.evalData}` : ""} has no items`);
    const strategy = options.strategy ?? "top";
    const r = options.r ?? prufedDefaults.r, loraAlpha = options.loraAlpha ?? prufedDefaults.loraAlpha;
    await fs.promises.mkdir(options.outDir, {recursive: true});
    const models = await clientModels(options.base, options.depths, strategy, path.join(options.outDir, "models"));
    const split = splitItems(items, options.clients, options.heldOutShare ?? prufedDefaults.heldOutShare, options.seed);
    const clients: SimClient[] = [];
    for (let i = 0; i < options.clients; i++) {
        const depth = options.depths[i % options.depths.length];
        const model = models.get(depth)!;
        const id = `c${i}-d${depth}`;
        const cr = options.ranks ? options.ranks[i % options.ranks.length] : r;
        clients.push({id, depth, model, layerMap: (await readGguf(model)).originalLayers, ...split[i], r: cr,
            loraAlpha: options.ranks ? loraAlpha * cr / r : loraAlpha, dir: path.join(options.outDir, "clients", id)});
    }
    const setup = clients.map((c) => ({id: c.id, depth: c.depth, layerMap: c.layerMap, items: c.items.length, heldOut: c.heldOut.length, model: c.model}));
    options.onEvent?.({type: "setup", clients: setup});

    const aggregation = strategyFor(options.aggregation);
    const local = !aggregation.federated;
    const method = aggregation.serverAggregation;
    const server = await FederationServer.create(path.join(options.outDir, "server"), {
        base: options.base, aggregation: method, rounds: options.rounds, clientsPerRound: options.clientsPerRound,
        minClients: options.minClients, seed: options.seed, r, loraAlpha, targetModules: options.targetModules, clipNorm: options.clipNorm,
    });
    for (const c of clients)
        await server.register({id: c.id, layerMap: c.layerMap, weight: c.items.length, r: c.r, loraAlpha: c.loraAlpha});
    // "local": each client's own adapter, starting from the same initial global part as federated runs
    const own = new Map<string, LoraAdapter>();
    const initial: ClientAccuracy[] = [];
    for (const c of clients) {
        const start = clientPart(server.globalAdapter, c.layerMap, {method, r: c.r, loraAlpha: c.loraAlpha, seed: deriveSeed(options.seed, "client-part", c.id, 0)});
        own.set(c.id, start);
        await fs.promises.mkdir(c.dir, {recursive: true});
        initial.push(await accuracyWith(c, start, options.train, evalItems));
    }

    const rounds: SimulatedRound[] = [];
    for (let n = 1; n <= options.rounds; n++) {
        const roundStarted = performance.now();
        const open = await server.startRound();
        const metrics: ClientRoundMetrics[] = [];
        const uploads = new Map<string, string>();
        for (const id of open.sampled) {
            const c = clients.find((x) => x.id === id)!;
            const start = local ? own.get(id)! : server.assignment(id);
            const res = await runLocalRound({model: c.model, items: c.items, heldOut: c.heldOut, start, round: n, workDir: c.dir,
                localSteps: options.localSteps, seed: deriveSeed(options.seed, "local", id, n), train: options.train});
            const m: ClientRoundMetrics = {id, depth: c.depth, trainLoss: res.trainLoss, accuracyBefore: res.accuracyBefore, accuracy: res.accuracy,
                bytesDown: res.bytesDown, bytesUp: res.bytesUp, trainSeconds: res.trainSeconds, evalSeconds: res.evalSeconds, seconds: res.seconds};
            metrics.push(m);
            uploads.set(id, res.upload);
            options.onEvent?.({type: "client", round: n, metrics: m});
            if (local)
                own.set(id, await readLoraAdapter(res.upload));
            else if (!options.secureAggregation)
                await server.submit(id, res.upload, {trainLoss: res.trainLoss, accuracyBefore: res.accuracyBefore, accuracy: res.accuracy,
                    bytesDown: res.bytesDown, bytesUp: res.bytesUp, seconds: res.seconds});
        }
        let summary: RoundSummary | undefined;
        let secure: SecureRoundReport | undefined;
        if (options.secureAggregation && !local) {
            ({summary, secure} = await closeSecureRound(server, open.sampled.map((id) => clients.find((x) => x.id === id)!), uploads, n,
                {threshold: options.secureThreshold, dropAfterMasking: options.dropAfterMasking, method}));
        } else {
            summary = await server.closeRound();
        }
        const evaluation: ClientAccuracy[] = [];
        const evalStarted = performance.now();
        for (const c of clients) {
            const adapter = local ? own.get(c.id)! : clientPart(server.globalAdapter, c.layerMap,
                {method, r: c.r, loraAlpha: c.loraAlpha, seed: deriveSeed(options.seed, "client-part", c.id, n + 1)});
            evaluation.push(await accuracyWith(c, adapter, options.train, evalItems));
        }
        const evalSeconds = (performance.now() - evalStarted) / 1000 + metrics.reduce((x, m) => x + m.evalSeconds, 0);
        const round: SimulatedRound = {round: n, aggregated: local ? false : summary.aggregated, sampled: open.sampled, clients: metrics, evaluation,
            ...(local ? {} : {file: summary.file}), ...(secure ? {secure} : {}), trainSeconds: metrics.reduce((x, m) => x + m.trainSeconds, 0),
            evalSeconds, seconds: (performance.now() - roundStarted) / 1000};
        rounds.push(round);
        options.onEvent?.({type: "round", round});
    }
    return {aggregation: options.aggregation, seed: options.seed, clients: setup,
        ...(evalItems ? {evalSet: {...(typeof options.evalData === "string" ? {data: options.evalData} : {}), items: evalItems.length}} : {}),
        initial, rounds, seconds: (performance.now() - started) / 1000};
}

export interface DepthSeries {
    depth: number;
    /** acc by round (round 0: before training), pooled over the depth's clients. */
    values: number[];
    /** Its standard error (the pooled items' acc_stderr). */
    stderr: number[];
}

/**
 * Accuracy per client depth, per round (round 0: before training): the series the plot draws. The
 * depth's clients are pooled as one item set (pooledAccuracy): on "heldOut" their own items, on
 * "evalSet" the shared evaluation set scored by each.
 */
export function accuracyByDepth(result: SimulateResult, set: "heldOut" | "evalSet" = "heldOut"): DepthSeries[] {
    const depths = [...new Set(result.clients.map((c) => c.depth))].sort((a, b) => b - a);
    const pooled = (xs: ClientAccuracy[], d: number) => {
        const parts = xs.filter((x) => x.depth === d).map((x) => x[set]);
        if (parts.some((p) => p === undefined))
            throw new Error(`the simulation scored no ${set === "evalSet" ? "evaluation set (evalData)" : "held-out items"}`);
        return pooledAccuracy(parts as AccuracySummary[]);
    };
    return depths.map((d) => {
        const s = [result.initial, ...result.rounds.map((r) => r.evaluation)].map((xs) => pooled(xs, d));
        return {depth: d, values: s.map((x) => x.acc), stderr: s.map((x) => x.acc_stderr)};
    });
}
