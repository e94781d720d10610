// local: the baseline without federation (`fl simulate` only): every client starts from layerwise's
// initial global part and then continues from its own last adapter; nothing is combined.
import type {Strategy} from "./index.js";
import {layerwise} from "./layerwise.js";

export const local: Strategy = {
    name: "local",
    federated: false,
    serverAggregation: "layerwise",
    mixedRanks: false,
    sameLayers: false,
    secureAggregation: false,
    clipping: false,
    initialGlobal: (...args) => layerwise.initialGlobal(...args),
    clientPart: (part, options) => layerwise.clientPart(part, options),
    combine() { throw new Error("local trains each client alone: there is no round to combine"); },
};
