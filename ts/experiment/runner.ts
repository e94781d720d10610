// `ppc-gpt experiment`: expands a config into cells (method × task × seed in the main setting, and
// PPC-GPT with one factor varied at a time for the ablations), runs each cell's flow unless its
// result is cached, and writes the tables. Cells are keyed by a hash of everything they depend on;
// results are JSON files written atomically, so a killed run resumes where it stopped.
import fs from "node:fs";
import path from "node:path";
import {promptFormatVersion} from "../data/prompt.js";
import {hashKey, readJson, writeJsonAtomic} from "./cache.js";
import {checkConfig, type ExperimentConfig, type MethodName, type Settings} from "./config.js";
import {flows, type Cell, type FlowResult} from "./flows.js";
import {StageRunner} from "./stages.js";
import {writeTables, type CellRecord} from "./tables.js";

/** Every cell of the grid, without duplicates (an ablation value equal to the default is the main cell). */
export function expandCells(config: ExperimentConfig): Cell[] {
    const cells: Cell[] = [];
    const seen = new Set<string>();
    const add = (method: MethodName, taskName: string, seed: number, settings: Settings, group: string) => {
        const task = config.tasks.find((t) => t.name === taskName)!;
        const cell = {method, task, seed, settings, group};
        const key = cellKey(config, cell);
        if (seen.has(key))
            return;
        seen.add(key);
        cells.push(cell);
    };
    for (const task of config.tasks)
        for (const method of config.methods)
            for (const seed of config.seeds)
                add(method, task.name, seed, config.defaults, "main");
    const factors = Object.entries(config.ablations) as [keyof Settings, Settings[keyof Settings][]][];
    for (const [factor, values] of factors)
        for (const value of values ?? [])
            for (const taskName of config.ablationTasks)
                for (const seed of config.ablationSeeds)
                    add("ppc-gpt", taskName, seed, {...config.defaults, [factor]: value}, factor);
    return cells;
}

/** What a cell's result depends on: the method, task, seed, the settings the method reads, models and hyperparameters. */
export function cellKey(config: ExperimentConfig, cell: Cell): string {
    const s = cell.settings;
    // unquantized is left out of the key: cells cached before the quantize factor existed stay valid
    const used: Partial<Settings> = cell.method === "ppc-gpt" ? {...s, quantize: s.quantize === "none" ? undefined : s.quantize}
        : cell.method === "dp-instruct-c" ? {epsilon: s.epsilon, k: s.k, metric: s.metric, ratio: s.ratio, serverRetrain: s.serverRetrain}
        : cell.method === "plain-c" ? {metric: s.metric, ratio: s.ratio} : {};
    return hashKey({method: cell.method, task: cell.task, seed: cell.seed, settings: used, source: config.source, generator: config.generator,
        dpGenerator: config.dpGenerator, embeddings: config.embeddings, train: config.train, synth: config.synth, prompt: promptFormatVersion});
}

export interface ExperimentOptions {
    /** Output folder: results/, stages/, tables.md, tables.json, plots. */
    out: string;
    /** Folder the config's relative model paths resolve against (default: the shared folder). */
    sharedDir?: string;
    threads?: number;
    /** Run only these methods / tasks (the tables still show every cached cell). */
    methods?: MethodName[];
    tasks?: string[];
    /** Run at most this many cells that are not cached yet (a partial run; resume later). */
    maxCells?: number;
    onEvent?: (event: ExperimentEvent) => void;
    signal?: AbortSignal;
}

export type ExperimentEvent =
    | {type: "cell"; index: number; cells: number; key: string; method: string; task: string; seed: number; group: string; cached: boolean}
    | {type: "cell-done"; key: string; seconds: number; error?: string; S: number | null; C: number | null}
    | {type: "stage"; key: string; message: string};

export interface ExperimentSummary {
    config: string;
    out: string;
    cells: number;
    ran: number;
    cached: number;
    failed: number;
    pending: number;
    tables: string[];
    seconds: number;
}

/** Run an experiment configuration's grid of cells (resumable) and write its tables. */
export async function runExperiment(config: ExperimentConfig, options: ExperimentOptions): Promise<ExperimentSummary> {
    checkConfig(config);
    const started = Date.now();
    fs.mkdirSync(path.join(options.out, "results"), {recursive: true});
    writeJsonAtomic(path.join(options.out, "config.json"), config);
    const cells = expandCells(config);
    let currentKey = "";
    const runner = new StageRunner(config, options.out, {sharedDir: options.sharedDir, threads: options.threads, signal: options.signal,
        log: (message) => options.onEvent?.({type: "stage", key: currentKey, message})});
    let ran = 0, cached = 0, failed = 0, pending = 0;
    const records: CellRecord[] = [];
    try {
        for (const [index, cell] of cells.entries()) {
            const key = cellKey(config, cell);
            currentKey = key;
            const file = path.join(options.out, "results", `${key}.json`);
            let record = readJson<CellRecord>(file);
            const selected = (!options.methods || options.methods.includes(cell.method)) && (!options.tasks || options.tasks.includes(cell.task.name));
            options.onEvent?.({type: "cell", index, cells: cells.length, key, method: cell.method, task: cell.task.name, seed: cell.seed,
                group: cell.group, cached: record !== undefined});
            if (record) {
                cached++;
            } else if (!selected || (options.maxCells !== undefined && ran >= options.maxCells)) {
                pending++;
                continue;
            } else {
                if (options.signal?.aborted)
                    throw new Error("the experiment was cancelled");
                const t0 = Date.now();
                let result: FlowResult, thrown = false;
                try {
                    result = await flows[cell.method](runner, cell);
                } catch (err) {
                    if (options.signal?.aborted)
                        throw err;
                    // a cell that throws is reported (not cached: the next run retries it), the others go on
                    result = {S: null, C: null, details: {}, error: (err as Error).message};
                    thrown = true;
                }
                record = {key, method: cell.method, task: cell.task.name, seed: cell.seed, group: cell.group, settings: cell.settings,
                    ...result, seconds: (Date.now() - t0) / 1000};
                if (!thrown)
                    writeJsonAtomic(file, record);
                ran++;
                if (result.error)
                    failed++;
                // tables after every cell: a partial or interrupted run shows what it has
                writeTables(config, [...records, record], options.out);
                options.onEvent?.({type: "cell-done", key, seconds: record.seconds, error: result.error, S: result.S?.acc ?? null, C: result.C?.acc ?? null});
            }
            records.push(record);
        }
    } finally {
        await runner.close();
    }
    const tables = writeTables(config, records, options.out);
    return {config: config.name, out: options.out, cells: cells.length, ran, cached, failed, pending, tables,
        seconds: (Date.now() - started) / 1000};
}
