// fedavg: the homogeneous baseline, layerwise's mean, refused unless every client holds the same layers.
import {factorMean, peftInit, sameRank} from "./aggregate.js";
import type {Strategy} from "./index.js";

export const fedavg: Strategy = {
    name: "fedavg",
    federated: true,
    serverAggregation: "fedavg",
    mixedRanks: false,
    sameLayers: true,
    secureAggregation: true,
    clipping: true,
    initialGlobal: peftInit,
    clientPart: (part, options) => sameRank("fedavg", part, options),
    combine: factorMean,
};
