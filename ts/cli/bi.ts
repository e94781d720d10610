import path from "node:path";
import {Command, Option} from "commander";
import {readTaskItems} from "../data/jsonl.js";
import {defaultTaskFormat, taskFormatNames, type TaskFormatName} from "../data/prompt.js";
import {loadModel} from "../model.js";
import {blockInfluence, blockInfluenceSvg, layerMetrics, metricValues, modelIdentity, scoreLayers, textSequences,
    type BlockInfluenceReport, type CountedPositions, type LayerMetric} from "../prune/block-influence.js";
import {writeFileDurable} from "../durable-file.js";
import {taskImatrix} from "../quantize/collect.js";
import {imatrixFromCapture, writeImatrixGguf, type ImportanceMatrix} from "../quantize/imatrix.js";
import {addModelOptions, modelLoadOptions, type ModelCliOptions} from "./model-options.js";
import {checkOutputFolder, parseNumber, readTextFile, printJson, progressReporter, table, UsageError} from "./output.js";
import {tableOption} from "./options.js";

export interface BiCliOptions extends ModelCliOptions {
    text?: string;
    data?: string;
    metric: LayerMetric;
    positions: CountedPositions;
    limit?: string;
    batchTokens: string;
    format?: TaskFormatName;
}

export interface TextReport {
    n_layer: number;
    metric: LayerMetric;
    tokens: number;
    sequences: number;
    bi: number[];
    model: ReturnType<typeof modelIdentity>;
}

/** Reads one sequence per non-empty line. */
export function readTextLines(file: string): string[] {
    const text = readTextFile(file);
    const lines = text.split(/\r?\n/).filter((l) => l.trim() !== "");
    if (lines.length === 0)
        throw new Error(`${file}: no text (one sequence per line)`);
    return lines;
}

/** Runs the scoring that `bi` and `prune --strategy bi` share. */
export async function runBlockInfluence(model: string, opts: BiCliOptions, json: boolean): Promise<BlockInfluenceReport | TextReport> {
    return (await runBlockInfluencePass(model, opts, json, false)).report;
}

/** The scoring, and with `imatrix` the importance matrix of the same forward pass (`bi --imatrix`). */
async function runBlockInfluencePass(model: string, opts: BiCliOptions, json: boolean, imatrix: boolean):
    Promise<{report: BlockInfluenceReport | TextReport; matrix?: ImportanceMatrix}> {
    if ((opts.text === undefined) === (opts.data === undefined))
        throw new UsageError("give exactly one of --text <file> or --data <items.jsonl>");
    const limit = opts.limit === undefined ? undefined : parseNumber(opts.limit, "--limit", (x) => Number.isInteger(x) && x >= 1, "a positive integer");
    const maxBatchTokens = parseNumber(opts.batchTokens, "--batch-tokens", (x) => Number.isInteger(x) && x >= 16, "an integer >= 16");
    if (opts.text !== undefined && opts.positions !== "all")
        throw new UsageError("--positions target needs --data (plain text has no target part)");
    const texts = opts.text !== undefined ? readTextLines(opts.text).slice(0, limit) : undefined;
    const items = opts.data !== undefined ? (await readTaskItems(opts.data)).slice(0, limit) : undefined;
    const m = await loadModel(model, modelLoadOptions(opts));
    const progress = progressReporter({json}, "scoring", "tokens");
    try {
        if (texts) {
            const seqs = textSequences(m, texts);
            const s = await scoreLayers(m, seqs, {maxBatchTokens, imatrix, onProgress: progress.update});
            const matrix = imatrix ? imatrixFromCapture(s.imatrix ?? [], {datasets: [path.basename(opts.text!)], chunkCount: seqs.length,
                chunkSize: Math.max(...seqs.map((q) => q.tokens.length))}) : undefined;
            return {matrix, report: {n_layer: s.nLayer, metric: opts.metric, tokens: s.tokens, sequences: texts.length,
                bi: metricValues(s, opts.metric), model: modelIdentity(model)}};
        }
        if (imatrix) {
            const {matrix, report} = await taskImatrix(m, items!, opts.data!, {metric: opts.metric, positions: opts.positions, maxBatchTokens,
                format: opts.format, onProgress: progress.update});
            return {matrix, report};
        }
        return {report: await blockInfluence(m, items!, {metric: opts.metric, positions: opts.positions, maxBatchTokens, format: opts.format,
            onProgress: progress.update})};
    } finally {
        progress.finish();
        m.close();
    }
}

