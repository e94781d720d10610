// evaluate() end to end on the shared datasets and stories260K: the prompt strings are the
// harness's formats, every choice's log-likelihood equals a plain computation (harness
// tokenization written out here, one full-sequence decode each), and the metrics follow.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {loadTask} from "../../ts/data/loaders/index.js";
import type {TaskItem} from "../../ts/data/task-item.js";
import {evaluate, evaluateItems, type EvalItemResult} from "../../ts/eval/evaluate.js";
import {OptionError} from "../../ts/options.js";
import {loadModel, type LoadedModel} from "../../ts/model.js";
import {hasShared, stories260K, tempDir, continuationLogprob} from "../helpers.js";

const sharedTest = hasShared ? test : test.skip;

/** log p(continuation | context) with the harness's tokenization: BOS + whole string, split at the context's token count. */
async function plainLoglik(model: LoadedModel, context: string, continuation: string): Promise<number> {
    const bos = model.info.bos;
    const ctx = [bos, ...model.tokenize(context, {addSpecial: false})];
    const whole = [bos, ...model.tokenize(context + continuation, {addSpecial: false})];
    return continuationLogprob(model, ctx, whole.slice(ctx.length));
}

async function checkItems(t: import("ava").ExecutionContext, ref: LoadedModel, items: TaskItem[], results: EvalItemResult[],
    prompt: (item: TaskItem) => {context: string; continuations: string[]; lengths: number[]}): Promise<void> {
    t.is(results.length, items.length);
    for (const [i, item] of items.entries()) {
        const r = results[i];
        const want = prompt(item);
        t.is(r.id, item.id);
        t.is(r.context, want.context);
        t.deepEqual(r.continuations, want.continuations);
        t.is(r.gold, item.choices.findIndex((c) => c.label === item.answer));
        for (let j = 0; j < r.continuations.length; j++) {
            const expected = await plainLoglik(ref, r.context, r.continuations[j]);
            t.true(Math.abs(r.loglikelihoods[j] - expected) < 1e-4, `${item.id} choice ${j}: ${r.loglikelihoods[j]} vs ${expected}`);
        }
        let pred = 0, predNorm = 0;
        for (let j = 1; j < r.loglikelihoods.length; j++) {
            if (r.loglikelihoods[j] > r.loglikelihoods[pred])
                pred = j;
            if (r.loglikelihoods[j] / want.lengths[j] > r.loglikelihoods[predNorm] / want.lengths[predNorm])
                predNorm = j;
        }
        t.is(r.pred, pred);
        t.is(r.pred_norm, predNorm);
        t.is(r.acc, pred === r.gold ? 1 : 0);
        t.is(r.acc_norm, predNorm === r.gold ? 1 : 0);
    }
}

sharedTest("arc-easy, arc-challenge, openbookqa, commonsenseqa, fiqa-sa: harness prompts and exact log-likelihoods", async (t) => {
    const model = await loadModel(stories260K);
    const ref = await loadModel(stories260K, {flashAttention: false, kvCacheType: "f32"});
    t.teardown(() => {
        model.close();
        ref.close();
    });
    const qa = (item: TaskItem) => ({
        context: `Question: ${item.question}\nAnswer:`,
        continuations: item.choices.map((c) => ` ${c.text}`),
        lengths: item.choices.map((c) => c.text.length),
    });
    for (const task of ["arc-easy", "arc-challenge"] as const) {
        const r = await evaluate(model, {task, limit: 6, seed: 4});
        const items = (await loadTask(task)).filter((it) => r.items.some((x) => x.id === it.id));
        await checkItems(t, ref, items, r.items, qa);
        t.is(r.n, 6);
        t.is(r.acc, r.items.reduce((a, x) => a + x.acc, 0) / 6);
        t.regex(r.data, /ARC-(Easy|Challenge)-Test\.jsonl$/);
    }
    const obqa = await evaluate(model, {task: "openbookqa", limit: 5});
    await checkItems(t, ref, (await loadTask("openbookqa")).slice(0, 5), obqa.items, (item) => ({
        context: item.question,
        continuations: item.choices.map((c) => ` ${c.text}`),
        lengths: item.choices.map((c) => c.text.length),
    }));
    const cqa = await evaluate(model, {task: "commonsenseqa", limit: 5});
    t.regex(cqa.data, /valid\.jsonl$/, "CommonsenseQA is evaluated on validation, as the harness does");
    await checkItems(t, ref, (await loadTask("commonsenseqa", {split: "validation"})).slice(0, 5), cqa.items, (item) => ({
        context: `Question: ${item.question.trim()}\nA. ${item.choices[0].text}\nB. ${item.choices[1].text}\nC. ${item.choices[2].text}\n` +
            `D. ${item.choices[3].text}\nE. ${item.choices[4].text}\nAnswer:`,
        continuations: [" A", " B", " C", " D", " E"],
        lengths: [1, 1, 1, 1, 1],
    }));
    t.is(cqa.acc_norm, cqa.acc, "one-letter choices: acc_norm = acc");
    const fiqa = await evaluate(model, {task: "fiqa-sa", limit: 4});
    const original = fs.readFileSync(fiqa.data, "utf8").split("\n").slice(0, 4).map((l) => JSON.parse(l) as {context: string; target: string});
    await checkItems(t, ref, (await loadTask("fiqa-sa")).slice(0, 4), fiqa.items, (item) => {
        const line = original[Number(item.id.split("-").pop()) - 1];
        return {
            context: line.context.trimEnd(),  // FinLoRA's prompt ends in "Answer: "; the space belongs to the choice
            continuations: [" negative", " neutral", " positive"],
            lengths: [8, 7, 8],
        };
    });
    t.deepEqual(fiqa.items.map((x) => x.gold), original.map((l) => ["negative", "neutral", "positive"].indexOf(l.target)));
});

