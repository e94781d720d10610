// The batched scorer (shared context, KV-cache sequence copies, many sequences per decode) against
// an independent computation: each context + continuation decoded as one plain sequence through
// loadModel().logits, log-softmax and sums in double precision written out here. The reference
// decode runs with an f32 KV cache and without flash attention, as the scorer does by default:
// llama.cpp's f16 cache and its CPU flash-attention kernel (fp16 accumulation under 64 tokens)
// move these models' log-likelihoods by up to ~1e-2, far above the 1e-4 compared here.
import path from "node:path";
import test from "ava";
import {LoglikScorer, scoreLoglikelihoods, type ContinuationScore, type TokenRequest} from "../../ts/eval/loglik.js";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {loadModel, type LoadedModel} from "../../ts/model.js";
import {native} from "../../ts/native.js";
import {hasShared, stories260K, tempDir} from "../helpers.js";

const sharedTest = hasShared ? test : test.skip;

/** A model whose logits() decodes in full fp32 (see above). */
const loadPrecise = (file: string) => loadModel(file, {flashAttention: false, kvCacheType: "f32"});

interface Reference {
    logprob: number;
    isGreedy: boolean;
    tokens: number;
}

/** Sum of log p(continuation token | everything before) from one full-sequence decode. */
async function reference(model: LoadedModel, context: ArrayLike<number>, continuation: ArrayLike<number>): Promise<Reference> {
    const seq = [...Array.from(context), ...Array.from(continuation)];
    const logits = await model.logits(seq);
    const V = model.info.nVocab;
    let logprob = 0;
    let isGreedy = true;
    for (let t = 0; t < continuation.length; t++) {
        const pos = context.length - 1 + t;  // the row that predicts continuation[t]
        const row = logits.subarray(pos * V, (pos + 1) * V);
        let max = -Infinity, argmax = 0;
        for (let v = 0; v < V; v++) {
            if (row[v] > max) {
                max = row[v];
                argmax = v;
            }
        }
        let sum = 0;
        for (let v = 0; v < V; v++)
            sum += Math.exp(row[v] - max);
        logprob += row[continuation[t]] - (max + Math.log(sum));
        if (argmax !== continuation[t])
            isGreedy = false;
    }
    return {logprob, isGreedy, tokens: continuation.length};
}

function tok(model: LoadedModel, text: string, bos = false): number[] {
    return Array.from(model.tokenize(text, {addSpecial: bos}));
}

/** Requests of every shape the scorer must handle: 1..5 choices, 1-token contexts and continuations. */
function requestsFor(model: LoadedModel): TokenRequest[] {
    const q = (ctx: string, conts: string[]): TokenRequest => ({
        context: tok(model, ctx, true),
        continuations: conts.map((c) => tok(model, c)),
    });
    return [
        q("Once upon a time there was a little girl", [" named Lily", " who liked cats and dogs", " .", " with a big red ball"]),
        q("Question: Which is the largest planet?\nAnswer:", [" Jupiter", " Mars", " Earth"]),
        q("The cat sat on the", [" mat", " dog", " big red chair near the window", " sun", " floor of the house"]),
        q("He said", [" hello to his friend and they went to the park together to play"]),
        {context: tok(model, "", true), continuations: [tok(model, "Once upon a time"), tok(model, "The end")]},
        q("Tom and Lily went to the park. They saw a big tree and", [" a", " b", " climbed it", " ran away"]),
    ];
}

async function checkAgainstReference(t: import("ava").ExecutionContext, model: LoadedModel, requests: TokenRequest[],
    got: ContinuationScore[][], tolerance = 1e-4): Promise<void> {
    t.is(got.length, requests.length);
    let checked = 0, greedySeen = 0;
    for (let i = 0; i < requests.length; i++) {
        t.is(got[i].length, requests[i].continuations.length);
        for (let j = 0; j < requests[i].continuations.length; j++) {
            const ref = await reference(model, requests[i].context, requests[i].continuations[j]);
            const s = got[i][j];
            t.true(Math.abs(s.logprob - ref.logprob) < tolerance, `request ${i} choice ${j}: ${s.logprob} vs reference ${ref.logprob}`);
            if (tolerance <= 1e-4)
                t.is(s.isGreedy, ref.isGreedy, `request ${i} choice ${j}: is_greedy`);
            t.is(s.tokens, ref.tokens);
            t.true(s.logprob < 0);
            checked++;
            if (ref.isGreedy)
                greedySeen++;
        }
    }
    t.true(checked >= requests.length);
    t.log(`${checked} continuations checked, ${greedySeen} greedy`);
}

