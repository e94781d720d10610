// The stages of every flow, each a cached call into a stage library (ts/privacy, ts/synth,
// ts/prune, ts/train, ts/eval): the flows only compose them (flows.ts). Every stage's output
// lives in its own cache folder keyed by what it depends on (cache.ts).
import fs from "node:fs";
import path from "node:path";
import {readTaskItems, writeJsonlAtomic} from "../data/jsonl.js";
import {defaultDataDir} from "../data/loaders/index.js";
import type {TaskItem} from "../data/task-item.js";
import {evaluateItems} from "../eval/evaluate.js";
import {BatchGenerator} from "../generate/batch-generator.js";
import {loadModel} from "../model.js";
import {perturbFile} from "../privacy/perturb.js";
import {blockInfluence} from "../prune/block-influence.js";
import {planPruning} from "../prune/plan.js";
import {removeLayers} from "../prune/remove.js";
import {taskImatrix} from "../quantize/collect.js";
import {quantizeModel, type ImatrixSource} from "../quantize/quantize.js";
import {createEmbeddedGenerator} from "../synth/embedded.js";
import type {Generator} from "../synth/generator.js";
import {synthesize} from "../synth/pipeline.js";
import {createRemoteGenerator} from "../synth/remote.js";
import {mergeLora} from "../train/merge.js";
import {Random} from "../random.js";
import {trainLora} from "../train/train.js";
import {fileIdentity, StageCache} from "./cache.js";
import type {ExperimentConfig, TaskSpec, TrainSettings} from "./config.js";
import {taskItems} from "./data.js";

export interface Accuracy {
    n: number;
    acc: number;
    acc_stderr: number;
    acc_norm: number;
    acc_norm_stderr: number;
    prompt_prefix: string;
}

/** What the stages share: the config, the cache, resolved model paths, one generator per process. */
export class StageRunner {
    readonly cache: StageCache;
    private generator?: Promise<Generator>;

    constructor(readonly config: ExperimentConfig, root: string, readonly options: {sharedDir?: string; threads?: number;
        log?: (message: string) => void; signal?: AbortSignal} = {}) {
        this.cache = new StageCache(root);
    }

    get threads(): number | undefined {
        return this.options.threads ?? this.config.threads;
    }

    /** A model path of the config: absolute, or relative to the shared folder. */
    modelPath(p: string): string {
        if (path.isAbsolute(p))
            return p;
        const shared = this.options.sharedDir ?? path.dirname(defaultDataDir());
        return path.join(shared, p);
    }

    /** Identity of a model file in cache keys: stage outputs by path, others by path, size and time. */
    private identity(file: string): string {
        return fileIdentity(file);
    }

    private log(message: string): void {
        this.options.log?.(message);
    }

    async close(): Promise<void> {
        if (this.generator)
            await (await this.generator).close?.();
    }

    /** The client's private items and the evaluation items of a task and seed, as JSONL files. */
    data(task: TaskSpec, seed: number) {
        return this.cache.stage("data", {task, seed}, async (dir) => {
            const {train, eval: ev} = await taskItems(task, seed);
            await writeJsonlAtomic(path.join(dir, "private.jsonl"), train);
            await writeJsonlAtomic(path.join(dir, "eval.jsonl"), ev);
            return {private: path.join(dir, "private.jsonl"), eval: path.join(dir, "eval.jsonl"), trainItems: train.length, evalItems: ev.length};
        });
    }

