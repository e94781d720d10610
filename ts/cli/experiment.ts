import {setMaxListeners} from "node:events";
import path from "node:path";
import {Command} from "commander";
import {builtinConfigs, loadExperimentConfig, methodNames, type ExperimentConfig, type MethodName} from "../experiment/config.js";
import {estimateGpuTime} from "../experiment/estimate.js";
import {cellKey, expandCells, runExperiment, type ExperimentEvent} from "../experiment/runner.js";
import {parseNumber, printJson, table, UsageError} from "./output.js";
import {tableOption} from "./options.js";

interface ExperimentCliOptions {
    out?: string;
    source?: string;
    generatorModel?: string;
    generatorUrl?: string;
    generatorName?: string;
    dpGenerator?: string;
    methods?: string;
    tasks?: string;
    maxCells?: string;
    threads?: string;
    dryRun?: boolean;
    json?: boolean;
}

const EXPERIMENT_HELP = `
Methods (METHOD.md, "Baselines and ablations"): zero-shot (the source model), dense-sft (client
fine-tunes the unpruned model), plain-c (client prunes by BI on its private items, fine-tunes),
dp-instruct-c (client DP-SGD-tunes a small generator on its items, samples items, prunes with them,
retrains, fine-tunes), ppc-gpt (perturb -> synthesize -> BI prune -> CoT distillation -> client
retraining). Each reports S (the model the server hands over) and C (after client retraining).
Ablations vary one factor of PPC-GPT at a time: ε, k, rationales, server retraining, BI vs Seq,
pruning ratio, quantization (unquantized vs q4_k_m without and with the task importance matrix,
with model sizes). Each cell is keyed by a hash of its settings, models and hyperparameters; stages
(perturbation, synthesis, pruning, training, scoring) are cached too and shared between cells, so
an interrupted run resumes and a changed setting reruns only what depends on it.

Examples:
  ppc-gpt experiment small                       # ../shared models and data, 2 CPU cores
  ppc-gpt experiment small --methods ppc-gpt,dense-sft --tasks copy-word --max-cells 4
  ppc-gpt experiment paper --dry-run             # the cells and a GPU-time estimate
  ppc-gpt experiment paper --source llama-2-7b.Q8_0.gguf --generator-url http://gpu:8000/v1 \\
      --generator-name meta-llama/Meta-Llama-3-70B-Instruct -o runs/paper`;

/** The named config (built-in or a JSON file) with the command line's model overrides. */
function experimentConfigFrom(name: string, opts: ExperimentCliOptions): ExperimentConfig {
    let config;
    try {
        config = loadExperimentConfig(name);
    } catch (err) {
        throw new UsageError((err as Error).message);
    }
    if (opts.source)
        config.source = path.resolve(opts.source);
    if (opts.dpGenerator)
        config.dpGenerator = path.resolve(opts.dpGenerator);
    if (opts.generatorModel && opts.generatorUrl)
        throw new UsageError("give --generator-model or --generator-url, not both");
    if (opts.generatorModel)
        config.generator = {model: path.resolve(opts.generatorModel)};
    if (opts.generatorUrl) {
        if (!opts.generatorName)
            throw new UsageError("--generator-url needs --generator-name");
        config.generator = {url: opts.generatorUrl, modelName: opts.generatorName};
    }
    return config;
}

interface CellSelection {
    out: string;
    threads?: number;
    methods?: MethodName[];
    tasks?: string[];
    maxCells?: number;
}

/** Which cells to run, where and with how many threads: --methods, --tasks, --max-cells, --threads, --out, checked against the config. */
function selectionFrom(config: ExperimentConfig, opts: ExperimentCliOptions): CellSelection {
    const methods = opts.methods?.split(",").map((s) => s.trim()).filter(Boolean) as MethodName[] | undefined;
    for (const m of methods ?? [])
        if (!methodNames.includes(m))
            throw new UsageError(`--methods: unknown method "${m}" (${methodNames.join(", ")})`);
    const tasks = opts.tasks?.split(",").map((s) => s.trim()).filter(Boolean);
    for (const t of tasks ?? [])
        if (!config.tasks.some((x) => x.name === t))
            throw new UsageError(`--tasks: the config has no task "${t}" (${config.tasks.map((x) => x.name).join(", ")})`);
    const maxCells = opts.maxCells === undefined ? undefined
        : parseNumber(opts.maxCells, "--max-cells", (x) => Number.isInteger(x) && x >= 0, "a non-negative integer");
    const threads = opts.threads === undefined ? undefined
        : parseNumber(opts.threads, "--threads", (x) => Number.isInteger(x) && x >= 1, "a positive integer");
    const out = path.resolve(opts.out ?? path.join("experiments", config.name));
    return {out, threads, methods, tasks, maxCells};
}

