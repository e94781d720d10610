// Zero-shot multiple-choice evaluation in the manner of lm-evaluation-harness: load a task's items,
// format each as context + choices, score every choice's log-likelihood (the context evaluated once
// per item), and report acc / acc_norm with standard errors.
import {checkEvalOptions} from "./options.js";
import {loadTask, taskFile} from "../data/loaders/index.js";
import {recordedLabelPrefix} from "../data/prompt.js";
import type {TaskItem} from "../data/task-item.js";
import {loadModel, type LoadedModel} from "../model.js";
import {mulberry32} from "../random.js";
import {PairEncoder, type EncodeOptions} from "./encode.js";
import {LoglikScorer, type LoglikScorerOptions, type TokenRequest} from "./loglik.js";
import {choiceMetrics, summarizeAccuracy, type AccuracySummary} from "./metrics.js";
import {evalTasks, type EvalTaskName, type FormattedItem} from "./tasks.js";

export interface EvalItemResult {
    id: string;
    /** The exact prompt string. */
    context: string;
    /** The exact strings scored after the context (delimiter + choice). */
    continuations: string[];
    /** Sum of token log-probabilities of each continuation. */
    loglikelihoods: number[];
    is_greedy: boolean[];
    /** Tokens of each continuation. */
    tokens: number[];
    /** Index of the highest log-likelihood. */
    pred: number;
    /** Index of the highest log-likelihood per character of the choice. */
    pred_norm: number;
    /** Index of the correct choice. */
    gold: number;
    acc: number;
    acc_norm: number;
}

export interface EvalSummary extends AccuracySummary {
    task: EvalTaskName;
}

export interface EvalResult extends EvalSummary {
    /** Put before every context: the label prefix the model/adapters record, or the one given. */
    promptPrefix: string;
    /** The file the items came from. */
    data: string;
    model: string;
    items: EvalItemResult[];
    seconds: number;
    /** Whether BOS was prepended to every sequence. */
    bos: boolean;
}

export interface SelectOptions {
    /** Evaluate only this many items: the first N, or a seeded random sample of N with `seed`. */
    limit?: number;
    /** With `limit`: draw the sample with this seed (items keep their file order). */
    seed?: number;
}

export interface EvaluateOptions extends SelectOptions, EncodeOptions, Omit<LoglikScorerOptions, "shareContext"> {
    task: EvalTaskName;
    /** A file in the task's original format (task-item JSONL for "mc") instead of the shared split. */
    data?: string;
    /**
     * Put before every context. Default: the label prefix the model or its LoRA adapters were
     * trained with (their `ppc_gpt.prompt.label_prefix` metadata), "" when none is recorded.
     */
    promptPrefix?: string;
    /** Split of the shared dataset; default the split lm-evaluation-harness evaluates. */
    split?: string;
    /** Folder of the shared datasets (default PPC_DATA_DIR, PPC_SHARED_DIR/data, ../shared/data). */
    dataDir?: string;
    /** Model load options when `model` is a path. */
    gpuLayers?: number;
    onProgress?: (done: number, total: number) => void;
    signal?: AbortSignal;
}

/** The first `limit` items, or a seeded sample of `limit` items in file order. */
export function selectItems<T>(items: T[], options: SelectOptions = {}): T[] {
    const {limit, seed} = options;
    if (limit === undefined || limit >= items.length)
        return items.slice();
    if (!Number.isInteger(limit) || limit < 1)
        throw new Error(`limit must be a positive integer (got ${limit})`);
    if (seed === undefined)
        return items.slice(0, limit);
    const rand = mulberry32(seed); // a small generator, so that `--seed` samples the same items everywhere
    const idx = items.map((_, i) => i);
    for (let i = idx.length - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        [idx[i], idx[j]] = [idx[j], idx[i]];
    }
    return idx.slice(0, limit).sort((a, b) => a - b).map((i) => items[i]);
}

/** Loads the items a task evaluates (the shared split, or `data`), after `limit` / `seed`. */
export async function loadEvalItems(options: Pick<EvaluateOptions, "task" | "data" | "split" | "dataDir" | "limit" | "seed">):
    Promise<{items: TaskItem[]; file: string}> {
    const spec = evalTasks[options.task];
    if (!spec)
        throw new Error(`unknown task "${options.task}"; tasks: ${Object.keys(evalTasks).join(", ")}`);
    const source = {split: options.split, file: options.data, dataDir: options.dataDir};
    const file = taskFile(spec.dataset, source);
    const items = await loadTask(spec.dataset, source);
    return {items: selectItems(items, options), file};
}

