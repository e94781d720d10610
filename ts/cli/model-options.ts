// Options every verb that runs a model shares (declared in the option table, ts/cli/options.ts).
import fs from "node:fs";
import type {Command} from "commander";
import {readGguf} from "../gguf/read.js";
import {checkModelLoadOptions} from "../model.js";
import type {NativeModelOptions} from "../native.js";
import {addOptions, flagError, optionTable} from "./options.js";

export interface ModelCliOptions {
    threads?: string;
    gpuLayers?: string;
}

/** --threads and --gpu-layers, for a verb the option table tags with them. */
export function addModelOptions(cmd: Command): Command {
    return addOptions(cmd, cmd.name(), ["model"]);
}

/** The parsed load options, checked by the library (checkModelLoadOptions) before any work. */
export function modelLoadOptions(opts: ModelCliOptions): NativeModelOptions {
    const read = (v: string | undefined) => v === undefined ? undefined : v.trim() === "" ? NaN : Number(v);
    const load = {
        ...(opts.threads !== undefined ? {threads: read(opts.threads)} : {}),
        ...(opts.gpuLayers !== undefined ? {gpuLayers: read(opts.gpuLayers)} : {}),
    };
    try {
        checkModelLoadOptions(load);
    } catch (err) {
        throw flagError(err, (key) => {
            const spec = optionTable.find((s) => s.group === "model" && s.key === key);
            return spec && {flag: spec.flags.split(" ")[0]!, given: opts[key as keyof ModelCliOptions]};
        });
    }
    return load;
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
