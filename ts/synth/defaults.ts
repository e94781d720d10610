// The synthesis stage's defaults: what `synthesize` uses for an option left out and what
// `ppc-gpt synth --help` shows as "synthDefaults" (its --format is the reply format, not train's
// prompt format). No imports: the wire protocol's job spec reads `ratio` (its k) from here.

/** synth's defaults (k synthetic items per perturbed one, votes, temperature, ...): what --help shows and a left-out option becomes. */
export const synthDefaults = {
    /** Synthetic items wanted per perturbed item (the paper's k). */
    ratio: 8,
    /** Reply format: JSON unless the generator cannot enforce a schema, then the paper's line format. */
    format: "auto",
} as const;
