// PruFed measures what it trains: a client's held-out accuracy is `ppc-gpt eval`'s multiple-choice
// scoring of the very continuation local training teaches (the gold choice after the same context),
// and on a task where the answer is in the question and the choices come in a random order per
// item (so neither a constant letter nor a fixed text-to-label map beats chance) the layerwise
// simulation raises every pruned depth's held-out accuracy well above its start.
import path from "node:path";
import test from "ava";
import type {TaskItem} from "../../../ts/data/task-item.js";
import {PairEncoder} from "../../../ts/eval/encode.js";
import {loadModel} from "../../../ts/model.js";
import {ExampleEncoder, itemExamples} from "../../../ts/train/examples.js";
import {resolveLabelPrefix} from "../../../ts/train/train.js";
import {defaultLocalTrain, heldOutAccuracy, type LocalTrainSettings} from "../../../ts/federated/prufed/client.js";
import {accuracyByDepth, simulate} from "../../../ts/federated/prufed/simulate.js";
import {Random} from "../../../ts/random.js";
import {hasShared, stories260K, tempDir} from "../../helpers.js";

const maybe = hasShared ? test : test.skip;

const animals = ["cat", "dog", "bird", "fish", "frog", "duck"];
const places = ["garden", "park", "house", "yard"];

/** "Tom saw a frog in the park. What did Tom see?" with three animals as choices, shuffled per item. */
function shuffledChoiceItems(n: number, seed: number): TaskItem[] {
    const rng = new Random(seed);
    return Array.from({length: n}, (_, i) => {
        const choices = rng.shuffle([...animals]).slice(0, 3);
        const a = rng.nextInt(3);
        return {id: `s${seed}-${i}`, question: `Tom saw a ${choices[a]} in the ${places[rng.nextInt(places.length)]}. What did Tom see?`,
            choices: choices.map((text, k) => ({label: "ABC"[k], text})), answer: "ABC"[a]};
    });
}

/** The training example's prompt and target tokens, encoded exactly as trainLora encodes them (no EOS). */
async function trainingTokens(model: string, items: TaskItem[], train: LocalTrainSettings): Promise<{prompt: number[]; target: number[]}[]> {
    const settings = {...defaultLocalTrain, ...train};
    const labelPrefix = await resolveLabelPrefix(model, settings.labelPrefix);
    const vocab = await loadModel(model, {vocabOnly: true});
    try {
        const encoder = new ExampleEncoder(vocab, {task: "label", format: settings.format, labelPrefix, maxInputLength: settings.maxInputLength!,
            maxTargetLength: settings.maxTargetLength!, appendEos: false});
        return items.map((item) => {
            const [{example}] = itemExamples(item, "label", {format: settings.format, labelPrefix});
            const e = encoder.encode(example);
            return {prompt: Array.from(e.prompt), target: Array.from(e.target)};
        });
    } finally {
        vocab.close();
    }
}

maybe("the held-out scoring scores exactly the continuation local training teaches, in every format and under any label prefix", async (t) => {
    const items = shuffledChoiceItems(6, 3);
    // (the lettered prompt is longer than the default 64 input tokens, which training would cut in the middle)
    for (const train of [{}, {format: "commonsenseqa" as const, maxInputLength: 128}, {format: "openbookqa" as const, labelPrefix: ""}, {labelPrefix: "<L> "}]) {
        const settings = {...defaultLocalTrain, ...train};
        const scored = await heldOutAccuracy(stories260K, undefined, items, settings);
        const trained = await trainingTokens(stories260K, items, train);
        const model = await loadModel(stories260K, {vocabOnly: true});
        try {
            const encoder = new PairEncoder(model);
            scored.items.forEach((r, i) => {
                const pair = encoder.encodePair(r.context, r.continuations[r.gold]);
                t.deepEqual(Array.from(pair.continuation), trained[i].target, `${JSON.stringify(train)} item ${i}: scored ${JSON.stringify(r.continuations[r.gold])}`);
                t.deepEqual(Array.from(pair.context), trained[i].prompt, `${JSON.stringify(train)} item ${i}: context`);
                t.is(r.continuations.length, items[i].choices.length);
            });
        } finally {
            model.close();
        }
        t.is(scored.summary.n, items.length);
        t.true(Number.isFinite(scored.summary.acc_stderr) && Number.isFinite(scored.summary.acc_norm));
    }
});

maybe("on a shuffled-choice task the layerwise simulation raises the held-out accuracy of every depth well above its start", async (t) => {
    const items = shuffledChoiceItems(160, 11);
    // the shortcut is impossible: the gold position varies and every animal appears under every label
    const labelsOf = (animal: string) => new Set(items.flatMap((x) => x.choices.filter((c) => c.text === animal).map((c) => c.label)));
    t.true(animals.every((a) => labelsOf(a).size === 3));
    const counts = ["A", "B", "C"].map((l) => items.filter((x) => x.answer === l).length);
    t.true(Math.max(...counts) / items.length < 0.45, `a constant letter scores ${Math.max(...counts) / items.length}`);
    const result = await simulate({base: stories260K, depths: [4, 3], clients: 4, data: items, rounds: 6, seed: 1, aggregation: "layerwise",
        localSteps: 10, heldOutShare: 0.5, outDir: path.join(tempDir(t), "sim"), r: 8, loraAlpha: 16,
        train: {threads: 2, batchSize: 8, learningRate: 1e-2}});
    t.is(result.clients.reduce((s, c) => s + c.heldOut, 0), 80);
    for (const s of accuracyByDepth(result)) {
        const start = s.values[0], end = (s.values.at(-1)! + s.values.at(-2)!) / 2;
        t.log(`depth ${s.depth}: ${s.values.map((v) => v.toFixed(2)).join(" ")}`);
        t.true(end >= Math.max(start + 0.25, 0.7), `depth ${s.depth}: ${start.toFixed(2)} -> ${end.toFixed(2)} (last two rounds)`);
    }
});
