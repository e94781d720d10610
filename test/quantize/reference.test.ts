// ppc-gpt quantize against llama.cpp's own tools built from the same source (test/llama-tools.ts):
// byte identity with llama-quantize without and with an importance matrix, and the importance
// matrix of the capture pass against llama-imatrix's on the same text and context.
import {execFile} from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {promisify} from "node:util";
import test from "ava";
import {readGguf} from "../../ts/gguf/read.js";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {loadModel} from "../../ts/model.js";
import {removeLayers} from "../../ts/prune/remove.js";
import {textImatrix} from "../../ts/quantize/collect.js";
import {readImatrixFile, writeImatrixGguf, type ImportanceMatrix} from "../../ts/quantize/imatrix.js";
import {overrideKvArguments, quantizationOverrides, quantizeModel, type ImatrixSource} from "../../ts/quantize/quantize.js";
import {llamaTools} from "../llama-tools.js";
import {hasShared, stories260K, tempDir} from "../helpers.js";

const exec = promisify(execFile);

/** GQA (8 query heads, 2 KV heads), rows of 256 so every k-quant applies, plus its pruned child. */
async function models(dir: string): Promise<{name: string; file: string}[]> {
    const gqa = path.join(dir, "gqa.gguf");
    await writeSyntheticModel(gqa, {architecture: "llama", layers: 4, embedding: 256, heads: 8, kvHeads: 2, feedForward: 512, vocab: 300, seed: 7});
    const pruned = path.join(dir, "pruned.gguf");
    await removeLayers(gqa, pruned, [1]);
    return [{name: "GQA", file: gqa}, {name: "pruned", file: pruned}, ...(hasShared ? [{name: "stories260K", file: stories260K}] : [])];
}

async function llamaQuantize(input: string, output: string, type: string, imatrix?: ImatrixSource): Promise<void> {
    const tools = await llamaTools();
    const args = [...overrideKvArguments(quantizationOverrides(type, imatrix)), ...(imatrix ? ["--imatrix", imatrix.file] : []),
        input, output, type.toUpperCase(), "2"];
    await exec(tools.quantize, args, {maxBuffer: 64 << 20});
}

function sameBytes(a: string, b: string): boolean {
    return fs.readFileSync(a).equals(fs.readFileSync(b));
}

/** Story-like text long enough for several chunks of `context` tokens. */
function storyText(lines: number): string {
    const words = "once upon a time there was a little girl named lily she liked to play in the park with her dog and her friend tom they saw a big red ball".split(" ");
    let x = 12345;
    const next = () => (x = (x * 1103515245 + 12345) % 2147483648) / 2147483648;
    return Array.from({length: lines}, () => Array.from({length: 24}, () => words[Math.floor(next() * words.length)]).join(" ") + ".").join("\n") + "\n";
}

test("without an importance matrix the output is byte-identical to llama-quantize (q8_0, q4_k_m, q6_k; GQA and pruned models)", async (t) => {
    const dir = tempDir(t);
    for (const m of await models(dir)) {
        for (const type of ["q8_0", "q4_k_m", "q6_k"]) {
            const ours = path.join(dir, `${m.name}-${type}.gguf`), theirs = path.join(dir, `${m.name}-${type}-llama.gguf`);
            const r = await quantizeModel(m.file, ours, {type, threads: 2});
            await llamaQuantize(m.file, theirs, type);
            t.true(sameBytes(ours, theirs), `${m.name} ${type}`);
            t.true(r.bytesOut < r.bytesIn, `${m.name} ${type}: smaller`);
            t.is(r.bytesOut, fs.statSync(ours).size);
        }
    }
    // provenance: the pruning record is kept, the quantization record added
    const q = await readGguf(path.join(dir, "pruned-q4_k_m.gguf"), {maxArrayValues: 1e6});
    const p = await readGguf(path.join(dir, "pruned.gguf"), {maxArrayValues: 1e6});
    t.deepEqual(q.value("ppc_gpt.pruning.original_layers"), p.value("ppc_gpt.pruning.original_layers"));
    t.is(q.value("ppc_gpt.quantization.type"), "q4_k_m");
    t.is(q.value("ppc_gpt.quantization.imatrix"), "none");
    t.true(q.tensors.some((x) => x.type === "q4_K"));
});