sharedTest("stories260K: every continuation's log-likelihood equals a full-sequence decode", async (t) => {
    const model = await loadPrecise(stories260K);
    t.teardown(() => model.close());
    const requests = requestsFor(model);
    // A greedy continuation, so that is_greedy is exercised as true too.
    const ctx = tok(model, "Once upon a time", true);
    const greedy: number[] = [];
    for (let k = 0; k < 3; k++) {
        const logits = await model.logits([...ctx, ...greedy]);
        const V = model.info.nVocab;
        const row = logits.subarray((ctx.length + greedy.length - 1) * V, (ctx.length + greedy.length) * V);
        let best = 0;
        for (let v = 1; v < V; v++)
            if (row[v] > row[best])
                best = v;
        greedy.push(best);
    }
    requests.push({context: ctx, continuations: [greedy, tok(model, " there was a dog")]});
    const got = await scoreLoglikelihoods(model, requests, {contextSize: 128, sequences: 8, batchSize: 32});
    t.true(got[got.length - 1][0].isGreedy);
    await checkAgainstReference(t, model, requests, got);
});

test("generated f32 models (llama, qwen2): log-likelihoods equal a full-sequence decode", async (t) => {
    const dir = tempDir(t);
    for (const [arch, type] of [["llama", "f32"], ["qwen2", "f32"]] as const) {
        const file = path.join(dir, `${arch}-${type}.gguf`);
        await writeSyntheticModel(file, {architecture: arch, layers: 3, embedding: 64, heads: 4, kvHeads: 2, feedForward: 96, vocab: 700, type, seed: 7});
        const model = await loadPrecise(file);
        try {
            const requests = requestsFor(model);
            const got = await scoreLoglikelihoods(model, requests, {contextSize: 64, sequences: 6, batchSize: 16});
            await checkAgainstReference(t, model, requests, got);
        } finally {
            model.close();
        }
    }
});

// With f16 or quantized weights ggml rounds (or quantizes) activations before each matrix product,
// so a 1e-7 change in summation order (other sequences' cells in the shared KV pool) sometimes flips
// a rounding and moves a log-likelihood by ~1e-3; a plain decode cut into different chunks shows
// the same spread.
test("generated f16 and q8_0 models: log-likelihoods agree with a full-sequence decode to activation rounding", async (t) => {
    for (const type of ["f16", "q8_0"]) {
        const file = path.join(tempDir(t), `llama-${type}.gguf`);
        await writeSyntheticModel(file, {architecture: "llama", layers: 3, embedding: 64, heads: 4, kvHeads: 2, feedForward: 96, vocab: 700, type, seed: 7});
        const model = await loadPrecise(file);
        try {
            const requests = requestsFor(model);
            await checkAgainstReference(t, model, requests, await scoreLoglikelihoods(model, requests), 1e-2);
        } finally {
            model.close();
        }
    }
});

sharedTest("results are identical across runs and agree across batch sizes, pack sizes and the naive mode", async (t) => {
    const model = await loadPrecise(stories260K);
    t.teardown(() => model.close());
    const requests = requestsFor(model);
    const flat = (r: ContinuationScore[][]) => r.flatMap((x) => x.map((s) => s.logprob));
    const scorer = await LoglikScorer.open(model, {contextSize: 256, sequences: 16, batchSize: 64});
    const first = flat(await scorer.score(requests));
    const second = flat(await scorer.score(requests));
    scorer.close();
    t.deepEqual(second, first, "the same configuration twice gives bit-identical results");
    const again = flat(await scoreLoglikelihoods(model, requests, {contextSize: 256, sequences: 16, batchSize: 64}));
    t.deepEqual(again, first, "a new scorer with the same configuration gives bit-identical results");

    const configs = [
        {batchSize: 1, contextSize: 64, sequences: 5},
        {batchSize: 7, contextSize: 100, sequences: 5},
        {batchSize: 512, contextSize: 4096, sequences: 64},
        {batchSize: 64, contextSize: 256, sequences: 16, shareContext: false},
        {batchSize: 3, contextSize: 32, sequences: 1, shareContext: false},
    ];
    for (const cfg of configs) {
        const other = flat(await scoreLoglikelihoods(model, requests, cfg));
        t.is(other.length, first.length);
        const worst = Math.max(...other.map((x, i) => Math.abs(x - first[i])));
        t.true(worst < 1e-4, `${JSON.stringify(cfg)}: largest difference ${worst}`);
    }
    // Order of requests does not matter either.
    const reversed = await scoreLoglikelihoods(model, [...requests].reverse(), {contextSize: 256, sequences: 16, batchSize: 64});
    const back = flat(reversed.reverse());
    t.true(Math.max(...back.map((x, i) => Math.abs(x - first[i]))) < 1e-4);
});

