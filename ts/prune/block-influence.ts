// Block Influence (ShortGPT; PPC-GPT step 3): how much each block changes the hidden state,
//   BI_i = 1 - E_t[cos(X_i,t, X_{i+1},t)],
// captured natively while the model runs. PPC-GPT scores label and rationale sequences separately
// and prunes by BI = BI_label + BI_rationale. Two variants come from the same pass: the angular
// distance E_t[arccos(cos)/pi] and the relative contribution E_t[|X_{i+1} - X_i| / |X_i|].
import crypto from "node:crypto";
import fs from "node:fs";
import {native, type NativeImatrixEntry} from "../native.js";
import type {LoadedModel} from "../model.js";
import {defaultTaskFormat, labelExample, promptFormatVersion, rationaleExample, type PromptExample, type PromptOptions} from "../data/prompt.js";
import type {TaskItem} from "../data/task-item.js";
import {mergeCaptured} from "../quantize/imatrix.js";
import {evenTicks, indexTicks, svgChart} from "../report/svg-chart.js";

export const layerMetrics = ["bi", "angular", "contribution"] as const;
export type LayerMetric = (typeof layerMetrics)[number];

/** Which positions of a sequence count: every token, or only the target (answer / rationale) part. */
export type CountedPositions = "all" | "target";

export interface TokenSequence {
    tokens: Int32Array;
    /** 1 where the position counts; omitted: every position. */
    mask?: Uint8Array;
}

export interface LayerScores {
    nLayer: number;
    /** Positions averaged over. */
    tokens: number;
    /** 1 - mean cosine per layer. */
    bi: number[];
    /** mean arccos(cos)/pi per layer. */
    angular: number[];
    /** mean |X_{i+1} - X_i| / |X_i| per layer. */
    contribution: number[];
    /** Block scorings computed by the CUDA kernel (blocks whose output was in GPU memory); 0 on the CPU. */
    deviceSteps: number;
    /** With options.imatrix: the importance sums of the same pass (every position counts, masks aside). */
    imatrix?: NativeImatrixEntry[];
}

export interface LayerScoreOptions {
    /** Tokens per decode; several sequences share one (default 512). */
    maxBatchTokens?: number;
    /** Sequences per decode (default 16). */
    maxSequences?: number;
    /** Also collect an importance matrix for quantization (ts/quantize/imatrix.ts) in the same pass. */
    imatrix?: boolean;
    onProgress?: (doneTokens: number, totalTokens: number) => void;
}

/** Scores every layer over the counted positions of `sequences`. */
export async function scoreLayers(model: LoadedModel, sequences: TokenSequence[], options: LayerScoreOptions = {}): Promise<LayerScores> {
    if (sequences.length === 0)
        throw new RangeError("no sequences to score");
    const sums = await native().layerScores(model.handle, sequences, {
        maxBatchTokens: options.maxBatchTokens ?? 512,
        maxSequences: options.maxSequences ?? 16,
        imatrix: options.imatrix ?? false,
    }, options.onProgress);
    if (sums.tokens === 0)
        throw new RangeError("no position was counted (every mask is empty)");
    const mean = (xs: number[]) => xs.map((x) => x / sums.tokens);
    return {
        nLayer: sums.nLayer,
        tokens: sums.tokens,
        bi: mean(sums.cosSum).map((c) => 1 - c),
        angular: mean(sums.angularSum),
        contribution: mean(sums.contributionSum),
        deviceSteps: sums.deviceSteps,
        ...(sums.imatrix ? {imatrix: sums.imatrix} : {}),
    };
}

/** Picks one metric's per-layer values. */
export function metricValues(scores: LayerScores, metric: LayerMetric): number[] {
    return scores[metric];
}

/** Tokenizes texts as llama.cpp does (special tokens added); every position counts. */
export function textSequences(model: LoadedModel, texts: string[]): TokenSequence[] {
    return texts.map((text) => ({tokens: model.tokenize(text, {addSpecial: true})}));
}

/** prompt + target as one sequence; with "target", only the target's positions count. */
export function exampleSequence(model: LoadedModel, example: PromptExample, positions: CountedPositions, maxTokens?: number): TokenSequence {
    const prompt = model.tokenize(example.prompt, {addSpecial: true});
    const full = model.tokenize(example.prompt + example.target, {addSpecial: true});
    // The prompt's tokens are a prefix of the whole when the target starts a new token (it starts with a space);
    // count the target from the first position that differs.
    let start = 0;
    while (start < prompt.length && start < full.length && prompt[start] === full[start])
        start++;
    let tokens = full;
    if (maxTokens !== undefined && tokens.length > maxTokens)
        tokens = tokens.subarray(0, maxTokens);
    if (positions === "all")
        return {tokens};
    const mask = new Uint8Array(tokens.length);
    mask.fill(1, Math.min(start, tokens.length));
    return {tokens, mask};
}

export interface BlockInfluenceReport {
    n_layer: number;
    metric: LayerMetric;
    positions: CountedPositions;
    /** Counted positions per sequence kind. */
    tokens: {label: number; rationale: number};
    items: {label: number; rationale: number};
    bi_label: number[];
    /** Omitted when no item has a rationale; `bi` is then `bi_label`. */
    bi_rationale?: number[];
    bi: number[];
    model: ModelIdentity;
    prompt_format: string;
    /** The task format of the label and rationale sequences (ts/data/prompt.ts). */
    task_format: string;
}

