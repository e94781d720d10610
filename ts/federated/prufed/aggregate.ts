// Server-side aggregation of one round's client adapters, all in base numbering (align.ts):
//   layerwise (PruFed): each tensor of base layer i is the weighted mean over the clients that kept
//     layer i, the weights renormalised over those holders; a layer no client of the round holds
//     keeps its previous value; non-layer tensors are averaged over every client;
//   fedavg: the homogeneous baseline, the same mean, refused unless every client has the same layers;
//   flexlora: per adapted matrix the weighted mean of the clients' ΔW = (alpha/r)·B·A, kept as a
//     truncated SVD at the global rank (alpha = r, scale 1); each client receives it re-factored to
//     its own rank (clientPart), so clients may differ in rank.
// Matrices are stored as Float32, accumulated in double.
import type {LoraAdapter, LoraTensor} from "../../train/adapter.js";
import {deriveSeed, Random} from "../../random.js";
import {parseLoraTensorName, toClientNumbering, type AdapterLayout} from "./align.js";
import {matrix, productSvd, type Matrix} from "./linalg.js";

export const aggregationMethods = ["layerwise", "fedavg", "flexlora"] as const;
export type AggregationMethod = (typeof aggregationMethods)[number];

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

export interface AggregateOptions {
    method: AggregationMethod;
    /** Update-norm clipping: a client's whole update (its adapter minus the previous global's part) is
     * scaled down to this L2 norm when longer (layerwise and fedavg). */
    clipNorm?: number;
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

export interface AggregateResult {
    adapter: LoraAdapter;
    targets: TargetAggregation[];
    /** Per client: its update norm before clipping, and the factor applied (1: not clipped). */
    clipping: {client: string; norm: number; factor: number}[];
}

function checkUpdates(previous: LoraAdapter, updates: ClientUpdate[], method: AggregationMethod): void {
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
        if (method !== "flexlora" && (u.adapter.r !== previous.r || u.adapter.alpha !== previous.alpha))
            throw new Error(`client ${u.client}: rank ${u.adapter.r} / alpha ${u.adapter.alpha} differ from the global adapter's ` +
                `${previous.r} / ${previous.alpha}; ${method} averages the factors, which needs one rank (use flexlora for mixed ranks)`);
    }
    if (method === "fedavg") {
        const first = updates[0].layerMap.join(",");
        const other = updates.find((u) => u.layerMap.join(",") !== first);
        if (other)
            throw new Error(`fedavg is the homogeneous baseline: client ${updates[0].client} holds base layers [${first}], ` +
                `client ${other.client} holds [${other.layerMap.join(",")}]; use layerwise for clients of different depths`);
    }
}

/** Scales each update (minus the previous global) to at most clipNorm; returns the clipped copies. */
function clipUpdates(previous: LoraAdapter, updates: ClientUpdate[], clipNorm: number): {updates: ClientUpdate[]; clipping: AggregateResult["clipping"]} {
    if (!Number.isFinite(clipNorm) || clipNorm <= 0)
        throw new RangeError(`clipNorm must be a positive number (got ${clipNorm})`);
    const prev = new Map(previous.tensors.map((t) => [t.name, t.data]));
    const clipping: AggregateResult["clipping"] = [];
    const out = updates.map((u) => {
        let sq = 0;
        for (const t of u.adapter.tensors) {
            const p = prev.get(t.name)!, x = t.data;
            for (let i = 0; i < x.length; i++) {
                const d = x[i] - p[i];
                sq += d * d;
            }
        }
        const norm = Math.sqrt(sq);
        const factor = norm > clipNorm ? clipNorm / norm : 1;
        clipping.push({client: u.client, norm, factor});
        if (factor === 1)
            return u;
        const tensors = u.adapter.tensors.map((t) => {
            const p = prev.get(t.name)!, x = t.data;
            const data = new Float32Array(x.length);
            for (let i = 0; i < data.length; i++)
                data[i] = p[i] + factor * (x[i] - p[i]);
            return {...t, data};
        });
        return {...u, adapter: {...u.adapter, tensors}};
    });
    return {updates: out, clipping};
}

