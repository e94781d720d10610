// LoRA training of a (pruned) model on task items: METHOD.md step 4 (server: CoT distillation,
// L = L_label + lambda * L_rationale over synthetic items) and step 6 (client: label loss over
// private items). Batches of items, gradient accumulation over token-budgeted micro-batches,
// AdamW with warmup and linear/cosine decay, validation loss, checkpoint and exact resume.
import {createHash} from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {readJsonl, DataError} from "../data/jsonl.js";
import {defaultTaskFormat, labelTaskPrefix, promptFormatVersion, promptMetadataKeys, readPromptRecord, taskFormatNames,
    type TaskFormatName} from "../data/prompt.js";
import {taskItemProblem, type TaskItem} from "../data/task-item.js";
import type {GgufKv} from "../gguf/write.js";
import {readGguf, type GgufModelFile} from "../gguf/read.js";
import {checkModelLoadOptions, loadModel} from "../model.js";
import {defaultTargetModules, initLoraAdapter, readLoraAdapter, writeLoraAdapter, type LoraAdapter} from "./adapter.js";
import {loadCheckpoint, saveCheckpoint, type EvalRecord, type StepRecord} from "./checkpoint.js";
import {ExampleEncoder, exampleLength, packMicroBatches, stepTokenWeights, type EncodedExample, type ExampleKind,
    type MicroBatch, type TrainTask, type WeightedItem} from "./examples.js";
import {dpSgdEpsilon, noiseMultiplierFor} from "./dp-accountant.js";
import {applyAdamW, GaussianNoise, poissonSample, privateGradient} from "./dp-sgd.js";
import {deriveSeed, Random} from "../random.js";
import {learningRateAt, lrSchedulers, type LrSchedule, type LrScheduler} from "./schedule.js";
import {LoraTrainer} from "./trainer.js";
import {loraDefaults, trainDefaults} from "./defaults.js";
import {checkExclusive, checkOption, isInt, isNum, OptionError} from "../options.js";

export interface TrainOptions {
    /** Base model GGUF (any type llama.cpp loads; F32/F16/Q8_0/Q4_K bases train on the CPU). */
    model: string;
    /** Training items: a TaskItem JSONL file (an item may carry a numeric "weight"), or the items. */
    data: string | TaskItem[] | WeightedItem[];
    /** Adapter GGUF to write (atomically). */
    output: string;
    /** "cot" (default): label + rationale examples; "label": label examples only. */
    task?: TrainTask;
    /**
     * The task whose format the examples take (ts/data/prompt.ts; default "mc"): the label target is
     * what that task's evaluation scores, after its context. Recorded in the adapter.
     */
    format?: TaskFormatName;
    /**
     * Put before the context of every label example (recorded in the adapter; `eval` applies it).
     * Default: the prefix the base model records (a merged, trained model), else "[label] ".
     */
    labelPrefix?: string;
    /** lambda of L_label + lambda * L_rationale (default 1). */
    rationaleWeight?: number;
    r?: number;
    loraAlpha?: number;
    loraDropout?: number;
    /** Default: attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down (those the model has). */
    targetModules?: string[];
    /** Start from this adapter (a LoRA GGUF on this model's matrices) instead of a fresh one, e.g. the
     * global adapter of a federated round; its rank and alpha are used (r / loraAlpha, when given,
     * must agree) and its tensors decide the adapted modules. The AdamW moments start at zero. */
    initAdapter?: string;
    learningRate?: number;
    weightDecay?: number;
    adamBeta1?: number;
    adamBeta2?: number;
    adamEpsilon?: number;
    /** Global gradient-norm clipping (default 1, as transformers; 0 disables it). */
    maxGradNorm?: number;
    lrScheduler?: LrScheduler;
    warmupSteps?: number;
    warmupRatio?: number;
    /** Items per optimizer step (default 32): gradients accumulate over its micro-batches. */
    batchSize?: number;
    /** Optimizer steps; default `epochs` passes over the items. */
    steps?: number;
    /** Passes over the items when `steps` is not given (default 3). */
    epochs?: number;
    maxInputLength?: number;
    maxTargetLength?: number;
    /** Tokens of one micro-batch (default: the longest example, at least 256). */
    microBatchTokens?: number;
    /** Sequences of one micro-batch (default 64, at most 256). */
    microBatchSequences?: number;
    /** Held-out items for the validation loss: a JSONL file or items. */
    validationData?: string | TaskItem[] | WeightedItem[];
    /** Or hold out this share of the training items (seeded). */
    validationSplit?: number;
    /** Evaluate every N steps (and always at the end when there is validation data). */
    evalEvery?: number;
    /** Folder of the checkpoint (see checkpoint.ts). */
    checkpointDir?: string;
    /** Save a checkpoint every N steps (and at the end) when checkpointDir is set (default 100). */
    saveEvery?: number;
    /** Continue from checkpointDir's checkpoint. */
    resume?: boolean;
    seed?: number;
    threads?: number;
    gpuLayers?: number;
    /** Stop after this many optimizer steps of this run (the schedule still spans `steps`): for staged runs. */
    stopAfter?: number;
    /**
     * DP-SGD (dp-sgd.ts): train to this target ε; the noise multiplier is the smallest that the RDP
     * accountant (dp-accountant.ts) finds reaching it after all steps. Give this or dpNoiseMultiplier.
     */
    dpEpsilon?: number;
    /** DP-SGD: δ of the (ε, δ) guarantee (default 1e-5; keep it below 1 / items). */
    dpDelta?: number;
    /** DP-SGD with this noise multiplier σ (noise std σ·C); the spent ε is reported. */
    dpNoiseMultiplier?: number;
    /** DP-SGD: C, the L2 norm each item's gradient is clipped to (default 1). */
    maxPerExampleGradNorm?: number;
    /** DP-SGD: seed the noise (reproducible runs for tests; NOT private). Default: the OS's cryptographic generator. */
    dpNoiseSeed?: number;
    onProgress?: (event: TrainEvent) => void;
    signal?: AbortSignal;
}