    /** Zero-shot accuracy of a model (with an optional adapter) on the evaluation items. */
    async evaluate(task: TaskSpec, model: string, evalFile: string, adapter?: string): Promise<Accuracy> {
        const key = {task: task.eval, model: this.identity(model), adapter: adapter && this.identity(adapter), items: this.identity(evalFile)};
        return this.cache.stage("eval", key, async () => {
            this.log(`eval ${task.name}: ${path.basename(model)}${adapter ? ` + ${path.basename(adapter)}` : ""}`);
            const items = await readTaskItems(evalFile);
            const m = await loadModel(model, {threads: this.threads, gpuLayers: this.config.gpuLayers});
            try {
                const r = await evaluateItems(m, items, {task: task.eval, threads: this.threads, lora: adapter ? [{path: adapter}] : undefined,
                    signal: this.options.signal});
                return {n: r.summary.n, acc: r.summary.acc, acc_stderr: r.summary.acc_stderr, acc_norm: r.summary.acc_norm,
                    acc_norm_stderr: r.summary.acc_norm_stderr, prompt_prefix: r.promptPrefix};
            } finally {
                m.close();
            }
        });
    }

    /** Step 1: the client's exponential-mechanism perturbation (CusText) of its items at ε per token. */
    perturb(privateFile: string, epsilon: number, seed: number) {
        const embeddings = this.modelPath(this.config.embeddings ?? this.config.source);
        return this.cache.stage("perturb", {items: this.identity(privateFile), embeddings: this.identity(embeddings), epsilon, seed}, async (dir) => {
            this.log(`perturb ε=${epsilon}`);
            const output = path.join(dir, "perturbed.jsonl");
            const r = await perturbFile({input: privateFile, output, embeddings, epsilon, seed,
                cacheDir: path.join(this.cache.root, "privacy-cache"), threads: this.threads, stopwords: true, keepPunctuation: true});
            return {file: output, epsilonPerToken: epsilon, items: r.dataset.records, epsilonPerRecordMean: r.dataset.epsilonPerRecord.mean};
        });
    }

    private async synthGenerator(): Promise<Generator> {
        const g = this.config.generator;
        this.generator ??= "model" in g
            ? createEmbeddedGenerator({modelPath: this.modelPath(g.model), sequences: this.config.synth.sequences ?? 4, threads: this.threads,
                gpuLayers: this.config.gpuLayers})
            : Promise.resolve(createRemoteGenerator({baseUrl: g.url, model: g.modelName, apiKeyEnv: g.apiKeyEnv, concurrency: g.concurrency}));
        return this.generator;
    }

    /** Step 2: k synthetic items (question, three agreeing answers, rationale) per perturbed item. */
    synthesize(perturbedFile: string, k: number, seed: number) {
        const g = this.config.generator;
        const key = {items: this.identity(perturbedFile), k, seed, generator: "model" in g ? this.identity(this.modelPath(g.model)) : g,
            synth: this.config.synth};
        return this.cache.stage("synth", key, async (dir) => {
            this.log(`synth k=${k}`);
            const output = path.join(dir, "synthetic.jsonl");
            const s = await synthesize({input: perturbedFile, output, generator: await this.synthGenerator(), ratio: k,
                maxAttempts: Math.max(k, Math.round(this.config.synth.maxAttemptsFactor * k)), seed, maxTokens: this.config.synth.maxTokens,
                signal: this.options.signal});
            return {file: output, accepted: s.accepted, rejected: s.rejected, reasons: s.reasons, parents: s.parents};
        });
    }

    /** Step 3: prune `ratio` of the parameters by Block Influence on `scoreFile`'s items, or by depth ("seq"). */
    prune(model: string, ratio: number, metric: "bi" | "seq", task: TaskSpec, scoreFile: string | undefined, rationales: boolean) {
        const key = {model: this.identity(model), ratio, metric, format: task.eval, items: scoreFile && this.identity(scoreFile), rationales};
        return this.cache.stage("prune", key, async (dir) => {
            this.log(`prune ${metric} ${Math.round(ratio * 100)}%`);
            let scores: number[] | undefined;
            if (metric === "bi" && ratio > 0) {
                if (!scoreFile)
                    throw new Error("BI pruning needs items to score");
                let items = await readTaskItems(scoreFile);
                if (!rationales)
                    items = items.map(({rationale: _, ...rest}) => rest);
                const m = await loadModel(model, {threads: this.threads, gpuLayers: this.config.gpuLayers});
                try {
                    scores = (await blockInfluence(m, items, {format: task.eval})).bi;
                } finally {
                    m.close();
                }
            }
            const plan = ratio === 0 ? undefined
                : await planPruning(model, metric === "bi" ? {strategy: "bi", scores, ratio} : {strategy: "top", ratio});
            if (!plan || plan.removed.length === 0)
                return {model, removed: [] as number[], removedRatio: 0, scores};
            const output = path.join(dir, "pruned.gguf");
            await removeLayers(model, output, plan.removed);
            return {model: output, removed: plan.originalRemoved, removedRatio: plan.parameters.removedRatio, scores};
        });
    }

