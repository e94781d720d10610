// LoRA adapter files in llama.cpp's layout, so that llama.cpp, node-llama-cpp and every llama.cpp
// tool load them: general.type = "adapter", general.architecture = the base's, adapter.type =
// "lora", adapter.lora.alpha; tensors "<base tensor>.lora_a" of shape [n_in, r] and
// "<base tensor>.lora_b" of shape [r, n_out] (ggml order), applied as W x + (alpha / r) B A x.
import fs from "node:fs";
import {readGguf, type GgufModelFile} from "../gguf/read.js";
import {writeGguf, type GgufKv} from "../gguf/write.js";
import {deriveSeed, Random} from "../random.js";

/** PEFT-style names of the projections LoRA adapts by default (llama.cpp tensor names). */
export const defaultTargetModules = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"] as const;

export interface LoraConfig {
    /** Rank r of every adapted projection. */
    r: number;
    /** Scale numerator: the update is (lora_alpha / r) B A. */
    loraAlpha: number;
    /** Projections to adapt, by llama.cpp tensor name without "blk.N." and ".weight". */
    targetModules: string[];
}

/** One adapted base tensor: blk.N.<module>.weight, a matrix [nIn, nOut]. */
export interface LoraTarget {
    name: string;
    module: string;
    layer: number;
    nIn: number;
    nOut: number;
}

export interface LoraTensor {
    /** "<base tensor>.lora_a" or ".lora_b". */
    name: string;
    /** ggml order: [n_in, r] for A, [r, n_out] for B. */
    shape: [number, number];
    data: Float32Array;
}

export interface LoraAdapter {
    architecture: string;
    alpha: number;
    r: number;
    tensors: LoraTensor[];
}

const blockTensor = /^blk\.(\d+)\.(.+)\.weight$/;

/**
 * The base tensors that `targetModules` select. Explicitly listed modules must each match; when
 * `targetModules` is the default list, modules this architecture lacks (e.g. ffn_gate of a GELU
 * MLP) are skipped.
 */
export function loraTargets(model: GgufModelFile, targetModules: readonly string[], explicit = true): LoraTarget[] {
    if (targetModules.length === 0)
        throw new Error("target modules: at least one is needed");
    const wanted = new Set(targetModules);
    const targets: LoraTarget[] = [];
    const available = new Set<string>();
    for (const t of model.tensors) {
        const m = blockTensor.exec(t.name);
        if (!m || t.shape.length !== 2)
            continue;
        available.add(m[2]);
        if (wanted.has(m[2]))
            targets.push({name: t.name, module: m[2], layer: Number(m[1]), nIn: t.shape[0], nOut: t.shape[1]});
    }
    const matched = new Set(targets.map((t) => t.module));
    const missing = targetModules.filter((m) => !matched.has(m));
    if (targets.length === 0 || (explicit && missing.length > 0))
        throw new Error(`${model.path}: no ${missing.length === targetModules.length ? "" : "tensor for "}target module${missing.length > 1 ? "s" : ""} ` +
            `${missing.join(", ")} in this ${model.architecture} model; its block matrices are: ${[...available].sort().join(", ")}`);
    return targets.sort((a, b) => a.layer - b.layer || a.module.localeCompare(b.module));
}

/**
 * A fresh adapter as PEFT initialises one: A from Kaiming-uniform (a = sqrt(5), i.e. uniform in
 * ±1/sqrt(n_in)), B = 0, so the adapted model starts exactly at the base model.
 */
export function initLoraAdapter(model: GgufModelFile, config: LoraConfig, seed: number, explicitTargets = true): LoraAdapter {
    checkLoraConfig(config);
    const targets = loraTargets(model, config.targetModules, explicitTargets);
    const tensors: LoraTensor[] = [];
    for (const t of targets) {
        const rng = new Random(deriveSeed(seed, "lora_a", t.name));
        const bound = 1 / Math.sqrt(t.nIn);
        const a = new Float32Array(t.nIn * config.r);
        for (let i = 0; i < a.length; i++)
            a[i] = (2 * rng.nextDouble() - 1) * bound;
        tensors.push({name: `${t.name}.lora_a`, shape: [t.nIn, config.r], data: a});
        tensors.push({name: `${t.name}.lora_b`, shape: [config.r, t.nOut], data: new Float32Array(config.r * t.nOut)});
    }
    return {architecture: model.architecture, alpha: config.loraAlpha, r: config.r, tensors};
}

export function checkLoraConfig(config: LoraConfig): void {
    if (!Number.isInteger(config.r) || config.r < 1 || config.r > 4096)
        throw new RangeError(`r must be an integer in [1, 4096] (got ${config.r})`);
    if (!Number.isFinite(config.loraAlpha) || config.loraAlpha <= 0)
        throw new RangeError(`lora_alpha must be a positive number (got ${config.loraAlpha})`);
}

/** Writes an adapter GGUF atomically (F32 matrices), with optional extra metadata. */
export async function writeLoraAdapter(file: string, adapter: LoraAdapter, extra: GgufKv[] = []): Promise<void> {
    const metadata: GgufKv[] = [
        {key: "general.type", type: "string", value: "adapter"},
        {key: "general.architecture", type: "string", value: adapter.architecture},
        {key: "adapter.type", type: "string", value: "lora"},
        {key: "adapter.lora.alpha", type: "float32", value: adapter.alpha},
        ...extra,
    ];
    await writeGguf(file, metadata, adapter.tensors.map((t) => ({
        name: t.name,
        shape: t.shape,
        type: "f32",
        data: () => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
    })));
}

/** Reads an adapter GGUF written in llama.cpp's layout (F32 matrices). */
export async function readLoraAdapter(file: string): Promise<LoraAdapter> {
    const g = await readGguf(file);
    if (g.value("general.type") !== "adapter" || g.value("adapter.type") !== "lora")
        throw new Error(`${file}: not a LoRA adapter (general.type "adapter" and adapter.type "lora" expected)`);
    const alpha = g.value("adapter.lora.alpha");
    if (typeof alpha !== "number")
        throw new Error(`${file}: adapter.lora.alpha is missing`);
    const tensors = await readF32Tensors(g);
    const ranks = new Set(tensors.filter((t) => t.name.endsWith(".lora_a")).map((t) => t.shape[1]));
    if (ranks.size !== 1)
        throw new Error(`${file}: the adapter's matrices do not share one rank`);
    return {architecture: g.architecture, alpha, r: [...ranks][0], tensors};
}

/** Every tensor of a GGUF file as F32 matrices (all must be F32 and two-dimensional). */
export async function readF32Tensors(g: GgufModelFile): Promise<LoraTensor[]> {
    const fh = await fs.promises.open(g.path, "r");
    try {
        const out: LoraTensor[] = [];
        for (const t of g.tensors) {
            if (t.type !== "f32" || t.shape.length !== 2)
                throw new Error(`${g.path}: tensor ${t.name} is ${t.type} ${JSON.stringify(t.shape)}; F32 matrices expected`);
            const data = new Float32Array(t.nElements);
            const {bytesRead} = await fh.read(new Uint8Array(data.buffer), 0, t.nBytes, g.info.dataOffset + t.offset);
            if (bytesRead !== t.nBytes)
                throw new Error(`${g.path}: tensor ${t.name} is truncated`);
            out.push({name: t.name, shape: [t.shape[0], t.shape[1]], data});
        }
        return out;
    } finally {
        await fh.close();
    }
}