/** What DP-SGD spent: the (ε, δ) guarantee of the whole run, for the item-level neighbouring relation. */
export interface DpReport {
    epsilon: number;
    delta: number;
    /** The target ε when one was given. */
    targetEpsilon?: number;
    noiseMultiplier: number;
    maxPerExampleGradNorm: number;
    /** Poisson sampling rate q = batch size / items. */
    sampleRate: number;
    steps: number;
    /** The RDP order that attains ε. */
    order: number;
    accountant: "rdp (Mironov et al. 2019), conversion of Balle et al. 2020";
}

export type TrainEvent =
    | {type: "step"; step: number; steps: number; epoch: number; loss: number; learningRate: number; gradNorm: number;
        tokens: number; tokensPerSecond: number; elapsedSeconds: number; etaSeconds: number}
    | ({type: "eval"} & EvalRecord)
    | {type: "checkpoint"; step: number; path: string};

export interface TrainResult {
    output: string;
    task: TrainTask;
    format: TaskFormatName;
    /** The label prefix the adapter records (eval puts it before every context). */
    labelPrefix: string;
    /** Optimizer steps done in total (resumed runs included). */
    steps: number;
    totalSteps: number;
    epochs: number;
    items: number;
    validationItems: number;
    examples: number;
    targetTensors: number;
    trainableParameters: number;
    /** Loss of the last step. */
    trainLoss: number;
    validation?: EvalRecord;
    history: StepRecord[];
    evaluations: EvalRecord[];
    tokens: number;
    seconds: number;
    tokensPerSecond: number;
    resumedFrom?: number;
    checkpoint?: string;
    /** DP-SGD runs: the privacy spent. */
    dp?: DpReport;
}

export interface ResolvedOptions {
    task: TrainTask;
    format: TaskFormatName;
    rationaleWeight: number;
    r: number;
    loraAlpha: number;
    loraDropout: number;
    targetModules: string[];
    explicitTargets: boolean;
    learningRate: number;
    weightDecay: number;
    adamBeta1: number;
    adamBeta2: number;
    adamEpsilon: number;
    maxGradNorm: number;
    lrScheduler: LrScheduler;
    batchSize: number;
    maxInputLength: number;
    maxTargetLength: number;
    microBatchSequences: number;
    seed: number;
    saveEvery: number;
}

const check = checkOption;

type DefaultedKey = Exclude<keyof ResolvedOptions, "explicitTargets">;

/** An option's default, the check its value must pass and what OptionError says it must be. */
type OptionRow<T> = readonly [fallback: Readonly<T>, valid: (v: any) => boolean, expected: string];

/**
 * The options that `resolveTrainOptions` checks whether or not they are given, in the order they
 * are resolved and checked, which is the order of ResolvedOptions; every key of it has a row. A row
 * whose default is undefined (labelPrefix) is checked only when given, and is not part of it.
 */
const defaultedOptions: {readonly [K in DefaultedKey | "labelPrefix"]: OptionRow<K extends DefaultedKey ? ResolvedOptions[K] : undefined>} = {
    task: [trainDefaults.task, (v) => v === "cot" || v === "label", "\"cot\" or \"label\""],
    format: [defaultTaskFormat, (v) => taskFormatNames.includes(v), taskFormatNames.join(" | ")],
    labelPrefix: [undefined, (v) => typeof v === "string", "a string"],
    rationaleWeight: [trainDefaults.rationaleWeight, (v) => isNum(v, 0, 1e6), "a non-negative number"],
    r: [loraDefaults.r, (v) => isInt(v, 1, 4096), "an integer in [1, 4096]"],
    loraAlpha: [loraDefaults.loraAlpha, (v) => isNum(v, 1e-9, 1e9), "a positive number"],
    loraDropout: [loraDefaults.loraDropout, (v) => isNum(v, 0, 0.99), "a number in [0, 0.99]"],
    targetModules: [defaultTargetModules,
        (v) => Array.isArray(v) && v.length > 0 && v.every((m) => typeof m === "string" && m !== ""), "a non-empty list of module names"],
    learningRate: [trainDefaults.learningRate, (v) => isNum(v, 0, 10) && v > 0, "a positive number"],
    weightDecay: [trainDefaults.weightDecay, (v) => isNum(v, 0, 1e3), "a non-negative number"],
    adamBeta1: [trainDefaults.adamBeta1, (v) => isNum(v, 0, 0.999999), "in [0, 1)"],
    adamBeta2: [trainDefaults.adamBeta2, (v) => isNum(v, 0, 0.999999999), "in [0, 1)"],
    adamEpsilon: [trainDefaults.adamEpsilon, (v) => isNum(v, 1e-30, 1), "a positive number"],
    maxGradNorm: [trainDefaults.maxGradNorm, (v) => isNum(v, 0, 1e30), "a non-negative number"],
    lrScheduler: [trainDefaults.lrScheduler, (v) => lrSchedulers.includes(v), lrSchedulers.join(" | ")],
    batchSize: [trainDefaults.batchSize, (v) => isInt(v, 1), "a positive integer"],
    maxInputLength: [trainDefaults.maxInputLength, (v) => isInt(v, 1, 1 << 20), "a positive integer"],
    maxTargetLength: [trainDefaults.maxTargetLength, (v) => isInt(v, 1, 1 << 20), "a positive integer"],
    microBatchSequences: [trainDefaults.microBatchSequences, (v) => isInt(v, 1, 256), "an integer in [1, 256]"],
    seed: [trainDefaults.seed, (v) => isInt(v, 0), "a non-negative integer below 2^53"],
    saveEvery: [trainDefaults.saveEvery, (v) => isInt(v, 1), "a positive integer"],
};

