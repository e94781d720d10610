// flexlora: per adapted matrix the weighted mean of the clients' ΔW = (alpha/r)·B·A, kept as a
// truncated SVD at the global rank (alpha = r, scale 1, starting from ΔW = 0); each client receives
// it re-factored to its own rank, so clients may differ in rank. Not a sum of factors: no secure
// aggregation, no clipping.
import {deltaMean, refactorToRank, zeroAdapter} from "./aggregate.js";
import type {Strategy} from "./index.js";

export const flexlora: Strategy = {
    name: "flexlora",
    federated: true,
    serverAggregation: "flexlora",
    mixedRanks: true,
    sameLayers: false,
    secureAggregation: false,
    clipping: false,
    initialGlobal: (layout, r) => zeroAdapter(layout, r, r),
    clientPart: (part, {r, loraAlpha, seed}) => refactorToRank(part, r, loraAlpha, seed),
    combine: deltaMean,
};
