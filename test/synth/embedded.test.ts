// The embedded backend for real: the addon's batched generator on stories260K (a tiny model that writes
// children's stories). Its replies are story text, so attempts get rejected; the rejections must
// be clean, recorded and counted, and whatever is accepted must still be a valid item.
import {spawn} from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import type {SyntheticItem, TaskItem} from "../../ts/data/task-item.js";
import {taskItemProblem} from "../../ts/data/task-item.js";
import {createEmbeddedGenerator, type EmbeddedGenerator} from "../../ts/synth/embedded.js";
import {synthesize} from "../../ts/synth/pipeline.js";
import {rejectionReasons} from "../../ts/synth/validate.js";
import {cliPath, hasShared, stories260K, tempDir} from "../helpers.js";

const maybe = hasShared ? test.serial : test.skip;

const parents: TaskItem[] = [
    {id: "p1", question: "The sun is responsible for", choices: [{label: "A", text: "puppies learning tricks"}, {label: "B", text: "plants sprouting"}]},
    {id: "p2", question: "Which of these conducts electricity?", choices: [{label: "A", text: "wood"}, {label: "B", text: "copper"}, {label: "C", text: "glass"}]},
];
const maxTokens = {question: 256, answer: 200, rationale: 120};

let generator: EmbeddedGenerator | undefined;
async function shared(): Promise<EmbeddedGenerator> {
    generator ??= await createEmbeddedGenerator({modelPath: stories260K, sequences: 4, threads: 1});
    return generator;
}
test.after.always(async () => {
    await generator?.close();
});

function writeInput(dir: string): string {
    const file = path.join(dir, "perturbed.jsonl");
    fs.writeFileSync(file, parents.map((p) => JSON.stringify(p)).join("\n") + "\n");
    return file;
}

const lines = (file: string) => fs.readFileSync(file, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));

maybe("grammar-enforced JSON from 4 parallel sequences matches the schema; without a grammar the model tells stories", async (t) => {
    const gen = await shared();
    t.is(gen.name, "ppc-gpt:stories260K.gguf");
    t.is(gen.concurrency, 4);
    const schema = {
        type: "object",
        properties: {
            question: {type: "string", minLength: 1, maxLength: 60},
            choices: {type: "array", items: {type: "string", minLength: 1, maxLength: 20}, minItems: 2, maxItems: 3},
            final_answer: {type: "string", enum: ["A", "B", "C"]},
        },
        required: ["question", "choices", "final_answer"],
        additionalProperties: false,
    };
    const replies = await Promise.all([1, 2, 3, 4].map((seed) => gen.generate({
        messages: [{role: "system", content: "You write quiz questions."}, {role: "user", content: "Write a question about the sun."}],
        temperature: 0.8, maxTokens: 400, seed, jsonSchema: {name: "q", schema},
    })));
    for (const r of replies) {
        t.true(r.structured);
        t.is(r.finishReason, "stop", r.text);
        t.true(r.completionTokens > 0);
        t.true(r.promptTokens > 0);
        const v = JSON.parse(r.text);
        t.deepEqual(Object.keys(v), ["question", "choices", "final_answer"]);
        t.true(v.question.length >= 1 && v.question.length <= 60);
        t.true(v.choices.length >= 2 && v.choices.length <= 3);
        t.true(v.choices.every((c: string) => c.length >= 1 && c.length <= 20));
        t.true(["A", "B", "C"].includes(v.final_answer));
    }
    const free = await gen.generate({messages: [{role: "user", content: "Once upon a time"}], temperature: 0.8, maxTokens: 48, seed: 9});
    t.false(free.structured);
    t.true(free.text.length > 0);
    t.throws(() => JSON.parse(free.text));
    t.true(free.completionTokens <= 48);
    // the same seed gives the same reply (sequences do not leak into each other)
    const again = await gen.generate({messages: [{role: "user", content: "Once upon a time"}], temperature: 0.8, maxTokens: 48, seed: 9});
    t.is(again.text, free.text);
});

