// The engine's loss and gradients, checked independently: the loss against a double-precision
// cross-entropy of the logits it returns, the LoRA gradients against central finite differences
// of that loss (every adapted projection, K and V included), and the packing of several sequences
// into one micro-batch against evaluating each alone.
import path from "node:path";
import test from "ava";
import type {SyntheticModelOptions} from "../../ts/gguf/synthetic.js";
import type {NativeMicroBatch} from "../../ts/native.js";
import {Random} from "../../ts/random.js";
import {LoraTrainer, type TrainerState} from "../../ts/train/trainer.js";
import {tempDir} from "../helpers.js";
import {makeAdapter, makeModel, microBatch, randomSequence, weightedCrossEntropy, type SequenceSpec} from "./helpers.js";

/**
 * How attention takes the first micro-batch's sequences: "padded" (unequal lengths: streams padded to the
 * longest inside attention), "streams" (one length: a batch of streams, one mask), "block-diagonal" (one
 * sequence much longer than the others: padding would cost more than one mask over the whole micro-batch).
 */
type Layout = "padded" | "streams" | "block-diagonal";

function batchesFor(seed: number, vocab: number, layout: Layout = "padded"): {batches: NativeMicroBatch[]; sequences: SequenceSpec[][]} {
    const rng = new Random(seed);
    // two micro-batches (gradient accumulation), the first with several sequences; masked prompts, weights
    const lengths = {padded: [9, 6], streams: [7, 7, 7], "block-diagonal": [16, 5, 5]}[layout];
    const masked = [3, 2, 4], weight = [0.7, 1.3, 0.9];
    const sequences = [
        lengths.map((n, i) => randomSequence(rng, n, vocab, masked[i], weight[i])),
        [randomSequence(rng, 8, vocab, 4, 0.5)],
    ];
    sequences[0][0].weights = sequences[0][0].tokens.map((_, k) => 0.4 + 0.1 * k);
    return {batches: sequences.map(microBatch), sequences};
}

function withValue(state: TrainerState, tensor: number, index: number, value: number): TrainerState {
    return {step: state.step, tensors: state.tensors.map((t, i) => {
        if (i !== tensor)
            return t;
        const v = Float32Array.from(t.value);
        v[index] = value;
        return {...t, value: v};
    })};
}

async function checkGradients(t: import("ava").ExecutionContext, options: Partial<SyntheticModelOptions>, modules: string[],
    layout: Layout = "padded") {
    const model = await makeModel(t, options);
    const adapterFile = path.join(tempDir(t), "adapter.gguf");
    await makeAdapter(model, adapterFile, {modules, r: 3, alpha: 6});
    const trainer = await LoraTrainer.open(model, adapterFile, {contextSize: 64, sequences: 4, threads: 2});
    t.teardown(() => trainer.close());
    const vocab = options.vocab ?? 300;
    const {batches} = batchesFor(11, vocab, layout);

    // the loss is sum_t w_t CE_t of the logits the engine computes
    const ev = await trainer.evaluate(batches, {logits: true});
    t.is(ev.targets, batches.reduce((s, b) => s + b.targets.filter((x) => x >= 0).length, 0));
    const reference = weightedCrossEntropy(ev.logits!, vocab, batches);
    t.true(Math.abs(ev.loss - reference) <= 1e-5 * Math.abs(reference), `loss ${ev.loss} vs reference ${reference}`);

    const g = await trainer.gradients(batches);
    t.true(Math.abs(g.loss - ev.loss) <= 1e-6 * Math.abs(ev.loss), "the backward pass reports the forward loss");
    const state = trainer.state();
    t.is(g.gradients.length, state.tensors.length);

    const rng = new Random(5);
    const h = 1e-2;
    let checked = 0;
    for (let ti = 0; ti < state.tensors.length; ti++) {
        const grad = g.gradients[ti];
        let maxAbs = 0, argMax = 0;
        for (let i = 0; i < grad.length; i++) {
            if (Math.abs(grad[i]) > maxAbs) {
                maxAbs = Math.abs(grad[i]);
                argMax = i;
            }
        }
        t.true(maxAbs > 1e-4, `${state.tensors[ti].name}: the gradient is not zero (max |g| = ${maxAbs})`);
        for (const index of [argMax, rng.nextInt(grad.length), rng.nextInt(grad.length)]) {
            const x = state.tensors[ti].value[index];
            trainer.setState(withValue(state, ti, index, x + h));
            const plus = (await trainer.evaluate(batches)).loss;
            trainer.setState(withValue(state, ti, index, x - h));
            const minus = (await trainer.evaluate(batches)).loss;
            const fd = (plus - minus) / (2 * h);
            const tol = 5e-3 * maxAbs + 1e-4;
            t.true(Math.abs(fd - grad[index]) <= tol,
                `${state.tensors[ti].name}[${index}]: backward ${grad[index]}, central difference ${fd} (tolerance ${tol})`);
            checked++;
        }
    }
    trainer.setState(state);
    t.true(checked >= 3 * state.tensors.length);
}

