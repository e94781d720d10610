// DP-SGD in the LoRA engine: each example's gradient clipped on its own (checked against separate
// single-example engine runs and against central finite differences of Σ c_i L_i), Gaussian noise
// of standard deviation σC, and a full DP training step that, with σ = 0, no clipping and q = 1,
// lands where ordinary training does. The spent (ε, δ) reaches the JSON result and the adapter.
import path from "node:path";
import fs from "node:fs";
import test from "ava";
import type {TaskItem} from "../../ts/data/task-item.js";
import {readGguf} from "../../ts/gguf/read.js";
import type {NativeMicroBatch} from "../../ts/native.js";
import {readLoraAdapter} from "../../ts/train/adapter.js";
import {dpSgdEpsilon, noiseMultiplierFor} from "../../ts/train/dp-accountant.js";
import {GaussianNoise, poissonSample, privateGradient} from "../../ts/train/dp-sgd.js";
import {Random} from "../../ts/random.js";
import {trainLora} from "../../ts/train/train.js";
import {LoraTrainer, type TrainerState} from "../../ts/train/trainer.js";
import {hasShared, runCli, stories260K, tempDir} from "../helpers.js";
import {makeAdapter, makeModel, microBatch, randomSequence} from "./helpers.js";

async function setup(t: import("ava").ExecutionContext) {
    const model = await makeModel(t);
    const adapterFile = path.join(tempDir(t), "adapter.gguf");
    await makeAdapter(model, adapterFile, {r: 3, alpha: 6});
    const trainer = await LoraTrainer.open(model, adapterFile, {contextSize: 64, sequences: 4, threads: 2});
    t.teardown(() => trainer.close());
    const rng = new Random(21);
    const examples: NativeMicroBatch[][] = Array.from({length: 5}, (_, i) => [microBatch([randomSequence(rng, 6 + i, 300, 2, 0.5 + 0.2 * i)])]);
    return {trainer, examples};
}

const dot = (a: ArrayLike<number>[], b: ArrayLike<number>[]) => a.reduce((s, x, t) => {
    for (let k = 0; k < x.length; k++)
        s += x[k] * b[t][k];
    return s;
}, 0);

test("per-example clipping: the clipped sum equals separate single-example runs, and finite differences of Σ c_i L_i", async (t) => {
    const {trainer, examples} = await setup(t);
    // each example alone, in its own engine call
    const single: Float32Array[][] = [];
    for (const ex of examples)
        single.push((await trainer.gradients(ex)).gradients);
    const norms = single.map((g) => Math.sqrt(dot(g, g)));
    const C = [...norms].sort((a, b) => a - b)[2];   // the median: some examples are clipped, some are not
    t.true(norms.some((n) => n > C * 1.01) && norms.some((n) => n < C * 0.99));
    const scale = norms.map((n) => Math.min(1, C / n));
    const want = single[0].map((g0, ti) => Float64Array.from(g0, (_, k) => single.reduce((s, g, i) => s + scale[i] * g[ti][k], 0)));

    const got = await privateGradient(trainer, examples, {maxPerExampleGradNorm: C, noiseMultiplier: 0, expectedBatchSize: 1, noise: new GaussianNoise(1)});
    got.norms.forEach((n, i) => t.true(Math.abs(n - norms[i]) <= 1e-9 * norms[i]));
    let maxDiff = 0, maxAbs = 0;
    got.gradients.forEach((g, ti) => g.forEach((x, k) => {
        maxDiff = Math.max(maxDiff, Math.abs(x - want[ti][k]));
        maxAbs = Math.max(maxAbs, Math.abs(want[ti][k]));
    }));
    t.true(maxDiff <= 1e-6 * maxAbs, `max difference ${maxDiff} (max ${maxAbs})`);
    // per example, not the batch: clipping the summed gradient instead gives another vector
    const batched = (await trainer.gradients(examples.flat())).gradients;
    const bn = Math.sqrt(dot(batched, batched));
    const clippedBatch = batched.map((g) => Float64Array.from(g, (x) => x * Math.min(1, C / bn)));
    t.true(Math.abs(dot(clippedBatch, clippedBatch) - dot(got.gradients, got.gradients)) > 1e-3 * dot(got.gradients, got.gradients));

    // directional derivative of F(θ) = Σ_i c_i L_i(θ) along a random direction, by central differences
    const rng = new Random(8);
    const state: TrainerState = trainer.state();
    const dir = state.tensors.map((x) => Float64Array.from(x.value, () => 2 * rng.nextDouble() - 1));
    const dn = Math.sqrt(dot(dir, dir));
    const F = async (h: number) => {
        trainer.setState({step: state.step, tensors: state.tensors.map((x, ti) => ({...x, value: Float32Array.from(x.value, (v, k) => v + h * dir[ti][k] / dn)}))});
        let s = 0;
        for (const [i, ex] of examples.entries())
            s += scale[i] * (await trainer.evaluate(ex)).loss;
        return s;
    };
    const h = 1e-2;
    const fd = (await F(h) - await F(-h)) / (2 * h);
    trainer.setState(state);
    const analytic = dot(got.gradients, dir) / dn;
    t.true(Math.abs(fd - analytic) <= 2e-2 * Math.abs(analytic) + 1e-4, `finite differences ${fd}, clipped sum ${analytic}`);
});

