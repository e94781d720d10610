// Pruning plans: which whole layers to remove, by one of PruFed's / ShortGPT's strategies, sized
// by the share of parameters to remove. A plan is data: print it, store it, or apply it.
import fs from "node:fs";
import {native} from "../native.js";
import {GgufModelFile, readGguf} from "../gguf/read.js";

export const pruningStrategies = ["top", "even", "odd", "symmetric", "magnitude", "scores", "bi"] as const;
export type PruningStrategy = (typeof pruningStrategies)[number];

export interface PruningPlanOptions {
    strategy: PruningStrategy;
    /** Share of all parameters to remove, in [0, 1); the layer count that comes closest is chosen. */
    ratio?: number;
    /** Exact number of layers to remove (instead of `ratio`). */
    count?: number;
    /** Per-layer importance scores for `scores` and `bi` (lowest removed first); `bi` marks them as Block Influence. */
    scores?: number[];
    onProgress?: (done: number, total: number) => void;
}

export interface PruningPlan {
    model: string;
    architecture: string;
    strategy: PruningStrategy;
    /** The requested share (when sized by ratio). */
    targetRatio?: number;
    /** Removal order of the strategy: the first `removed.length` of these are removed. */
    order: number[];
    /** Per-layer values the order was derived from (magnitude: mean |w|; scores: the scores). */
    layerValues?: number[];
    removed: number[];
    kept: number[];
    /** The same, numbered as in the unpruned model the input was cut from. */
    originalRemoved: number[];
    originalKept: number[];
    parameters: {before: number; after: number; removed: number; removedRatio: number};
    layersBefore: number;
    layersAfter: number;
}

/** Removal order for the position-based strategies (first entry removed first). */
export function strategyOrder(strategy: "top" | "even" | "odd" | "symmetric", n: number): number[] {
    const all = Array.from({length: n}, (_, i) => i);
    switch (strategy) {
        case "top":
            // ShortGPT / PPC-GPT "Seq": importance follows depth, deepest layers go first.
            return all.reverse();
        case "even":
            // Alternate dropping: even-numbered layers, from the top of the stack down.
            return all.filter((i) => i % 2 === 0).reverse();
        case "odd":
            return all.filter((i) => i % 2 === 1).reverse();
        case "symmetric": {
            // From the middle outward, alternating above and below the centre.
            const centre = (n - 1) / 2;
            return all.sort((a, b) => Math.abs(a - centre) - Math.abs(b - centre) || b - a);
        }
    }
}

/** Reads per-layer scores from JSON: an array, or an object with `bi` or `scores` (what `ppc-gpt bi --json` writes). */
export function parseScores(json: unknown, source: string): number[] {
    const pick = Array.isArray(json) ? json
        : json && typeof json === "object"
            ? ((json as Record<string, unknown>).bi ?? (json as Record<string, unknown>).scores)
            : undefined;
    if (!Array.isArray(pick) || pick.some((x) => typeof x !== "number" || !Number.isFinite(x)))
        throw new Error(`${source}: expected an array of finite numbers, or an object with a "bi" or "scores" array`);
    return pick as number[];
}

export function readScoresFile(file: string): number[] {
    let text: string;
    try {
        text = fs.readFileSync(file, "utf8");
    } catch (err) {
        throw new Error(`cannot read scores file ${file}: ${(err as Error).message}`);
    }
    let json: unknown;
    try {
        json = JSON.parse(text);
    } catch (err) {
        throw new Error(`${file}: not valid JSON (${(err as Error).message})`);
    }
    return parseScores(json, file);
}

/** Mean |w| of each block's weight matrices (tensors of rank ≥ 2: norms and biases excluded). */
export async function layerMagnitudes(file: GgufModelFile, onProgress?: (done: number, total: number) => void): Promise<number[]> {
    const n = file.blockCount;
    const names = file.tensors.filter((t) => t.shape.length >= 2 && GgufModelFile.layerOf(t.name) !== undefined).map((t) => t.name);
    const sums = await native().tensorAbsSums(file.path, names, onProgress);
    const sum = new Array<number>(n).fill(0);
    const count = new Array<number>(n).fill(0);
    for (const s of sums) {
        const layer = GgufModelFile.layerOf(s.name)!;
        sum[layer] += s.sumAbs;
        count[layer] += s.count;
    }
    return sum.map((s, i) => (count[i] ? s / count[i] : 0));
}