/** The prefix evaluation puts before every context: the one given, else the one the model and adapters record. */
export async function resolvePromptPrefix(modelPath: string, options: Pick<EvaluateOptions, "promptPrefix" | "lora">): Promise<string> {
    return options.promptPrefix ?? recordedLabelPrefix(modelPath, (options.lora ?? []).map((a) => a.path));
}

/** Formats, tokenizes and scores items of a task on a loaded model. */
export async function evaluateItems(model: LoadedModel, items: TaskItem[], options: Omit<EvaluateOptions, "data" | "split" | "dataDir">):
    Promise<{summary: EvalSummary; items: EvalItemResult[]; bos: boolean; promptPrefix: string}> {
    const spec = evalTasks[options.task];
    if (!spec)
        throw new Error(`unknown task "${options.task}"; tasks: ${Object.keys(evalTasks).join(", ")}`);
    if (items.length === 0)
        throw new Error(`task ${options.task}: no items to evaluate`);
    const prefix = await resolvePromptPrefix(model.path, options);
    const encoder = new PairEncoder(model, options);
    const formatted: FormattedItem[] = [];
    const requests: TokenRequest[] = [];
    // Where each choice's score lands: [request index, continuation index] per item and choice.
    const slots: [number, number][][] = [];
    for (const item of items) {
        const formatted0 = spec.format(item);
        const f = prefix === "" ? formatted0 : {...formatted0, context: prefix + formatted0.context};
        if (f.gold === undefined)
            throw new Error(`item ${item.id} has no answer: accuracy needs labelled items` +
                (spec.dataset === "commonsenseqa" ? " (CommonsenseQA's test split is unlabelled; use --split validation)" : ""));
        const first = requests.length;
        const itemSlots: [number, number][] = [];
        for (const choice of f.choices) {
            let pair;
            try {
                pair = encoder.encodePair(f.context, f.delimiter + choice);
            } catch (err) {
                throw new Error(`item ${item.id}: ${(err as Error).message}`);
            }
            // The context is encoded alone, so every choice shares its tokens, unless left truncation
            // (a sequence longer than the model's length) cut a different number: such a choice
            // gets a request of its own.
            let r = first;
            while (r < requests.length && !sameTokens(requests[r].context as Int32Array, pair.context))
                r++;
            if (r === requests.length)
                requests.push({context: pair.context, continuations: []});
            itemSlots.push([r, requests[r].continuations.length]);
            requests[r].continuations.push(pair.continuation);
        }
        formatted.push(f);
        slots.push(itemSlots);
    }

    const scorer = await LoglikScorer.open(model, options);
    let scores;
    try {
        scores = await scorer.score(requests, {
            signal: options.signal,
            onProgress: options.onProgress && requests.length === items.length
                ? options.onProgress
                : options.onProgress && ((done, total) => options.onProgress!(Math.floor(done / total * items.length), items.length)),
        });
    } finally {
        scorer.close();
    }

    const results: EvalItemResult[] = [];
    for (let i = 0; i < items.length; i++) {
        const f = formatted[i];
        const choiceScores = slots[i].map(([r, j]) => scores[r][j]);
        const lls = choiceScores.map((s) => s.logprob);
        const m = choiceMetrics(lls, f.choices, f.gold!);
        results.push({
            id: items[i].id,
            context: f.context,
            continuations: f.choices.map((c) => f.delimiter + c),
            loglikelihoods: lls,
            is_greedy: choiceScores.map((s) => s.isGreedy),
            tokens: choiceScores.map((s) => s.tokens),
            pred: m.pred,
            pred_norm: m.predNorm,
            gold: f.gold!,
            acc: m.acc,
            acc_norm: m.accNorm,
        });
    }
    const summary = {task: options.task, ...summarizeAccuracy(results.map((r) => r.acc), results.map((r) => r.acc_norm))};
    return {summary, items: results, bos: encoder.addBos, promptPrefix: prefix};
}

function sameTokens(a: Int32Array, b: Int32Array): boolean {
    if (a.length !== b.length)
        return false;
    for (let i = 0; i < a.length; i++)
        if (a[i] !== b[i])
            return false;
    return true;
}

/** Evaluates a model (a GGUF path or a loaded model) on a task. */
export async function evaluate(model: string | LoadedModel, options: EvaluateOptions): Promise<EvalResult> {
    checkEvalOptions(options);
    const started = performance.now();
    const {items, file} = await loadEvalItems(options);
    const loaded = typeof model === "string" ? await loadModel(model, {threads: options.threads, gpuLayers: options.gpuLayers}) : model;
    try {
        const r = await evaluateItems(loaded, items, options);
        return {...r.summary, promptPrefix: r.promptPrefix, data: file, model: loaded.path, items: r.items, bos: r.bos, seconds: (performance.now() - started) / 1000};
    } finally {
        if (typeof model === "string")
            loaded.close();
    }
}