test("the noise has standard deviation σC per coordinate and the sum is divided by the expected batch size", async (t) => {
    const {trainer, examples} = await setup(t);
    const base = await privateGradient(trainer, examples, {maxPerExampleGradNorm: 0.5, noiseMultiplier: 0, expectedBatchSize: 4, noise: new GaussianNoise(1)});
    const noisy = await privateGradient(trainer, examples, {maxPerExampleGradNorm: 0.5, noiseMultiplier: 1.5, expectedBatchSize: 4, noise: new GaussianNoise(7)});
    const z: number[] = [];
    noisy.gradients.forEach((g, ti) => g.forEach((x, k) => z.push((x - base.gradients[ti][k]) * 4 / (1.5 * 0.5))));
    const mean = z.reduce((a, b) => a + b, 0) / z.length;
    const sd = Math.sqrt(z.reduce((a, b) => a + (b - mean) ** 2, 0) / (z.length - 1));
    t.log(`${z.length} coordinates: noise mean ${mean.toFixed(4)}, sd ${sd.toFixed(4)} (in units of σC / B)`);
    t.true(z.length > 2000);
    t.true(Math.abs(mean) < 5 / Math.sqrt(z.length));
    t.true(Math.abs(sd - 1) < 0.05);
    // the default noise source is the OS's generator: two draws differ
    t.not(new GaussianNoise().next(), new GaussianNoise().next());
    // Poisson sampling: each item independently, about q·n of them
    const counts = Array.from({length: 200}, (_, s) => poissonSample(1000, 0.05, s).length);
    const avg = counts.reduce((a, b) => a + b, 0) / counts.length;
    t.true(Math.abs(avg - 50) < 2, `mean batch ${avg}`);
    t.true(new Set(counts).size > 10, "the batch size varies");
});

function copyItems(n: number, seed: number): TaskItem[] {
    const words = ["cat", "dog", "sun", "hat", "box", "cup"];
    const rng = new Random(seed);
    return Array.from({length: n}, (_, i) => {
        const c = rng.shuffle(words.slice()).slice(0, 3), a = rng.nextInt(3);
        return {id: `i${i}`, question: `Which word is ${c[a]}?`, choices: c.map((text, k) => ({label: "ABC"[k], text})), answer: "ABC"[a]};
    });
}

