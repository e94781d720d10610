// LoRA adapters applied at run time (never merged) against the plain reference: the same model with
// the adapters' products merged into its weights in double precision here, decoded as one sequence.
import path from "node:path";
import test from "ava";
import {LoglikScorer, scoreLoglikelihoods, type TokenRequest} from "../../ts/eval/loglik.js";
import {syntheticModel, type SyntheticModelOptions} from "../../ts/gguf/synthetic.js";
import {writeGguf, type GgufTensorSpec} from "../../ts/gguf/write.js";
import {loadModel, type LoadedModel} from "../../ts/model.js";
import {tempDir, continuationLogprob} from "../helpers.js";

const base: SyntheticModelOptions = {architecture: "llama", layers: 2, embedding: 64, heads: 4, kvHeads: 2, feedForward: 128, vocab: 600, seed: 3};

interface LoraTensor {
    target: string;
    /** ggml shapes: a [in, r], b [r, out]. */
    a: Float32Array;
    b: Float32Array;
    inDim: number;
    outDim: number;
}

/** Deterministic pseudo-random values in [-scale, scale). */
function values(n: number, seed: number, scale: number): Float32Array {
    const out = new Float32Array(n);
    let x = seed >>> 0;
    for (let i = 0; i < n; i++) {
        x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
        out[i] = (x / 2 ** 32 * 2 - 1) * scale;
    }
    return out;
}

function loraTensor(target: string, inDim: number, outDim: number, r: number, seed: number): LoraTensor {
    return {target, a: values(inDim * r, seed, 0.5), b: values(r * outDim, seed + 1, 0.5), inDim, outDim};
}

async function writeAdapter(file: string, alpha: number, r: number, tensors: LoraTensor[]): Promise<void> {
    await writeGguf(file, [
        {key: "general.architecture", type: "string", value: "llama"},
        {key: "general.type", type: "string", value: "adapter"},
        {key: "adapter.type", type: "string", value: "lora"},
        {key: "adapter.lora.alpha", type: "float32", value: alpha},
    ], tensors.flatMap((t): GgufTensorSpec[] => [
        {name: `${t.target}.lora_a`, shape: [t.inDim, r], type: "f32", data: () => new Uint8Array(t.a.buffer.slice(0))},
        {name: `${t.target}.lora_b`, shape: [r, t.outDim], type: "f32", data: () => new Uint8Array(t.b.buffer.slice(0))},
    ]));
}

/** The base model with W += scale * B·A merged in double precision (ggml layout: W[i + o*in]). */
async function writeMerged(file: string, merges: {tensor: LoraTensor; r: number; scale: number}[]): Promise<void> {
    const {metadata, tensors} = syntheticModel(base);
    await writeGguf(file, metadata, tensors.map((spec) => {
        const mine = merges.filter((m) => m.tensor.target === spec.name);
        if (mine.length === 0)
            return spec;
        return {...spec, data: () => {
            const w = new Float32Array(spec.data().slice().buffer);
            for (const {tensor: t, r, scale} of mine) {
                for (let o = 0; o < t.outDim; o++) {
                    for (let i = 0; i < t.inDim; i++) {
                        let d = 0;
                        for (let j = 0; j < r; j++)
                            d += t.b[j + o * r] * t.a[i + j * t.inDim];
                        w[i + o * t.inDim] += scale * d;
                    }
                }
            }
            return new Uint8Array(w.buffer);
        }};
    }));
}

const reference = (model: LoadedModel, context: ArrayLike<number>, continuation: ArrayLike<number>) =>
    continuationLogprob(model, context, continuation);