    /** Steps 4 and 6 (and DenseSFT, Plain-C): LoRA training; returns the adapter. */
    train(model: string, dataFile: string, task: TaskSpec, kind: "cot" | "label", settings: TrainSettings, seed: number,
        extra: {dpEpsilon?: number; dpDelta?: number; maxPerExampleGradNorm?: number; labelPrefix?: string; format?: TaskSpec["eval"]} = {}) {
        const key = {model: this.identity(model), data: this.identity(dataFile), format: extra.format ?? task.eval, kind, settings, seed, extra};
        return this.cache.stage("train", key, async (dir) => {
            this.log(`train ${kind} on ${path.basename(path.dirname(dataFile))}/${path.basename(dataFile)}${extra.dpEpsilon ? ` (DP-SGD ε=${extra.dpEpsilon})` : ""}`);
            const {rationaleWeight, ...s} = settings;
            const r = await trainLora({model, data: dataFile, output: path.join(dir, "adapter.gguf"), task: kind, format: extra.format ?? task.eval,
                ...s, ...(kind === "cot" ? {rationaleWeight} : {}), seed, threads: this.threads, gpuLayers: this.config.gpuLayers,
                labelPrefix: extra.labelPrefix, dpEpsilon: extra.dpEpsilon, dpDelta: extra.dpEpsilon ? extra.dpDelta : undefined,
                maxPerExampleGradNorm: extra.dpEpsilon ? extra.maxPerExampleGradNorm : undefined, signal: this.options.signal});
            return {adapter: r.output, steps: r.steps, trainLoss: r.trainLoss, seconds: r.seconds, dp: r.dp};
        });
    }

    /** Folds an adapter into its model (the server sends the client one model file). */
    merge(model: string, adapter: string) {
        return this.cache.stage("merge", {model: this.identity(model), adapter: this.identity(adapter)}, async (dir) => {
            const output = path.join(dir, "merged.gguf");
            await mergeLora(model, adapter, output);
            return {model: output};
        });
    }

    /**
     * The federated job's quantize stage: llama.cpp's quantizer, with the importance matrix of
     * `imatrixFile`'s items (the label and rationale sequences BI scores) when given.
     */
    quantize(model: string, type: string, task: TaskSpec, imatrixFile: string | undefined, rationales: boolean) {
        const key = {model: this.identity(model), type, format: task.eval, imatrix: imatrixFile && this.identity(imatrixFile), rationales};
        return this.cache.stage("quantize", key, async (dir) => {
            this.log(`quantize ${type}${imatrixFile ? " with the task importance matrix" : ""}`);
            let imatrix: ImatrixSource | undefined;
            if (imatrixFile) {
                let items = await readTaskItems(imatrixFile);
                if (!rationales)
                    items = items.map(({rationale: _, ...rest}) => rest);
                const m = await loadModel(model, {threads: this.threads, gpuLayers: this.config.gpuLayers});
                try {
                    const {matrix} = await taskImatrix(m, items, path.basename(imatrixFile), {format: task.eval});
                    imatrix = {matrix, kind: "task", file: path.basename(imatrixFile)};
                } finally {
                    m.close();
                }
            }
            const output = path.join(dir, "quantized.gguf");
            const r = await quantizeModel(model, output, {type, imatrix, threads: this.threads});
            return {model: output, type: r.type, imatrix: r.imatrix, imatrixEntries: imatrix?.matrix.entries.length ?? 0,
                sizeBefore: r.bytesIn, sizeAfter: r.bytesOut};
        });
    }