sharedTest("a request larger than the context size grows the scoring context", async (t) => {
    const model = await loadPrecise(stories260K);
    t.teardown(() => model.close());
    const long = tok(model, "Once upon a time there was a little girl named Lily. ".repeat(12), true);
    const requests: TokenRequest[] = [{context: long, continuations: [tok(model, " She was happy"), tok(model, " The end")]}];
    t.true(long.length > 100);
    const got = await scoreLoglikelihoods(model, requests, {contextSize: 16, sequences: 2});
    await checkAgainstReference(t, model, requests, got);
});

sharedTest("bad requests and options are rejected with a clear error", async (t) => {
    const model = await loadPrecise(stories260K);
    t.teardown(() => model.close());
    const ctx = tok(model, "Once", true);
    await t.throwsAsync(scoreLoglikelihoods(model, [{context: [], continuations: [[5]]}]), {message: /request 0: the context has no tokens/});
    await t.throwsAsync(scoreLoglikelihoods(model, [{context: ctx, continuations: []}]), {message: /request 0: no continuations/});
    await t.throwsAsync(scoreLoglikelihoods(model, [{context: ctx, continuations: [[5]]}, {context: ctx, continuations: [[5], []]}]),
        {message: /request 1: continuation 1 has no tokens/});
    await t.throwsAsync(scoreLoglikelihoods(model, [{context: ctx, continuations: [[512]]}]), {message: /token id 512 is outside the vocabulary \(512\)/});
    await t.throwsAsync(scoreLoglikelihoods(model, [{context: [-1], continuations: [[3]]}]), {message: /context token id -1/});
    await t.throwsAsync(LoglikScorer.open(model, {sequences: 0}), {message: /sequences must be an integer in \[1, 256\]/});
    await t.throwsAsync(LoglikScorer.open(model, {lora: [{path: "/nonexistent/adapter.gguf"}]}), {message: /adapter\.gguf: llama\.cpp cannot load this LoRA adapter/});
    const scorer = await LoglikScorer.open(model);
    scorer.close();
    await t.throwsAsync(scorer.score([{context: ctx, continuations: [[5]]}]), {message: /closed/});
    // An item with more choices than sequences in flight still works (the context grows to fit).
    const many: TokenRequest = {context: ctx, continuations: Array.from({length: 40}, (_, i) => [10 + i])};
    const got = await scoreLoglikelihoods(model, [many], {sequences: 4});
    t.is(got[0].length, 40);
    await checkAgainstReference(t, model, [many], got);
});

sharedTest("an aborted signal cancels scoring", async (t) => {
    const model = await loadPrecise(stories260K);
    t.teardown(() => model.close());
    const ctx = tok(model, "Once upon a time there was a little girl", true);
    const requests: TokenRequest[] = Array.from({length: 3000}, () => ({context: ctx, continuations: [tok(model, " named Lily and she liked to play")]}));
    const controller = new AbortController();
    const scorer = await LoglikScorer.open(model, {contextSize: 64, sequences: 2, batchSize: 8});
    t.teardown(() => scorer.close());
    const promise = scorer.score(requests, {signal: controller.signal, onProgress: (done) => {
        if (done >= 2)
            controller.abort(new Error("stop now"));
    }});
    await t.throwsAsync(promise, {message: "stop now"});
    // The scorer stays usable afterwards.
    const ok = await scorer.score(requests.slice(0, 2));
    t.is(ok.length, 2);
});

test("the native scorer is a class: made only by open(), its methods refuse after close()", async (t) => {
    const file = path.join(tempDir(t), "tiny.gguf");
    await writeSyntheticModel(file, {architecture: "llama", layers: 1, embedding: 32, heads: 2, feedForward: 48, seed: 3});
    const model = await loadPrecise(file);
    try {
        const {LoglikScorer: NativeScorer} = native();
        t.throws(() => new (NativeScorer as unknown as new (x: unknown) => unknown)({}), {instanceOf: TypeError,
            message: "LoglikScorer objects come from LoglikScorer.open()"});
        const scorer = await NativeScorer.open(model.handle, {sequences: 2});
        t.is(scorer.info().sequences, 2);
        const r = await scorer.score([{context: Int32Array.of(1, 5), continuations: [Int32Array.of(7)]}]);
        t.is(r.logprobs.length, 1);
        scorer.close();
        scorer.cancel();
        t.throws(() => scorer.info(), {message: "the scorer was closed"});
        t.throws(() => scorer.score([]), {message: "the scorer was closed"});
    } finally {
        model.close();
    }
});
