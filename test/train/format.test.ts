// One format per task: the label example's target is what the task's evaluation scores, after the
// task's context. Checked on a task a tiny model can learn only in this form: the answer word is
// copied from the question and the choices (drawn from 16 words) come in a different order in
// every item, so neither a letter nor a position nor a constant answer scores above chance.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {labelExample, rationaleExample} from "../../ts/data/prompt.js";
import type {TaskItem} from "../../ts/data/task-item.js";
import {readGguf} from "../../ts/gguf/read.js";
import {Random} from "../../ts/random.js";
import {hasShared, runCli, stories260K, tempDir} from "../helpers.js";

const words = ["cat", "dog", "ball", "tree", "car", "cake", "bird", "fish", "sun", "hat", "box", "boat", "cup", "frog", "duck", "bear"];

/** "Which word is X?" with X and three other words as choices, shuffled per item. */
function copyItems(seed: number, n: number, prefix: string): TaskItem[] {
    const rng = new Random(seed);
    return Array.from({length: n}, (_, i) => {
        const choices = rng.shuffle(words.slice()).slice(0, 4);
        const a = rng.nextInt(4);
        return {id: `${prefix}${i}`, question: `Which word is ${choices[a]}?`,
            choices: choices.map((text, k) => ({label: "ABCD"[k], text})), answer: "ABCD"[a]};
    });
}

const writeJsonl = (file: string, items: object[]) => {
    fs.writeFileSync(file, items.map((v) => JSON.stringify(v)).join("\n") + "\n");
    return file;
};

const item: TaskItem = {id: "x", question: "What grows?", choices: [{label: "A", text: "rock"}, {label: "B", text: "tree"}], answer: "B",
    rationale: "Trees are alive.", source: {instruction: "Say the sentiment."}};

test("each task's label target is its evaluation's gold continuation, after its context", (t) => {
    const cases: [Parameters<typeof labelExample>[1], string, string][] = [
        [{format: "mc"}, "[label] Question: What grows?\nAnswer:", " tree"],
        [{format: "arc-easy", labelPrefix: ""}, "Question: What grows?\nAnswer:", " tree"],
        [{format: "openbookqa"}, "[label] What grows?", " tree"],
        [{format: "commonsenseqa"}, "[label] Question: What grows?\nA. rock\nB. tree\nAnswer:", " B"],
        [{format: "fiqa-sa", labelPrefix: "<L> "}, "<L> Instruction: Say the sentiment.\nInput: What grows?\nAnswer:", " tree"],
    ];
    for (const [options, prompt, target] of cases)
        t.deepEqual(labelExample(item, options), {prompt, target}, JSON.stringify(options));
    t.deepEqual(rationaleExample(item, {format: "commonsenseqa"}),
        {prompt: "[rationale] Question: What grows?\nA. rock\nB. tree\nAnswer:", target: " Trees are alive."});
    t.throws(() => labelExample(item, {format: "nope" as never}), {message: /unknown task format "nope"/});
});

test("label training raises the accuracy `ppc-gpt eval` reports on held-out items; the prefix travels with the adapter and the merged model", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const dir = tempDir(t);
    const trainItems = copyItems(1, 64, "train-"), heldOut = copyItems(2, 60, "test-");
    const train = writeJsonl(path.join(dir, "train.jsonl"), trainItems);
    const seen = new Set(trainItems.map((x) => JSON.stringify([x.question, x.choices])));
    t.true(heldOut.filter((x) => !seen.has(JSON.stringify([x.question, x.choices]))).length >= 50, "held-out items are new");
    const test = writeJsonl(path.join(dir, "test.jsonl"), heldOut);
    // the correct position is not constant
    t.true(new Set(heldOut.map((x) => x.answer)).size === 4);

    const evalJson = async (args: string[]) => {
        const r = await runCli(["eval", "--task", "mc", "--data", test, "--threads", "2", "--json", ...args]);
        t.is(r.code, 0, r.stderr);
        return JSON.parse(r.stdout) as {acc: number; n: number; prompt_prefix: string};
    };
    const before = await evalJson([stories260K]);
    t.is(before.n, 60);
    t.is(before.prompt_prefix, "");

    const adapter = path.join(dir, "label.gguf");
    const tr = await runCli(["train", stories260K, "--data", train, "--task", "label", "--format", "mc", "-o", adapter, "--lr", "3e-3",
        "--batch", "8", "--steps", "40", "--micro-batch-tokens", "128", "--threads", "2", "--json"]);
    t.is(tr.code, 0, tr.stderr);
    const result = JSON.parse(tr.stdout);
    t.is(result.format, "mc");
    t.is(result.labelPrefix, "[label] ");
    const meta = await readGguf(adapter);
    t.is(meta.value("ppc_gpt.prompt.format"), "mc");
    t.is(meta.value("ppc_gpt.prompt.label_prefix"), "[label] ");

    const after = await evalJson([stories260K, "--lora", adapter]);
    t.is(after.prompt_prefix, "[label] ");
    t.log(`held-out accuracy: ${before.acc.toFixed(3)} before, ${after.acc.toFixed(3)} after label training`);
    t.true(after.acc >= before.acc + 0.2, `accuracy ${before.acc} -> ${after.acc}`);
    // --prompt-prefix overrides the recorded prefix
    t.is((await evalJson([stories260K, "--lora", adapter, "--prompt-prefix", ""])).prompt_prefix, "");

    // the merged model records the prefix, and eval of it scores as eval --lora did
    const merged = path.join(dir, "merged.gguf");
    const m = await runCli(["merge", stories260K, adapter, "-o", merged, "--json"]);
    t.is(m.code, 0, m.stderr);
    t.is((await readGguf(merged)).value("ppc_gpt.prompt.label_prefix"), "[label] ");
    const mergedEval = await evalJson([merged]);
    t.is(mergedEval.prompt_prefix, "[label] ");
    t.true(Math.abs(mergedEval.acc - after.acc) <= 2 / 60, `merged ${mergedEval.acc} vs --lora ${after.acc}`);
});