/** The defaulted options filled in and checked, in the table's order. */
function resolveDefaulted(o: Omit<TrainOptions, "model" | "data" | "output">): ResolvedOptions {
    const given = o as Record<string, unknown>;
    const r: Record<string, unknown> = {};
    for (const [key, [fallback, valid, expected]] of Object.entries(defaultedOptions)) {
        if (fallback === undefined) {
            if (given[key] !== undefined)
                check(valid(given[key]), key, expected, given[key]);
            continue;
        }
        // a default list is copied, so that the caller's changes to the result do not reach it
        const value = given[key] ?? (Array.isArray(fallback) ? [...fallback] : fallback);
        check(valid(value), key, expected, value);
        r[key] = value;
        if (key === "targetModules") // explicitTargets stands next to it in ResolvedOptions
            r.explicitTargets = o.targetModules !== undefined;
    }
    return r as unknown as ResolvedOptions;
}

/**
 * Fills `trainDefaults` and `loraDefaults` into the options and checks every one (the only place
 * they are checked; OptionError names the option): `trainLora` starts with it, and a caller may
 * call it first to refuse bad options before any work.
 */
export function resolveTrainOptions(o: Omit<TrainOptions, "model" | "data" | "output">): ResolvedOptions {
    const r = resolveDefaulted(o);
    checkExclusive(o, "steps", "epochs");
    if (o.steps !== undefined)
        check(isInt(o.steps, 1), "steps", "a positive integer", o.steps);
    if (o.epochs !== undefined)
        check(isInt(o.epochs, 1), "epochs", "a positive integer", o.epochs);
    checkExclusive(o, "warmupSteps", "warmupRatio");
    if (o.warmupSteps !== undefined)
        check(isInt(o.warmupSteps, 0), "warmupSteps", "a non-negative integer", o.warmupSteps);
    if (o.warmupRatio !== undefined)
        check(isNum(o.warmupRatio, 0, 1), "warmupRatio", "a number in [0, 1]", o.warmupRatio);
    checkExclusive(o, "validationData", "validationSplit");
    if (o.validationSplit !== undefined)
        check(isNum(o.validationSplit, 0, 1) && o.validationSplit > 0 && o.validationSplit < 1, "validationSplit", "a number in (0, 1)", o.validationSplit);
    if (o.evalEvery !== undefined)
        check(isInt(o.evalEvery, 1), "evalEvery", "a positive integer", o.evalEvery);
    if (o.microBatchTokens !== undefined)
        check(isInt(o.microBatchTokens, 2, 1 << 20), "microBatchTokens", "an integer >= 2", o.microBatchTokens);
    if (o.stopAfter !== undefined)
        check(isInt(o.stopAfter, 1), "stopAfter", "a positive integer", o.stopAfter);
    if (o.resume && !o.checkpointDir)
        throw new OptionError(["resume", "checkpointDir"], ([a, b]) => `${a} needs ${b}`);
    checkExclusive(o, "dpEpsilon", "dpNoiseMultiplier");
    if (o.dpEpsilon !== undefined)
        check(isNum(o.dpEpsilon, 0, 1e6) && o.dpEpsilon > 0, "dpEpsilon", "a positive number", o.dpEpsilon);
    if (o.dpNoiseMultiplier !== undefined)
        check(isNum(o.dpNoiseMultiplier, 0, 1e6), "dpNoiseMultiplier", "a non-negative number", o.dpNoiseMultiplier);
    if (o.dpDelta !== undefined)
        check(isNum(o.dpDelta, 0, 1) && o.dpDelta > 0 && o.dpDelta < 1, "dpDelta", "a number in (0, 1)", o.dpDelta);
    if (o.maxPerExampleGradNorm !== undefined)
        check(isNum(o.maxPerExampleGradNorm, 0, 1e30) && o.maxPerExampleGradNorm > 0, "maxPerExampleGradNorm", "a positive number", o.maxPerExampleGradNorm);
    if (o.dpNoiseSeed !== undefined)
        check(isInt(o.dpNoiseSeed, 0), "dpNoiseSeed", "a non-negative integer", o.dpNoiseSeed);
    const dpOnly = (["dpDelta", "maxPerExampleGradNorm", "dpNoiseSeed"] as const).filter((k) => o[k] !== undefined);
    if (o.dpEpsilon === undefined && o.dpNoiseMultiplier === undefined && dpOnly.length > 0)
        throw new OptionError([...dpOnly, "dpEpsilon", "dpNoiseMultiplier"], (n) =>
            `${n.slice(0, -2).join(" and ")} ${dpOnly.length > 1 ? "go" : "goes"} with ${n.at(-2)} or ${n.at(-1)} (DP-SGD)`);
    checkModelLoadOptions(o);
    return r;
}

