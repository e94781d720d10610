// Options every verb that runs a model shares.
import type {Command} from "commander";
import type {NativeModelOptions} from "../native.js";
import {parseNumber} from "./output.js";

export interface ModelCliOptions {
    threads?: string;
    gpuLayers?: string;
}

export function addModelOptions(cmd: Command): Command {
    return cmd
        .option("--threads <n>", "CPU threads (default: all cores)")
        .option("--gpu-layers <n>", "layers to offload to the GPU in a CUDA build (default 0; 999 = all)");
}

export function modelLoadOptions(opts: ModelCliOptions): NativeModelOptions {
    return {
        ...(opts.threads !== undefined ? {threads: parseNumber(opts.threads, "--threads", (x) => Number.isInteger(x) && x >= 1, "a positive integer")} : {}),
        ...(opts.gpuLayers !== undefined ? {gpuLayers: parseNumber(opts.gpuLayers, "--gpu-layers", (x) => Number.isInteger(x) && x >= 0, "a non-negative integer")} : {}),
    };
}
