import path from "node:path";
import test from "ava";
import {readGgufFileInfo} from "node-llama-cpp";
import {inspectModel} from "../../ts/gguf/inspect.js";
import {readGguf} from "../../ts/gguf/read.js";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {writeGguf, type GgufKv} from "../../ts/gguf/write.js";
import {hasShared, llama2TinyRandom, stories260K, tempDir} from "../helpers.js";

/** node-llama-cpp's nested metadata flattened back to dotted keys. */
function flatten(obj: Record<string, unknown>, prefix = "", out = new Map<string, unknown>()): Map<string, unknown> {
    for (const [k, v] of Object.entries(obj)) {
        const key = prefix ? `${prefix}.${k}` : k;
        if (v && typeof v === "object" && !Array.isArray(v) && !ArrayBuffer.isView(v))
            flatten(v as Record<string, unknown>, key, out);
        else
            out.set(key, v);
    }
    return out;
}

function same(a: unknown, b: unknown): boolean {
    if (typeof a === "number" && typeof b === "number")
        return a === b || Math.abs(a - b) <= 1e-6 * Math.max(Math.abs(a), Math.abs(b));
    if (Array.isArray(a) || ArrayBuffer.isView(a)) {
        const x = [...(a as ArrayLike<unknown> as unknown[])], y = [...(b as ArrayLike<unknown> as unknown[])];
        return x.length === y.length && x.every((v, i) => same(v, y[i]));
    }
    return a === b || (typeof a === "bigint" || typeof b === "bigint") && BigInt(a as number) === BigInt(b as number);
}

async function compareWithNodeLlamaCpp(t: import("ava").ExecutionContext, file: string) {
    const ours = await readGguf(file, {maxArrayValues: 1e9});
    const theirs = await readGgufFileInfo(file, {logWarnings: false});
    const flat = flatten(theirs.metadata as unknown as Record<string, unknown>);
    t.is(ours.metadata.length, flat.size, "metadata count");
    for (const m of ours.metadata)
        t.true(same(m.value, flat.get(m.key)), `${file}: ${m.key}`);
    const tensors = theirs.fullTensorInfo ?? theirs.tensorInfo ?? [];
    t.is(ours.tensors.length, tensors.length);
    for (const [i, tt] of tensors.entries()) {
        const o = ours.tensors[i];
        t.is(o.name, tt.name);
        t.deepEqual(o.shape, tt.dimensions.map(Number));
        t.is(o.typeId, tt.ggmlType);
        t.is(ours.info.dataOffset + o.offset, Number(tt.fileOffset), o.name);
    }
    // inspect's counts are sums of the shapes' products.
    const r = await inspectModel(file);
    t.is(r.parameters.total, tensors.reduce((a, tt) => a + tt.dimensions.map(Number).reduce((x, y) => x * y, 1), 0));
    t.is(r.parameters.perLayer.reduce((a, l) => a + l.parameters, 0) + r.parameters.outsideLayers, r.parameters.total);
}

test("reader agrees with node-llama-cpp's GGUF parser on the shared models", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    await compareWithNodeLlamaCpp(t, stories260K);
    await compareWithNodeLlamaCpp(t, llama2TinyRandom);
});

test("writer: every value type round-trips through node-llama-cpp's parser; generated models parse", async (t) => {
    const dir = tempDir(t);
    const file = path.join(dir, "kv.gguf");
    const metadata: GgufKv[] = [
        {key: "general.architecture", type: "string", value: "llama"},
        {key: "a.u8", type: "uint8", value: 250}, {key: "a.i8", type: "int8", value: -100},
        {key: "a.u16", type: "uint16", value: 65000}, {key: "a.i16", type: "int16", value: -30000},
        {key: "a.u32", type: "uint32", value: 4_000_000_000}, {key: "a.i32", type: "int32", value: -2_000_000_000},
        {key: "a.f32", type: "float32", value: 0.25}, {key: "a.f64", type: "float64", value: Math.PI},
        {key: "a.u64", type: "uint64", value: 2n ** 60n}, {key: "a.i64", type: "int64", value: -(2n ** 40n)},
        {key: "a.bool", type: "bool", value: true}, {key: "a.str", type: "string", value: "héllo ▁wörld"},
        {key: "a.arr_str", type: "array", elementType: "string", value: ["x", "", "ÿ"]},
        {key: "a.arr_i32", type: "array", elementType: "int32", value: [1, -2, 3]},
        {key: "a.arr_bool", type: "array", elementType: "bool", value: [true, false]},
    ];
    await writeGguf(file, metadata, [{name: "x", shape: [4, 2], type: "f32", data: () => new Uint8Array(new Float32Array([1, 2, 3, 4, 5, 6, 7, 8]).buffer)}]);
    const flat = flatten((await readGgufFileInfo(file, {logWarnings: false})).metadata as unknown as Record<string, unknown>);
    for (const kv of metadata)
        t.true(same(flat.get(kv.key), kv.value), kv.key);
    const ours = await readGguf(file);
    for (const kv of metadata)
        t.true(same(ours.value(kv.key), kv.value), `ours: ${kv.key}`);

    for (const architecture of ["llama", "qwen2", "openelm"] as const) {
        const m = path.join(dir, `${architecture}.gguf`);
        await writeSyntheticModel(m, {architecture, layers: 3, embedding: 32, heads: 4, feedForward: 64, type: "q8_0"});
        await compareWithNodeLlamaCpp(t, m);
    }
});
