import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {writeSyntheticModel, type SyntheticModelOptions} from "../../ts/gguf/synthetic.js";
import {loadModel} from "../../ts/model.js";
import {native} from "../../ts/native.js";
import {blockInfluence, exampleSequence, scoreLayers, textSequences} from "../../ts/prune/block-influence.js";
import {labelExample} from "../../ts/data/prompt.js";
import type {TaskItem} from "../../ts/data/task-item.js";
import {decodeTensor, rawTensors} from "../gguf-fixtures.js";
import {hasShared, stories260K, tempDir, runCli} from "../helpers.js";
import {reference} from "./reference.js";

const texts = [
    "Once upon a time, there was a little girl named Lily.",
    "She liked to play in the park with her big red ball.",
    "One day",
    "The sun was warm and the birds sang in the tall green trees near the river.",
];

function close(t: import("ava").ExecutionContext, a: number[], b: number[], what: string, rel = 1e-5) {
    t.is(a.length, b.length, what);
    const scale = Math.max(...b.map(Math.abs));
    for (let i = 0; i < a.length; i++)
        t.true(Math.abs(a[i] - b[i]) <= rel * scale, `${what}[${i}]: ${a[i]} vs ${b[i]}`);
}

async function checkAgainstReference(t: import("ava").ExecutionContext, file: string, label: string) {
    const model = await loadModel(file, {threads: 2});
    try {
        const seqs = textSequences(model, texts);
        const ref = await reference(model, seqs);
        // Batched several ways: one sequence per decode, several per decode, all in one.
        for (const maxBatchTokens of [1, 40, 512]) {
            const s = await scoreLayers(model, seqs, {maxBatchTokens});
            t.is(s.tokens, ref.tokens);
            close(t, s.bi, ref.bi, `${label} bi (batch ${maxBatchTokens})`);
            close(t, s.angular, ref.angular, `${label} angular (batch ${maxBatchTokens})`);
            close(t, s.contribution, ref.contribution, `${label} contribution (batch ${maxBatchTokens})`);
        }
        // Masks: only some positions count.
        const masked = seqs.map((s) => ({tokens: s.tokens, mask: Uint8Array.from(s.tokens, (_, i) => (i % 3 === 1 ? 1 : 0))}));
        const refMasked = await reference(model, masked);
        const sm = await scoreLayers(model, masked, {maxBatchTokens: 512});
        t.is(sm.tokens, refMasked.tokens);
        close(t, sm.bi, refMasked.bi, `${label} masked bi`);
        // One long sequence.
        const long = {tokens: model.tokenize(texts.join(" ").repeat(3))};
        t.true(long.tokens.length >= 64);
        const refLong = await reference(model, [long]);
        const sl = await scoreLayers(model, [long], {maxBatchTokens: 512});
        close(t, sl.bi, refLong.bi, `${label} long bi`);
        close(t, sl.contribution, refLong.contribution, `${label} long contribution`);
    } finally {
        model.close();
    }
}

test("stories260K: scores equal a plain double-precision computation from dumped hidden states, at any batching", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    await checkAgainstReference(t, stories260K, "stories260K");
});

const generated: [string, SyntheticModelOptions][] = [
    ["llama GQA f32", {architecture: "llama", layers: 4, embedding: 64, heads: 4, kvHeads: 2, feedForward: 96, type: "f32"}],
    ["qwen2 biases f16", {architecture: "qwen2", layers: 3, embedding: 64, heads: 4, feedForward: 128, type: "f16"}],
    ["llama q8_0", {architecture: "llama", layers: 3, embedding: 64, heads: 2, feedForward: 128, type: "q8_0"}],
    ["openelm per-layer KV heads q4_K", {architecture: "openelm", layers: 3, embedding: 256, heads: [4, 4, 4], kvHeads: [2, 1, 2],
        feedForward: [256, 512, 256], type: "q4_K"}],
];
for (const [label, options] of generated) {
    test(`${label}: scores equal the plain double-precision computation`, async (t) => {
        const file = path.join(tempDir(t), "m.gguf");
        await writeSyntheticModel(file, options);
        await checkAgainstReference(t, file, label);
    });
}

