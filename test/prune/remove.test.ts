import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {getLlama, readGgufFileInfo} from "node-llama-cpp";
import {readGguf} from "../../ts/gguf/read.js";
import {writeSyntheticModel, type SyntheticModelOptions} from "../../ts/gguf/synthetic.js";
import {writeGguf, type GgufKv} from "../../ts/gguf/write.js";
import {loadModel} from "../../ts/model.js";
import {removeLayers} from "../../ts/prune/remove.js";
import {fileHash, rawTensors, zeroResidualBranches} from "../gguf-fixtures.js";
import {hasShared, maxRelativeDiff, stories260K, tempDir} from "../helpers.js";

const prompt = "the cat sat on a mat and then it ran to the big red house";

async function logitsOf(file: string, text = prompt): Promise<{tokens: Int32Array; logits: Float32Array; nVocab: number}> {
    const m = await loadModel(file, {threads: 2});
    try {
        const tokens = m.tokenize(text);
        return {tokens, logits: await m.logits(tokens), nVocab: m.info.nVocab};
    } finally {
        m.close();
    }
}

/** Checks the pruned file against the input, independently of the pruning code. */
async function checkSurgery(t: import("ava").ExecutionContext, input: string, output: string, removed: number[]) {
    const before = await readGguf(input, {maxArrayValues: 1e9});
    const after = await readGguf(output, {maxArrayValues: 1e9});
    const arch = before.architecture;
    const n = before.blockCount;
    const kept = Array.from({length: n}, (_, i) => i).filter((i) => !removed.includes(i));
    t.is(after.blockCount, kept.length);

    // Tensors: same set minus removed blocks, renumbered, byte-identical.
    const rawIn = await rawTensors(input);
    const rawOut = await rawTensors(output);
    const expectedNames = new Map<string, string>();  // output name -> input name
    for (const name of rawIn.keys()) {
        const m = /^blk\.(\d+)\.(.*)$/.exec(name);
        if (!m)
            expectedNames.set(name, name);
        else if (!removed.includes(Number(m[1])))
            expectedNames.set(`blk.${kept.indexOf(Number(m[1]))}.${m[2]}`, name);
    }
    t.deepEqual([...rawOut.keys()].sort(), [...expectedNames.keys()].sort());
    for (const [outName, inName] of expectedNames) {
        const a = rawIn.get(inName)!, b = rawOut.get(outName)!;
        t.is(b.ggmlType, a.ggmlType, outName);
        t.deepEqual(b.dims, a.dims, outName);
        t.true(a.bytes.equals(b.bytes), `${outName} bytes differ from ${inName}`);
    }

    // Metadata: per-layer arrays keep the kept layers' values, block_count shrinks, the rest is equal.
    for (const m of before.metadata) {
        const v = after.value(m.key);
        if (m.key === `${arch}.block_count`)
            t.is(v, kept.length);
        else if (m.type === "array" && m.length === n && m.key.startsWith(`${arch}.`))
            t.deepEqual(v, kept.map((i) => (m.value as unknown[])[i]), m.key);
        else
            t.deepEqual(v, m.value, m.key);
    }
    t.deepEqual(after.value("ppc_gpt.pruning.original_layers"), kept.map((i) => before.originalLayers[i]));
    t.is(after.info.alignment, before.info.alignment);
    // The data section starts at the input's offset within a 4 KiB page (whole-page copies).
    t.is(after.info.dataOffset % 4096, before.info.dataOffset % 4096);
    t.regex(String(after.value("ppc_gpt.pruning.page_padding")), /^ {0,4095}$/);
}

const generated: [string, Omit<SyntheticModelOptions, "branchScale">][] = [
    ["llama f32 GQA", {architecture: "llama", layers: 6, embedding: 64, heads: 4, kvHeads: 2, feedForward: 96, type: "f32"}],
    ["qwen2 f16 with biases", {architecture: "qwen2", layers: 5, embedding: 64, heads: 4, kvHeads: 4, feedForward: 128, type: "f16"}],
    ["openelm q8_0 per-layer arrays", {architecture: "openelm", layers: 5, embedding: 64, heads: [4, 2, 4, 4, 2],
        kvHeads: [2, 1, 2, 1, 1], feedForward: [96, 64, 128, 64, 96], type: "q8_0"}],
    ["llama q4_K", {architecture: "llama", layers: 4, embedding: 256, heads: 4, kvHeads: 2, feedForward: 512, type: "q4_K"}],
];

