// Fixtures of the training tests: generated models, adapters with chosen values, hand-built
// micro-batches, and naive double-precision references.
import path from "node:path";
import type {ExecutionContext} from "ava";
import {readGguf} from "../../ts/gguf/read.js";
import {writeSyntheticModel, type SyntheticModelOptions} from "../../ts/gguf/synthetic.js";
import type {NativeMicroBatch} from "../../ts/native.js";
import {initLoraAdapter, writeLoraAdapter, type LoraAdapter} from "../../ts/train/adapter.js";
import {Random} from "../../ts/random.js";
import {logSoftmax, tempDir} from "../helpers.js";

export const tinyLlama: SyntheticModelOptions = {architecture: "llama", layers: 2, embedding: 32, heads: 4, kvHeads: 2, feedForward: 48, vocab: 300};

export async function makeModel(t: ExecutionContext, options: Partial<SyntheticModelOptions> = {}, name = "model.gguf"): Promise<string> {
    const file = path.join(tempDir(t), name);
    await writeSyntheticModel(file, {...tinyLlama, ...options});
    return file;
}

/** An adapter over `modules` with A and B both drawn uniformly in ±scale (B = 0 when bScale is 0). */
export async function makeAdapter(model: string, file: string, options: {r?: number; alpha?: number; modules?: string[];
    seed?: number; aScale?: number; bScale?: number} = {}): Promise<LoraAdapter> {
    const g = await readGguf(model);
    const adapter = initLoraAdapter(g, {r: options.r ?? 4, loraAlpha: options.alpha ?? 8,
        targetModules: options.modules ?? ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]}, options.seed ?? 7);
    const rng = new Random(options.seed ?? 7);
    for (const tensor of adapter.tensors) {
        const scale = tensor.name.endsWith(".lora_b") ? options.bScale ?? 0.2 : options.aScale ?? 0.3;
        for (let i = 0; i < tensor.data.length; i++)
            tensor.data[i] = scale === 0 ? 0 : (2 * rng.nextDouble() - 1) * scale;
    }
    await writeLoraAdapter(file, adapter);
    return adapter;
}

export interface SequenceSpec {
    tokens: number[];
    /** Next-token target per position (-1: no loss). */
    targets: number[];
    weights: number[] | number;
}

/** Packs sequences into one micro-batch, positions from 0 in each. */
export function microBatch(sequences: SequenceSpec[]): NativeMicroBatch {
    const n = sequences.reduce((s, q) => s + q.tokens.length, 0);
    const mb: NativeMicroBatch = {tokens: new Int32Array(n), positions: new Int32Array(n), seqIds: new Int32Array(n),
        targets: new Int32Array(n), weights: new Float32Array(n)};
    let at = 0;
    sequences.forEach((q, s) => {
        q.tokens.forEach((tok, k) => {
            mb.tokens[at + k] = tok;
            mb.positions[at + k] = k;
            mb.seqIds[at + k] = s;
            mb.targets[at + k] = q.targets[k];
            mb.weights[at + k] = typeof q.weights === "number" ? q.weights : q.weights[k];
        });
        at += q.tokens.length;
    });
    return mb;
}

/** A random sequence over the vocabulary [3, vocab) with `masked` leading positions without loss. */
export function randomSequence(rng: Random, length: number, vocab: number, masked: number, weight: number): SequenceSpec {
    const tokens = Array.from({length}, () => 3 + rng.nextInt(vocab - 3));
    const targets = tokens.map((_, k) => (k < masked ? -1 : 3 + rng.nextInt(vocab - 3)));
    return {tokens, targets, weights: weight};
}

/** sum over positions with a target of weight * cross-entropy, from logits rows (one per target position, in order). */
export function weightedCrossEntropy(logits: Float32Array, nVocab: number, batches: NativeMicroBatch[]): number {
    let loss = 0, row = 0;
    for (const b of batches) {
        for (let i = 0; i < b.tokens.length; i++) {
            if (b.targets[i] < 0)
                continue;
            const lp = logSoftmax(logits.subarray(row * nVocab, (row + 1) * nVocab));
            loss -= b.weights[i] * lp[b.targets[i]];
            row++;
        }
    }
    return loss;
}
