// The client's side of a PruFed round, without transport: start from the adapter the server sent
// (client numbering), train E local steps on the private items with the project's LoRA trainer,
// keep the upload as <workDir>/round-N.gguf, and measure held-out accuracy on the client with
// `ppc-gpt eval`'s multiple-choice scoring in the format local training uses, so that what is
// measured is what is trained.
import fs from "node:fs";
import path from "node:path";
import {defaultTaskFormat} from "../../data/prompt.js";
import type {TaskItem} from "../../data/task-item.js";
import {evaluateItems, type EvalItemResult} from "../../eval/evaluate.js";
import type {AccuracySummary} from "../../eval/metrics.js";
import {loadModel} from "../../model.js";
import {writeLoraAdapter, type LoraAdapter} from "../../train/adapter.js";
import type {WeightedItem} from "../../train/examples.js";
import {resolveLabelPrefix, trainLora, type TrainOptions} from "../../train/train.js";
import {prufedDefaults} from "./defaults.js";

/** Training settings of a local round (PEFT / `ppc-gpt train` names); the rank and alpha come from the start adapter. */
export type LocalTrainSettings = Omit<TrainOptions, "model" | "data" | "output" | "initAdapter" | "steps" | "epochs" | "seed" |
    "r" | "loraAlpha" | "targetModules" | "checkpointDir" | "resume" | "onProgress" | "signal">;

export interface LocalRoundOptions {
    /** The client's (pruned) model. */
    model: string;
    /** Its private training items. */
    items: TaskItem[] | WeightedItem[];
    /** Its held-out items for accuracy (none: no accuracy). */
    heldOut?: TaskItem[];
    /** One held-out set shared by every client (`--eval-data`), scored besides its own, so depths compare on the same items. */
    evalSet?: TaskItem[];
    /** What the server sent: the global adapter's part for this client's layers, client numbering. */
    start: LoraAdapter;
    round: number;
    /** The client's folder: round-N-start.gguf (received) and round-N.gguf (uploaded) stay here. */
    workDir: string;
    /** Optimizer steps of local training (E). */
    localSteps: number;
    seed: number;
    train?: LocalTrainSettings;
}

export interface LocalRoundResult {
    round: number;
    /** The adapter file to upload (client numbering). */
    upload: string;
    trainLoss: number;
    /** Held-out accuracy (acc) of the received adapter, and after local training. */
    accuracyBefore?: number;
    accuracy?: number;
    /** The same measurements in full: acc and acc_norm with their standard errors. */
    heldOutBefore?: AccuracySummary;
    heldOut?: AccuracySummary;
    /** The shared evaluation set (`evalSet`), before and after local training. */
    evalSetBefore?: AccuracySummary;
    evalSet?: AccuracySummary;
    bytesDown: number;
    bytesUp: number;
    trainSeconds: number;
    /** Of `seconds`, the time spent measuring accuracy (not part of a round's cost proper). */
    evalSeconds: number;
    seconds: number;
}

export const defaultLocalTrain: LocalTrainSettings = {
    task: prufedDefaults.task, learningRate: prufedDefaults.learningRate, batchSize: prufedDefaults.batchSize,
    lrScheduler: prufedDefaults.lrScheduler, loraDropout: prufedDefaults.loraDropout, maxInputLength: prufedDefaults.maxInputLength,
    maxTargetLength: prufedDefaults.maxTargetLength,
};

/** The round's file names in the client's folder. */
export function clientRoundFiles(workDir: string, round: number): {start: string; upload: string} {
    return {start: path.join(workDir, `round-${round}-start.gguf`), upload: path.join(workDir, `round-${round}.gguf`)};
}

/** One client's PruFed round: local LoRA steps from the received global, the upload and its metrics. */
export async function runLocalRound(options: LocalRoundOptions): Promise<LocalRoundResult> {
    const started = performance.now();
    await fs.promises.mkdir(options.workDir, {recursive: true});
    const files = clientRoundFiles(options.workDir, options.round);
    await writeLoraAdapter(files.start, options.start, [{key: "ppc_gpt.prufed.round", type: "uint32", value: options.round}]);
    let evalSeconds = 0;
    const measure = async (adapter: string, items?: TaskItem[]) => {
        if (!items?.length)
            return undefined;
        const t0 = performance.now();
        const r = await heldOutAccuracy(options.model, adapter, items, options.train);
        evalSeconds += (performance.now() - t0) / 1000;
        return r.summary;
    };
    const before = await measure(files.start, options.heldOut);
    const evalBefore = await measure(files.start, options.evalSet);
    const trainStarted = performance.now();
    const result = await trainLora({
        ...defaultLocalTrain,
        ...options.train,
        model: options.model,
        data: options.items,
        output: files.upload,
        initAdapter: files.start,
        steps: options.localSteps,
        seed: options.seed,
    });
    const trainSeconds = (performance.now() - trainStarted) / 1000;
    const after = await measure(files.upload, options.heldOut);
    const evalAfter = await measure(files.upload, options.evalSet);
    return {
        round: options.round,
        upload: files.upload,
        trainLoss: result.trainLoss,
        ...(before && after ? {accuracyBefore: before.acc, accuracy: after.acc, heldOutBefore: before, heldOut: after} : {}),
        ...(evalBefore && evalAfter ? {evalSetBefore: evalBefore, evalSet: evalAfter} : {}),
        bytesDown: fs.statSync(files.start).size,
        bytesUp: fs.statSync(files.upload).size,
        trainSeconds,
        evalSeconds,
        seconds: (performance.now() - started) / 1000,
    };
}

/** What held-out scoring needs to know of local training: its task format and label prefix. */
export type HeldOutSettings = Pick<LocalTrainSettings, "format" | "labelPrefix" | "threads" | "gpuLayers">;

/**
 * Held-out accuracy of a model with an adapter: `ppc-gpt eval`'s multiple-choice scoring
 * (ts/eval evaluateItems: the task format's context, every choice's continuation, acc and
 * acc_norm with standard errors, the adapter applied at run time) in the format and under the
 * label prefix local training uses, so the gold continuation scored is the training target.
 * The prefix is resolved as training resolves it (the round adapters the server sends record none).
 */
export async function heldOutAccuracy(model: string, adapter: string | undefined, items: TaskItem[], settings: HeldOutSettings = {}):
    Promise<{summary: AccuracySummary; items: EvalItemResult[]; promptPrefix: string}> {
    if (items.length === 0)
        throw new Error("accuracy needs at least one held-out item");
    const promptPrefix = await resolveLabelPrefix(model, settings.labelPrefix);
    const loaded = await loadModel(model, {threads: settings.threads, gpuLayers: settings.gpuLayers});
    try {
        const r = await evaluateItems(loaded, items, {task: settings.format ?? defaultTaskFormat, promptPrefix, threads: settings.threads,
            ...(adapter ? {lora: [{path: adapter}]} : {})});
        const {task: _, ...summary} = r.summary;
        return {summary, items: r.items, promptPrefix};
    } finally {
        loaded.close();
    }
}