/** Aggregates one round: the new global adapter (base numbering, full depth) from the previous one and the updates. */
export function aggregate(previous: LoraAdapter, updates: ClientUpdate[], options: AggregateOptions): AggregateResult {
    checkUpdates(previous, updates, options.method);
    let clipping: AggregateResult["clipping"] = updates.map((u) => ({client: u.client, norm: NaN, factor: 1}));
    if (options.clipNorm !== undefined) {
        if (options.method === "flexlora")
            throw new Error("update-norm clipping is implemented for layerwise and fedavg (factor averaging), not flexlora");
        ({updates, clipping} = clipUpdates(previous, updates, options.clipNorm));
    }
    const byName = updates.map((u) => new Map(u.adapter.tensors.map((t) => [t.name, t])));
    const targets: TargetAggregation[] = [];
    const tensors: LoraTensor[] = [];
    const seen = new Set<string>();
    for (const prev of previous.tensors) {
        const p = parseLoraTensorName(prev.name);
        if (!p)
            throw new Error(`global adapter: tensor ${prev.name} is not a LoRA matrix`);
        const holders = updates.map((_, k) => k).filter((k) => byName[k].has(prev.name));
        if (!seen.has(p.target)) {
            seen.add(p.target);
            targets.push({target: p.target, layer: p.layer ?? null, holders: holders.map((k) => updates[k].client),
                weight: holders.reduce((s, k) => s + updates[k].weight, 0)});
        }
        if (options.method === "flexlora")
            continue;
        if (holders.length === 0) {
            tensors.push(prev);
            continue;
        }
        tensors.push({name: prev.name, shape: prev.shape, data: weightedMean(holders.map((k) => byName[k].get(prev.name)!.data),
            holders.map((k) => updates[k].weight))});
    }
    if (options.method === "flexlora")
        return {adapter: flexAggregate(previous, updates, byName, targets), targets, clipping};
    return {adapter: {...previous, tensors}, targets, clipping};
}

/**
 * Σ w_k x_k / Σ w_k per element, accumulated in double (one pass over the elements, the holders in
 * the inner loop: the sum stays in a register); stored as Float32.
 */
export function weightedMean(xs: Float32Array[], weights: number[]): Float32Array {
    const total = weights.reduce((s, w) => s + w, 0);
    const p = weights.map((w) => w / total);
    const n = xs[0].length;
    const out = new Float32Array(n);
    if (xs.length === 1) {
        out.set(xs[0]);
    } else if (xs.length === 2) {
        const [a, b] = xs, [pa, pb] = p;
        for (let i = 0; i < n; i++)
            out[i] = pa * a[i] + pb * b[i];
    } else if (xs.length === 3) {
        const [a, b, c] = xs, [pa, pb, pc] = p;
        for (let i = 0; i < n; i++)
            out[i] = pa * a[i] + pb * b[i] + pc * c[i];
    } else {
        for (let i = 0; i < n; i++) {
            let s = 0;
            for (let k = 0; k < xs.length; k++)
                s += p[k] * xs[k][i];
            out[i] = s;
        }
    }
    return out;
}

// ---- FlexLoRA ----

/** B (ggml [r, nOut]) as an nOut×r matrix times `scale`. */
function bMatrix(t: LoraTensor, scale: number): Matrix {
    const [r, nOut] = t.shape;
    const m = matrix(nOut, r);
    for (let i = 0; i < m.data.length; i++)
        m.data[i] = scale * t.data[i];
    return m;
}

/** Factors of a rank-k SVD split evenly, B = U·√(s/scale), A = √(s/scale)·Vᵀ, padded to rank r (zero B columns). */
function splitFactors(u: Matrix, s: Float64Array, v: Matrix, r: number, scale: number): {a: Float32Array; b: Float32Array} {
    const nOut = u.rows, nIn = v.rows, k = s.length;
    const a = new Float32Array(nIn * r), b = new Float32Array(r * nOut);
    for (let j = 0; j < Math.min(k, r); j++) {
        const root = Math.sqrt(s[j] / scale);
        for (let o = 0; o < nOut; o++)
            b[o * r + j] = u.data[o * k + j] * root;
        for (let c = 0; c < nIn; c++)
            a[j * nIn + c] = v.data[c * k + j] * root;
    }
    return {a, b};
}