export function addScoringOptions(cmd: Command): Command {
    return addModelOptions(cmd
        .option("--text <file>", "plain text, one sequence per line (tokenized with special tokens; every position counts)")
        .option("--data <items.jsonl>", "task items: BI_label on question+choices->answer, BI_rationale on ->rationale")
        .addOption(new Option("--metric <m>", "bi: 1 - mean cos; angular: mean arccos(cos)/pi; contribution: mean |dX|/|X|")
            .choices([...layerMetrics]).default("bi"))
        .addOption(new Option("--positions <p>", "with --data: count every position, or only the answer/rationale tokens")
            .choices(["all", "target"]).default("all"))
        .addOption(new Option("--format <task>", "with --data: the task format of the label/rationale sequences, as `train --format`")
            .choices([...taskFormatNames]).default(defaultTaskFormat))
        .option("--limit <n>", "use only the first n sequences / items")
        .option("--batch-tokens <n>", "tokens per decode (several sequences share one)", "512"));
}

export function biCommand(): Command {
    return addScoringOptions(new Command("bi")
        .description("Score layers by Block Influence (1 - mean cosine of the hidden states entering and leaving each block)")
        .argument("<model>", "GGUF model file"))
        .addOption(tableOption("--json", "bi"))
        .option("--plot <file.svg>", "draw the scores per layer as an SVG chart")
        .option("-o, --output <file.json>", "also write the JSON report to a file (accepted by prune --scores)")
        .option("--imatrix <file.gguf>", "also write the importance matrix of the same forward pass (llama-imatrix's GGUF format; for quantize --imatrix)")
        .addHelpText("after", `
Block Influence of layer i (ShortGPT, PPC-GPT): BI_i = 1 - E_t[cos(X_i,t, X_i+1,t)], with X_i the hidden
state entering block i and X_i+1 the one leaving it, averaged over token positions. Low BI = the block
barely changes its input = a candidate for removal. With --data, PPC-GPT's score BI = BI_label + BI_rationale.

Examples:
  ppc-gpt bi model.gguf --text corpus.txt
  ppc-gpt bi model.gguf --data synthetic.jsonl --json -o bi.json --plot bi.svg
  ppc-gpt prune model.gguf --strategy scores --scores bi.json --ratio 0.3 -o pruned.gguf
  ppc-gpt bi model.gguf --data synthetic.jsonl --imatrix task.imatrix.gguf   (then: quantize --imatrix task.imatrix.gguf)`)
        .action(async (model: string, opts: BiCliOptions & {json?: boolean; plot?: string; output?: string; imatrix?: string}) => {
            checkOutputFolder(opts.output, "-o");
            checkOutputFolder(opts.plot, "--plot");
            checkOutputFolder(opts.imatrix, "--imatrix");
            const {report, matrix} = await runBlockInfluencePass(model, opts, Boolean(opts.json), opts.imatrix !== undefined);
            if (opts.imatrix && matrix)
                await writeImatrixGguf(opts.imatrix, matrix);
            const series = "bi_label" in report
                ? [{name: "BI", values: report.bi}, {name: "BI_label", values: report.bi_label},
                    ...(report.bi_rationale ? [{name: "BI_rationale", values: report.bi_rationale}] : [])]
                : [{name: opts.metric, values: report.bi}];
            if (opts.plot)
                await writeFileDurable(opts.plot, blockInfluenceSvg(series, `${opts.metric} per layer: ${path.basename(model)}`));
            if (opts.output)
                await writeFileDurable(opts.output, JSON.stringify(report, null, 2) + "\n");
            if (opts.json)
                return printJson(report);
            const ranks = [...report.bi.keys()].sort((a, b) => report.bi[a] - report.bi[b]);
            process.stdout.write(table(["layer", ...series.map((s) => s.name), "rank (low first)"],
                report.bi.map((_, i) => [i, ...series.map((s) => s.values[i].toFixed(6)), ranks.indexOf(i)])));
        });
}
