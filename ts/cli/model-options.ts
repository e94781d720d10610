// Options every verb that runs a model shares.
import fs from "node:fs";
import type {Command} from "commander";
import {readGguf} from "../gguf/read.js";
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

/**
 * Reads a model's GGUF header (bounds-checked) before a verb hands the file to a loader that only
 * says "failed to load model": a missing, truncated or corrupt file is named with what is wrong.
 */
export async function checkGgufFile(file: string, flag: string): Promise<void> {
    if (!fs.existsSync(file))
        throw new Error(`${flag} ${file}: no such file`);
    await readGguf(file, {maxArrayValues: 0});
}
