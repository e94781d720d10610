// Server-side aggregation of one round's client adapters, all in base numbering (align.ts): the
// checks and clipping every method shares, then the method's own steps (strategy/: one file per
// method, their shared math in strategy/aggregate.ts).
import type {LoraAdapter, LoraTensor} from "../../train/adapter.js";
import {parseLoraTensorName, toClientNumbering, type AdapterLayout} from "./align.js";
import {clipUpdates} from "./strategy/aggregate.js";
import {strategyFor, type AggregationMethod, type ClientUpdate, type ClipRecord, type Strategy, type TargetAggregation} from "./strategy/index.js";

export {aggregationMethods, strategies, strategyFor} from "./strategy/index.js";
export type {AggregationMethod, ClientUpdate, Strategy, TargetAggregation} from "./strategy/index.js";

export interface AggregateOptions {
    method: AggregationMethod;
    /** Update-norm clipping: a client's whole update (its adapter minus the previous global's part) is
     * scaled down to this L2 norm when longer (layerwise and fedavg). */
    clipNorm?: number;
}

export interface AggregateResult {
    adapter: LoraAdapter;
    targets: TargetAggregation[];
    /** Per client: its update norm before clipping, and the factor applied (1: not clipped). */
    clipping: ClipRecord[];
}

function checkUpdates(previous: LoraAdapter, updates: ClientUpdate[], strategy: Strategy): void {
    if (updates.length === 0)
        throw new Error("aggregation needs at least one client update");
    const names = new Set<string>();
    for (const u of updates) {
        if (names.has(u.client))
            throw new Error(`client ${u.client} appears twice in the round`);
        names.add(u.client);
        if (!Number.isFinite(u.weight) || u.weight <= 0)
            throw new Error(`client ${u.client}: weight must be a positive number (got ${u.weight})`);
        if (u.adapter.architecture !== previous.architecture)
            throw new Error(`client ${u.client}: adapter for ${u.adapter.architecture}, the global one is ${previous.architecture}`);
        if (!strategy.mixedRanks && (u.adapter.r !== previous.r || u.adapter.alpha !== previous.alpha))
            throw new Error(`client ${u.client}: rank ${u.adapter.r} / alpha ${u.adapter.alpha} differ from the global adapter's ` +
                `${previous.r} / ${previous.alpha}; ${strategy.name} averages the factors, which needs one rank (use flexlora for mixed ranks)`);
    }
    if (strategy.sameLayers) {
        const first = updates[0].layerMap.join(",");
        const other = updates.find((u) => u.layerMap.join(",") !== first);
        if (other)
            throw new Error(`${strategy.name} is the homogeneous baseline: client ${updates[0].client} holds base layers [${first}], ` +
                `client ${other.client} holds [${other.layerMap.join(",")}]; use layerwise for clients of different depths`);
    }
}

/** Per adapted matrix (A and B together), the updates that hold it and their weight. */
function roundTargets(previous: LoraAdapter, updates: ClientUpdate[], byName: Map<string, LoraTensor>[]): TargetAggregation[] {
    const targets: TargetAggregation[] = [];
    const seen = new Set<string>();
    for (const prev of previous.tensors) {
        const p = parseLoraTensorName(prev.name);
        if (!p)
            throw new Error(`global adapter: tensor ${prev.name} is not a LoRA matrix`);
        if (seen.has(p.target))
            continue;
        seen.add(p.target);
        const holders = updates.map((_, k) => k).filter((k) => byName[k].has(prev.name));
        targets.push({target: p.target, layer: p.layer ?? null, holders: holders.map((k) => updates[k].client),
            weight: holders.reduce((s, k) => s + updates[k].weight, 0)});
    }
    return targets;
}

/** Aggregates one round: the new global adapter (base numbering, full depth) from the previous one and the updates. */
export function aggregate(previous: LoraAdapter, updates: ClientUpdate[], options: AggregateOptions): AggregateResult {
    const strategy = strategyFor(options.method);
    checkUpdates(previous, updates, strategy);
    let clipping: ClipRecord[] = updates.map((u) => ({client: u.client, norm: NaN, factor: 1}));
    if (options.clipNorm !== undefined) {
        if (!strategy.clipping)
            throw new Error(`update-norm clipping is implemented for layerwise and fedavg (factor averaging), not ${strategy.name}`);
        ({updates, clipping} = clipUpdates(previous, updates, options.clipNorm));
    }
    const byName = updates.map((u) => new Map(u.adapter.tensors.map((t) => [t.name, t])));
    const targets = roundTargets(previous, updates, byName);
    return {adapter: strategy.combine(previous, {updates, byName, targets}), targets, clipping};
}

/**
 * The initial global adapter of a federation. layerwise / fedavg: PEFT's init (A Kaiming-uniform,
 * B = 0) at rank r on every adapted base matrix. flexlora: ΔW = 0 at the global rank r with
 * alpha = r; clients get fresh A directions where ΔW has no rank (clientPart).
 */
export function initialGlobal(layout: AdapterLayout, method: AggregationMethod, r: number, loraAlpha: number, seed: number): LoraAdapter {
    return strategyFor(method).initialGlobal(layout, r, loraAlpha, seed);
}

export interface ClientPartOptions {
    method: AggregationMethod;
    /** The client's LoRA rank and alpha (flexlora re-factors to them; the others need the global's). */
    r: number;
    loraAlpha: number;
    /** Seeds the fresh A directions flexlora gives a client where the global ΔW has lower rank than r. */
    seed: number;
}

/** What a client starts its local round from: the global's part for its layers, in client numbering. */
export function clientPart(global: LoraAdapter, layerMap: number[], options: ClientPartOptions): LoraAdapter {
    return strategyFor(options.method).clientPart(toClientNumbering(global, layerMap), options);
}