/** --dry-run: the cells with their cache state, and the GPU-time estimate. */
async function printDryRun(config: ExperimentConfig, out: string, json: boolean): Promise<void> {
    const cells = expandCells(config);
    const fs = await import("node:fs");
    const rows = cells.map((c) => {
        const key = cellKey(config, c);
        return {key, method: c.method, task: c.task.name, seed: c.seed, group: c.group,
            cached: fs.existsSync(path.join(out, "results", `${key}.json`))};
    });
    const estimate = estimateGpuTime(config, cells);
    if (json)
        return printJson({config: config.name, out, cells: rows, estimate});
    process.stdout.write(table(["cell", "method", "task", "seed", "group", "cached"],
        rows.map((r) => [r.key, r.method, r.task, r.seed, r.group, r.cached ? "yes" : "no"])));
    process.stdout.write(`\n${rows.length} cells, ${rows.filter((r) => r.cached).length} cached, in ${out}\n`);
    if (estimate)
        process.stdout.write(`GPU-time estimate: ${estimate.hours.total.toFixed(0)} GPU-hours (synthesis ${estimate.hours.synth.toFixed(0)}, ` +
            `training ${estimate.hours.train.toFixed(0)}, scoring ${estimate.hours.eval.toFixed(1)}); assumes ${estimate.assumptions}\n`);
}

/** Progress on stderr: a line per cell and stage, or JSON lines with --json. */
function experimentEventPrinter(json: boolean): (e: ExperimentEvent) => void {
    return (e) => {
        if (json)
            process.stderr.write(JSON.stringify({event: e.type === "stage" ? "progress" : e.type, stage: "experiment", ...e}) + "\n");
        else if (e.type === "cell")
            process.stderr.write(`[${e.index + 1}/${e.cells}] ${e.method} ${e.task} seed ${e.seed} (${e.group})${e.cached ? ": cached" : ""}\n`);
        else if (e.type === "stage")
            process.stderr.write(`    ${e.message}\n`);
        else
            process.stderr.write(`    done in ${e.seconds.toFixed(1)} s: S ${e.S ?? "—"}, C ${e.C ?? "—"}${e.error ? ` (${e.error})` : ""}\n`);
    };
}

/** Runs the selected cells; SIGINT aborts the cells in flight (the finished ones stay cached). */
async function runUntilInterrupted(config: ExperimentConfig, selection: CellSelection, json: boolean) {
    const controller = new AbortController();
    // every in-flight generation and training step listens to it
    setMaxListeners(0, controller.signal);
    const onSignal = () => controller.abort();
    process.once("SIGINT", onSignal);
    try {
        return await runExperiment(config, {...selection, onEvent: experimentEventPrinter(json), signal: controller.signal});
    } finally {
        process.off("SIGINT", onSignal);
    }
}

export function experimentCommand(): Command {
    return new Command("experiment")
        .description("Run the paper's tables: methods × tasks × ablations, every cell cached and resumable; Markdown/JSON tables and SVG plots")
        .argument("<config>", `a built-in config (${Object.keys(builtinConfigs).join(", ")}) or a JSON file overriding one ("base": "small" | "paper")`)
        .option("-o, --out <dir>", "output folder: results/, stages/, tables.md, tables.json, plots/ (default experiments/<config>)")
        .option("--source <model.gguf>", "the source model M_S (overrides the config)")
        .option("--generator-model <model.gguf>", "M_L as an embedded GGUF (overrides the config)")
        .option("--generator-url <url>", "M_L behind an OpenAI-compatible server (with --generator-name)")
        .option("--generator-name <name>", "model name sent to --generator-url")
        .option("--dp-generator <model.gguf>", "the small generator DP-Instruct-C DP-tunes (overrides the config)")
        .option("--methods <list>", `run only these methods (${methodNames.join(",")}); the tables show every cached cell`)
        .option("--tasks <list>", "run only these tasks (by the config's task names)")
        .option("--max-cells <n>", "run at most n uncached cells, then write the tables (resume later)")
        .option("--threads <n>", "CPU threads (default: all cores; a config that sets threads wins)")
        .option("--dry-run", "list the cells (and their cache state) and the GPU-time estimate; run nothing")
        .addOption(tableOption("--json", "experiment"))
        .addHelpText("after", EXPERIMENT_HELP)
        .action(async (name: string, opts: ExperimentCliOptions) => {
            const config = experimentConfigFrom(name, opts);
            const selection = selectionFrom(config, opts);
            if (opts.dryRun)
                return await printDryRun(config, selection.out, Boolean(opts.json));
            const summary = await runUntilInterrupted(config, selection, Boolean(opts.json));
            if (opts.json)
                return printJson(summary);
            process.stdout.write(`${summary.cells} cells: ${summary.ran} run (${summary.failed} failed), ${summary.cached} cached, ` +
                `${summary.pending} pending; ${summary.seconds.toFixed(0)} s\ntables: ${summary.tables.join(", ")}\n`);
        });
}