test("the dumped hidden states are the model's: X_0 is the token embedding, the last state gives llama.cpp's logits", async (t) => {
    const file = path.join(tempDir(t), "m.gguf");
    const E = 64;
    await writeSyntheticModel(file, {architecture: "llama", layers: 3, embedding: E, heads: 4, feedForward: 96, vocab: 300});
    const raw = await rawTensors(file);
    const embd = decodeTensor(raw.get("token_embd.weight")!);
    const out = decodeTensor(raw.get("output.weight")!);
    const norm = decodeTensor(raw.get("output_norm.weight")!);
    // Same attention path as the capture context (f32 KV cache, no flash attention).
    const model = await loadModel(file, {threads: 2, flashAttention: false, kvCacheType: "f32"});
    const tokens = model.tokenize("hello there");
    const n = tokens.length;
    const h = await native().dumpHiddenStates(model.handle, tokens);
    const logits = await model.logits(tokens);
    for (let p = 0; p < n; p++) {
        for (let k = 0; k < E; k++)
            t.is(h[p * E + k], embd[tokens[p] * E + k]);
        // RMS norm (eps 1e-5) and the output projection, by hand.
        const last = Array.from({length: E}, (_, k) => h[(3 * n + p) * E + k]);
        const rms = Math.sqrt(last.reduce((a, x) => a + x * x, 0) / E + 1e-5);
        for (let v = 0; v < 300; v += 37) {
            let acc = 0;
            for (let k = 0; k < E; k++)
                acc += (last[k] / rms) * norm[k] * out[v * E + k];
            t.true(Math.abs(acc - logits[p * 300 + v]) < 1e-4 * Math.max(1, Math.abs(acc)), `logit ${p},${v}: ${acc} vs ${logits[p * 300 + v]}`);
        }
    }
    model.close();
});

test("planted weak layers (residual branches scaled down) rank lowest on every metric", async (t) => {
    const file = path.join(tempDir(t), "m.gguf");
    await writeSyntheticModel(file, {architecture: "llama", layers: 6, embedding: 64, heads: 4, kvHeads: 2, feedForward: 128,
        branchScale: {1: 0.02, 4: 0.02}});
    const model = await loadModel(file, {threads: 2});
    const s = await scoreLayers(model, textSequences(model, texts));
    for (const metric of ["bi", "angular", "contribution"] as const) {
        const order = [...s[metric].keys()].sort((a, b) => s[metric][a] - s[metric][b]);
        t.deepEqual(order.slice(0, 2).sort(), [1, 4], `${metric}: ${s[metric].map((x) => x.toFixed(4))}`);
    }
    model.close();
});

function items(n: number, withRationale: boolean): TaskItem[] {
    const words = ["red", "blue", "green", "small", "big", "happy", "sad", "tall"];
    return Array.from({length: n}, (_, i) => ({
        id: `q${i}`,
        question: `Which word describes the ${words[i % 8]} ball in story ${i}?`,
        choices: ["A", "B", "C", "D"].map((label, j) => ({label, text: words[(i + j) % 8]})),
        answer: "ABCD"[i % 4],
        ...(withRationale ? {rationale: `The story says the ball is ${words[i % 8]}, so that is the answer.`} : {}),
    }));
}

