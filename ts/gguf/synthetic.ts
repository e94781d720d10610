// Random-weight models in llama.cpp's own layouts, written with the project's GGUF writer, so that
// tests and benchmarks get models of any architecture, depth, width and tensor type without
// downloading anything. Weights come from a seeded generator: the same options give the same file.
import {native} from "../native.js";
import {mulberry32, splitmix64} from "../random.js";
import {ggmlType, writeGguf, type GgufKv, type GgufTensorSpec} from "./write.js";

export type SyntheticArchitecture = "llama" | "qwen2" | "openelm";

export interface SyntheticModelOptions {
    architecture: SyntheticArchitecture;
    layers: number;
    /** Hidden size (n_embd). */
    embedding: number;
    /** Attention heads; an array gives one count per layer (written as a per-layer array). */
    heads: number | number[];
    /** Key/value heads (GQA); default: same as `heads`. */
    kvHeads?: number | number[];
    /** Feed-forward size; an array gives one per layer. */
    feedForward: number | number[];
    /** Vocabulary size, at least 259 (3 special + 256 byte tokens). Default 512. */
    vocab?: number;
    /** ggml type of the weight matrices ("f32", "f16", "q8_0", "q4_K", …). Norms and biases stay f32. */
    type?: string;
    seed?: number;
    /** Multiplies a layer's residual branches (attn_output and ffn_down) by a factor: 0 makes the block an identity. */
    branchScale?: Record<number, number>;
    contextLength?: number;
}

/**
 * Fills `out` with uniform values in [-scale, scale), a function of `seed` (a 64-bit hash) only:
 * a Mulberry32 stream seeded from the low 32 bits of SplitMix64's first output (BigInt per element
 * would be slow).
 */
function fillUniform(out: Float32Array, seed: bigint, scale: number): void {
    const next = mulberry32(Number(splitmix64(seed) & 0xffffffffn));
    for (let i = 0; i < out.length; i++)
        out[i] = (2 * next() - 1) * scale;
}

function hashName(name: string, seed: number): bigint {
    let h = 0xcbf29ce484222325n ^ BigInt(seed >>> 0);
    for (const c of Buffer.from(name)) {
        h ^= BigInt(c);
        h = (h * 0x100000001b3n) & ((1n << 64n) - 1n);
    }
    return h;
}

function perLayer(v: number | number[], layers: number, what: string): number[] {
    if (Array.isArray(v)) {
        if (v.length !== layers)
            throw new Error(`${what}: ${v.length} values for ${layers} layers`);
        return v;
    }
    return Array.from({length: layers}, () => v);
}

/** A SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte tokens, then word pieces. */
function vocabulary(n: number): GgufKv[] {
    if (n < 259)
        throw new Error(`vocab must be at least 259 (3 special + 256 byte tokens), got ${n}`);
    const tokens: string[] = ["<unk>", "<s>", "</s>"];
    const types: number[] = [2, 3, 3];
    for (let b = 0; b < 256; b++) {
        tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
        types.push(6);
    }
    const letters = "etaoinshrdlcumwfgypbvkjxqz";
    const pieces: string[] = ["▁"];
    for (const c of letters)
        pieces.push(c, `▁${c}`);
    for (const a of letters)
        for (const b of letters)
            pieces.push(`${a}${b}`, `▁${a}${b}`);
    for (let i = 0; tokens.length < n; i++) {
        tokens.push(i < pieces.length ? pieces[i] : `▁w${i}`);
        types.push(1);
    }
    const scores = tokens.map((_, i) => (i < 259 ? 0 : -(i - 259)));
    return [
        {key: "tokenizer.ggml.model", type: "string", value: "llama"},
        {key: "tokenizer.ggml.tokens", type: "array", elementType: "string", value: tokens},
        {key: "tokenizer.ggml.scores", type: "array", elementType: "float32", value: scores},
        {key: "tokenizer.ggml.token_type", type: "array", elementType: "int32", value: types},
        {key: "tokenizer.ggml.unknown_token_id", type: "uint32", value: 0},
        {key: "tokenizer.ggml.bos_token_id", type: "uint32", value: 1},
        {key: "tokenizer.ggml.eos_token_id", type: "uint32", value: 2},
        {key: "tokenizer.ggml.add_bos_token", type: "bool", value: true},
    ];
}