/** Reads task items from JSONL; an item may carry "weight", a non-negative number scaling its loss. */
export async function readWeightedItems(file: string): Promise<WeightedItem[]> {
    const out: WeightedItem[] = [];
    for await (const {value, line} of readJsonl(file)) {
        const problem = taskItemProblem(value);
        if (problem)
            throw new DataError(file, line, problem);
        const w = (value as {weight?: unknown}).weight;
        if (w !== undefined && (typeof w !== "number" || !Number.isFinite(w) || w < 0))
            throw new DataError(file, line, "\"weight\" must be a non-negative number");
        out.push({item: value as TaskItem, weight: (w as number | undefined) ?? 1});
    }
    if (out.length === 0)
        throw new DataError(file, undefined, "no items");
    return out;
}

async function itemsOf(data: string | TaskItem[] | WeightedItem[]): Promise<WeightedItem[]> {
    if (typeof data === "string")
        return readWeightedItems(data);
    if (data.length === 0)
        throw new Error("no training items");
    return data.map((d) => ("item" in d && "weight" in d ? d as WeightedItem : {item: d as TaskItem, weight: 1}));
}

function examplesHash(examples: EncodedExample[]): string {
    const h = createHash("sha256");
    for (const ex of examples) {
        h.update(`${ex.item}:${ex.kind}:${ex.weight}:`);
        h.update(new Uint8Array(ex.prompt.buffer, ex.prompt.byteOffset, ex.prompt.byteLength));
        h.update("|");
        h.update(new Uint8Array(ex.target.buffer, ex.target.byteOffset, ex.target.byteLength));
        h.update(";");
    }
    return h.digest("hex");
}

/** Validation loss per task: the mean target-token cross-entropy of each, combined as in training. */
export async function validationLoss(trainer: LoraTrainer, examples: EncodedExample[], task: TrainTask, rationaleWeight: number,
    maxTokens: number, maxSequences: number, step: number): Promise<EvalRecord> {
    const mean = async (kind: ExampleKind): Promise<number> => {
        const exs = examples.filter((e) => e.kind === kind);
        const batches = packMicroBatches(exs, exs.map(() => 1), maxTokens, maxSequences);
        const r = await trainer.evaluate(batches);
        return r.loss / r.targets;
    };
    const labelLoss = await mean("label");
    if (task === "label")
        return {step, loss: labelLoss, labelLoss};
    const rationaleLoss = await mean("rationale");
    return {step, loss: labelLoss + rationaleWeight * rationaleLoss, labelLoss, rationaleLoss};
}

function tokensOf(batches: MicroBatch[]): number {
    return batches.reduce((s, b) => s + b.tokens.length, 0);
}

/** The label prefix training puts before every context: the one given, else the one the model records, else "[label] ". */
export async function resolveLabelPrefix(model: string, labelPrefix?: string): Promise<string> {
    return labelPrefix ?? (await readPromptRecord(model)).labelPrefix ?? labelTaskPrefix;
}

/**
 * Checks a starting adapter against the model (every matrix adapts one of its tensors, in shape) and
 * takes its rank and alpha into the resolved options; returns the file's sha256 for the fingerprint.
 */
async function checkInitAdapter(options: TrainOptions, o: ResolvedOptions, model: GgufModelFile): Promise<string> {
    const file = options.initAdapter!;
    const adapter = await readLoraAdapter(file);
    if (options.r !== undefined && options.r !== adapter.r)
        throw new RangeError(`r = ${options.r}, but the starting adapter ${file} has rank ${adapter.r}`);
    if (options.loraAlpha !== undefined && options.loraAlpha !== adapter.alpha)
        throw new RangeError(`loraAlpha = ${options.loraAlpha}, but the starting adapter ${file} has alpha ${adapter.alpha}`);
    if (adapter.architecture !== model.architecture)
        throw new Error(`${file}: an adapter for ${adapter.architecture}, the model is ${model.architecture}`);
    const shapes = new Map(model.tensors.map((t) => [t.name, t.shape]));
    for (const t of adapter.tensors) {
        const base = t.name.replace(/\.lora_[ab]$/, "");
        const shape = shapes.get(base);
        if (!shape || shape.length !== 2)
            throw new Error(`${file}: tensor ${t.name} adapts ${base}, which ${options.model} lacks`);
        const fits = t.name.endsWith(".lora_a") ? t.shape[0] === shape[0] : t.shape[1] === shape[1];
        if (!fits)
            throw new Error(`${file}: tensor ${t.name} [${t.shape.join(", ")}] does not fit ${base} [${shape.join(", ")}]`);
    }
    o.r = adapter.r;
    o.loraAlpha = adapter.alpha;
    return createHash("sha256").update(await fs.promises.readFile(file)).digest("hex");
}

