// Training checkpoints: everything a resumed run needs to continue the same loss curve. A folder
// holds the adapter at step N (a normal adapter GGUF that llama.cpp loads), the AdamW moments
// (optimizer-N.gguf) and checkpoint.json, written last and renamed into place: it is the commit
// point, so an interrupted save leaves the previous checkpoint intact.
import fs from "node:fs";
import path from "node:path";
import {readGguf} from "../gguf/read.js";
import {writeGguf} from "../gguf/write.js";
import type {NativeLoraTensorState} from "../native.js";
import {readF32Tensors, readLoraAdapter, writeLoraAdapter} from "./adapter.js";
import type {TrainerState} from "./trainer.js";
import {writeFileDurable} from "../durable-file.js";

export const checkpointFile = "checkpoint.json";

export interface StepRecord {
    /** Optimizer steps done (1-based). */
    step: number;
    loss: number;
    learningRate: number;
    gradNorm: number;
    /** Tokens processed by this step. */
    tokens: number;
}

export interface EvalRecord {
    step: number;
    /** L_label + lambda * L_rationale (label task: L_label). */
    loss: number;
    labelLoss: number;
    rationaleLoss?: number;
}

export interface CheckpointMeta {
    version: 1;
    /** Optimizer steps done. */
    step: number;
    /** What the run was started with; a resumed run must match it. */
    fingerprint: Record<string, unknown>;
    adapter: string;
    optimizer: string;
    history: StepRecord[];
    evaluations: EvalRecord[];
    tokens: number;
    seconds: number;
}

export interface LoadedCheckpoint {
    meta: CheckpointMeta;
    adapterPath: string;
    state: TrainerState;
}

/** Saves the trainer's state as the folder's checkpoint; returns the checkpoint.json path. */
export async function saveCheckpoint(dir: string, state: TrainerState, adapter: {architecture: string; alpha: number; r: number},
    meta: Omit<CheckpointMeta, "version" | "step" | "adapter" | "optimizer">): Promise<string> {
    await fs.promises.mkdir(dir, {recursive: true});
    const tag = String(state.step).padStart(8, "0");
    const adapterName = `adapter-${tag}.gguf`, optimizerName = `optimizer-${tag}.gguf`;
    await writeLoraAdapter(path.join(dir, adapterName), {
        ...adapter,
        tensors: state.tensors.map((t) => ({name: t.name, shape: t.shape, data: t.value})),
    });
    await writeGguf(path.join(dir, optimizerName), [
        {key: "general.type", type: "string", value: "ppc-gpt-optimizer-state"},
        {key: "ppc_gpt.train.optimizer", type: "string", value: "adamw"},
        {key: "ppc_gpt.train.step", type: "uint64", value: state.step},
    ], state.tensors.flatMap((t) => [
        {name: `${t.name}.adam_m`, shape: t.shape, type: "f32", data: () => new Uint8Array(t.m.buffer, t.m.byteOffset, t.m.byteLength)},
        {name: `${t.name}.adam_v`, shape: t.shape, type: "f32", data: () => new Uint8Array(t.v.buffer, t.v.byteOffset, t.v.byteLength)},
    ]));
    const full: CheckpointMeta = {version: 1, step: state.step, adapter: adapterName, optimizer: optimizerName, ...meta};
    const file = path.join(dir, checkpointFile);
    await writeFileDurable(file, JSON.stringify(full, null, 2) + "\n");
    // older states are no longer referenced
    for (const name of await fs.promises.readdir(dir)) {
        if (/^(adapter|optimizer)-\d+\.gguf$/.test(name) && name !== adapterName && name !== optimizerName)
            await fs.promises.rm(path.join(dir, name), {force: true});
    }
    return file;
}

/** Reads a folder's checkpoint; throws naming the file when it is missing or damaged. */
export async function loadCheckpoint(dir: string): Promise<LoadedCheckpoint> {
    const file = path.join(dir, checkpointFile);
    let meta: CheckpointMeta;
    try {
        meta = JSON.parse(await fs.promises.readFile(file, "utf8")) as CheckpointMeta;
    } catch (err) {
        throw new Error(`${file}: cannot read the checkpoint (${(err as Error).message})`);
    }
    if (meta.version !== 1 || !Number.isInteger(meta.step) || meta.step < 0 || typeof meta.adapter !== "string" ||
        typeof meta.optimizer !== "string" || !Array.isArray(meta.history))
        throw new Error(`${file}: not a ppc-gpt training checkpoint`);
    const adapterPath = path.join(dir, path.basename(meta.adapter));
    const adapter = await readLoraAdapter(adapterPath);
    const moments = new Map((await readF32Tensors(await readGguf(path.join(dir, path.basename(meta.optimizer))))).map((t) => [t.name, t]));
    const tensors: NativeLoraTensorState[] = adapter.tensors.map((t) => {
        const m = moments.get(`${t.name}.adam_m`), v = moments.get(`${t.name}.adam_v`);
        if (!m || !v || m.data.length !== t.data.length || v.data.length !== t.data.length)
            throw new Error(`${path.join(dir, meta.optimizer)}: no AdamW moments for ${t.name}`);
        return {name: t.name, shape: t.shape, value: t.data, m: m.data, v: v.data};
    });
    return {meta, adapterPath, state: {step: meta.step, tensors}};
}
