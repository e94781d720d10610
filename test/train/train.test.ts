// End-to-end training on a task the real stories260K model can learn: which animal a short
// story mentions decides the answer letter. Held-out items (unseen names and places) must get a
// lower loss and mostly right answers; a resumed run must continue the uninterrupted loss curve.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import type {TaskItem} from "../../ts/data/task-item.js";
import {labelExample} from "../../ts/data/prompt.js";
import {loadModel} from "../../ts/model.js";
import {readLoraAdapter} from "../../ts/train/adapter.js";
import {ExampleEncoder} from "../../ts/train/examples.js";
import {Random} from "../../ts/random.js";
import {trainLora, type TrainEvent, type TrainOptions} from "../../ts/train/train.js";
import {LoraTrainer} from "../../ts/train/trainer.js";
import {hasShared, stories260K, tempDir} from "../helpers.js";
import {microBatch} from "./helpers.js";

const animals = ["cat", "dog", "bird"];
const letters = ["A", "B", "C"];

function animalItems(names: string[], places: string[], seed: number, n: number, prefix: string): TaskItem[] {
    const rng = new Random(seed);
    return Array.from({length: n}, (_, i) => {
        const a = rng.nextInt(3), name = names[rng.nextInt(names.length)], place = places[rng.nextInt(places.length)];
        return {
            id: `${prefix}${i}`,
            question: `${name} saw a ${animals[a]} in the ${place}. What did ${name} see?`,
            choices: animals.map((text, k) => ({label: letters[k], text})),
            answer: letters[a],
            rationale: `${name} saw a ${animals[a]}, so the answer is ${letters[a]}.`,
        };
    });
}

const trainItems = animalItems(["Tom", "Lily", "Ben", "Sue", "Max"], ["garden", "park", "house"], 1, 48, "train-");
const heldOut = animalItems(["Mia", "Sam", "Anna"], ["yard", "forest"], 2, 24, "val-");

/** Share of items whose answer is the most likely label target (summed log-likelihood of its tokens, EOS excluded). */
async function accuracy(adapter: string, items: TaskItem[]): Promise<number> {
    const vocab = await loadModel(stories260K, {vocabOnly: true});
    const encoder = new ExampleEncoder(vocab, {task: "label", maxInputLength: 64, maxTargetLength: 8});
    const trainer = await LoraTrainer.open(stories260K, adapter, {contextSize: 128, sequences: 1, threads: 2});
    try {
        let right = 0;
        for (const item of items) {
            const nll: number[] = [];
            for (const letter of letters) {
                const {prompt, target} = encoder.encode(labelExample({...item, answer: letter}));
                const answer = Array.from(target).slice(0, -1);
                const tokens = [...prompt, ...answer.slice(0, -1)];
                const targets = tokens.map((_, k) => (k >= prompt.length - 1 ? answer[k - prompt.length + 1] : -1));
                nll.push((await trainer.evaluate([microBatch([{tokens, targets, weights: 1}])])).loss);
            }
            if (nll.indexOf(Math.min(...nll)) === letters.indexOf(item.answer!))
                right++;
        }
        return right / items.length;
    } finally {
        trainer.close();
        vocab.close();
    }
}

const common = (dir: string): TrainOptions => ({
    model: stories260K, data: trainItems, output: path.join(dir, "adapter.gguf"), task: "cot", validationData: heldOut,
    learningRate: 3e-3, batchSize: 8, warmupSteps: 2, threads: 2, seed: 3, microBatchTokens: 160,
});

test("training lowers the held-out loss of a task stories260K can learn, and gets it right", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const dir = tempDir(t);
    const events: TrainEvent[] = [];
    const result = await trainLora({...common(dir), steps: 36, evalEvery: 12, onProgress: (e) => events.push(e)});
    t.is(result.steps, 36);
    t.is(result.items, 48);
    t.is(result.examples, 96);
    t.deepEqual(result.evaluations.map((e) => e.step), [0, 12, 24, 36]);
    const [before, after] = [result.evaluations[0], result.evaluations.at(-1)!];
    t.true(after.loss < 0.5 * before.loss, `held-out loss ${before.loss} -> ${after.loss}`);
    t.true(after.labelLoss < before.labelLoss && after.rationaleLoss! < before.rationaleLoss!);
    t.true(Math.abs(after.loss - (after.labelLoss + after.rationaleLoss!)) < 1e-9, "L = L_label + 1 * L_rationale");
    t.is(events.filter((e) => e.type === "step").length, 36);
    t.true(events.every((e) => e.type !== "step" || (Number.isFinite(e.loss) && e.tokensPerSecond > 0)));

    const adapter = await readLoraAdapter(result.output);
    t.is(adapter.architecture, "llama");
    t.is(adapter.r, 8);
    t.is(adapter.alpha, 32);
    t.is(adapter.tensors.length, 2 * 7 * 5, "7 projections in each of 5 blocks");
    const acc = await accuracy(result.output, heldOut);
    t.true(acc >= 0.7, `held-out accuracy ${acc} (chance: 1/3)`);
});

test("resuming from a checkpoint continues the uninterrupted loss curve", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const dir = tempDir(t);
    const steps = 8;
    const full = await trainLora({...common(dir), output: path.join(dir, "full.gguf"), steps});

    const ckpt = path.join(dir, "ckpt");
    const first = await trainLora({...common(dir), output: path.join(dir, "part.gguf"), steps, checkpointDir: ckpt, stopAfter: 3});
    t.is(first.steps, 3);
    t.true(fs.existsSync(path.join(ckpt, "checkpoint.json")));
    const resumed = await trainLora({...common(dir), output: path.join(dir, "resumed.gguf"), steps, checkpointDir: ckpt, resume: true});
    t.is(resumed.resumedFrom, 3);
    t.is(resumed.steps, steps);
    t.deepEqual(resumed.history.map((h) => h.step), full.history.map((h) => h.step));
    for (let i = 0; i < steps; i++) {
        const a = full.history[i], b = resumed.history[i];
        t.true(Math.abs(a.loss - b.loss) <= 1e-6 * Math.abs(a.loss), `step ${a.step}: ${a.loss} vs ${b.loss}`);
        t.is(a.learningRate, b.learningRate);
    }
    t.deepEqual(resumed.validation, full.validation);
    const x = await readLoraAdapter(path.join(dir, "full.gguf")), y = await readLoraAdapter(path.join(dir, "resumed.gguf"));
    for (let i = 0; i < x.tensors.length; i++) {
        let diff = 0;
        x.tensors[i].data.forEach((v, k) => (diff = Math.max(diff, Math.abs(v - y.tensors[i].data[k]))));
        t.true(diff <= 1e-6, `${x.tensors[i].name}: max |diff| ${diff}`);
    }

    // a checkpoint refuses other settings
    await t.throwsAsync(trainLora({...common(dir), output: path.join(dir, "x.gguf"), steps, checkpointDir: ckpt, resume: true, learningRate: 1e-3}),
        {message: /learningRate/});
});