/** The training items, the held-out items and their encoded examples. */
interface TrainData {
    items: WeightedItem[];
    validation: WeightedItem[];
    /** The label prefix the examples were encoded with (and the adapter records). */
    labelPrefix: string;
    examples: EncodedExample[];
    valExamples: EncodedExample[];
    /** The examples of each item, by item index. */
    byItem: EncodedExample[][];
    microBatchTokens: number;
}

/** Holds out `share` of the items (at least one, and one left to train on), seeded. */
function splitValidation(items: WeightedItem[], share: number, seed: number): {items: WeightedItem[]; validation: WeightedItem[]} {
    if (items.length < 2)
        throw new Error("a validation split needs at least two items");
    const perm = new Random(deriveSeed(seed, "validation-split")).shuffle(items.map((_, i) => i));
    const n = Math.min(items.length - 1, Math.max(1, Math.round(share * items.length)));
    const held = new Set(perm.slice(0, n));
    return {validation: items.filter((_, i) => held.has(i)), items: items.filter((_, i) => !held.has(i))};
}

/** Reads and encodes the training and validation items; sizes the micro-batches to the longest example. */
async function loadTrainData(options: TrainOptions, o: ResolvedOptions): Promise<TrainData> {
    let items = await itemsOf(options.data);
    let validation: WeightedItem[] = [];
    if (options.validationData !== undefined)
        validation = await itemsOf(options.validationData);
    else if (options.validationSplit !== undefined)
        ({items, validation} = splitValidation(items, options.validationSplit, o.seed));

    const labelPrefix = await resolveLabelPrefix(options.model, options.labelPrefix);
    const vocab = await loadModel(options.model, {vocabOnly: true});
    let examples: EncodedExample[], valExamples: EncodedExample[];
    try {
        const encoder = new ExampleEncoder(vocab, {task: o.task, format: o.format, labelPrefix, maxInputLength: o.maxInputLength,
            maxTargetLength: o.maxTargetLength});
        examples = encoder.encodeItems(items);
        valExamples = encoder.encodeItems(validation);
    } finally {
        vocab.close();
    }
    const byItem: EncodedExample[][] = items.map(() => []);
    for (const ex of examples)
        byItem[ex.item].push(ex);

    const longest = Math.max(...examples.map(exampleLength), ...valExamples.map(exampleLength));
    const microBatchTokens = options.microBatchTokens ?? Math.max(256, longest);
    if (longest > microBatchTokens)
        throw new RangeError(`microBatchTokens ${microBatchTokens} is below the longest example (${longest} tokens)`);
    return {items, validation, labelPrefix, examples, valExamples, byItem, microBatchTokens};
}

/** Steps, learning rate and the items of each step (a seeded order per epoch). */
interface TrainSchedule {
    stepsPerEpoch: number;
    totalSteps: number;
    warmupSteps: number;
    lr: LrSchedule;
    stepItems(step: number): number[];
}

function planSchedule(options: TrainOptions, o: ResolvedOptions, nItems: number): TrainSchedule {
    const stepsPerEpoch = Math.ceil(nItems / o.batchSize);
    const totalSteps = options.steps ?? (options.epochs ?? trainDefaults.epochs) * stepsPerEpoch;
    const warmupSteps = options.warmupSteps ?? Math.ceil((options.warmupRatio ?? 0) * totalSteps);
    const orders = new Map<number, number[]>();
    const stepItems = (step: number): number[] => {
        const epoch = Math.floor(step / stepsPerEpoch), b = step % stepsPerEpoch;
        let order = orders.get(epoch);
        if (!order) {
            order = new Random(deriveSeed(o.seed, "order", epoch)).shuffle(Array.from({length: nItems}, (_, i) => i));
            orders.clear();
            orders.set(epoch, order);
        }
        return order.slice(b * o.batchSize, (b + 1) * o.batchSize);
    };
    return {stepsPerEpoch, totalSteps, warmupSteps, lr: {learningRate: o.learningRate, scheduler: o.lrScheduler, warmupSteps, totalSteps}, stepItems};
}

/** DP-SGD's settings: Poisson sampling at rate q = batch / items, σ from the target ε or given. */
interface DpPlan {
    delta: number;
    sampleRate: number;
    maxPerExampleGradNorm: number;
    noiseMultiplier: number;
    noise: GaussianNoise;
}

function planDp(options: TrainOptions, o: ResolvedOptions, nItems: number, totalSteps: number): DpPlan | undefined {
    if (options.dpEpsilon === undefined && options.dpNoiseMultiplier === undefined)
        return undefined;
    const delta = options.dpDelta ?? trainDefaults.dpDelta;
    const sampleRate = Math.min(1, o.batchSize / nItems);
    const noiseMultiplier = options.dpNoiseMultiplier ?? noiseMultiplierFor(options.dpEpsilon!, {sampleRate, steps: totalSteps, delta});
    return {delta, sampleRate, maxPerExampleGradNorm: options.maxPerExampleGradNorm ?? trainDefaults.maxPerExampleGradNorm, noiseMultiplier,
        noise: new GaussianNoise(options.dpNoiseSeed)};
}