test("a DP step with σ = 0, no clipping and q = 1 equals an ordinary step; ε and δ reach the result and the adapter", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const dir = tempDir(t);
    // every item's target the same number of tokens, so per-item means average to the step's token mean
    const vocab = await (await import("../../ts/model.js")).loadModel(stories260K, {vocabOnly: true});
    const {ExampleEncoder} = await import("../../ts/train/examples.js");
    const enc = new ExampleEncoder(vocab, {task: "label", maxInputLength: 64, maxTargetLength: 16});
    const all = copyItems(40, 3);
    const len = (it: TaskItem) => enc.encodeItems([{item: it, weight: 1}])[0].target.length;
    const items = all.filter((it) => len(it) === len(all[0])).slice(0, 8);
    vocab.close();
    t.is(items.length, 8);
    const common = {model: stories260K, data: items, task: "label" as const, batchSize: 8, steps: 2, learningRate: 1e-2, adamEpsilon: 1,
        loraDropout: 0, threads: 2, seed: 5, microBatchTokens: 64};
    const plain = await trainLora({...common, output: path.join(dir, "plain.gguf"), maxGradNorm: 0});
    const dp = await trainLora({...common, output: path.join(dir, "dp.gguf"), dpNoiseMultiplier: 0, maxPerExampleGradNorm: 1e9});
    const [a, b] = [await readLoraAdapter(plain.output), await readLoraAdapter(dp.output)];
    let maxDiff = 0, maxB = 0;
    a.tensors.forEach((x, ti) => x.data.forEach((v, k) => {
        maxDiff = Math.max(maxDiff, Math.abs(v - b.tensors[ti].data[k]));
        if (x.name.endsWith(".lora_b"))
            maxB = Math.max(maxB, Math.abs(v));
    }));
    t.true(maxB > 1e-3, "training moved B away from 0");
    t.true(maxDiff < 1e-3 * maxB, `DP and plain adapters differ by ${maxDiff} (max |B| ${maxB})`);
    t.true(Math.abs(dp.trainLoss - plain.trainLoss) < 1e-4 * plain.trainLoss);
    t.is(dp.dp!.epsilon, Infinity);
    t.is(dp.dp!.sampleRate, 1);

    // a target ε: σ calibrated by the accountant, the spent ε at or just below it, recorded in the adapter
    const r = await runCli(["train", stories260K, "--data", writeItems(dir, copyItems(40, 9)), "--task", "label", "-o", path.join(dir, "eps.gguf"),
        "--batch", "8", "--epochs", "2", "--threads", "2", "--micro-batch-tokens", "64", "--dp-epsilon", "3", "--dp-delta", "1e-5",
        "--max-per-example-grad-norm", "1", "--json"]);
    t.is(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout);
    t.is(res.steps, 10);
    const sigma = noiseMultiplierFor(3, {sampleRate: 8 / 40, steps: 10, delta: 1e-5});
    t.true(Math.abs(res.dp.noiseMultiplier - sigma) < 1e-12);
    t.true(res.dp.epsilon <= 3 && res.dp.epsilon > 2.95, `spent ε ${res.dp.epsilon}`);
    t.true(Math.abs(res.dp.epsilon - dpSgdEpsilon({noiseMultiplier: sigma, sampleRate: 0.2, steps: 10, delta: 1e-5}).epsilon) < 1e-12);
    const meta = await readGguf(path.join(dir, "eps.gguf"));
    t.true(Math.abs(Number(meta.value("ppc_gpt.dp.epsilon")) - res.dp.epsilon) < 1e-12);
    t.is(meta.value("ppc_gpt.dp.delta"), 1e-5);
    const bad = await runCli(["train", stories260K, "--data", "x.jsonl", "-o", path.join(dir, "x.gguf"), "--dp-epsilon", "3", "--dp-noise-multiplier", "1"]);
    t.is(bad.code, 2);
    t.regex(bad.stderr, /--dp-epsilon or --dp-noise-multiplier/);
});

function writeItems(dir: string, items: TaskItem[]): string {
    const f = path.join(dir, `items-${items.length}.jsonl`);
    fs.writeFileSync(f, items.map((x) => JSON.stringify(x)).join("\n") + "\n");
    return f;
}
