// Adapter files: what the engine trains is what llama.cpp (the addon's copy, through its ordinary
// inference path) and node-llama-cpp (its own prebuilt llama.cpp) compute with the written file.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {getLlama} from "node-llama-cpp";
import {readGguf} from "../../ts/gguf/read.js";
import {loadModel} from "../../ts/model.js";
import {native, type NativeMicroBatch} from "../../ts/native.js";
import {initLoraAdapter, readLoraAdapter, writeLoraAdapter} from "../../ts/train/adapter.js";
import {Random} from "../../ts/random.js";
import {LoraTrainer} from "../../ts/train/trainer.js";
import {hasShared, maxRelativeDiff, stories260K, tempDir} from "../helpers.js";
import {makeModel, microBatch, randomSequence} from "./helpers.js";

/** A micro-batch that asks for the logits of every position of `tokens`. */
function allPositions(tokens: number[]): NativeMicroBatch {
    return microBatch([{tokens, targets: tokens.map((x) => x), weights: 1}]);
}

async function nodeLlamaCppLastLogits(model: string, tokens: number[], nVocab: number, adapter?: string): Promise<Float64Array> {
    const llama = await getLlama({gpu: false, build: "never", progressLogs: false, logLevel: "error" as never});
    const m = await llama.loadModel({modelPath: model});
    const context = await m.createContext({contextSize: 256, ...(adapter ? {lora: {adapters: [{filePath: adapter}]}} : {})});
    try {
        const out = await context.getSequence().controlledEvaluate(
            [...tokens.slice(0, -1), [tokens.at(-1)!, {generateNext: {logits: true}}]] as never);
        const logits = (out as {next: {logits: Map<number, number>}}[]).at(-1)!.next.logits;
        assertVocabSize(logits.size, nVocab);
        return Float64Array.from({length: nVocab}, (_, i) => logits.get(i) ?? NaN);
    } finally {
        await context.dispose();
        await m.dispose();
    }
}

function assertVocabSize(got: number, want: number): void {
    if (got !== want)
        throw new Error(`node-llama-cpp returned ${got} logits, the vocabulary has ${want}`);
}

const storyTokens = async (text: string): Promise<number[]> => {
    const m = await loadModel(stories260K, {vocabOnly: true});
    try {
        return Array.from(m.tokenize(text));
    } finally {
        m.close();
    }
};

test("an adapter with B = 0 reproduces the base logits exactly (llama.cpp, node-llama-cpp, engine)", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const dir = tempDir(t);
    const file = path.join(dir, "zero.gguf");
    const adapter = initLoraAdapter(await readGguf(stories260K), {r: 8, loraAlpha: 32, targetModules: ["attn_q", "attn_k", "attn_v",
        "attn_output", "ffn_gate", "ffn_up", "ffn_down"]}, 1);
    t.true(adapter.tensors.filter((x) => x.name.endsWith(".lora_a")).every((x) => x.data.some((v) => v !== 0)));
    await writeLoraAdapter(file, adapter);
    const tokens = await storyTokens("Once upon a time, there was a little girl named Lily.");

    const base = await native().loraLogits(stories260K, [], Int32Array.from(tokens), {threads: 2});
    const withZero = await native().loraLogits(stories260K, [{path: file}], Int32Array.from(tokens), {threads: 2});
    t.deepEqual(withZero, base, "llama.cpp: B = 0 adds exactly nothing");

    const nVocab = base.length / tokens.length;
    const nlcBase = await nodeLlamaCppLastLogits(stories260K, tokens, nVocab);
    const nlcZero = await nodeLlamaCppLastLogits(stories260K, tokens, nVocab, file);
    t.deepEqual(nlcZero, nlcBase, "node-llama-cpp: B = 0 adds exactly nothing");

    const trainer = await LoraTrainer.open(stories260K, file, {contextSize: 64, sequences: 2, threads: 2});
    t.teardown(() => trainer.close());
    const engine = (await trainer.evaluate([allPositions(tokens)], {logits: true})).logits!;
    t.true(maxRelativeDiff(engine, base) < 1e-5, `engine vs llama.cpp: ${maxRelativeDiff(engine, base)}`);
});