maybe("in the paper's line format, story text is rejected cleanly, recorded and counted", async (t) => {
    const dir = tempDir(t);
    const output = path.join(dir, "synthetic.jsonl");
    const summary = await synthesize({input: writeInput(dir), output, generator: await shared(), ratio: 2, maxAttempts: 3,
        format: "lines", seed: 11, maxTokens});
    t.is(summary.accepted, 0);
    t.is(summary.rejected, 6);
    t.is(summary.parentsShort, 2);
    const counted = Object.values(summary.reasons).reduce((a, b) => a + b!, 0);
    t.is(counted, 6);
    t.true(Object.keys(summary.reasons).every((r) => r === "question-unparseable" || r === "question-truncated"), JSON.stringify(summary.reasons));
    t.is(fs.readFileSync(output, "utf8"), "");
    const journal = lines(`${output}.journal`);
    const rejected = journal.filter((j) => j.type === "rejected");
    t.is(rejected.length, 6);
    for (const p of parents)
        t.deepEqual(rejected.filter((j) => j.parent_id === p.id).map((j) => j.attempt).sort(), [0, 1, 2]);
    t.true(rejected.every((j) => typeof j.detail === "string" && j.detail.length > 0));
    t.is(summary.requests, 6);  // rejected at the question: no votes were asked for
    t.true(summary.completionTokens > 0);
});

maybe("with grammars every reply parses; accepted items are valid and rejections are counted by reason", async (t) => {
    const dir = tempDir(t);
    const output = path.join(dir, "synthetic.jsonl");
    const summary = await synthesize({input: writeInput(dir), output, generator: await shared(), ratio: 2, maxAttempts: 3, seed: 5, maxTokens});
    t.deepEqual(summary.promptVersions, ["ppc-synth-1/json"]);
    const items = lines(output) as SyntheticItem[];
    t.is(items.length, summary.accepted);
    for (const item of items) {
        t.is(taskItemProblem(item), undefined);
        t.is(item.votes.length, 3);
        t.true(item.votes.every((v) => v === item.answer));
        t.is(item.generator, "ppc-gpt:stories260K.gguf");
        t.is(item.prompt_version, "ppc-synth-1/json");
    }
    const rejected = lines(`${output}.journal`).filter((j) => j.type === "rejected");
    t.is(rejected.length, summary.rejected);
    t.true(rejected.every((j) => (rejectionReasons as readonly string[]).includes(j.reason)));
    t.is(Object.values(summary.reasons).reduce((a, b) => a + b!, 0), summary.rejected);
    for (const p of parents) {
        const mine = items.filter((i) => i.parent_id === p.id).length;
        const tried = mine + rejected.filter((j) => j.parent_id === p.id).length;
        t.true(mine === 2 || tried === 3, `${p.id}: ${mine} accepted of ${tried} attempts`);
    }
    // a story model never writes "Question:/Choices:" but under a grammar it must produce JSON: nothing is unparseable
    t.false("question-unparseable" in summary.reasons);
});

maybe("ppc-gpt synth --model runs the embedded path as a child process", async (t) => {
    const dir = tempDir(t);
    const out = path.join(dir, "synthetic.jsonl");
    const child = spawn(process.execPath, [cliPath, "synth", "--in", writeInput(dir), "--out", out, "--model", stories260K,
        "--ratio", "1", "--max-attempts", "2", "--format", "lines", "--threads", "1", "--concurrency", "2", "--seed", "3", "--max-tokens", "200",
        "--json"],
    {stdio: ["ignore", "pipe", "pipe"]});
    let stdout = "", stderr = "";
    child.stdout.on("data", (d) => stdout += d);
    child.stderr.on("data", (d) => stderr += d);
    const code = await new Promise((resolve) => child.on("close", resolve));
    t.is(code, 0, stderr);
    const summary = JSON.parse(stdout);
    t.is(summary.generator, "ppc-gpt:stories260K.gguf");
    t.is(summary.accepted + summary.rejected, 4);
    t.is(Object.values(summary.reasons as Record<string, number>).reduce((a, b) => a + b, 0), summary.rejected);
    t.true(summary.rejected >= 1);
});
