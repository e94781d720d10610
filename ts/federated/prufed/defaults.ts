// PruFed's defaults: short local rounds of label training on each client (the PruFed paper's
// setting), where they differ from `ppc-gpt train`'s (loraDefaults, trainDefaults in
// ts/train/defaults.ts). `fl simulate`, `fl server` and `fl client` show them in --help as
// "prufedDefaults"; docs/prufed.md lists them.

/** PruFed's named default set for the fl verbs (rank, alpha, learning rate, local steps, ...); docs/prufed.md lists them. */
export const prufedDefaults = {
    rounds: 5,
    /** Optimizer steps of local training per round (E). */
    localSteps: 4,
    r: 8,
    loraAlpha: 16,
    loraDropout: 0,
    /** Constant learning rate of local training. */
    learningRate: 3e-3,
    batchSize: 8,
    maxInputLength: 64,
    maxTargetLength: 8,
    /** Share of each client's items held out for accuracy. */
    heldOutShare: 0.25,
    seed: 42,
    task: "label",
    lrScheduler: "constant",
} as const;
