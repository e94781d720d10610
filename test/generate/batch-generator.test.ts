// Continuous-batching generation (native/generate) on stories260K, checked against an independent
// computation: greedy decoding written out here, one full-sequence llama.cpp decode per token
// (loadModel().logits) and an argmax in JavaScript. Sampling, grammars, stop strings, limits,
// cancellation and bad input are checked on the generator's own terms.
import test from "ava";
import {BatchGenerator} from "../../ts/generate/batch-generator.js";
import {loadModel, type LoadedModel} from "../../ts/model.js";
import {hasShared, stories260K} from "../helpers.js";

const maybe = hasShared ? test.serial : test.skip;

// f32 KV cache and no flash attention on both sides, so that batching is the only difference.
const precise = {kvCacheType: "f32" as const, flashAttention: false};
let model: LoadedModel | undefined;
async function shared(): Promise<LoadedModel> {
    model ??= await loadModel(stories260K, {threads: 1, ...precise});
    return model;
}
test.after.always(() => model?.close());

const texts = ["Once upon a time", "The little dog", "Lily and Tom went to the", "One day, a big", "Sam had a red", "The sun was"];

/** Greedy continuation by full re-decoding: at each step the argmax of the last row (first index on ties). */
async function naiveGreedy(m: LoadedModel, prompt: Int32Array, steps: number): Promise<{tokens: number[]; rows: Float32Array[]}> {
    const V = m.info.nVocab;
    const seq = Array.from(prompt);
    const tokens: number[] = [], rows: Float32Array[] = [];
    for (let s = 0; s < steps; s++) {
        const logits = await m.logits(seq);
        const row = logits.slice((seq.length - 1) * V, seq.length * V);
        let best = 0;
        for (let v = 1; v < V; v++) {
            if (row[v] > row[best])
                best = v;
        }
        tokens.push(best);
        rows.push(row);
        seq.push(best);
    }
    return {tokens, rows};
}

/**
 * Our tokens equal the naive ones until the first difference, and a difference is allowed only where
 * the naive logits of the two tokens are within 1e-3 (a near tie that batching's rounding can flip).
 */
function assertSameGreedy(t: any, ours: Int32Array, naive: {tokens: number[]; rows: Float32Array[]}, what: string): number {
    let agreed = 0;
    for (; agreed < ours.length; agreed++) {
        if (ours[agreed] === naive.tokens[agreed])
            continue;
        const row = naive.rows[agreed];
        t.true(Math.abs(row[naive.tokens[agreed]] - row[ours[agreed]]) < 1e-3, `${what}: token ${agreed} differs without a near tie`);
        break;
    }
    return agreed;
}

maybe("greedy replies of 4 sequences decoded together equal greedy decoding by full re-evaluation", async (t) => {
    const m = await shared();
    const gen = await BatchGenerator.open(m, {sequences: 4, contextSize: 128, threads: 1, ...precise});
    try {
        const prompts = texts.slice(0, 4).map((x) => m.tokenize(x));
        const steps = 24;
        const replies = await Promise.all(prompts.map((prompt) => gen.generate({prompt, maxTokens: steps})));
        let agreed = 0;
        for (let i = 0; i < prompts.length; i++) {
            const r = replies[i];
            t.is(r.promptTokens, prompts[i].length);
            t.true(r.tokens.length <= steps);
            t.is(r.completionTokens, r.finish === "length" ? steps : r.tokens.length + 1);
            // the reply continues the prompt: its text is the tokens' pieces (a leading space kept)
            t.is(r.text, Array.from(r.tokens, (x) => m.tokenToPiece(x)).join(""));
            agreed += assertSameGreedy(t, r.tokens, await naiveGreedy(m, prompts[i], r.tokens.length), texts[i]);
        }
        t.true(agreed >= 60, `only ${agreed} of ${4 * steps} tokens compared`);
    } finally {
        await gen.close();
    }
});

maybe("more requests than sequences: every request gets the reply it gets alone (continuous batching, no leaks between slots)", async (t) => {
    const m = await shared();
    const many = await BatchGenerator.open(m, {sequences: 3, contextSize: 96, threads: 1, ...precise});
    const alone = await BatchGenerator.open(m, {sequences: 1, contextSize: 96, threads: 1, ...precise});
    try {
        // different lengths, so that slots free up at different steps and new prompts join running ones
        const requests = texts.flatMap((x, i) => [
            {prompt: m.tokenize(x), maxTokens: 8 + 5 * i},
            {prompt: m.tokenize(x), maxTokens: 20, temperature: 0.9, seed: 100 + i},
        ]);
        const together = await Promise.all(requests.map((r) => many.generate(r)));
        t.is(many.pending, 0);
        for (let i = 0; i < requests.length; i++) {
            const single = await alone.generate(requests[i]);
            t.deepEqual(Array.from(together[i].tokens), Array.from(single.tokens), `request ${i}`);
            t.is(together[i].finish, single.finish);
        }
    } finally {
        await many.close();
        await alone.close();
    }
});