export interface ModelIdentity {
    path: string;
    size: number;
    /** sha256 of the GGUF header (metadata and tensor layout) and the file size. */
    header_sha256: string;
}

/** A cheap identity of a model file: its size and the hash of its first MiB (the GGUF header). */
export function modelIdentity(file: string): ModelIdentity {
    const fd = fs.openSync(file, "r");
    try {
        const size = fs.fstatSync(fd).size;
        const head = Buffer.alloc(Math.min(size, 1 << 20));
        fs.readSync(fd, head, 0, head.length, 0);
        return {path: file, size, header_sha256: crypto.createHash("sha256").update(head).update(String(size)).digest("hex")};
    } finally {
        fs.closeSync(fd);
    }
}

export interface BlockInfluenceOptions extends LayerScoreOptions, PromptOptions {
    metric?: LayerMetric;
    positions?: CountedPositions;
    /** Longest sequence scored, in tokens (longer ones are truncated); default 64 + 128 as in the paper. */
    maxTokens?: number;
}

/**
 * PPC-GPT's pruning score on task items: the metric on input→label sequences and on
 * input→rationale sequences, and their sum.
 */
export async function blockInfluence(model: LoadedModel, items: TaskItem[], options: BlockInfluenceOptions = {}): Promise<BlockInfluenceReport> {
    return (await blockInfluencePass(model, items, options)).report;
}

/** blockInfluence, and with options.imatrix the importance sums of the same label and rationale sequences. */
export async function blockInfluencePass(model: LoadedModel, items: TaskItem[], options: BlockInfluenceOptions = {}):
    Promise<{report: BlockInfluenceReport; imatrix?: NativeImatrixEntry[]; sequences: number; maxTokens: number}> {
    const metric = options.metric ?? "bi";
    const positions = options.positions ?? "all";
    const maxTokens = options.maxTokens ?? 192;
    const labelled = items.filter((i) => i.answer !== undefined);
    if (labelled.length === 0)
        throw new RangeError("no item has an answer: BI_label needs labelled items");
    const withRationale = items.filter((i) => i.answer !== undefined && i.rationale !== undefined && i.rationale.trim() !== "");
    // the same sequences training uses (one format per task: ts/data/prompt.ts)
    const prompt: PromptOptions = {format: options.format, labelPrefix: options.labelPrefix, rationalePrefix: options.rationalePrefix};
    const labelSeqs = labelled.map((i) => exampleSequence(model, labelExample(i, prompt), positions, maxTokens));
    const rationaleSeqs = withRationale.map((i) => exampleSequence(model, rationaleExample(i, prompt), positions, maxTokens));
    const total = [...labelSeqs, ...rationaleSeqs].reduce((a, s) => a + s.tokens.length, 0);
    let done = 0;
    const progress = (offset: number) => (d: number) => options.onProgress?.(offset + d, total);
    const label = await scoreLayers(model, labelSeqs, {...options, onProgress: progress(0)});
    done = labelSeqs.reduce((a, s) => a + s.tokens.length, 0);
    const rationale = rationaleSeqs.length ? await scoreLayers(model, rationaleSeqs, {...options, onProgress: progress(done)}) : undefined;
    const biLabel = metricValues(label, metric);
    const biRationale = rationale ? metricValues(rationale, metric) : undefined;
    const imatrix = label.imatrix && rationale?.imatrix ? mergeCaptured(label.imatrix, rationale.imatrix) : label.imatrix;
    const longest = Math.max(...[...labelSeqs, ...rationaleSeqs].map((s) => s.tokens.length));
    return {imatrix, sequences: labelSeqs.length + rationaleSeqs.length, maxTokens: longest, report: {
        n_layer: label.nLayer,
        metric,
        positions,
        tokens: {label: label.tokens, rationale: rationale?.tokens ?? 0},
        items: {label: labelSeqs.length, rationale: rationaleSeqs.length},
        bi_label: biLabel,
        ...(biRationale ? {bi_rationale: biRationale} : {}),
        bi: biRationale ? biLabel.map((x, i) => x + biRationale[i]) : biLabel,
        model: modelIdentity(model.path),
        prompt_format: promptFormatVersion,
        task_format: options.format ?? defaultTaskFormat,
    }};
}

/** Per-layer chart as a standalone SVG: bars for `bi`, lines for the label and rationale parts. */
export function blockInfluenceSvg(series: {name: string; values: number[]}[], title: string): string {
    const n = series[0]?.values.length ?? 0;
    const max = Math.max(1e-12, ...series.flatMap((s) => s.values));
    return svgChart({
        title,
        series: series.map((s, k) => ({name: s.name, kind: k === 0 ? "bar" : "line", points: s.values.map((y, x) => ({x, y}))})),
        x: {label: "layer", band: true, range: [0, Math.max(0, n - 1)], ticks: indexTicks(n, 32)},
        y: {label: "score", range: [0, max], ticks: evenTicks(0, max, 4, (v) => v.toPrecision(3))},
    });
}