function checkRatio(ratio: number): void {
    if (!Number.isFinite(ratio) || ratio < 0 || ratio >= 1)
        throw new RangeError(`ratio must be in [0, 1), got ${ratio}`);
}

/**
 * Plans which layers to remove. With `ratio`, the number of layers (taken in the strategy's order)
 * is the one whose removed share of all parameters comes closest to the ratio; ties go to fewer layers.
 */
export async function planPruning(model: string | GgufModelFile, options: PruningPlanOptions): Promise<PruningPlan> {
    const file = typeof model === "string" ? await readGguf(model) : model;
    const n = file.blockCount;
    if (!pruningStrategies.includes(options.strategy))
        throw new RangeError(`unknown strategy "${options.strategy}"; use one of ${pruningStrategies.join(", ")}`);
    if ((options.ratio === undefined) === (options.count === undefined))
        throw new RangeError("give exactly one of ratio or count");

    let order: number[];
    let layerValues: number[] | undefined;
    if (options.strategy === "magnitude" || options.strategy === "scores" || options.strategy === "bi") {
        if (options.strategy !== "magnitude") {
            if (!options.scores)
                throw new RangeError(`the ${options.strategy} strategy needs per-layer scores`);
            if (options.scores.length !== n)
                throw new RangeError(`${options.scores.length} scores given for a model of ${n} layers`);
            layerValues = options.scores;
        } else {
            layerValues = await layerMagnitudes(file, options.onProgress);
        }
        const values = layerValues;
        // Lowest value first; ties broken towards deeper layers (as "top" would).
        order = Array.from({length: n}, (_, i) => i).sort((a, b) => values[a] - values[b] || b - a);
    } else {
        order = strategyOrder(options.strategy, n);
    }

    const layerParams = new Array<number>(n).fill(0);
    let total = 0;
    for (const t of file.tensors) {
        total += t.nElements;
        const l = GgufModelFile.layerOf(t.name);
        if (l !== undefined && l < n)
            layerParams[l] += t.nElements;
    }
    const maxRemovable = Math.min(order.length, n - 1);

    let k: number;
    if (options.count !== undefined) {
        if (!Number.isInteger(options.count) || options.count < 1)
            throw new RangeError(`count must be a positive integer, got ${options.count}`);
        if (options.count > maxRemovable)
            throw new RangeError(`count ${options.count} is more than the ${options.strategy} strategy can remove from ` +
                `${n} layers (at most ${maxRemovable}${maxRemovable < n - 1 ? `: it only removes ${order.length} layers` : ": one layer must stay"})`);
        k = options.count;
    } else {
        checkRatio(options.ratio!);
        k = 0;
        let removed = 0;
        let best = Math.abs(options.ratio!);
        for (let j = 1; j <= maxRemovable; j++) {
            removed += layerParams[order[j - 1]];
            const err = Math.abs(removed / total - options.ratio!);
            if (err < best - 1e-12) {
                best = err;
                k = j;
            }
        }
    }

    const removedSet = new Set(order.slice(0, k));
    const removed = [...removedSet].sort((a, b) => a - b);
    const kept = Array.from({length: n}, (_, i) => i).filter((i) => !removedSet.has(i));
    const removedParams = removed.reduce((acc, l) => acc + layerParams[l], 0);
    const original = file.originalLayers;
    return {
        model: file.path,
        architecture: file.architecture,
        strategy: options.strategy,
        ...(options.ratio !== undefined ? {targetRatio: options.ratio} : {}),
        order,
        ...(layerValues ? {layerValues} : {}),
        removed,
        kept,
        originalRemoved: removed.map((l) => original[l]),
        originalKept: kept.map((l) => original[l]),
        parameters: {before: total, after: total - removedParams, removed: removedParams, removedRatio: removedParams / total},
        layersBefore: n,
        layersAfter: kept.length,
    };
}
