// The perturbation stage's defaults: what `createPerturber`/`perturbFile` use for an option left
// out and what `ppc-gpt perturb --help` shows. No imports, so the CLI's option table can read them
// without loading the stage.

/** The token-level DP mechanisms: CusText (clusters of K nearest tokens) and SanText (every token). */
export const mechanismNames = ["custext", "santext"] as const;
export type MechanismName = (typeof mechanismNames)[number];

/** perturb's defaults (mechanism, ε per token, CusText's K and similarity): what a left-out option becomes and --help shows. */
export const perturbDefaults = {
    mechanism: "custext",
    /** ε per token. */
    epsilon: 3,
    /** CusText cluster size K. */
    k: 20,
    /** CusText embedding similarity. */
    similarity: "cosine",
} as const;