    /**
     * DP-Instruct-C's sampling: `n` items from a (DP-tuned, merged) generator, in the item text form
     * it was tuned on, under a grammar so that every sample parses.
     */
    sampleItems(generatorModel: string, n: number, choices: number, seed: number) {
        return this.cache.stage("dp-sample", {model: this.identity(generatorModel), n, choices, seed, tokens: this.config.dpSampleTokens}, async (dir) => {
            this.log(`sample ${n} items from the DP-tuned generator`);
            const m = await loadModel(generatorModel, {threads: this.threads, gpuLayers: this.config.gpuLayers});
            const letters = "ABCDEFGH".slice(0, choices).split("");
            const grammar = [`root ::= " Question: " text "\\n" ${letters.map((l) => `"${l}. " text "\\n"`).join(" ")} "Answer: " [${letters.join("")}]`,
                `text ::= [^\\n]{1,30}`].join("\n");
            const gen = await BatchGenerator.open(m, {sequences: 8, contextSize: 512, threads: this.threads});
            const items: TaskItem[] = [];
            let unparsed = 0;
            try {
                const prompt = m.tokenize(itemTextPrompt, {addSpecial: true});
                const rng = new Random(seed);
                const replies = await Promise.all(Array.from({length: n}, () => gen.generate({prompt, maxTokens: this.config.dpSampleTokens,
                    temperature: 1, seed: rng.nextInt(2 ** 31), grammar, grammarRoot: "root"}).catch(() => undefined)));
                replies.forEach((r, i) => {
                    const item = r && parseItemText(r.text, letters, `dp-${seed}-${i}`);
                    if (item)
                        items.push(item);
                    else
                        unparsed++;
                });
            } finally {
                await gen.close();
                m.close();
            }
            const file = path.join(dir, "dp-synthetic.jsonl");
            await writeJsonlAtomic(file, items);
            return {file, items: items.length, unparsed};
        });
    }
}

/** The prompt DP-Instruct-C tunes its generator with: it continues with one item in text form. */
export const itemTextPrompt = "Write a quiz question:";

/** An item in the text form the DP generator learns ("Question: …\nA. …\nAnswer: B"). */
export function itemText(item: TaskItem): string {
    return `Question: ${item.question.trim()}\n${item.choices.map((c, i) => `${"ABCDEFGH"[i]}. ${c.text.trim()}`).join("\n")}\n` +
        `Answer: ${"ABCDEFGH"[item.choices.findIndex((c) => c.label === item.answer)]}`;
}

/** Parses one sampled item; undefined when the text is not an item. */
export function parseItemText(text: string, letters: string[], id: string): TaskItem | undefined {
    const lines = text.trim().split("\n").map((l) => l.trim());
    const q = /^Question:\s*(.+)$/.exec(lines[0] ?? "");
    if (!q)
        return undefined;
    const choices = letters.map((l, i) => {
        const m = new RegExp(`^${l}\\.\\s*(.+)$`).exec(lines[1 + i] ?? "");
        return m ? {label: l, text: m[1].trim()} : undefined;
    });
    const a = /^Answer:\s*([A-H])$/.exec(lines[1 + letters.length] ?? "");
    if (choices.some((c) => !c) || !a || !letters.includes(a[1]))
        return undefined;
    if (new Set(choices.map((c) => c!.text)).size !== choices.length)
        return undefined;
    return {id, question: q[1].trim(), choices: choices as {label: string; text: string}[], answer: a[1]};
}

/**
 * Items whose label example is the item text after `itemTextPrompt` (through the openbookqa
 * format, whose context is the question alone: here empty, so the prompt is the label prefix).
 */
export function generatorTrainingItems(items: TaskItem[]): TaskItem[] {
    return items.map((it) => ({id: it.id, question: "", choices: [{label: "A", text: itemText(it)}], answer: "A"}));
}
