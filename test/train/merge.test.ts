// Merging: W + (alpha / r) B A in the base's own types, checked against a naive double-precision
// computation, against llama.cpp running base + adapter, and for byte identity everywhere else.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {readGguf} from "../../ts/gguf/read.js";
import {ggmlType} from "../../ts/gguf/write.js";
import {native} from "../../ts/native.js";
import {readLoraAdapter, writeLoraAdapter} from "../../ts/train/adapter.js";
import {mergeLora} from "../../ts/train/merge.js";
import {maxRelativeDiff, tempDir} from "../helpers.js";
import {makeAdapter, makeModel} from "./helpers.js";

const modules = ["attn_q", "attn_v", "attn_output", "ffn_down"];
const tokens = Int32Array.from({length: 24}, (_, i) => 3 + ((i * 53) % 290));

async function tensorBytes(file: string, name: string): Promise<Buffer> {
    const g = await readGguf(file);
    const t = g.tensors.find((x) => x.name === name)!;
    const buf = fs.readFileSync(file);
    return buf.subarray(g.info.dataOffset + t.offset, g.info.dataOffset + t.offset + t.nBytes);
}

/** W + s * B A in double precision, rounded to float, for one tensor. */
function naiveMerge(w: Float32Array, a: Float32Array, b: Float32Array, nIn: number, nOut: number, r: number, s: number): Float32Array {
    const out = new Float32Array(nIn * nOut);
    for (let o = 0; o < nOut; o++) {
        for (let i = 0; i < nIn; i++) {
            let acc = 0;
            for (let k = 0; k < r; k++)
                acc += b[o * r + k] * a[k * nIn + i];
            out[o * nIn + i] = w[o * nIn + i] + s * acc;
        }
    }
    return out;
}

for (const type of ["f32", "q8_0"]) {
    test(`merge into a ${type} base: naive reference, llama.cpp base + adapter, byte identity elsewhere`, async (t) => {
        const dir = tempDir(t);
        const base = await makeModel(t, {layers: 2, embedding: 64, heads: 4, kvHeads: 2, feedForward: 96, type});
        const adapterFile = path.join(dir, "adapter.gguf");
        await makeAdapter(base, adapterFile, {modules, r: 4, alpha: 8, aScale: 0.2, bScale: 0.1});
        const merged = path.join(dir, "merged.gguf");
        const baseBytes = fs.readFileSync(base);
        const result = await mergeLora(base, adapterFile, merged);
        t.deepEqual(fs.readFileSync(base), baseBytes, "the base is not modified");
        t.is(result.merged.length, modules.length * 2);
        t.is(result.rank, 4);
        t.is(result.alpha, 8);
        t.is(result.bytesWritten, fs.statSync(merged).size);

        const gBase = await readGguf(base), gMerged = await readGguf(merged);
        t.is(gMerged.info.dataOffset, gBase.info.dataOffset);
        t.deepEqual(fs.readFileSync(merged).subarray(0, gBase.info.dataOffset), baseBytes.subarray(0, gBase.info.dataOffset),
            "metadata and tensor infos byte-identical");
        const adapter = await readLoraAdapter(adapterFile);
        for (const info of gBase.tensors) {
            const before = await tensorBytes(base, info.name), after = await tensorBytes(merged, info.name);
            const a = adapter.tensors.find((x) => x.name === `${info.name}.lora_a`);
            if (!a) {
                t.deepEqual(after, before, `${info.name} copied byte for byte`);
                continue;
            }
            const b = adapter.tensors.find((x) => x.name === `${info.name}.lora_b`)!;
            const [nIn, nOut] = info.shape;
            const w = native().dequantize(ggmlType(info.type).id, new Uint8Array(before), nIn * nOut);
            const expected = naiveMerge(w, a.data, b.data, nIn, nOut, 4, 8 / 4);
            if (type === "f32") {
                const got = new Float32Array(after.buffer.slice(after.byteOffset, after.byteOffset + after.length));
                t.true(maxRelativeDiff(got, expected) < 1e-6, `${info.name}: ${maxRelativeDiff(got, expected)}`);
            } else {
                t.deepEqual(after, Buffer.from(native().quantize(ggmlType(type).id, expected, nIn)), `${info.name} requantized to ${type}`);
                t.is(gMerged.tensors.find((x) => x.name === info.name)!.type, type);
            }
        }

        const withAdapter = await native().loraLogits(base, [{path: adapterFile}], tokens, {threads: 2});
        const plain = await native().loraLogits(base, [], tokens, {threads: 2});
        const fromMerged = await native().loraLogits(merged, [], tokens, {threads: 2});
        t.true(maxRelativeDiff(plain, withAdapter) > 1e-2, "the adapter changes the model");
        const tol = type === "f32" ? 1e-4 : 5e-2;
        t.true(maxRelativeDiff(fromMerged, withAdapter) < tol, `merged vs base + adapter: ${maxRelativeDiff(fromMerged, withAdapter)}`);
    });
}