/** The (ε, δ) spent after `steps` steps. */
function dpReport(dp: DpPlan, steps: number, targetEpsilon: number | undefined): DpReport {
    const spent = dpSgdEpsilon({noiseMultiplier: dp.noiseMultiplier, sampleRate: dp.sampleRate, steps, delta: dp.delta});
    return {epsilon: spent.epsilon, delta: dp.delta, ...(targetEpsilon !== undefined ? {targetEpsilon} : {}),
        noiseMultiplier: dp.noiseMultiplier, maxPerExampleGradNorm: dp.maxPerExampleGradNorm, sampleRate: dp.sampleRate, steps,
        order: spent.order, accountant: "rdp (Mironov et al. 2019), conversion of Balle et al. 2020"};
}

/** What a checkpoint must have been made with to be resumed: settings, data and model. */
function trainFingerprint(options: TrainOptions, o: ResolvedOptions, gguf: GgufModelFile, data: TrainData, schedule: TrainSchedule,
    dp: DpPlan | undefined, initSha: string | undefined): Record<string, unknown> {
    const fingerprint: Record<string, unknown> = {
        model: path.basename(options.model),
        modelBytes: fs.statSync(options.model).size,
        architecture: gguf.architecture,
        examples: examplesHash(data.examples),
        validation: examplesHash(data.valExamples),
        ...o,
        totalSteps: schedule.totalSteps,
        warmupSteps: schedule.warmupSteps,
        microBatchTokens: data.microBatchTokens,
        ...(dp ? {dp: {dpDelta: dp.delta, noiseMultiplier: dp.noiseMultiplier, maxPerExampleGradNorm: dp.maxPerExampleGradNorm,
            sampleRate: dp.sampleRate}} : {}),
        ...(initSha ? {initAdapter: initSha} : {}),
    };
    delete fingerprint.saveEvery;
    return fingerprint;
}

/** The trainer and the run's record so far: fresh, from a starting adapter, or from the checkpoint. */
interface TrainStart {
    trainer: LoraTrainer;
    history: StepRecord[];
    evaluations: EvalRecord[];
    tokens: number;
    priorSeconds: number;
    startStep: number;
}

async function openTrainer(options: TrainOptions, o: ResolvedOptions, gguf: GgufModelFile, fingerprint: Record<string, unknown>,
    microBatchTokens: number): Promise<TrainStart> {
    const trainerOptions = {contextSize: microBatchTokens, sequences: o.microBatchSequences, threads: options.threads, gpuLayers: options.gpuLayers};
    const fresh = {history: [], evaluations: [], tokens: 0, priorSeconds: 0, startStep: 0};
    if (options.resume) {
        const ckpt = await loadCheckpoint(options.checkpointDir!);
        const mismatch = Object.keys({...fingerprint, ...ckpt.meta.fingerprint})
            .filter((k) => JSON.stringify(fingerprint[k]) !== JSON.stringify(ckpt.meta.fingerprint[k]));
        if (mismatch.length > 0)
            throw new Error(`${options.checkpointDir}: the checkpoint was made with other settings or data (${mismatch.join(", ")} differ)`);
        const trainer = await LoraTrainer.open(options.model, ckpt.adapterPath, trainerOptions);
        try {
            trainer.setState(ckpt.state);
        } catch (err) {
            trainer.close();
            throw err;
        }
        const {history, evaluations, tokens, seconds, step} = ckpt.meta;
        return {trainer, history, evaluations, tokens, priorSeconds: seconds, startStep: step};
    }
    if (options.initAdapter !== undefined)
        return {trainer: await LoraTrainer.open(options.model, options.initAdapter, trainerOptions), ...fresh};
    const init = initLoraAdapter(gguf, {r: o.r, loraAlpha: o.loraAlpha, targetModules: o.targetModules}, o.seed, o.explicitTargets);
    const tmpDir = await fs.promises.mkdtemp(path.join(os.tmpdir(), "ppc-gpt-lora-"));
    try {
        const initPath = path.join(tmpDir, "init.gguf");
        await writeLoraAdapter(initPath, init);
        return {trainer: await LoraTrainer.open(options.model, initPath, trainerOptions), ...fresh};
    } finally {
        await fs.promises.rm(tmpDir, {recursive: true, force: true});
    }
}

