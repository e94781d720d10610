// The operator's caps on what a job spec may ask (`ppc-gpt server --max-steps` ...): defaults over a
// cap take the cap, an asked value over one is refused (422 spec_over_limit).
import type {FilledJobSpec, JobSpec} from "./protocol.js";

/** Caps on job spec fields, each a flag of `ppc-gpt server`. */
export interface JobCaps {
    /** server_steps */
    maxSteps: number;
    /** k: synthetic items per perturbed item */
    maxK: number;
    /** r: LoRA rank */
    maxRank: number;
    /** batch_size */
    maxBatchSize: number;
    /** max_input_length + max_target_length */
    maxSequenceLength: number;
}

export const jobCapDefaults: JobCaps = {maxSteps: 5000, maxK: 32, maxRank: 128, maxBatchSize: 256, maxSequenceLength: 2048};

/** A default over a cap takes the cap (a spec that leaves a field out asks for nothing over the server's caps). */
export function withinCaps(spec: FilledJobSpec, asked: JobSpec | undefined, caps: JobCaps): FilledJobSpec {
    const out = {...spec};
    if (asked?.server_steps === undefined)
        out.server_steps = Math.min(out.server_steps, caps.maxSteps);
    if (asked?.k === undefined)
        out.k = Math.min(out.k, caps.maxK);
    if (asked?.r === undefined)
        out.r = Math.min(out.r, caps.maxRank);
    if (asked?.batch_size === undefined)
        out.batch_size = Math.min(out.batch_size, caps.maxBatchSize);
    return out;
}

/** The first cap a filled spec goes over, as a message naming the field and the flag; undefined when none. */
export function specOverCap(spec: FilledJobSpec, caps: JobCaps): string | undefined {
    const checks: [string, number, number, string][] = [
        ["server_steps", spec.server_steps, caps.maxSteps, "--max-steps"],
        ["k", spec.k, caps.maxK, "--max-k"],
        ["r", spec.r, caps.maxRank, "--max-rank"],
        ["batch_size", spec.batch_size, caps.maxBatchSize, "--max-batch-size"],
        ["max_input_length + max_target_length", spec.max_input_length + spec.max_target_length, caps.maxSequenceLength, "--max-sequence-length"],
    ];
    const over = checks.find(([, value, cap]) => value > cap);
    return over ? `spec.${over[0]} is ${over[1]}; this server takes at most ${over[2]} (server ${over[3]})` : undefined;
}