test("the capture pass's importance matrix equals llama-imatrix's on the same text and context (1e-4 relative per entry)", async (t) => {
    const dir = tempDir(t);
    const [gqa] = await models(dir);
    const text = path.join(dir, "text.txt");
    fs.writeFileSync(text, storyText(12));
    for (const file of [gqa.file, ...(hasShared ? [stories260K] : [])]) {
        const theirsFile = path.join(dir, `${path.basename(file)}.imatrix.gguf`);
        const tools = await llamaTools();
        // the capture context's attention: f32 KV cache, no flash attention (native/capture/layer_scores.cpp)
        await exec(tools.imatrix, ["-m", file, "-f", text, "-c", "64", "-b", "64", "-o", theirsFile, "--no-ppl",
            "-ctk", "f32", "-ctv", "f32", "-fa", "off", "-t", "2"], {maxBuffer: 64 << 20});
        const theirs = await readImatrixFile(theirsFile);
        const model = await loadModel(file, {threads: 2});
        let ours: ImportanceMatrix;
        try {
            ours = (await textImatrix(model, fs.readFileSync(text, "utf8"), text, {context: 64})).matrix;
        } finally {
            model.close();
        }
        t.deepEqual(ours.entries.map((e) => e.name), theirs.entries.map((e) => e.name).sort(), path.basename(file));
        t.is(ours.chunkCount, theirs.chunkCount);
        t.is(ours.chunkSize, theirs.chunkSize);
        let worst = 0;
        for (const e of theirs.entries) {
            const o = ours.entries.find((x) => x.name === e.name)!;
            t.deepEqual(o.counts, e.counts, e.name);
            for (let i = 0; i < e.sums.length; i++)
                worst = Math.max(worst, Math.abs(o.sums[i] - e.sums[i]) / Math.abs(e.sums[i]));
        }
        t.true(worst < 1e-4, `${path.basename(file)}: worst relative difference ${worst}`);
    }
});

test("with the same importance matrix file (llama-imatrix GGUF and .dat, ppc-gpt's GGUF) the output is byte-identical to llama-quantize --imatrix", async (t) => {
    const dir = tempDir(t);
    const [, pruned] = await models(dir);
    const text = path.join(dir, "text.txt");
    fs.writeFileSync(text, storyText(12));
    const tools = await llamaTools();
    const imatrixArgs = ["-f", text, "-c", "64", "-b", "64", "--no-ppl", "-t", "2"];
    const gguf = path.join(dir, "li.gguf"), dat = path.join(dir, "li.dat");
    await exec(tools.imatrix, ["-m", pruned.file, ...imatrixArgs, "-o", gguf], {maxBuffer: 64 << 20});
    await exec(tools.imatrix, ["-m", pruned.file, ...imatrixArgs, "-o", dat, "--output-format", "dat"], {maxBuffer: 64 << 20});
    const model = await loadModel(pruned.file, {threads: 2});
    const oursFile = path.join(dir, "ours.imatrix.gguf");
    try {
        await writeImatrixGguf(oursFile, (await textImatrix(model, fs.readFileSync(text, "utf8"), text, {context: 64})).matrix);
    } finally {
        model.close();
    }
    for (const file of [gguf, dat, oursFile]) {
        const source: ImatrixSource = {matrix: await readImatrixFile(file), kind: "file", file};
        for (const type of ["q4_k_m", "q6_k"]) {
            const ours = path.join(dir, `${path.basename(file)}-${type}.gguf`), theirs = path.join(dir, `${path.basename(file)}-${type}-llama.gguf`);
            await quantizeModel(pruned.file, ours, {type, imatrix: source, threads: 2});
            await llamaQuantize(pruned.file, theirs, type, source);
            t.true(sameBytes(ours, theirs), `${path.basename(file)} ${type}`);
        }
    }
    // the matrix matters: without it the same type gives other bytes
    const plain = path.join(dir, "plain-q4_k_m.gguf");
    await quantizeModel(pruned.file, plain, {type: "q4_k_m", threads: 2});
    t.false(sameBytes(plain, path.join(dir, "li.gguf-q4_k_m.gguf")));
    const q = await readGguf(path.join(dir, "li.gguf-q4_k_m.gguf"));
    t.is(q.value("ppc_gpt.quantization.imatrix"), "file");
    t.is(q.value("quantize.imatrix.file"), gguf);
});
