// layerwise (PruFed): each tensor of base layer i is the weighted mean over the clients that kept
// layer i, the weights renormalised over those holders; a layer no client of the round holds keeps
// its previous value; non-layer tensors are averaged over every client. Clients of any depth.
import {factorMean, peftInit, sameRank} from "./aggregate.js";
import type {Strategy} from "./index.js";

export const layerwise: Strategy = {
    name: "layerwise",
    federated: true,
    serverAggregation: "layerwise",
    mixedRanks: false,
    sameLayers: false,
    secureAggregation: true,
    clipping: true,
    initialGlobal: peftInit,
    clientPart: (part, options) => sameRank("layerwise", part, options),
    combine: factorMean,
};
