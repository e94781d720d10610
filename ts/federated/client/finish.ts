// The client's last stage (METHOD.md step 5): label retraining of the received model on the private
// data (LoRA, label loss only), then accuracy on the held-out items for the model as received (S)
// and after retraining (C).
import fs from "node:fs";
import path from "node:path";
import type {TaskItem} from "../../data/task-item.js";
import {evaluateItems} from "../../eval/evaluate.js";
import type {EvalTaskName} from "../../eval/tasks.js";
import {loadModel} from "../../model.js";
import {trainLora, type TrainEvent, type TrainResult} from "../../train/train.js";

export interface FinishOptions {
    /** The model received from the server. */
    model: string;
    /** Private training items, with answers. */
    train: TaskItem[];
    /** Held-out items, with answers. */
    heldOut: TaskItem[];
    /** Prompt format of the evaluation ("mc" for task-item JSONL). */
    evalTask: EvalTaskName;
    /** The client LoRA adapter to write. */
    output: string;
    steps?: number;
    learningRate?: number;
    batchSize?: number;
    r?: number;
    loraAlpha?: number;
    loraDropout?: number;
    targetModules?: string[];
    maxInputLength?: number;
    maxTargetLength?: number;
    seed?: number;
    threads?: number;
    gpuLayers?: number;
    /** Checkpoints here, so a killed finish resumes its training. */
    checkpointDir?: string;
    onTrain?: (e: TrainEvent) => void;
    onEval?: (stage: "S" | "C", done: number, total: number) => void;
    signal?: AbortSignal;
}

export interface StageAccuracy {
    acc: number;
    acc_stderr: number;
    acc_norm: number;
    acc_norm_stderr: number;
    items: number;
}

export interface FinishReport {
    model: string;
    adapter: string;
    evalTask: EvalTaskName;
    /** The model as received from the server. */
    S: StageAccuracy;
    /** After the client's label retraining. */
    C: StageAccuracy;
    training: Pick<TrainResult, "steps" | "items" | "trainLoss" | "trainableParameters" | "seconds">;
    seconds: number;
}

function accuracy(s: {acc: number; acc_stderr: number; acc_norm: number; acc_norm_stderr: number}, items: number): StageAccuracy {
    return {acc: s.acc, acc_stderr: s.acc_stderr, acc_norm: s.acc_norm, acc_norm_stderr: s.acc_norm_stderr, items};
}

/** Trains the client adapter (resuming a checkpoint when there is one) and evaluates S and C. */
export async function finishModel(o: FinishOptions): Promise<FinishReport> {
    const started = performance.now();
    const labelled = o.train.filter((x) => x.answer !== undefined);
    if (labelled.length === 0)
        throw new RangeError("no labelled private items to retrain on (label retraining needs answers)");
    if (o.heldOut.length === 0)
        throw new RangeError("no labelled held-out items to evaluate on (give --eval-data, --eval-split or --holdout)");
    const resume = o.checkpointDir !== undefined && fs.existsSync(path.join(o.checkpointDir, "checkpoint.json"));
    const trained = await trainLora({
        model: o.model, data: labelled, output: o.output, task: "label",
        steps: o.steps ?? 30, learningRate: o.learningRate ?? 1e-3, batchSize: o.batchSize ?? Math.min(8, labelled.length),
        r: o.r, loraAlpha: o.loraAlpha, loraDropout: o.loraDropout, targetModules: o.targetModules,
        maxInputLength: o.maxInputLength, maxTargetLength: o.maxTargetLength, seed: o.seed,
        threads: o.threads, gpuLayers: o.gpuLayers,
        ...(o.checkpointDir ? {checkpointDir: o.checkpointDir, saveEvery: 10, resume} : {}),
        onProgress: o.onTrain, signal: o.signal,
    });
    const model = await loadModel(o.model, {threads: o.threads, gpuLayers: o.gpuLayers});
    try {
        const s = await evaluateItems(model, o.heldOut, {task: o.evalTask, threads: o.threads,
            onProgress: o.onEval ? (d, t) => o.onEval!("S", d, t) : undefined, signal: o.signal});
        const c = await evaluateItems(model, o.heldOut, {task: o.evalTask, threads: o.threads, lora: [{path: o.output}],
            onProgress: o.onEval ? (d, t) => o.onEval!("C", d, t) : undefined, signal: o.signal});
        return {
            model: o.model, adapter: o.output, evalTask: o.evalTask,
            S: accuracy(s.summary, o.heldOut.length), C: accuracy(c.summary, o.heldOut.length),
            training: {steps: trained.steps, items: trained.items, trainLoss: trained.trainLoss,
                trainableParameters: trained.trainableParameters, seconds: trained.seconds},
            seconds: (performance.now() - started) / 1000,
        };
    } finally {
        model.close();
    }
}