function flexAggregate(previous: LoraAdapter, updates: ClientUpdate[], byName: Map<string, LoraTensor>[], targets: TargetAggregation[]): LoraAdapter {
    const prevByName = new Map(previous.tensors.map((t) => [t.name, t]));
    const globalScale = previous.alpha / previous.r;
    const out = new Map<string, LoraTensor>();
    for (const target of targets) {
        const aName = `${target.target}.lora_a`, bName = `${target.target}.lora_b`;
        const prevA = prevByName.get(aName), prevB = prevByName.get(bName);
        if (!prevA || !prevB)
            throw new Error(`global adapter: ${target.target} lacks its A or B matrix`);
        if (target.holders.length === 0) {
            out.set(aName, prevA);
            out.set(bName, prevB);
            continue;
        }
        const holders = updates.map((_, k) => k).filter((k) => byName[k].has(aName));
        const nIn = prevA.shape[0], nOut = prevB.shape[1];
        const ranks = holders.map((k) => updates[k].adapter.r);
        const total = ranks.reduce((s, r) => s + r, 0);
        // ΔW = Σ p_k s_k B_k A_k = [p_1 s_1 B_1 | …] · [A_1; …]
        const u = matrix(nOut, total), v = matrix(total, nIn);
        let col = 0;
        for (const k of holders) {
            const {adapter, weight} = updates[k];
            const p = weight / target.weight, s = adapter.alpha / adapter.r;
            const b = bMatrix(byName[k].get(bName)!, p * s), a = byName[k].get(aName)!;
            for (let o = 0; o < nOut; o++)
                for (let j = 0; j < adapter.r; j++)
                    u.data[o * total + col + j] = b.data[o * adapter.r + j];
            for (let j = 0; j < adapter.r; j++)
                for (let c = 0; c < nIn; c++)
                    v.data[(col + j) * nIn + c] = a.data[j * nIn + c];
            col += adapter.r;
        }
        const svd = productSvd(u, v, previous.r);
        const {a, b} = splitFactors(svd.u, svd.s, svd.v, previous.r, globalScale);
        out.set(aName, {name: aName, shape: prevA.shape, data: a});
        out.set(bName, {name: bName, shape: prevB.shape, data: b});
    }
    return {...previous, tensors: previous.tensors.map((t) => out.get(t.name)!)};
}

/**
 * The initial global adapter of a federation. layerwise / fedavg: PEFT's init (A Kaiming-uniform,
 * B = 0) at rank r on every adapted base matrix. flexlora: ΔW = 0 at the global rank r with
 * alpha = r; clients get fresh A directions where ΔW has no rank (clientPart).
 */
export function initialGlobal(layout: AdapterLayout, method: AggregationMethod, r: number, loraAlpha: number, seed: number): LoraAdapter {
    const tensors: LoraTensor[] = [];
    for (const t of layout.targets) {
        tensors.push({name: `${t.name}.lora_a`, shape: [t.nIn, r], data: new Float32Array(t.nIn * r)});
        tensors.push({name: `${t.name}.lora_b`, shape: [r, t.nOut], data: new Float32Array(r * t.nOut)});
    }
    if (method === "flexlora")
        return {architecture: layout.architecture, alpha: r, r, tensors};
    for (const t of tensors)
        if (t.name.endsWith(".lora_a"))
            kaimingFill(t.data, t.shape[0], 0, t.shape[1], deriveSeed(seed, "lora_a", t.name.slice(0, -".lora_a".length)));
    return {architecture: layout.architecture, alpha: loraAlpha, r, tensors};
}

/** Rows [from, to) of an A matrix (rows of nIn) drawn as PEFT does: uniform in ±1/√nIn. */
function kaimingFill(a: Float32Array, nIn: number, from: number, to: number, seed: number): void {
    const rng = new Random(seed);
    const bound = 1 / Math.sqrt(nIn);
    for (let i = from * nIn; i < to * nIn; i++)
        a[i] = (2 * rng.nextDouble() - 1) * bound;
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
    if (options.method !== "flexlora") {
        if (options.r !== global.r || options.loraAlpha !== global.alpha)
            throw new Error(`the client's r = ${options.r}, lora_alpha = ${options.loraAlpha} differ from the global adapter's ` +
                `${global.r} / ${global.alpha}; ${options.method} needs one rank (flexlora allows mixed ranks)`);
        return toClientNumbering(global, layerMap);
    }
    const part = toClientNumbering(global, layerMap);
    const byName = new Map(part.tensors.map((t) => [t.name, t]));
    const tensors: LoraTensor[] = [];
    const scale = options.loraAlpha / options.r, globalScale = global.alpha / global.r;
    for (const t of part.tensors) {
        if (!t.name.endsWith(".lora_a"))
            continue;
        const target = t.name.slice(0, -".lora_a".length);
        const gA = t, gB = byName.get(`${target}.lora_b`)!;
        const nIn = gA.shape[0], nOut = gB.shape[1];
        const u = bMatrix(gB, globalScale), v = matrix(global.r, nIn, Float64Array.from(gA.data));
        const svd = productSvd(u, v, options.r);
        const {a, b} = splitFactors(svd.u, svd.s, svd.v, options.r, scale);
        // Directions beyond ΔW's rank: B = 0 keeps the product exact, a fresh A keeps them trainable.
        kaimingFill(a, nIn, svd.s.length, options.r, deriveSeed(options.seed, "flexlora-a", target));
        tensors.push({name: `${target}.lora_a`, shape: [nIn, options.r], data: a}, {name: `${target}.lora_b`, shape: [options.r, nOut], data: b});
    }
    return {architecture: global.architecture, alpha: options.loraAlpha, r: options.r, tensors};
}
