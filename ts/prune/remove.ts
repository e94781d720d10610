// Layer removal: the library entry point over the addon's streaming GGUF surgery.
import fs from "node:fs";
import path from "node:path";
import {native, type NativeLayerRemovalResult} from "../native.js";

export type LayerRemovalResult = NativeLayerRemovalResult & {input: string; output: string};

export interface RemoveLayersOptions {
    /** Called with bytes of tensor data copied so far and the total. */
    onProgress?: (done: number, total: number) => void;
    /** Replace an existing output file (default true; the input itself is never replaced). */
    overwrite?: boolean;
}

/**
 * Writes `output`: `input` without the given blocks, renumbered, with per-layer metadata shrunk
 * and every kept tensor byte-identical. The output appears only when complete.
 */
export async function removeLayers(input: string, output: string, layers: number[], options: RemoveLayersOptions = {}): Promise<LayerRemovalResult> {
    if (!Array.isArray(layers) || layers.length === 0)
        throw new RangeError("give at least one layer to remove");
    for (const l of layers)
        if (!Number.isInteger(l) || l < 0)
            throw new RangeError(`layer indices must be non-negative integers, got ${l}`);
    if (path.resolve(input) === path.resolve(output))
        throw new Error(`the output ${output} is the input file; write to another path`);
    if (options.overwrite === false && fs.existsSync(output))
        throw new Error(`${output} exists (pass overwrite to replace it)`);
    const result = await native().removeLayers(input, output, layers, options.onProgress);
    return {...result, input, output};
}
