// SanText (Yue et al., ACL Findings 2021): every token of the domain may be replaced by every
// token of the domain, with P(y|x) ∝ exp(−ε·d(x,y)/2), d the Euclidean distance between the raw
// (dequantised) token_embd rows. That is the Exponential Mechanism with u = −d and Δu = 1, and
// by the triangle inequality it satisfies metric DP: P(y|x) ≤ exp(ε·d(x,x′))·P(y|x′).
// Distances are computed natively in double precision, per distinct input token, on demand.
import {native} from "../native.js";
import type {EmbeddingMatrix} from "./custext.js";
import {checkEpsilon, exponentialMechanism, normalizeDomain, type TokenMechanism, type TokenUtilities} from "./mechanism.js";

export interface SanTextOptions {
    threads?: number;
    /** Cached distribution entries (inputs × vocabulary); default 2^24 (about 320 MB). */
    cacheEntries?: number;
}

/** Utilities −d(x, y) for every y of the domain, for each input, in double precision. */
export async function sanTextUtilities(e: EmbeddingMatrix, domain: Int32Array, inputs: Int32Array, threads = 0): Promise<TokenUtilities[]> {
    const rows = await native().embedSimilarityRows(e.data, e.cols, inputs, domain, 1, threads);
    const n = domain.length;
    return Array.from(inputs, (_, i) => ({outputs: domain, utilities: rows.subarray(i * n, (i + 1) * n)}));
}

export function sanTextMechanism(e: EmbeddingMatrix, domain: ArrayLike<number>, epsilon: number, o: SanTextOptions = {}): TokenMechanism {
    checkEpsilon(epsilon);
    const d = normalizeDomain(domain);
    if (d[d.length - 1] >= e.rows)
        throw new Error(`domain token ${d[d.length - 1]} has no embedding row (${e.rows} rows)`);
    return exponentialMechanism({
        name: "santext",
        epsilon,
        sensitivity: 1,
        domain: d,
        utilities: (inputs) => sanTextUtilities(e, d, inputs, o.threads ?? 0),
        cacheEntries: o.cacheEntries,
        guarantee: {
            kind: "metric-dp",
            epsilon,
            metric: "euclidean",
            statement: `SanText: each of the ${d.length} text tokens may be replaced by any of them, with ` +
                `P(y|x) ∝ exp(−${epsilon}·d(x,y)/2), d = Euclidean distance between the raw (dequantised) token embeddings. ` +
                `Metric DP: for all tokens x, x′, y, P(y|x) ≤ exp(${epsilon}·d(x,x′))·P(y|x′).`,
        },
    });
}