/** Metadata and tensor list of a random model; `writeSyntheticModel` writes it. */
export function syntheticModel(o: SyntheticModelOptions): {metadata: GgufKv[]; tensors: GgufTensorSpec[]} {
    const arch = o.architecture;
    const L = o.layers;
    const E = o.embedding;
    const V = o.vocab ?? 512;
    const type = o.type ?? "f32";
    const seed = o.seed ?? 1;
    const heads = perLayer(o.heads, L, "heads");
    const kvHeads = perLayer(o.kvHeads ?? o.heads, L, "kvHeads");
    const ff = perLayer(o.feedForward, L, "feedForward");
    const headDim = E / heads[0];
    if (!Number.isInteger(headDim) || headDim % 2 !== 0)
        throw new Error(`embedding ${E} / heads ${heads[0]} must be an even integer head size`);
    const perLayerArrays = Array.isArray(o.heads) || Array.isArray(o.kvHeads) || Array.isArray(o.feedForward) || arch === "openelm";
    const scalarOrArray = (key: string, v: number[]): GgufKv => perLayerArrays
        ? {key, type: "array", elementType: "int32", value: v}
        : {key, type: "uint32", value: v[0]};

    const metadata: GgufKv[] = [
        {key: "general.architecture", type: "string", value: arch},
        {key: "general.name", type: "string", value: `synthetic-${arch}-${L}L-${E}`},
        {key: "general.alignment", type: "uint32", value: 32},
        {key: `${arch}.context_length`, type: "uint32", value: o.contextLength ?? 2048},
        {key: `${arch}.embedding_length`, type: "uint32", value: E},
        {key: `${arch}.block_count`, type: "uint32", value: L},
        scalarOrArray(`${arch}.feed_forward_length`, ff),
        scalarOrArray(`${arch}.attention.head_count`, heads),
        scalarOrArray(`${arch}.attention.head_count_kv`, kvHeads),
        {key: `${arch}.attention.key_length`, type: "uint32", value: headDim},
        {key: `${arch}.attention.value_length`, type: "uint32", value: headDim},
        {key: `${arch}.rope.dimension_count`, type: "uint32", value: headDim},
        {key: `${arch}.rope.freq_base`, type: "float32", value: 10000},
        {key: `${arch}.attention.layer_norm_rms_epsilon`, type: "float32", value: 1e-5},
        ...vocabulary(V),
    ];

    const q = native();
    const tensors: GgufTensorSpec[] = [];
    const matrix = (name: string, shape: number[], scale = 1, t = type) => tensors.push({
        name, shape, type: t,
        data: () => {
            const values = new Float32Array(shape.reduce((a, b) => a * b, 1));
            fillUniform(values, hashName(name, seed), scale * Math.sqrt(3 / shape[0]));
            return t === "f32" ? new Uint8Array(values.buffer) : q.quantize(ggmlType(t).id, values, shape[0]);
        },
    });
    const ones = (name: string, n: number) => tensors.push({
        name, shape: [n], type: "f32", data: () => new Uint8Array(new Float32Array(n).fill(1).buffer),
    });
    const bias = (name: string, n: number) => matrix(name, [n], 0.1 * Math.sqrt(n / 3), "f32");

    matrix("token_embd.weight", [E, V], Math.sqrt(E / 3) * 0.5);
    ones("output_norm.weight", E);
    if (arch !== "openelm")
        matrix("output.weight", [E, V]);
    for (let i = 0; i < L; i++) {
        const s = o.branchScale?.[i] ?? 1;
        const H = heads[i], Hkv = kvHeads[i], F = ff[i];
        ones(`blk.${i}.attn_norm.weight`, E);
        if (arch === "openelm") {
            matrix(`blk.${i}.attn_qkv.weight`, [E, (H + 2 * Hkv) * headDim]);
            ones(`blk.${i}.attn_q_norm.weight`, headDim);
            ones(`blk.${i}.attn_k_norm.weight`, headDim);
        } else {
            matrix(`blk.${i}.attn_q.weight`, [E, H * headDim]);
            matrix(`blk.${i}.attn_k.weight`, [E, Hkv * headDim]);
            matrix(`blk.${i}.attn_v.weight`, [E, Hkv * headDim]);
            if (arch === "qwen2") {
                bias(`blk.${i}.attn_q.bias`, H * headDim);
                bias(`blk.${i}.attn_k.bias`, Hkv * headDim);
                bias(`blk.${i}.attn_v.bias`, Hkv * headDim);
            }
        }
        matrix(`blk.${i}.attn_output.weight`, [H * headDim, E], s);
        ones(`blk.${i}.ffn_norm.weight`, E);
        matrix(`blk.${i}.ffn_gate.weight`, [E, F]);
        matrix(`blk.${i}.ffn_up.weight`, [E, F]);
        matrix(`blk.${i}.ffn_down.weight`, [F, E], s);
    }
    return {metadata, tensors};
}

/** Generates a random model with `syntheticModel` and writes it to `file`. */
export async function writeSyntheticModel(file: string, options: SyntheticModelOptions): Promise<void> {
    const {metadata, tensors} = syntheticModel(options);
    await writeGguf(file, metadata, tensors);
}