/** Writes the trained adapter with what it was trained as (LoRA settings, task, prompt format, DP spent). */
async function writeTrainedAdapter(options: TrainOptions, o: ResolvedOptions, adapter: LoraAdapter, tensorNames: string[], steps: number,
    labelPrefix: string, dp: DpReport | undefined): Promise<void> {
    await writeLoraAdapter(options.output, adapter, [
        {key: "general.name", type: "string", value: `${path.basename(options.model, ".gguf")} LoRA (${o.task})`},
        {key: "ppc_gpt.lora.r", type: "uint32", value: o.r},
        {key: "ppc_gpt.lora.dropout", type: "float32", value: o.loraDropout},
        {key: "ppc_gpt.lora.target_modules", type: "array", elementType: "string", value: [...new Set(tensorNames.map((name) =>
            name.replace(/^blk\.\d+\./, "").replace(/\.weight\.lora_[ab]$/, "")))]},
        {key: "ppc_gpt.train.task", type: "string", value: o.task},
        {key: "ppc_gpt.train.steps", type: "uint32", value: steps},
        {key: promptMetadataKeys.version, type: "string", value: promptFormatVersion},
        {key: promptMetadataKeys.format, type: "string", value: o.format},
        {key: promptMetadataKeys.labelPrefix, type: "string", value: labelPrefix},
        ...(dp ? [
            {key: "ppc_gpt.dp.epsilon", type: "float64", value: dp.epsilon},
            {key: "ppc_gpt.dp.delta", type: "float64", value: dp.delta},
            {key: "ppc_gpt.dp.noise_multiplier", type: "float64", value: dp.noiseMultiplier},
            {key: "ppc_gpt.dp.max_per_example_grad_norm", type: "float64", value: dp.maxPerExampleGradNorm},
            {key: "ppc_gpt.dp.sample_rate", type: "float64", value: dp.sampleRate},
            {key: "ppc_gpt.dp.steps", type: "uint32", value: dp.steps},
            {key: "ppc_gpt.dp.accountant", type: "string", value: dp.accountant},
        ] as GgufKv[] : []),
    ]);
}

/** A run in progress: what its steps read and the record they add to. */
interface TrainRun extends TrainStart {
    options: TrainOptions;
    o: ResolvedOptions;
    data: TrainData;
    schedule: TrainSchedule;
    dp?: DpPlan;
    /** The validation loss at `step`, recorded (nothing without validation data). */
    evaluate(step: number): Promise<void>;
    /** A checkpoint, when the run has a checkpoint folder. */
    save(): Promise<void>;
}

type AdamWStep = {lr: number; beta1: number; beta2: number; eps: number; weightDecay: number};

/** One DP-SGD step: one item = one privacy unit, its examples' loss, each task the mean over the item's targets. */
async function privateStep(run: TrainRun, dp: DpPlan, step: number, adamw: AdamWStep): Promise<{loss: number; gradNorm: number; tokens: number}> {
    const {o, data, options} = run;
    const sampled = poissonSample(data.items.length, dp.sampleRate, deriveSeed(o.seed, "poisson", step));
    const perItem = sampled.map((i) => packMicroBatches(data.byItem[i], stepTokenWeights(data.byItem[i], {label: 1, rationale: o.rationaleWeight}),
        data.microBatchTokens, o.microBatchSequences));
    const g = await privateGradient(run.trainer, perItem, {
        maxPerExampleGradNorm: dp.maxPerExampleGradNorm, noiseMultiplier: dp.noiseMultiplier, expectedBatchSize: dp.sampleRate * data.items.length,
        noise: dp.noise, dropout: o.loraDropout, dropoutSeed: (k) => deriveSeed(o.seed, "dropout", step, sampled[k]), signal: options.signal,
    });
    applyAdamW(run.trainer, g.gradients, adamw);
    let sq = 0;
    for (const t of g.gradients)
        for (let k = 0; k < t.length; k++)
            sq += t[k] * t[k];
    return {loss: sampled.length ? g.loss / sampled.length : NaN, gradNorm: Math.sqrt(sq), tokens: perItem.reduce((s, b) => s + tokensOf(b), 0)};
}

/** One optimizer step over the step's items, gradients accumulated in the engine over its micro-batches. */
async function batchStep(run: TrainRun, step: number, adamw: AdamWStep): Promise<{loss: number; gradNorm: number; tokens: number}> {
    const {o, data} = run;
    const exs = run.schedule.stepItems(step).flatMap((i) => data.byItem[i]);
    const batches = packMicroBatches(exs, stepTokenWeights(exs, {label: 1, rationale: o.rationaleWeight}), data.microBatchTokens, o.microBatchSequences);
    const r = await run.trainer.step(batches, {
        ...adamw, maxGradNorm: o.maxGradNorm, dropout: o.loraDropout, dropoutSeed: deriveSeed(o.seed, "dropout", step),
    });
    return {loss: r.loss, gradNorm: r.gradNorm, tokens: tokensOf(batches)};
}

/** Runs the steps from run.startStep to `endStep`, with their events, evaluations and checkpoints. */
async function runSteps(run: TrainRun, endStep: number): Promise<{loopStart: number; loopTokens: number}> {
    const {options, o, schedule} = run;
    const loopStart = Date.now();
    let loopTokens = 0;
    for (let step = run.startStep; step < endStep; step++) {
        if (options.signal?.aborted)
            throw new Error("training was cancelled");
        const learningRate = learningRateAt(schedule.lr, step);
        const adamw = {lr: learningRate, beta1: o.adamBeta1, beta2: o.adamBeta2, eps: o.adamEpsilon, weightDecay: o.weightDecay};
        const r = run.dp ? await privateStep(run, run.dp, step, adamw) : await batchStep(run, step, adamw);
        run.tokens += r.tokens;
        loopTokens += r.tokens;
        run.history.push({step: step + 1, loss: r.loss, learningRate, gradNorm: r.gradNorm, tokens: r.tokens});
        const elapsed = (Date.now() - loopStart) / 1000;
        const done = step + 1 - run.startStep;
        options.onProgress?.({
            type: "step", step: step + 1, steps: schedule.totalSteps, epoch: (step + 1) / schedule.stepsPerEpoch, loss: r.loss, learningRate,
            gradNorm: r.gradNorm, tokens: run.tokens, tokensPerSecond: loopTokens / Math.max(elapsed, 1e-9), elapsedSeconds: elapsed,
            etaSeconds: elapsed / done * (endStep - step - 1),
        });
        const last = step + 1 === endStep;
        if (options.evalEvery !== undefined && (step + 1) % options.evalEvery === 0 && !last)
            await run.evaluate(step + 1);
        if ((step + 1) % o.saveEvery === 0 && !last)
            await run.save();
    }
    return {loopStart, loopTokens};
}

