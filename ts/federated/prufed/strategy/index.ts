// PruFed's aggregation strategies, one file per method (Flower's server/strategy/ is the model):
// each says what it allows (mixed ranks, mixed depths, secure aggregation, clipping) and does its
// three steps (the initial global, a client's start, the round's combine); the shared math is
// aggregate.ts here, the round's checks and clipping ../aggregate.ts. A new method: copy fedavg.ts,
// add it to `strategies` and `aggregationMethods`.
import type {LoraAdapter, LoraTensor} from "../../../train/adapter.js";
import type {AdapterLayout} from "../align.js";
import {fedavg} from "./fedavg.js";
import {flexlora} from "./flexlora.js";
import {layerwise} from "./layerwise.js";
import {local} from "./local.js";

/** One client's validated update of a round. */
export interface ClientUpdate {
    client: string;
    /** Sample weight (e.g. the client's number of training items). */
    weight: number;
    /** Base layer of each client layer. */
    layerMap: number[];
    /** The client's adapter in base numbering (validateUpload's output): only its layers. */
    adapter: LoraAdapter;
}

/** What happened to one adapted matrix (A and B together). */
export interface TargetAggregation {
    target: string;
    /** Base layer, null for non-layer tensors. */
    layer: number | null;
    /** Clients whose update entered, in update order; empty: the previous value was kept. */
    holders: string[];
    /** Sum of the holders' weights. */
    weight: number;
}

/** One client's update norm before clipping, and the factor applied (1: not clipped). */
export interface ClipRecord {client: string; norm: number; factor: number}

/** A round's checked (and clipped) updates, each's tensors by name, and the per-matrix holders. */
export interface RoundUpdates {
    updates: ClientUpdate[];
    byName: Map<string, LoraTensor>[];
    targets: TargetAggregation[];
}

/** The client's own rank and alpha, and a seed for the fresh directions a re-factoring may need. */
export interface ClientPartOptions {
    r: number;
    loraAlpha: number;
    seed: number;
}

/** An aggregation method: what it allows, and its steps. */
export interface Strategy {
    readonly name: string;
    /** False for the no-federation baseline: every client keeps training its own adapter. */
    readonly federated: boolean;
    /** The method the federation server runs for it (itself, or for `local` the start every client shares). */
    readonly serverAggregation: AggregationMethod;
    /** Clients may train at other ranks than the global one (the server re-factors per client). */
    readonly mixedRanks: boolean;
    /** Every client of a round must hold the same layers (a homogeneous baseline). */
    readonly sameLayers: boolean;
    /** The combine is a weighted sum of per-layer factors, so masked sums (secure aggregation) compute it. */
    readonly secureAggregation: boolean;
    /** Update-norm clipping applies (the combine averages the clipped factors). */
    readonly clipping: boolean;
    /** The federation's first global adapter (base numbering, full depth). */
    initialGlobal(layout: AdapterLayout, r: number, loraAlpha: number, seed: number): LoraAdapter;
    /** What a client starts its round from, given the global's part for its layers (client numbering). */
    clientPart(part: LoraAdapter, options: ClientPartOptions): LoraAdapter;
    /** The round's new global adapter from the previous one and the checked updates. */
    combine(previous: LoraAdapter, round: RoundUpdates): LoraAdapter;
}

/** The names of PruFed's aggregation methods. */
export const aggregationMethods = ["layerwise", "fedavg", "flexlora"] as const;
export type AggregationMethod = (typeof aggregationMethods)[number];

/** Every strategy by name: the aggregation methods and the `local` baseline (`fl simulate` only). */
export const strategies: Readonly<Record<AggregationMethod | "local", Strategy>> = {layerwise, fedavg, flexlora, local};

/** The strategy of a method name; a RangeError naming the choices for any other string. */
export function strategyFor(name: string): Strategy {
    const s = Object.hasOwn(strategies, name) ? strategies[name as keyof typeof strategies] : undefined;
    if (!s)
        throw new RangeError(`aggregation must be one of ${Object.keys(strategies).join(", ")} (got ${name})`);
    return s;
}
