// Tokenization of (context, continuation) as lm-evaluation-harness's _encode_pair does it.
import test from "ava";
import {PairEncoder} from "../../ts/eval/encode.js";
import {loadModel} from "../../ts/model.js";
import {hasShared, stories260K} from "../helpers.js";

const sharedTest = hasShared ? test : test.skip;

sharedTest("encodePair: context alone, continuation = the whole string's tokens after the context's count", async (t) => {
    const model = await loadModel(stories260K, {vocabOnly: true});
    t.teardown(() => model.close());
    const enc = new PairEncoder(model);
    t.true(enc.addBos, "stories260K's GGUF asks for BOS");
    const plain = (s: string) => Array.from(model.tokenize(s, {addSpecial: false}));
    const bos = model.info.bos;
    const cases: [string, string][] = [
        ["Question: Which is the largest planet?\nAnswer:", " Jupiter"],
        ["The cat sat on the", " mat and the dog"],
        ["Once upon a time", "ly"],           // continuation that merges with the context's last word
        ["x", " y z"],
    ];
    for (const [context, continuation] of cases) {
        const p = enc.encodePair(context, continuation);
        const ctx = [bos, ...plain(context)];
        const whole = [bos, ...plain(context + continuation)];
        t.deepEqual(Array.from(p.context), ctx, context);
        t.deepEqual(Array.from(p.continuation), whole.slice(ctx.length), `${context} | ${continuation}`);
    }
    // lm-evaluation-harness moves the context's trailing whitespace to the continuation.
    const moved = enc.encodePair("Answer: \n", "yes");
    const whole = [bos, ...plain("Answer: \nyes")];
    const ctx = [bos, ...plain("Answer:")];
    t.deepEqual(Array.from(moved.context), ctx);
    t.deepEqual(Array.from(moved.continuation), whole.slice(ctx.length));
    // An empty context is the BOS token alone, and the continuation is encoded by itself.
    const empty = enc.encodePair("", "Once upon a time");
    t.deepEqual(Array.from(empty.context), [bos]);
    t.deepEqual(Array.from(empty.continuation), plain("Once upon a time"));
});

sharedTest("encodePair: bos can be turned off, long contexts lose tokens on the left, empty continuations fail", async (t) => {
    const model = await loadModel(stories260K, {vocabOnly: true});
    t.teardown(() => model.close());
    const plain = (s: string) => Array.from(model.tokenize(s, {addSpecial: false}));
    const noBos = new PairEncoder(model, {bos: false});
    const p = noBos.encodePair("The cat sat", " on the mat");
    t.deepEqual(Array.from(p.context), plain("The cat sat"));
    t.deepEqual([...p.context, ...p.continuation], plain("The cat sat on the mat"));

    const short = new PairEncoder(model, {maxLength: 12});
    const context = "Once upon a time there was a little girl named Lily who liked to play";
    const long = short.encodePair(context, " outside");
    const full = new PairEncoder(model).encodePair(context, " outside");
    t.is(long.context.length + long.continuation.length, 13, "context + continuation = maxLength + 1 tokens");
    t.deepEqual(Array.from(long.continuation), Array.from(full.continuation));
    t.deepEqual(Array.from(long.context), Array.from(full.context).slice(full.context.length - long.context.length));

    t.throws(() => new PairEncoder(model).encodePair("The cat", ""), {message: /has no tokens of its own/});
    t.throws(() => new PairEncoder(model, {maxLength: 3}).encodePair("The cat", " sat on the big red mat"), {message: /more than the model's length 3/});
    t.throws(() => new PairEncoder(model, {maxLength: 1}), {message: /maxLength must be an integer >= 2/});
});
