// The library's defaults for LoRA training: what `trainLora` uses for an option left out, what
// `ppc-gpt train --help` shows, and what the job spec (jobSpecDefaults) starts from. PruFed's local
// rounds use their own set (prufedDefaults, ts/federated/prufed/defaults.ts). No imports: the
// wire protocol reads these too. The prompt format's default is data/prompt.ts's defaultTaskFormat.
/** LoRA adapter shape (PEFT's LoraConfig names: r, lora_alpha, lora_dropout). */
export const loraDefaults = {
    r: 8,
    /** The update is scaled by loraAlpha / r. */
    loraAlpha: 32,
    /** Dropout on the input of every LoRA branch. */
    loraDropout: 0.1,
} as const;

/** Optimizer, schedule, batching and data settings of `trainLora` (transformers' names where they exist). */
export const trainDefaults = {
    task: "cot",
    rationaleWeight: 1,
    learningRate: 5e-5,
    weightDecay: 0,
    adamBeta1: 0.9,
    adamBeta2: 0.999,
    adamEpsilon: 1e-8,
    maxGradNorm: 1,
    lrScheduler: "linear",
    batchSize: 32,
    /** Passes over the items when `steps` is not given. */
    epochs: 3,
    maxInputLength: 64,
    maxTargetLength: 128,
    microBatchSequences: 64,
    seed: 42,
    saveEvery: 100,
    /** DP-SGD: δ of the (ε, δ) guarantee. */
    dpDelta: 1e-5,
    /** DP-SGD: the L2 norm each item's gradient is clipped to. */
    maxPerExampleGradNorm: 1,
} as const;