test("merge: --scale multiplies alpha / r", async (t) => {
    const dir = tempDir(t);
    const base = await makeModel(t, {layers: 1, embedding: 32, heads: 4, feedForward: 48});
    const adapterFile = path.join(dir, "adapter.gguf");
    await makeAdapter(base, adapterFile, {modules: ["attn_q"], r: 2, alpha: 4});
    await mergeLora(base, adapterFile, path.join(dir, "half.gguf"), {scale: 0.5});
    const half = await native().loraLogits(path.join(dir, "half.gguf"), [], tokens.subarray(0, 8), {threads: 2});
    const scaled = await native().loraLogits(base, [{path: adapterFile, scale: 0.5}], tokens.subarray(0, 8), {threads: 2});
    t.true(maxRelativeDiff(half, scaled) < 1e-4);
});

test("merge refuses adapters that do not fit the base, and never overwrites its inputs", async (t) => {
    const dir = tempDir(t);
    const base = await makeModel(t, {layers: 2, embedding: 32, heads: 4, feedForward: 48});
    const adapterFile = path.join(dir, "adapter.gguf");
    const adapter = await makeAdapter(base, adapterFile, {modules: ["attn_q"]});
    const out = path.join(dir, "out.gguf");

    const other = await makeModel(t, {architecture: "qwen2", layers: 2, embedding: 32, heads: 4, feedForward: 48}, "qwen.gguf");
    await t.throwsAsync(mergeLora(other, adapterFile, out), {message: /architecture "llama".*"qwen2"/});
    const smaller = await makeModel(t, {layers: 1, embedding: 32, heads: 4, feedForward: 48}, "one-layer.gguf");
    await t.throwsAsync(mergeLora(smaller, adapterFile, out), {message: /blk\.1\.attn_q\.weight.*is not a tensor of/});
    const wide = await makeModel(t, {layers: 2, embedding: 64, heads: 4, feedForward: 48}, "wide.gguf");
    await t.throwsAsync(mergeLora(wide, adapterFile, out), {message: /do not fit its shape/});

    const lonely = path.join(dir, "lonely.gguf");
    await writeLoraAdapter(lonely, {...adapter, tensors: adapter.tensors.filter((x) => x.name.endsWith(".lora_a"))});
    await t.throwsAsync(mergeLora(base, lonely, out), {message: /lacks its \.lora_b/});

    const truncated = path.join(dir, "truncated.gguf");
    fs.writeFileSync(truncated, fs.readFileSync(adapterFile).subarray(0, 200));
    await t.throwsAsync(mergeLora(base, truncated, out), {message: /truncated\.gguf/});
    await t.throwsAsync(mergeLora(base, adapterFile, base), {message: /same file|input/i});
    await t.throwsAsync(mergeLora(base, path.join(dir, "missing.gguf"), out), {message: /missing\.gguf does not exist/});
    t.false(fs.existsSync(out), "nothing is written on failure");
    t.deepEqual(fs.readdirSync(dir).filter((f) => f.includes(".tmp")), []);
});