for (const [label, options] of generated) {
    test(`${label}: removal keeps bytes and metadata, loads, and computes the model with those blocks skipped`, async (t) => {
        const dir = tempDir(t);
        const input = path.join(dir, "in.gguf");
        const pruned = path.join(dir, "pruned.gguf");
        const skipped = path.join(dir, "skipped.gguf");
        const removed = [1, options.layers - 2];
        await writeSyntheticModel(input, options);
        // Same weights, with the removed blocks' residual branches zeroed: an identity block.
        await writeSyntheticModel(skipped, {...options, branchScale: Object.fromEntries(removed.map((l) => [l, 0]))});
        const hash = await fileHash(input);

        const result = await removeLayers(input, pruned, removed);
        t.deepEqual(result.removed, removed);
        t.is(result.layersAfter, options.layers - 2);
        t.is(await fileHash(input), hash, "input modified");
        await checkSurgery(t, input, pruned, removed);

        const a = await logitsOf(pruned);
        const b = await logitsOf(skipped);
        t.deepEqual(a.tokens, b.tokens);
        t.true(maxRelativeDiff(a.logits, b.logits) < 1e-5, `max rel diff ${maxRelativeDiff(a.logits, b.logits)}`);
        // And the removal matters: the unpruned model computes something else.
        const full = await logitsOf(input);
        t.true(maxRelativeDiff(full.logits, a.logits) > 1e-3);
    });
}

test("stories260K: pruned model equals the original with those blocks bypassed, in our addon and in node-llama-cpp", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const dir = tempDir(t);
    const pruned = path.join(dir, "pruned.gguf");
    const bypassed = path.join(dir, "bypassed.gguf");
    const hash = await fileHash(stories260K);
    await removeLayers(stories260K, pruned, [1, 3]);
    t.is(await fileHash(stories260K), hash);
    await checkSurgery(t, stories260K, pruned, [1, 3]);
    await zeroResidualBranches(stories260K, bypassed, [1, 3]);

    const a = await logitsOf(pruned, "Once upon a time, there was a little girl");
    const b = await logitsOf(bypassed, "Once upon a time, there was a little girl");
    t.true(maxRelativeDiff(a.logits, b.logits) < 1e-5);

    // node-llama-cpp (its own prebuilt llama.cpp) loads the pruned file and agrees on the next-token logits.
    const llama = await getLlama({gpu: false, build: "never", progressLogs: false, logLevel: "error" as never});
    const model = await llama.loadModel({modelPath: pruned});
    const context = await model.createContext({contextSize: 256});
    const seq = context.getSequence();
    const tokens = [...a.tokens];
    const out = await seq.controlledEvaluate([...tokens.slice(0, -1), [tokens.at(-1)!, {generateNext: {logits: true}}]] as never);
    const theirs = out.at(-1)!.next.logits!;
    const last = a.logits.subarray((tokens.length - 1) * a.nVocab, tokens.length * a.nVocab);
    const theirsArr = Float64Array.from({length: a.nVocab}, (_, i) => theirs.get(i as never) ?? NaN);
    t.true(maxRelativeDiff(theirsArr, last) < 1e-3, `node-llama-cpp vs addon: ${maxRelativeDiff(theirsArr, last)}`);
    await context.dispose();
    await model.dispose();
});

test("pruning twice composes: original layer numbering is carried through", async (t) => {
    const dir = tempDir(t);
    const options: SyntheticModelOptions = {architecture: "llama", layers: 6, embedding: 64, heads: 4, feedForward: 96};
    const input = path.join(dir, "in.gguf");
    await writeSyntheticModel(input, options);
    await removeLayers(input, path.join(dir, "once.gguf"), [1]);
    const twice = await removeLayers(path.join(dir, "once.gguf"), path.join(dir, "twice.gguf"), [2]);
    t.deepEqual(twice.originalKept, [0, 2, 4, 5]);
    const info = await readGgufFileInfo(path.join(dir, "twice.gguf"), {logWarnings: false});
    t.is((info.metadata as never as {llama: {block_count: number}}).llama.block_count, 4);
    await writeSyntheticModel(path.join(dir, "skipped.gguf"), {...options, branchScale: {1: 0, 3: 0}});
    const a = await logitsOf(path.join(dir, "twice.gguf"));
    const b = await logitsOf(path.join(dir, "skipped.gguf"));
    t.true(maxRelativeDiff(a.logits, b.logits) < 1e-5);
});