/** Checks that the output can be written, before any work: its folder exists and it is not the base model. */
function checkOutput(options: TrainOptions): void {
    const outDir = path.dirname(path.resolve(options.output));
    if (!fs.existsSync(outDir) || !fs.statSync(outDir).isDirectory())
        throw new Error(`the output folder ${outDir} does not exist`);
    if (path.resolve(options.output) === path.resolve(options.model))
        throw new Error(`the output ${options.output} would overwrite the base model`);
}

/** Train a LoRA adapter on task items (optionally with DP-SGD) and write it as GGUF. */
export async function trainLora(options: TrainOptions): Promise<TrainResult> {
    const o = resolveTrainOptions(options);
    const started = Date.now();
    checkOutput(options);
    const data = await loadTrainData(options, o);
    const schedule = planSchedule(options, o, data.items.length);
    const dp = planDp(options, o, data.items.length, schedule.totalSteps);
    const gguf = await readGguf(options.model);
    const initSha = options.initAdapter !== undefined ? await checkInitAdapter(options, o, gguf) : undefined;
    const fingerprint = trainFingerprint(options, o, gguf, data, schedule, dp, initSha);
    const start = await openTrainer(options, o, gguf, fingerprint, data.microBatchTokens);
    const {trainer} = start;

    const abort = () => trainer.cancel();
    options.signal?.addEventListener("abort", abort);
    const info = trainer.info;
    let checkpointPath: string | undefined;
    const run: TrainRun = {
        ...start, options, o, data, schedule, dp,
        async save() {
            if (!options.checkpointDir)
                return;
            checkpointPath = await saveCheckpoint(options.checkpointDir, trainer.state(), {architecture: gguf.architecture, alpha: info.alpha, r: o.r},
                {fingerprint, history: run.history, evaluations: run.evaluations, tokens: run.tokens,
                    seconds: run.priorSeconds + (Date.now() - started) / 1000});
            options.onProgress?.({type: "checkpoint", step: trainer.info.step, path: checkpointPath});
        },
        async evaluate(step) {
            if (data.valExamples.length === 0)
                return;
            const rec = await validationLoss(trainer, data.valExamples, o.task, o.rationaleWeight, data.microBatchTokens, o.microBatchSequences, step);
            run.evaluations.push(rec);
            options.onProgress?.({type: "eval", ...rec});
        },
    };

    try {
        // with periodic evaluation, the curve starts at the untrained adapter (B = 0: the base model)
        if (run.startStep === 0 && options.evalEvery !== undefined)
            await run.evaluate(0);
        const endStep = options.stopAfter !== undefined ? Math.min(schedule.totalSteps, run.startStep + options.stopAfter) : schedule.totalSteps;
        const {loopStart, loopTokens} = await runSteps(run, endStep);
        const finalStep = trainer.info.step;
        const dpSpent = dp ? dpReport(dp, finalStep, options.dpEpsilon) : undefined;
        if (data.valExamples.length > 0 && run.evaluations.at(-1)?.step !== finalStep)
            await run.evaluate(finalStep);
        await run.save();
        await writeTrainedAdapter(options, o, trainer.adapter(gguf.architecture, o.r), info.tensors.map((t) => t.name), finalStep,
            data.labelPrefix, dpSpent);
        const loopSeconds = (Date.now() - loopStart) / 1000;
        return {
            output: options.output,
            task: o.task,
            format: o.format,
            labelPrefix: data.labelPrefix,
            steps: finalStep,
            totalSteps: schedule.totalSteps,
            epochs: finalStep / schedule.stepsPerEpoch,
            items: data.items.length,
            validationItems: data.validation.length,
            examples: data.examples.length,
            targetTensors: info.tensors.length / 2,
            trainableParameters: info.tensors.reduce((s, t) => s + t.shape[0] * t.shape[1], 0),
            trainLoss: run.history.at(-1)?.loss ?? NaN,
            validation: run.evaluations.at(-1),
            history: run.history,
            evaluations: run.evaluations,
            tokens: run.tokens,
            seconds: run.priorSeconds + (Date.now() - started) / 1000,
            tokensPerSecond: loopTokens / Math.max(loopSeconds, 1e-9),
            ...(options.resume ? {resumedFrom: run.startStep} : {}),
            ...(checkpointPath ? {checkpoint: checkpointPath} : {}),
            ...(dpSpent ? {dp: dpSpent} : {}),
        };
    } finally {
        options.signal?.removeEventListener("abort", abort);
        trainer.close();
    }
}
