// The client's side of a PruFed round, without transport: start from the adapter the server sent
// (client numbering), train E local steps on the private items with the project's LoRA trainer,
// keep the upload as <workDir>/round-N.gguf, and measure held-out accuracy on the client.
import fs from "node:fs";
import path from "node:path";
import {labelExample} from "../../data/prompt.js";
import type {TaskItem} from "../../data/task-item.js";
import {PairEncoder} from "../../eval/encode.js";
import {LoglikScorer} from "../../eval/loglik.js";
import {loadModel} from "../../model.js";
import {writeLoraAdapter, type LoraAdapter} from "../../train/adapter.js";
import type {WeightedItem} from "../../train/examples.js";
import {trainLora, type TrainOptions} from "../../train/train.js";
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
    /** Held-out accuracy of the received adapter, and after local training. */
    accuracyBefore?: number;
    accuracy?: number;
    bytesDown: number;
    bytesUp: number;
    trainSeconds: number;
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

export async function runLocalRound(options: LocalRoundOptions): Promise<LocalRoundResult> {
    const started = performance.now();
    await fs.promises.mkdir(options.workDir, {recursive: true});
    const files = clientRoundFiles(options.workDir, options.round);
    await writeLoraAdapter(files.start, options.start, [{key: "ppc_gpt.prufed.round", type: "uint32", value: options.round}]);
    const accuracyBefore = options.heldOut?.length ? await labelAccuracy(options.model, files.start, options.heldOut, options.train?.threads) : undefined;
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
    const accuracy = options.heldOut?.length ? await labelAccuracy(options.model, files.upload, options.heldOut, options.train?.threads) : undefined;
    return {
        round: options.round,
        upload: files.upload,
        trainLoss: result.trainLoss,
        ...(accuracyBefore !== undefined ? {accuracyBefore, accuracy} : {}),
        bytesDown: fs.statSync(files.start).size,
        bytesUp: fs.statSync(files.upload).size,
        trainSeconds,
        seconds: (performance.now() - started) / 1000,
    };
}

/**
 * Held-out accuracy in the training format (ts/data/prompt.ts labelExample): for each item, the
 * log-likelihood of every choice label " A", " B", … after the label prompt, scored by ts/eval's
 * batched scorer with the adapter applied; right when the gold label scores highest.
 */
export async function labelAccuracy(model: string, adapter: string | undefined, items: TaskItem[], threads?: number): Promise<number> {
    if (items.length === 0)
        throw new Error("accuracy needs at least one held-out item");
    const loaded = await loadModel(model, {threads});
    try {
        const encoder = new PairEncoder(loaded);
        const requests = items.map((item) => {
            const prompt = labelExample({...item, answer: item.choices[0].label}).prompt;
            const pairs = item.choices.map((c) => encoder.encodePair(prompt, ` ${c.label}`));
            return {context: pairs[0].context, continuations: pairs.map((p) => p.continuation)};
        });
        const scorer = await LoglikScorer.open(loaded, {threads, ...(adapter ? {lora: [{path: adapter}]} : {})});
        try {
            const scores = await scorer.score(requests);
            let right = 0;
            items.forEach((item, i) => {
                const lls = scores[i].map((s) => s.logprob);
                const pred = lls.indexOf(Math.max(...lls));
                if (item.choices[pred].label === item.answer)
                    right++;
            });
            return right / items.length;
        } finally {
            scorer.close();
        }
    } finally {
        loaded.close();
    }
}
