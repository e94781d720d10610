// The pure math of PruFed's aggregation strategies (no method names, no policy): weighted means of
// factors, update-norm clipping, FlexLoRA's ΔW merge and re-factoring, PEFT's A initialisation.
// Matrices are stored as Float32, accumulated in double.
import type {LoraAdapter, LoraTensor} from "../../../train/adapter.js";
import {deriveSeed, Random} from "../../../random.js";
import type {AdapterLayout} from "../align.js";
import {matrix, productSvd, type Matrix} from "../linalg.js";
import type {ClientPartOptions, ClientUpdate, ClipRecord, RoundUpdates} from "./index.js";

/** Scales each update (minus the previous global) to at most clipNorm; returns the clipped copies. */
export function clipUpdates(previous: LoraAdapter, updates: ClientUpdate[], clipNorm: number): {updates: ClientUpdate[]; clipping: ClipRecord[]} {
    if (!Number.isFinite(clipNorm) || clipNorm <= 0)
        throw new RangeError(`clipNorm must be a positive number (got ${clipNorm})`);
    const prev = new Map(previous.tensors.map((t) => [t.name, t.data]));
    const clipping: ClipRecord[] = [];
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

/** Each tensor the weighted mean over the updates that hold it; a tensor no update holds keeps its previous value. */
export function factorMean(previous: LoraAdapter, {updates, byName}: RoundUpdates): LoraAdapter {
    const tensors = previous.tensors.map((prev) => {
        const holders = updates.map((_, k) => k).filter((k) => byName[k].has(prev.name));
        if (holders.length === 0)
            return prev;
        return {name: prev.name, shape: prev.shape, data: weightedMean(holders.map((k) => byName[k].get(prev.name)!.data),
            holders.map((k) => updates[k].weight))};
    });
    return {...previous, tensors};
}

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

/**
 * Per adapted matrix the weighted mean of the holders' ΔW = (alpha/r)·B·A, kept as a truncated SVD
 * at the previous global's rank; a matrix no update holds keeps its previous factors.
 */
export function deltaMean(previous: LoraAdapter, {updates, byName, targets}: RoundUpdates): LoraAdapter {
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
 * An adapter's ΔW re-factored at rank r with alpha loraAlpha (truncated SVD split evenly); the
 * directions beyond ΔW's rank get B = 0 (the product stays exact) and a fresh A (they stay trainable).
 */
export function refactorToRank(part: LoraAdapter, r: number, loraAlpha: number, seed: number): LoraAdapter {
    const byName = new Map(part.tensors.map((t) => [t.name, t]));
    const tensors: LoraTensor[] = [];
    const scale = loraAlpha / r, partScale = part.alpha / part.r;
    for (const t of part.tensors) {
        if (!t.name.endsWith(".lora_a"))
            continue;
        const target = t.name.slice(0, -".lora_a".length);
        const gA = t, gB = byName.get(`${target}.lora_b`)!;
        const nIn = gA.shape[0], nOut = gB.shape[1];
        const u = bMatrix(gB, partScale), v = matrix(part.r, nIn, Float64Array.from(gA.data));
        const svd = productSvd(u, v, r);
        const {a, b} = splitFactors(svd.u, svd.s, svd.v, r, scale);
        kaimingFill(a, nIn, svd.s.length, r, deriveSeed(seed, "flexlora-a", target));
        tensors.push({name: `${target}.lora_a`, shape: [nIn, r], data: a}, {name: `${target}.lora_b`, shape: [r, nOut], data: b});
    }
    return {architecture: part.architecture, alpha: loraAlpha, r, tensors};
}

/** A client's start for the strategies that average factors: the global's part, refused at another rank or alpha. */
export function sameRank(method: string, part: LoraAdapter, options: ClientPartOptions): LoraAdapter {
    if (options.r !== part.r || options.loraAlpha !== part.alpha)
        throw new Error(`the client's r = ${options.r}, lora_alpha = ${options.loraAlpha} differ from the global adapter's ` +
            `${part.r} / ${part.alpha}; ${method} needs one rank (flexlora allows mixed ranks)`);
    return part;
}

/** An adapter of zeros at rank r on every adapted base matrix of the layout. */
export function zeroAdapter(layout: AdapterLayout, r: number, alpha: number): LoraAdapter {
    const tensors: LoraTensor[] = [];
    for (const t of layout.targets) {
        tensors.push({name: `${t.name}.lora_a`, shape: [t.nIn, r], data: new Float32Array(t.nIn * r)});
        tensors.push({name: `${t.name}.lora_b`, shape: [r, t.nOut], data: new Float32Array(r * t.nOut)});
    }
    return {architecture: layout.architecture, alpha, r, tensors};
}

/** PEFT's init: every A Kaiming-uniform (seeded per target), every B zero. */
export function peftInit(layout: AdapterLayout, r: number, loraAlpha: number, seed: number): LoraAdapter {
    const adapter = zeroAdapter(layout, r, loraAlpha);
    for (const t of adapter.tensors)
        if (t.name.endsWith(".lora_a"))
            kaimingFill(t.data, t.shape[0], 0, t.shape[1], deriveSeed(seed, "lora_a", t.name.slice(0, -".lora_a".length)));
    return adapter;
}

/** Rows [from, to) of an A matrix (rows of nIn) drawn as PEFT does: uniform in ±1/√nIn. */
function kaimingFill(a: Float32Array, nIn: number, from: number, to: number, seed: number): void {
    const rng = new Random(seed);
    const bound = 1 / Math.sqrt(nIn);
    for (let i = from * nIn; i < to * nIn; i++)
        a[i] = (2 * rng.nextDouble() - 1) * bound;
}