test("task items: BI = BI_label + BI_rationale, each equal to scoring its own sequences; target-only masks", async (t) => {
    const file = path.join(tempDir(t), "m.gguf");
    await writeSyntheticModel(file, {architecture: "llama", layers: 4, embedding: 64, heads: 4, feedForward: 96});
    const model = await loadModel(file, {threads: 2});
    const data = items(6, true);
    const r = await blockInfluence(model, data, {positions: "target"});
    t.is(r.n_layer, 4);
    t.is(r.items.label, 6);
    t.is(r.items.rationale, 6);
    for (let i = 0; i < 4; i++)
        t.true(Math.abs(r.bi[i] - (r.bi_label[i] + r.bi_rationale![i])) < 1e-12);
    // Label part, target positions only: the reference counts exactly the answer tokens.
    const seqs = data.map((it) => exampleSequence(model, labelExample(it), "target"));
    for (const [k, s] of seqs.entries()) {
        const counted = s.tokens.filter((_, i) => s.mask![i] === 1);
        t.true(counted.length >= 1);
        // one format per task (ts/data/prompt.ts): the label target is the gold choice's text
        const gold = data[k].choices.find((c) => c.label === data[k].answer)!.text;
        t.is(model.detokenize(counted).trim(), gold, "the counted positions are exactly the answer");
        t.is(s.mask!.indexOf(1) + counted.length, s.tokens.length, "and they are the sequence's tail");
    }
    const ref = await reference(model, seqs);
    close(t, r.bi_label, ref.bi, "bi_label");
    t.is(r.tokens.label, ref.tokens);

    const noRationale = await blockInfluence(model, items(3, false));
    t.is(noRationale.bi_rationale, undefined);
    t.deepEqual(noRationale.bi, noRationale.bi_label);
    await t.throwsAsync(blockInfluence(model, [{id: "x", question: "q", choices: [{label: "A", text: "a"}]}]), {message: /no item has an answer/});
    model.close();
});

const cli = (args: string[]) => runCli(args);

test("CLI: bi --json/--plot, prune --strategy bi removes the planted weak layers, bad input fails cleanly", async (t) => {
    const dir = tempDir(t);
    const file = path.join(dir, "m.gguf");
    await writeSyntheticModel(file, {architecture: "llama", layers: 5, embedding: 64, heads: 4, feedForward: 96, branchScale: {2: 0.01}});
    fs.writeFileSync(path.join(dir, "text.txt"), texts.join("\n") + "\n\n");
    fs.writeFileSync(path.join(dir, "items.jsonl"), items(4, true).map((x) => JSON.stringify(x)).join("\n") + "\n");

    const text = await cli(["bi", file, "--text", path.join(dir, "text.txt"), "--json", "--plot", path.join(dir, "bi.svg")]);
    t.is(text.code, 0, text.stderr);
    const report = JSON.parse(text.stdout);
    t.is(report.n_layer, 5);
    t.is(report.bi.length, 5);
    t.regex(fs.readFileSync(path.join(dir, "bi.svg"), "utf8"), /^<svg[\s\S]*<\/svg>\n$/);

    const data = await cli(["bi", file, "--data", path.join(dir, "items.jsonl"), "--json", "-o", path.join(dir, "bi.json")]);
    t.is(data.code, 0, data.stderr);
    const dr = JSON.parse(data.stdout);
    t.deepEqual(Object.keys(dr).filter((k) => k.startsWith("bi")).sort(), ["bi", "bi_label", "bi_rationale"]);
    t.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, "bi.json"), "utf8")).bi, dr.bi);

    const out = path.join(dir, "pruned.gguf");
    const pruned = await cli(["prune", file, "--strategy", "bi", "--data", path.join(dir, "items.jsonl"), "--count", "1", "-o", out, "--json"]);
    t.is(pruned.code, 0, pruned.stderr);
    t.deepEqual(JSON.parse(pruned.stdout).result.removed, [2]);
    const viaScores = await cli(["prune", file, "--strategy", "scores", "--scores", path.join(dir, "bi.json"), "--count", "1", "--plan-only", "--json"]);
    t.deepEqual(JSON.parse(viaScores.stdout).removed, [2]);

    fs.writeFileSync(path.join(dir, "bad.jsonl"), "{\"id\": \"a\"}\n");
    const bad = await cli(["bi", file, "--data", path.join(dir, "bad.jsonl")]);
    t.is(bad.code, 1);
    t.regex(bad.stderr, /bad\.jsonl:1: "question" must be a string/);
    fs.writeFileSync(path.join(dir, "empty.txt"), "\n\n");
    t.is((await cli(["bi", file, "--text", path.join(dir, "empty.txt")])).code, 1);
    t.is((await cli(["bi", file])).code, 2);
    t.is((await cli(["bi", file, "--text", path.join(dir, "text.txt"), "--positions", "target"])).code, 2);
    t.is((await cli(["prune", file, "--strategy", "bi", "--count", "1", "-o", out])).code, 2);
});