sharedTest("mc on a task-item file; unlabelled items and long prompts", async (t) => {
    const model = await loadModel(stories260K);
    const ref = await loadModel(stories260K, {flashAttention: false, kvCacheType: "f32"});
    t.teardown(() => {
        model.close();
        ref.close();
    });
    const dir = tempDir(t);
    const file = path.join(dir, "items.jsonl");
    const items: TaskItem[] = [
        {id: "q1", question: "What did Lily find in the park?", choices: [{label: "A", text: "a red ball"}, {label: "B", text: "a big dog"}, {label: "C", text: "nothing"}], answer: "A"},
        {id: "q2", question: "Who was happy?", choices: [{label: "1", text: "Tom"}, {label: "2", text: "the sun"}], answer: "2"},
    ];
    fs.writeFileSync(file, items.map((x) => JSON.stringify(x)).join("\n") + "\n");
    const r = await evaluate(model, {task: "mc", data: file});
    t.is(r.n, 2);
    await checkItems(t, ref, items, r.items, (item) => ({
        context: `Question: ${item.question}\nAnswer:`,
        continuations: item.choices.map((c) => ` ${c.text}`),
        lengths: item.choices.map((c) => c.text.length),
    }));

    await t.throwsAsync(evaluate(model, {task: "commonsenseqa", split: "test", limit: 3}),
        {message: /has no answer: accuracy needs labelled items \(CommonsenseQA's test split is unlabelled; use --split validation\)/});
    await t.throwsAsync(evaluate(model, {task: "mc"}), {message: /give its path/});
    await t.throwsAsync(evaluate(model, {task: "arc-easy", split: "nope"}), {message: /has no split "nope"; splits: train, dev, test/});

    // Prompts longer than the model's length lose tokens on the left; choices of different lengths
    // then see different contexts, and each is scored with its own.
    const long: TaskItem = {id: "long", question: "Once upon a time there was a little girl named Lily. ".repeat(4) + "What did she like?",
        choices: [{label: "A", text: "to play"}, {label: "B", text: "to run and jump in the big green park with her dog"}], answer: "A"};
    const res = await evaluateItems(model, [long], {task: "mc", maxLength: 40});
    const bos = model.info.bos;
    for (let j = 0; j < 2; j++) {
        const context = `Question: ${long.question}\nAnswer:`;
        const ctx = [bos, ...model.tokenize(context, {addSpecial: false})];
        const whole = [bos, ...model.tokenize(context + res.items[0].continuations[j], {addSpecial: false})];
        const cont = whole.slice(ctx.length);
        const kept = ctx.slice(ctx.length - (41 - cont.length));
        const lp = await continuationLogprob(ref, kept, cont);
        t.true(Math.abs(res.items[0].loglikelihoods[j] - lp) < 1e-4, `truncated choice ${j}: ${res.items[0].loglikelihoods[j]} vs ${lp}`);
    }
});

test("evaluate checks its options before it loads anything: each out-of-range value is an OptionError naming the option", async (t) => {
    const missing = "/nonexistent/model.gguf";  // never opened: the checks come first
    for (const [options, option, message] of [
        [{sequences: 300}, "sequences", /sequences must be an integer in \[1, 256\] \(got 300\)/],
        [{batchSize: 0}, "batchSize", /batchSize must be a positive integer/],
        [{contextSize: 1.5}, "contextSize", /contextSize must be a positive integer/],
        [{limit: 0}, "limit", /limit must be a positive integer/],
        [{seed: 2 ** 32}, "seed", /seed must be an integer in \[0, 2\^32\)/],
        [{maxLength: 1}, "maxLength", /maxLength must be an integer >= 2/],
        [{data: "a.jsonl", split: "dev"}, "data", /give data or split, not both/],
    ] as const) {
        const err = await t.throwsAsync(evaluate(missing, {task: "arc-easy", ...options}), {instanceOf: OptionError, message});
        t.is(err?.options[0], option);
    }
    await t.throwsAsync(evaluate(missing, {task: "mc"}), {instanceOf: OptionError, message: /task mc needs data/});
});
