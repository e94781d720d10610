// The native LoRA trainer (native/lora): llama.cpp's own forward graph of the base model with the
// adapter's A/B matrices trainable, masked and weighted cross-entropy, backward, AdamW on the host.
import {native, warnIfNoGpu, type NativeLoraStepOptions, type NativeLoraTensorState, type NativeLoraTrainer, type NativeMicroBatch} from "../native.js";
import type {LoraAdapter} from "./adapter.js";

export interface LoraTrainerOptions {
    /** Tokens of one micro-batch, at most (the training context). */
    contextSize?: number;
    /** Sequences of one micro-batch, at most (<= 256). */
    sequences?: number;
    threads?: number;
    /** Layers offloaded to the GPU (CUDA builds). */
    gpuLayers?: number;
}

export interface TrainerState {
    step: number;
    tensors: NativeLoraTensorState[];
}

/** The native LoRA trainer on one model (a thin wrapper of the native LoraTrainer class): forward/backward steps, AdamW, adapter export. */
export class LoraTrainer {
    private constructor(private readonly trainer: NativeLoraTrainer, readonly modelPath: string) {}

    /** Loads the base model and an adapter file (F32 matrices) whose A/B become trainable. */
    static async open(modelPath: string, adapterPath: string, options: LoraTrainerOptions = {}): Promise<LoraTrainer> {
        warnIfNoGpu(options.gpuLayers);
        return new LoraTrainer(await native().LoraTrainer.open({modelPath, adapterPath, ...options}), modelPath);
    }

    get info(): {alpha: number; nVocab: number; step: number; tensors: {name: string; shape: [number, number]}[]} {
        return this.trainer.info();
    }

    /** One optimizer step: gradients accumulated over every micro-batch, then AdamW. */
    async step(batches: NativeMicroBatch[], options: NativeLoraStepOptions): Promise<{loss: number; gradNorm: number; targets: number}> {
        return this.trainer.step(batches, options);
    }

    /** The gradient of the loss (sum of weight * cross-entropy) per tensor, in `info.tensors` order; updates nothing. */
    async gradients(batches: NativeMicroBatch[], options: {dropout?: number; dropoutSeed?: number} = {}):
        Promise<{loss: number; gradNorm: number; targets: number; gradients: Float32Array[]}> {
        return this.trainer.gradients(batches, options);
    }

    /** Loss (sum of weight * cross-entropy) without gradients or dropout; optionally the target positions' logits. */
    async evaluate(batches: NativeMicroBatch[], options: {logits?: boolean} = {}): Promise<{loss: number; targets: number; logits?: Float32Array}> {
        return this.trainer.evaluate(batches, options);
    }

    /** A/B, the AdamW moments and the step counter (copies). */
    state(): TrainerState {
        return this.trainer.state();
    }

    setState(state: TrainerState): void {
        this.trainer.setState(state);
    }

    /** The adapter as it stands now. */
    adapter(architecture: string, r: number): LoraAdapter {
        const info = this.info;
        return {
            architecture,
            alpha: info.alpha,
            r,
            tensors: this.state().tensors.map((t) => ({name: t.name, shape: t.shape, data: t.value})),
        };
    }

    /** Stops the step or evaluation in flight between micro-batches (it rejects with "cancelled"). */
    cancel(): void {
        this.trainer.cancel();
    }

    close(): void {
        this.trainer.close();
    }
}