test("LoRA gradients match central finite differences (llama, GQA, every projection)", async (t) => {
    await checkGradients(t, {}, ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]);
});

test("LoRA gradients match central finite differences (qwen2: attention biases)", async (t) => {
    await checkGradients(t, {architecture: "qwen2", heads: 4, kvHeads: 4}, ["attn_q", "attn_k", "attn_v", "ffn_down"]);
});

test("LoRA gradients match central finite differences (openelm: fused QKV, per-layer heads)", async (t) => {
    await checkGradients(t, {architecture: "openelm", heads: [4, 2], kvHeads: [2, 1], feedForward: [48, 64]}, ["attn_qkv", "attn_output", "ffn_up"]);
});

test("LoRA gradients match central finite differences (equal-length sequences: attention as a batch of streams)", async (t) => {
    await checkGradients(t, {}, ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_down"], "streams");
});

test("LoRA gradients match central finite differences (one long sequence and short ones: block-diagonal mask)", async (t) => {
    await checkGradients(t, {}, ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_down"], "block-diagonal");
});

for (const layout of ["padded", "streams", "block-diagonal"] as const)
test(`sequences packed into one micro-batch see only themselves (${layout})`, async (t) => {
    const model = await makeModel(t);
    const adapterFile = path.join(tempDir(t), "adapter.gguf");
    await makeAdapter(model, adapterFile);
    const trainer = await LoraTrainer.open(model, adapterFile, {contextSize: 64, sequences: 4, threads: 2});
    t.teardown(() => trainer.close());
    const {sequences} = batchesFor(3, 300, layout);
    const packed = await trainer.evaluate([microBatch(sequences[0])], {logits: true});
    let row = 0;
    for (const seq of sequences[0]) {
        const alone = await trainer.evaluate([microBatch([seq])], {logits: true});
        const n = alone.logits!.length;
        const a = alone.logits!, p = packed.logits!.subarray(row, row + n);
        let diff = 0, scale = 0;
        for (let i = 0; i < n; i++) {
            diff = Math.max(diff, Math.abs(a[i] - p[i]));
            scale = Math.max(scale, Math.abs(a[i]));
        }
        t.true(diff <= 1e-5 * scale, `packed vs alone: max |diff| ${diff} (scale ${scale})`);
        row += n;
    }
    t.is(row, packed.logits!.length);
});

test("with B = 0 the gradient reaches B only, and dropout masks are reproducible", async (t) => {
    const model = await makeModel(t);
    const adapterFile = path.join(tempDir(t), "adapter.gguf");
    await makeAdapter(model, adapterFile, {bScale: 0});
    const trainer = await LoraTrainer.open(model, adapterFile, {contextSize: 64, sequences: 4, threads: 2});
    t.teardown(() => trainer.close());
    const {batches} = batchesFor(9, 300);
    const g = await trainer.gradients(batches);
    const names = trainer.info.tensors.map((x) => x.name);
    names.forEach((name, i) => {
        const nonzero = g.gradients[i].some((x) => x !== 0);
        t.is(nonzero, name.endsWith(".lora_b"), `${name}: gradient ${nonzero ? "non-zero" : "zero"}`);
    });
    const d1 = await trainer.gradients(batches, {dropout: 0.5, dropoutSeed: 123});
    const d2 = await trainer.gradients(batches, {dropout: 0.5, dropoutSeed: 123});
    const d3 = await trainer.gradients(batches, {dropout: 0.5, dropoutSeed: 124});
    t.deepEqual(d1.gradients, d2.gradients);
    t.notDeepEqual(d1.gradients, d3.gradients);
    t.notDeepEqual(d1.gradients, g.gradients);
    t.is(d1.loss, g.loss, "with B = 0 the LoRA branch adds nothing, dropout or not");
});