/** A header-only model of another architecture, for metadata rules the loader-ready models lack. */
async function metadataModel(file: string, arch: string, layers: number, extra: GgufKv[]): Promise<void> {
    const metadata: GgufKv[] = [
        {key: "general.architecture", type: "string", value: arch},
        {key: `${arch}.block_count`, type: "uint32", value: layers},
        ...extra,
    ];
    const tensors = [{name: "token_embd.weight", shape: [8, 4], type: "f32", data: () => new Uint8Array(128)}];
    for (let i = 0; i < layers; i++)
        tensors.push({name: `blk.${i}.attn_norm.weight`, shape: [8], type: "f32", data: () => new Uint8Array(32).fill(i)});
    await writeGguf(file, metadata, tensors);
}

test("layer-dependent metadata: periods become per-layer arrays, leading/trailing counts shrink, index lists remap", async (t) => {
    const dir = tempDir(t);
    const removed = [0, 3, 5];
    const keptOf = (n: number) => Array.from({length: n}, (_, i) => i).filter((i) => !removed.includes(i));

    // gemma2: sliding window on every layer but each 2nd (period 2, llama.cpp's default for it).
    await metadataModel(path.join(dir, "g.gguf"), "gemma2", 8, [
        {key: "gemma2.rope.dimension_sections", type: "array", elementType: "int32", value: [1, 2, 3, 4, 5, 6, 7, 8]},
        {key: "gemma2.attention.head_count", type: "array", elementType: "int32", value: [8, 7, 6, 5, 4, 3, 2, 1]},
    ]);
    await removeLayers(path.join(dir, "g.gguf"), path.join(dir, "g2.gguf"), removed);
    const g = await readGguf(path.join(dir, "g2.gguf"));
    t.deepEqual(g.value("gemma2.attention.sliding_window_pattern"), keptOf(8).map((il) => il % 2 < 1));
    t.deepEqual(g.value("gemma2.attention.head_count"), keptOf(8).map((il) => 8 - il));
    t.deepEqual(g.value("gemma2.rope.dimension_sections"), [1, 2, 3, 4, 5, 6, 7, 8], "not a per-layer array");

    // An explicit period on a dense-first architecture.
    await metadataModel(path.join(dir, "c.gguf"), "cohere2moe", 8, [
        {key: "cohere2moe.attention.sliding_window_pattern", type: "uint32", value: 3},
    ]);
    await removeLayers(path.join(dir, "c.gguf"), path.join(dir, "c2.gguf"), removed);
    t.deepEqual((await readGguf(path.join(dir, "c2.gguf"))).value("cohere2moe.attention.sliding_window_pattern"),
        keptOf(8).map((il) => il % 3 !== 0));

    // Hybrid recurrent model: full attention every 4th layer.
    await metadataModel(path.join(dir, "q.gguf"), "qwen3next", 8, [
        {key: "qwen3next.full_attention_interval", type: "uint32", value: 4},
        {key: "qwen3next.leading_dense_block_count", type: "uint32", value: 4},
    ]);
    await removeLayers(path.join(dir, "q.gguf"), path.join(dir, "q2.gguf"), removed);
    const q = await readGguf(path.join(dir, "q2.gguf"));
    t.deepEqual(q.value("qwen3next.attention.recurrent_layers"), keptOf(8).map((il) => (il + 1) % 4 !== 0));
    t.is(q.value("qwen3next.leading_dense_block_count"), keptOf(8).filter((il) => il < 4).length);

    // Trailing layers (multi-token-prediction heads) and layer-index lists.
    await metadataModel(path.join(dir, "m.gguf"), "qwen4exp", 8, [
        {key: "qwen4exp.nextn_predict_layers", type: "uint32", value: 2},
        {key: "qwen4exp.ple.layers", type: "array", elementType: "uint32", value: [2, 3, 6]},
        {key: "qwen4exp.attention.recurrent_layers", type: "array", elementType: "bool",
            value: [true, false, true, false, true, false, true, false]},
    ]);
    await removeLayers(path.join(dir, "m.gguf"), path.join(dir, "m2.gguf"), [0, 3, 6]);
    const m = await readGguf(path.join(dir, "m2.gguf"));
    t.is(m.value("qwen4exp.nextn_predict_layers"), 1);
    t.deepEqual(m.value("qwen4exp.ple.layers"), [1]);
    t.deepEqual(m.value("qwen4exp.attention.recurrent_layers"), [false, true, true, false, false]);

    // A periodic MoE layout that llama.cpp cannot express per layer is refused, with no output.
    await metadataModel(path.join(dir, "l.gguf"), "llama4", 8, [
        {key: "llama4.interleave_moe_layer_step", type: "uint32", value: 2},
    ]);
    await t.throwsAsync(removeLayers(path.join(dir, "l.gguf"), path.join(dir, "l2.gguf"), [1]), {message: /interleave_moe_layer_step/});
    t.false(fs.existsSync(path.join(dir, "l2.gguf")));
});