test("LoRA adapters applied without merging equal the merged model's full-sequence decode", async (t) => {
    const dir = tempDir(t);
    const baseFile = path.join(dir, "base.gguf");
    await writeGguf(baseFile, syntheticModel(base).metadata, syntheticModel(base).tensors);
    const E = base.embedding, F = 128, r = 4;
    const q = loraTensor("blk.0.attn_q.weight", E, E, r, 11);
    const down = loraTensor("blk.1.ffn_down.weight", F, E, r, 21);
    const up = loraTensor("blk.1.ffn_up.weight", E, F, 2, 31);
    const adapter1 = path.join(dir, "adapter1.gguf");
    const adapter2 = path.join(dir, "adapter2.gguf");
    await writeAdapter(adapter1, 8, r, [q, down]);   // alpha / r = 2
    await writeAdapter(adapter2, 1, 2, [up]);        // alpha / r = 0.5
    const merged = path.join(dir, "merged.gguf");
    // llama.cpp: scale = adapter scale * alpha / r
    await writeMerged(merged, [{tensor: q, r, scale: 0.75 * 2}, {tensor: down, r, scale: 0.75 * 2}, {tensor: up, r: 2, scale: 1.5 * 0.5}]);

    const model = await loadModel(baseFile);
    const ref = await loadModel(merged, {flashAttention: false, kvCacheType: "f32"});
    const plain = await loadModel(baseFile, {flashAttention: false, kvCacheType: "f32"});
    t.teardown(() => {
        model.close();
        ref.close();
        plain.close();
    });
    const tok = (s: string, bos = false) => Array.from(model.tokenize(s, {addSpecial: bos}));
    const requests: TokenRequest[] = [
        {context: tok("the cat sat on the", true), continuations: [tok(" mat"), tok(" big red chair"), tok(" dog")]},
        {context: tok("once upon a time", true), continuations: [tok(" there was"), tok(" a girl named lily"), tok(" the end"), tok(" in a land far away")]},
    ];
    const scorer = await LoglikScorer.open(model, {lora: [{path: adapter1, scale: 0.75}, {path: adapter2, scale: 1.5}], sequences: 8});
    const withLora = await scorer.score(requests);
    scorer.close();
    const without = await scoreLoglikelihoods(model, requests);
    let moved = 0;
    for (let i = 0; i < requests.length; i++) {
        for (let j = 0; j < requests[i].continuations.length; j++) {
            const expected = await reference(ref, requests[i].context, requests[i].continuations[j]);
            const got = withLora[i][j].logprob;
            t.true(Math.abs(got - expected) < 1e-4, `request ${i} choice ${j}: ${got} vs merged reference ${expected}`);
            const plainRef = await reference(plain, requests[i].context, requests[i].continuations[j]);
            t.true(Math.abs(without[i][j].logprob - plainRef) < 1e-4, "without adapters the base model is scored");
            if (Math.abs(got - plainRef) > 0.05)
                moved++;
        }
    }
    t.true(moved >= 4, `the adapters change the log-likelihoods (${moved} of 7 moved by more than 0.05)`);
    // Merging is not needed and nothing is written: the base file is unchanged and still scores as before.
    const again = await scoreLoglikelihoods(model, requests);
    t.deepEqual(again, without);
});

test("adapters for another architecture or shape are rejected with llama.cpp's reason", async (t) => {
    const dir = tempDir(t);
    const baseFile = path.join(dir, "base.gguf");
    await writeGguf(baseFile, syntheticModel(base).metadata, syntheticModel(base).tensors);
    const wrongShape = path.join(dir, "wrong-shape.gguf");
    await writeAdapter(wrongShape, 8, 4, [loraTensor("blk.0.attn_q.weight", 32, 64, 4, 1)]);
    const wrongName = path.join(dir, "wrong-name.gguf");
    await writeAdapter(wrongName, 8, 4, [loraTensor("blk.9.attn_q.weight", 64, 64, 4, 1)]);
    const notAdapter = path.join(dir, "not-adapter.gguf");
    await writeGguf(notAdapter, [{key: "general.architecture", type: "string", value: "llama"}], []);
    const model = await loadModel(baseFile);
    t.teardown(() => model.close());
    await t.throwsAsync(LoglikScorer.open(model, {lora: [{path: wrongShape}]}), {message: /wrong-shape\.gguf: llama\.cpp cannot load this LoRA adapter.*shape/});
    await t.throwsAsync(LoglikScorer.open(model, {lora: [{path: wrongName}]}), {message: /wrong-name\.gguf: .*does not exist in base model/});
    await t.throwsAsync(LoglikScorer.open(model, {lora: [{path: notAdapter}]}), {message: /not-adapter\.gguf: llama\.cpp cannot load this LoRA adapter/});
    await t.throwsAsync(LoglikScorer.open(model, {lora: [{path: baseFile, scale: Number.NaN}]}), {message: /scale must be a finite number/});
});
