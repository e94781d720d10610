// Rolling-window perplexity against a plain computation: the harness's windows written out here,
// each decoded as one sequence, log-softmax in double precision.
import test from "ava";
import {perplexity, rollingWindows} from "../../ts/eval/perplexity.js";
import {OptionError} from "../../ts/options.js";
import {loadModel, type LoadedModel} from "../../ts/model.js";
import {hasShared, stories260K, continuationLogprob} from "../helpers.js";

const sharedTest = hasShared ? test : test.skip;

const text = "Once upon a time, there was a little girl named Lily. She liked to play in the park with her big red ball. " +
    "One day, she saw a dog. The dog was sad because it was lost. Lily wanted to help the dog find its home.\n" +
    "They walked and walked until they found a little house. A kind old man came out and smiled.";

const logprobOf = (model: LoadedModel, prefix: number[], targets: number[]) => continuationLogprob(model, prefix, targets);

test("rollingWindows predicts every token once and never shows the model more than the window", (t) => {
    const tokens = Array.from({length: 103}, (_, i) => 1000 + i);
    for (const [window, stride] of [[16, 16], [16, 5], [16, 1], [200, 200], [1, 1]]) {
        const windows = rollingWindows(tokens, 7, window, stride);
        const predicted = windows.flatMap((w) => Array.from(w.continuations[0]));
        t.deepEqual(predicted, tokens, `window ${window} stride ${stride}`);
        t.deepEqual(Array.from(windows[0].context), [7]);
        for (const w of windows.slice(1)) {
            const cont = Array.from(w.continuations[0]);
            const ctx = Array.from(w.context);
            t.true(cont.length <= stride);
            t.true(ctx.length + cont.length - 1 <= window, "input tokens <= window");
            // the context is exactly the tokens before the targets
            const at = tokens.indexOf(cont[0]);
            t.deepEqual(ctx, tokens.slice(at - ctx.length, at));
            t.is(ctx.length, Math.min(at, window - cont.length + 1));
        }
    }
    t.is(rollingWindows([], 7, 8, 8).length, 0);
    t.throws(() => rollingWindows(tokens, 7, 8, 9), {message: /stride must be an integer in \[1, window\]/});
});

sharedTest("perplexity of a text equals the plain rolling computation", async (t) => {
    const model = await loadModel(stories260K);
    const ref = await loadModel(stories260K, {flashAttention: false, kvCacheType: "f32"});
    t.teardown(() => {
        model.close();
        ref.close();
    });
    const tokens = Array.from(model.tokenize(text, {addSpecial: false}));
    const bos = model.info.bos;
    t.true(tokens.length > 60);

    // One window: every token given BOS and all tokens before it.
    const one = await perplexity(model, text, {window: 512});
    const llOne = await logprobOf(ref, [bos], tokens);
    t.is(one.windows, 1);
    t.is(one.tokens, tokens.length);
    t.true(Math.abs(one.loglikelihood - llOne) < 1e-4, `${one.loglikelihood} vs ${llOne}`);
    t.true(Math.abs(one.perplexity - Math.exp(-llOne / tokens.length)) < 1e-4 * one.perplexity);
    const bytes = Buffer.byteLength(text);
    const words = text.split(/\s+/).length;
    t.is(one.bytes, bytes);
    t.is(one.words, words);
    t.true(Math.abs(one.bits_per_byte - (-llOne / bytes / Math.log(2))) < 1e-6);
    t.true(Math.abs(one.word_perplexity - Math.exp(-llOne / words)) < 1e-4 * one.word_perplexity);
    t.true(Math.abs(one.byte_perplexity - Math.exp(-llOne / bytes)) < 1e-6 * one.byte_perplexity);

    // Disjoint windows of 24 (the harness default): window k predicts tokens [24k, 24k + 24) from the
    // token before; the last, shorter window sees as many earlier tokens as fit in 24.
    const W = 24;
    let llDisjoint = await logprobOf(ref, [bos], tokens.slice(0, W));
    for (let s = W; s < tokens.length; s += W) {
        const end = Math.min(s + W, tokens.length);
        llDisjoint += await logprobOf(ref, end - s === W ? [tokens[s - 1]] : tokens.slice(end - W - 1, s), tokens.slice(s, end));
    }
    t.not(tokens.length % W, 0, "the text ends in a partial window");
    const disjoint = await perplexity(model, text, {window: W});
    t.is(disjoint.windows, Math.ceil(tokens.length / W));
    t.true(Math.abs(disjoint.loglikelihood - llDisjoint) < 1e-4, `${disjoint.loglikelihood} vs ${llDisjoint}`);
    t.true(disjoint.loglikelihood < one.loglikelihood, "less context, lower likelihood");

    // Overlapping windows: stride 8 predicts 8 new tokens with up to 17 tokens of context.
    let llStrided = await logprobOf(ref, [bos], tokens.slice(0, W));
    for (let s = W; s < tokens.length; s += 8) {
        const end = Math.min(s + 8, tokens.length);
        llStrided += await logprobOf(ref, tokens.slice(Math.max(0, end - W - 1), s), tokens.slice(s, end));
    }
    const strided = await perplexity(model, text, {window: W, stride: 8});
    t.true(Math.abs(strided.loglikelihood - llStrided) < 1e-4, `${strided.loglikelihood} vs ${llStrided}`);

    await t.throwsAsync(perplexity(model, "", {}), {message: /no tokens/});
});

test("perplexity checks its window, stride and scorer options before it loads the model", async (t) => {
    const missing = "/nonexistent/model.gguf";
    await t.throwsAsync(perplexity(missing, "text", {window: 0}), {instanceOf: OptionError, message: /window must be a positive integer/});
    await t.throwsAsync(perplexity(missing, "text", {window: 8, stride: 9}), {instanceOf: OptionError,
        message: /stride must be a positive integer no larger than window \(got 9\)/});
    await t.throwsAsync(perplexity(missing, "text", {sequences: 0}), {instanceOf: OptionError, message: /sequences must be an integer in \[1, 256\]/});
});
