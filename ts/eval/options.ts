// The option resolution of the scoring stages (eval, perplexity): their defaults, as the native
// scorer applies them, and one check per option, run before any model or item is loaded, so that
// `evaluate(m, {sequences: 300})` and `ppc-gpt eval --sequences 300` fail the same way (the CLI
// rewrites the OptionError with its flags, ts/cli/options.ts).
import {checkModelLoadOptions} from "../model.js";
import {checkExclusive, checkOption, isInt, OptionError} from "../options.js";
import type {LoglikScorerOptions} from "./loglik.js";

/** The scoring context's defaults (native/capture/loglik: 0 context cells means 256 on the CPU, 2048 offloaded). */
export const scorerDefaults = {
    /** Tokens per llama_decode. */
    batchSize: 512,
    /** Sequences in flight: at least the largest number of choices of an item. */
    sequences: 32,
} as const;

/** Largest number of sequences one scoring context holds. */
export const maxSequences = 256;

/** Checks the scoring context's options (batch, context, sequences, threads). */
export function checkScorerOptions(o: Omit<LoglikScorerOptions, "shareContext">): void {
    if (o.batchSize !== undefined)
        checkOption(isInt(o.batchSize, 1), "batchSize", "a positive integer", o.batchSize);
    if (o.contextSize !== undefined)
        checkOption(isInt(o.contextSize, 1), "contextSize", "a positive integer", o.contextSize);
    if (o.sequences !== undefined)
        checkOption(isInt(o.sequences, 1, maxSequences), "sequences", `an integer in [1, ${maxSequences}]`, o.sequences);
    checkModelLoadOptions({threads: o.threads});
}

/** Checks eval's options: which items (task, data or split, limit, seed), how they are encoded, and the scorer's. */
export function checkEvalOptions(o: {task?: string; data?: string; split?: string; limit?: number; seed?: number; maxLength?: number} &
    Omit<LoglikScorerOptions, "shareContext">): void {
    if (o.task === "mc" && o.data === undefined)
        throw new OptionError(["task", "data"], ([task, data]) => `${task} mc needs ${data} <file> (JSONL task items): give its path`);
    checkExclusive(o, "data", "split");
    if (o.limit !== undefined)
        checkOption(isInt(o.limit, 1), "limit", "a positive integer", o.limit);
    if (o.seed !== undefined)
        checkOption(isInt(o.seed, 0, 2 ** 32 - 1), "seed", "an integer in [0, 2^32)", o.seed);
    if (o.maxLength !== undefined)
        checkOption(isInt(o.maxLength, 2), "maxLength", "an integer >= 2", o.maxLength);
    checkScorerOptions(o);
}

/** Checks perplexity's options: the rolling window and stride, and the scorer's. */
export function checkPerplexityOptions(o: {window?: number; stride?: number} & Omit<LoglikScorerOptions, "shareContext">): void {
    if (o.window !== undefined)
        checkOption(isInt(o.window, 1), "window", "a positive integer", o.window);
    if (o.stride !== undefined && !(isInt(o.stride, 1) && (o.window === undefined || o.stride <= o.window)))
        throw new OptionError(["stride", "window"], ([stride, window], got) => `${stride} must be a positive integer no larger than ${window} (got ${got})`,
            o.stride);
    checkScorerOptions(o);
}