maybe("sampling: a seed reproduces a reply, top-k 1 is greedy, different seeds differ", async (t) => {
    const m = await shared();
    const gen = await BatchGenerator.open(m, {sequences: 4, contextSize: 96, threads: 1});
    try {
        const prompt = m.tokenize(texts[0]);
        const [a, b, c, greedy, k1] = await Promise.all([
            gen.generate({prompt, maxTokens: 32, temperature: 1, seed: 7}),
            gen.generate({prompt, maxTokens: 32, temperature: 1, seed: 7}),
            gen.generate({prompt, maxTokens: 32, temperature: 1, seed: 8}),
            gen.generate({prompt, maxTokens: 32}),
            gen.generate({prompt, maxTokens: 32, temperature: 1.5, topK: 1, seed: 9}),
        ]);
        t.deepEqual(Array.from(a.tokens), Array.from(b.tokens));
        t.notDeepEqual(Array.from(a.tokens), Array.from(c.tokens));
        t.deepEqual(Array.from(k1.tokens), Array.from(greedy.tokens));
    } finally {
        await gen.close();
    }
});

maybe("a GBNF grammar constrains every reply; stop strings and maxTokens end replies", async (t) => {
    const m = await shared();
    const gen = await BatchGenerator.open(m, {sequences: 4, contextSize: 128, threads: 1});
    try {
        const prompt = m.tokenize(texts[1]);
        const grammar = `root ::= "{\\"answer\\": \\"" [A-D] "\\", \\"why\\": \\"" [a-z ]{1,20} "\\"}"`;
        const replies = await Promise.all([1, 2, 3, 4, 5, 6].map((seed) => gen.generate({prompt, maxTokens: 64, temperature: 1, seed, grammar})));
        for (const r of replies) {
            t.regex(r.text, /^\{"answer": "[A-D]", "why": "[a-z ]{1,20}"\}$/);
            t.is(r.finish, "stop");  // the grammar completes, then only end-of-generation is allowed
        }

        const free = await gen.generate({prompt, maxTokens: 48});
        const cut = free.text.slice(8, 11);  // some text the greedy reply is known to contain
        const stopped = await gen.generate({prompt, maxTokens: 48, stop: [cut]});
        t.is(stopped.finish, "stop");
        t.is(stopped.text, free.text.slice(0, free.text.indexOf(cut)));
        t.false(stopped.text.includes(cut));

        const limited = await gen.generate({prompt, maxTokens: 5});
        t.is(limited.finish, "length");
        t.is(limited.completionTokens, 5);
        t.deepEqual(Array.from(limited.tokens), Array.from(free.tokens.slice(0, 5)));
    } finally {
        await gen.close();
    }
});

maybe("the context of a sequence bounds prompt and reply", async (t) => {
    const m = await shared();
    const gen = await BatchGenerator.open(m, {sequences: 2, contextSize: 16, threads: 1});
    try {
        const long = m.tokenize("Once upon a time there was a little girl named Lily who loved to play");
        t.true(long.length >= 16);
        await t.throwsAsync(gen.generate({prompt: long}), {instanceOf: RangeError, message: /context of a sequence holds 16/});
        const r = await gen.generate({prompt: m.tokenize("Once upon a time"), maxTokens: 100});
        t.is(r.finish, "length");
        t.is(r.promptTokens + r.tokens.length, 16);
    } finally {
        await gen.close();
    }
});

maybe("abort ends one request; close rejects what is pending; bad requests fail before anything runs", async (t) => {
    const m = await shared();
    const gen = await BatchGenerator.open(m, {sequences: 2, contextSize: 512, threads: 1});
    const prompt = m.tokenize(texts[2]);
    const controller = new AbortController();
    const aborted = gen.generate({prompt, maxTokens: 400, temperature: 1, seed: 1, signal: controller.signal});
    const other = gen.generate({prompt, maxTokens: 12});
    setTimeout(() => controller.abort(), 2);
    await t.throwsAsync(aborted, {any: true, name: "AbortError"});  // the signal's reason, a DOMException
    t.is((await other).tokens.length, 12);

    await t.throwsAsync(gen.generate({prompt: new Int32Array(0)}), {instanceOf: RangeError, message: /no tokens/});
    await t.throwsAsync(gen.generate({prompt: Int32Array.of(1, m.info.nVocab)}), {instanceOf: RangeError, message: /outside the vocabulary/});
    await t.throwsAsync(gen.generate({prompt, grammar: "root ::= ("}), {instanceOf: RangeError, message: /cannot parse the grammar/});
    await t.throwsAsync(gen.generate({prompt, maxTokens: 0}), {instanceOf: RangeError});
    await t.throwsAsync(gen.generate({prompt, temperature: -1}), {instanceOf: RangeError});
    await t.throwsAsync(gen.generate({prompt, stop: [""]}), {instanceOf: RangeError, message: /stop strings/});

    const pending = [gen.generate({prompt, maxTokens: 400}), gen.generate({prompt, maxTokens: 400}), gen.generate({prompt, maxTokens: 400})];
    await gen.close();
    for (const p of pending)
        await t.throwsAsync(p, {message: /closed/});
    await t.throwsAsync(gen.generate({prompt}), {message: /closed/});
    await t.throwsAsync(BatchGenerator.open(m, {sequences: 8, batchSize: 4}), {message: /batch size \(4\) must be at least the number of sequences \(8\)/});
});