test("a trained adapter gives the same logits in the engine, llama.cpp and node-llama-cpp", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const dir = tempDir(t);
    const init = path.join(dir, "init.gguf");
    const g = await readGguf(stories260K);
    await writeLoraAdapter(init, initLoraAdapter(g, {r: 4, loraAlpha: 16, targetModules: ["attn_q", "attn_k", "attn_v", "attn_output",
        "ffn_gate", "ffn_up", "ffn_down"]}, 3));
    const trainer = await LoraTrainer.open(stories260K, init, {contextSize: 128, sequences: 4, threads: 2});
    t.teardown(() => trainer.close());
    const rng = new Random(2);
    const batch = [microBatch([randomSequence(rng, 20, 512, 5, 0.05), randomSequence(rng, 30, 512, 10, 0.05)])];
    for (let i = 0; i < 5; i++)
        await trainer.step(batch, {lr: 1e-2, dropout: 0.1, dropoutSeed: i});
    const file = path.join(dir, "trained.gguf");
    await writeLoraAdapter(file, trainer.adapter(g.architecture, 4));
    const back = await readLoraAdapter(file);
    t.deepEqual(back.tensors.map((x) => x.data), trainer.state().tensors.map((x) => x.value));
    t.is(back.alpha, 16);

    const tokens = await storyTokens("The cat sat on the mat and looked at the big red ball.");
    const engine = (await trainer.evaluate([allPositions(tokens)], {logits: true})).logits!;
    const cpp = await native().loraLogits(stories260K, [{path: file}], Int32Array.from(tokens), {threads: 2});
    const base = await native().loraLogits(stories260K, [], Int32Array.from(tokens), {threads: 2});
    t.true(maxRelativeDiff(base, cpp) > 1e-3, "training changed the model");
    t.true(maxRelativeDiff(engine, cpp) < 1e-5, `engine vs llama.cpp: ${maxRelativeDiff(engine, cpp)}`);

    const nVocab = trainer.info.nVocab;
    const last = cpp.subarray((tokens.length - 1) * nVocab);
    const nlc = await nodeLlamaCppLastLogits(stories260K, tokens, nVocab, file);
    t.true(maxRelativeDiff(nlc, last) < 1e-3, `node-llama-cpp vs llama.cpp: ${maxRelativeDiff(nlc, last)}`);
    const nlcBase = await nodeLlamaCppLastLogits(stories260K, tokens, nVocab);
    t.true(maxRelativeDiff(nlcBase, last) > 1e-3, "node-llama-cpp applies the adapter");
});

for (const type of ["f16", "q8_0", "q4_K"]) {
    test(`a ${type} base trains (frozen, on the CPU) and agrees with llama.cpp`, async (t) => {
        const model = await makeModel(t, {layers: 2, embedding: 256, heads: 4, kvHeads: 2, feedForward: 256, vocab: 300, type});
        t.true((await readGguf(model)).tensors.filter((x) => x.name.endsWith("attn_q.weight")).every((x) => x.type === type));
        const dir = tempDir(t);
        const init = path.join(dir, "init.gguf");
        const g = await readGguf(model);
        await writeLoraAdapter(init, initLoraAdapter(g, {r: 4, loraAlpha: 8, targetModules: ["attn_q", "attn_k", "attn_v", "attn_output",
            "ffn_gate", "ffn_up", "ffn_down"]}, 5));
        const before = fs.readFileSync(model);
        const trainer = await LoraTrainer.open(model, init, {contextSize: 64, sequences: 2, threads: 2});
        t.teardown(() => trainer.close());
        const rng = new Random(4);
        const batch = [microBatch([randomSequence(rng, 24, 300, 4, 1 / 20)])];
        const first = (await trainer.evaluate(batch)).loss;
        for (let i = 0; i < 8; i++)
            await trainer.step(batch, {lr: 1e-2});
        const after = (await trainer.evaluate(batch)).loss;
        t.true(after < 0.8 * first, `loss ${first} -> ${after}`);
        t.deepEqual(fs.readFileSync(model), before, "the base file is untouched");

        const file = path.join(dir, "trained.gguf");
        await writeLoraAdapter(file, trainer.adapter(g.architecture, 4));
        const tokens = Array.from({length: 16}, (_, i) => 3 + ((i * 37) % 290));
        const engine = (await trainer.evaluate([allPositions(tokens)], {logits: true})).logits!;
        const cpp = await native().loraLogits(model, [{path: file}], Int32Array.from(tokens), {threads: 2});
        // the inference path may repack the weights; both quantize activations the same way
        t.true(maxRelativeDiff(engine, cpp) < 2e-3, `engine vs llama.cpp: ${maxRelativeDiff(engine, cpp)}`);
    });
}
