// `fl simulate --compare`: the PruFed paper's comparison in one command. For every seed, three
// set-ups on the same clients (the split depends only on the seed and the number of clients):
//   layerwise  - the heterogeneous federation (client i at depth depths[i mod k]), PruFed's aggregation;
//   fedavg-dD  - homogeneous FedAvg: every client at depth D, for each D of the depths;
//   alone      - each client trains alone ("local"), at its heterogeneous depth.
// Each depth is then scored on the same clients in the three set-ups (those that have depth D in
// the heterogeneous federation), on the shared --eval-data set when given, else on their own
// held-out items. Every simulation is a cached stage (ts/experiment/cache.ts), so a killed
// comparison resumes with the runs it had finished.
import path from "node:path";
import {fileIdentity, StageCache, writeJsonAtomic} from "../../experiment/cache.js";
import {mean, pooledAccuracy, sampleStddev, type AccuracySummary} from "../../eval/metrics.js";
import {simulate, type ClientAccuracy, type SimulateEvent, type SimulateOptions, type SimulateResult} from "./simulate.js";

export interface CompareOptions extends Omit<SimulateOptions, "aggregation" | "seed" | "outDir" | "onEvent" | "data" | "evalData" | "depths"> {
    depths: number[];
    data: string;
    evalData?: string;
    seeds: number[];
    /** Cache root: stages/<run>-<hash>/ per simulation, compare.json and compare.md. */
    outDir: string;
    onRun?: (run: {setup: string; seed: number; cached: boolean}) => void;
    onEvent?: (setup: string, seed: number, event: SimulateEvent) => void;
}

/** A set-up's accuracy at one depth: by round (mean over seeds) and final, per seed. */
export interface DepthComparison {
    depth: number;
    setup: string;
    /** Final-round accuracy (pooled over the depth's clients) of each seed, in seed order. */
    final: number[];
    /** Its standard error within each seed (pooled items). */
    finalStderr: number[];
    mean: number;
    /** Sample standard deviation of the final accuracy over seeds (NaN for one seed). */
    sd: number;
    min: number;
    max: number;
    /** Accuracy by round (round 0: before training), mean over seeds. */
    byRound: number[];
}

export interface CompareResult {
    seeds: number[];
    depths: number[];
    /** What was scored: the shared --eval-data set, or each client's held-out items. */
    scored: "evalSet" | "heldOut";
    rows: DepthComparison[];
    /**
     * Per run, means over its rounds: a round's seconds without accuracy measurement, the clients'
     * local training alone in it, and their ratio (the FL round overhead; 1 = federation costs nothing).
     */
    timing: {setup: string; seed: number; roundSeconds: number; trainSecondsPerRound: number; overhead: number; cached: boolean}[];
    runs: {setup: string; seed: number; dir: string}[];
    seconds: number;
}

function setups(depths: number[]): {name: string; aggregation: SimulateOptions["aggregation"]; depths: number[]}[] {
    const distinct = [...new Set(depths)].sort((a, b) => b - a);
    return [{name: "layerwise", aggregation: "layerwise", depths},
        ...distinct.map((d) => ({name: `fedavg-d${d}`, aggregation: "fedavg" as const, depths: [d]})),
        {name: "alone", aggregation: "local", depths}];
}

/** Accuracy of the clients with the given indices after each round (round 0 first), pooled. */
function series(result: SimulateResult, indices: number[], scored: "evalSet" | "heldOut"): AccuracySummary[] {
    const ids = indices.map((i) => result.clients[i].id);
    const pick = (xs: ClientAccuracy[]) => pooledAccuracy(ids.map((id) => xs.find((x) => x.id === id)![scored]!));
    return [result.initial, ...result.rounds.map((r) => r.evaluation)].map(pick);
}

/** The PruFed paper's comparison over seeds: layerwise on mixed depths vs FedAvg at each depth vs each client alone (cached, resumable). */
export async function compareFederations(o: CompareOptions): Promise<CompareResult> {
    const started = performance.now();
    if (o.seeds.length === 0)
        throw new RangeError("compare needs at least one seed");
    const cache = new StageCache(o.outDir);
    const scored = o.evalData ? "evalSet" : "heldOut";
    const {seeds, onRun, onEvent, outDir: _, data, evalData, ...common} = o;
    const key = {...common, base: fileIdentity(o.base), data: fileIdentity(data), evalData: evalData && fileIdentity(evalData),
        train: o.train};
    const runs: {setup: string; seed: number; dir: string; result: SimulateResult; cached: boolean}[] = [];
    for (const seed of seeds)
        for (const s of setups(o.depths)) {
            const before = cache.reused;
            const r = await cache.stage("simulate", {...key, seed, aggregation: s.aggregation, depths: s.depths}, (dir) =>
                simulate({...common, depths: s.depths, data, evalData, seed, aggregation: s.aggregation, outDir: path.join(dir, "sim"),
                    onEvent: onEvent && ((e) => onEvent(s.name, seed, e))}));
            const cached = cache.reused > before;
            onRun?.({setup: s.name, seed, cached});
            const {dir, ...result} = r;
            runs.push({setup: s.name, seed, dir, result: result as SimulateResult, cached});
        }
    const rows: DepthComparison[] = [];
    for (const depth of [...new Set(o.depths)].sort((a, b) => b - a)) {
        // the clients that have this depth in the heterogeneous federation
        const indices = Array.from({length: o.clients}, (_, i) => i).filter((i) => o.depths[i % o.depths.length] === depth);
        for (const setup of ["layerwise", `fedavg-d${depth}`, "alone"]) {
            const per = seeds.map((seed) => series(runs.find((r) => r.setup === setup && r.seed === seed)!.result, indices, scored));
            const final = per.map((s) => s.at(-1)!.acc);
            rows.push({depth, setup, final, finalStderr: per.map((s) => s.at(-1)!.acc_stderr), mean: mean(final), sd: sampleStddev(final),
                min: Math.min(...final), max: Math.max(...final), byRound: per[0].map((_, k) => mean(per.map((s) => s[k].acc)))});
        }
    }
    const timing = runs.map((r) => {
        const rounds = r.result.rounds;
        const trainSecondsPerRound = mean(rounds.map((x) => x.trainSeconds));
        const roundSeconds = mean(rounds.map((x) => x.seconds - x.evalSeconds));
        return {setup: r.setup, seed: r.seed, roundSeconds, trainSecondsPerRound, overhead: roundSeconds / trainSecondsPerRound, cached: r.cached};
    });
    const result: CompareResult = {seeds, depths: o.depths, scored, rows, timing,
        runs: runs.map((r) => ({setup: r.setup, seed: r.seed, dir: r.dir})), seconds: (performance.now() - started) / 1000};
    writeJsonAtomic(path.join(o.outDir, "compare.json"), result);
    return result;
}

/** The table of mean final accuracy per depth and set-up, with its spread over seeds (Markdown). */
export function compareTable(r: CompareResult): string {
    const f = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : "–");
    const head = `| depth | set-up | mean final acc (${r.seeds.length} seeds) | sd over seeds | min–max | per seed (${r.seeds.join(", ")}) |`;
    const lines = [head, "|---|---|---|---|---|---|",
        ...r.rows.map((x) => `| ${x.depth} | ${x.setup} | ${f(x.mean)} | ${f(x.sd)} | ${f(x.min)}–${f(x.max)} | ` +
            `${x.final.map((v, i) => `${f(v)} ± ${f(x.finalStderr[i])}`).join(", ")} |`)];
    return lines.join("\n") + "\n";
}
