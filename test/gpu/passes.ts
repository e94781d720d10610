// The passes the GPU suite compares: each runs on whichever addon this process loaded, with the
// layers offloaded that the caller asks for. The suite runs them in its own process (the CUDA build,
// every layer offloaded) and, through reference.ts, in a child process on the CPU build: the same
// code on both sides, serialised as JSON in between.
import fs from "node:fs";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {loadModel} from "../../ts/model.js";
import type {NativeMicroBatch} from "../../ts/native.js";
import {scoreLayers} from "../../ts/prune/block-influence.js";
import {LoraTrainer} from "../../ts/train/trainer.js";
import {run} from "../install/project.js";

/** A micro-batch as JSON carries it. */
export interface PlainMicroBatch {
    tokens: number[];
    positions: number[];
    seqIds: number[];
    targets: number[];
    weights: number[];
}

export type Pass =
    | {kind: "logits"; model: string; sequences: number[][]}
    | {kind: "layer-scores"; model: string; sequences: number[][]; maxBatchTokens: number; maxSequences: number}
    | {kind: "gradients"; model: string; adapter: string; batches: PlainMicroBatch[]; contextSize: number; sequences: number;
        dropout?: number; dropoutSeed?: number}
    | {kind: "train"; model: string; adapter: string; batches: PlainMicroBatch[]; contextSize: number; sequences: number;
        steps: number; lr: number};

export interface PassResult {
    logits?: number[][];
    scores?: {tokens: number; bi: number[]; angular: number[]; contribution: number[]};
    loss?: number;
    gradients?: number[][];
    losses?: number[];
}

export function plainBatch(mb: NativeMicroBatch): PlainMicroBatch {
    return {tokens: [...mb.tokens], positions: [...mb.positions], seqIds: [...mb.seqIds], targets: [...mb.targets], weights: [...mb.weights]};
}

function nativeBatch(b: PlainMicroBatch): NativeMicroBatch {
    return {tokens: Int32Array.from(b.tokens), positions: Int32Array.from(b.positions), seqIds: Int32Array.from(b.seqIds),
        targets: Int32Array.from(b.targets), weights: Float32Array.from(b.weights)};
}

export async function runPass(pass: Pass, gpuLayers: number): Promise<PassResult> {
    switch (pass.kind) {
        case "logits": {
            const model = await loadModel(pass.model, {gpuLayers, kvCacheType: "f32"});
            try {
                const logits: number[][] = [];
                for (const s of pass.sequences)
                    logits.push([...await model.logits(s)]);
                return {logits};
            } finally {
                model.close();
            }
        }
        case "layer-scores": {
            const model = await loadModel(pass.model, {gpuLayers});
            try {
                const s = await scoreLayers(model, pass.sequences.map((tokens) => ({tokens: Int32Array.from(tokens)})),
                    {maxBatchTokens: pass.maxBatchTokens, maxSequences: pass.maxSequences});
                return {scores: {tokens: s.tokens, bi: s.bi, angular: s.angular, contribution: s.contribution}};
            } finally {
                model.close();
            }
        }
        case "gradients":
        case "train": {
            const trainer = await LoraTrainer.open(pass.model, pass.adapter, {contextSize: pass.contextSize, sequences: pass.sequences, gpuLayers});
            try {
                const batches = pass.batches.map(nativeBatch);
                if (pass.kind === "gradients") {
                    const g = await trainer.gradients(batches, {dropout: pass.dropout, dropoutSeed: pass.dropoutSeed});
                    return {loss: g.loss, gradients: g.gradients.map((x) => [...x])};
                }
                const losses: number[] = [];
                for (let step = 0; step < pass.steps; step++)
                    losses.push((await trainer.step(batches, {lr: pass.lr})).loss);
                losses.push((await trainer.evaluate(batches)).loss);
                return {losses};
            } finally {
                trainer.close();
            }
        }
    }
}

const referenceScript = path.join(path.dirname(fileURLToPath(import.meta.url)), "reference.js");

/** Runs `pass` in a child process on the CPU addon at `cpuBinary` (PPC_GPT_NATIVE), nothing offloaded. */
export async function runOnCpu(pass: Pass, cpuBinary: string, dir: string): Promise<PassResult> {
    const input = path.join(dir, `pass-${process.hrtime.bigint()}.json`);
    const output = `${input}.result`;
    fs.writeFileSync(input, JSON.stringify(pass));
    const r = await run(process.execPath, [referenceScript, input, output], dir, {...process.env, PPC_GPT_NATIVE: cpuBinary});
    if (r.code !== 0)
        throw new Error(`the CPU reference of ${pass.kind} failed (exit ${r.code}): ${r.stderr.trim().split("\n").slice(-3).join(" | ")}`);
    return JSON.parse(fs.readFileSync(output, "utf8")) as PassResult;
}
