// Merging an adapter into its base model: a standalone GGUF in the base's tensor types.
import fs from "node:fs";
import {native} from "../native.js";

export interface MergeOptions {
    /** Multiplies the adapter's alpha / r (default 1). */
    scale?: number;
    onProgress?: (doneBytes: number, totalBytes: number) => void;
}

export interface MergeResult {
    output: string;
    /** Base tensors that changed: W + scale * (alpha / r) * B A, requantized to W's type. */
    merged: string[];
    alpha: number;
    rank: number;
    bytesWritten: number;
}

/**
 * Writes `output` (atomically): the base model with the adapter folded into every adapted tensor;
 * all other tensors and all metadata are byte-identical to the base's.
 */
export async function mergeLora(base: string, adapter: string, output: string, options: MergeOptions = {}): Promise<MergeResult> {
    for (const [what, file] of [["base model", base], ["adapter", adapter]] as const) {
        if (!fs.existsSync(file))
            throw new Error(`${what} ${file} does not exist`);
    }
    const scale = options.scale ?? 1;
    if (!Number.isFinite(scale))
        throw new RangeError(`scale must be a finite number (got ${scale})`);
    const r = await native().loraMerge(base, adapter, output, {scale}, options.onProgress);
    return {output, ...r};
}
