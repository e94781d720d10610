// Aggregation checked against independent double-precision computations written plainly here:
// random adapters on an invented layout, clients holding overlapping subsets of the base layers,
// unequal weights, and (flexlora) unequal ranks.
import test from "ava";
import type {LoraAdapter} from "../../../ts/train/adapter.js";
import {Random} from "../../../ts/random.js";
import {toClientNumbering, UploadRejected, validateUpload, type AdapterLayout} from "../../../ts/federated/prufed/align.js";
import {aggregate, clientPart, initialGlobal, type ClientUpdate} from "../../../ts/federated/prufed/aggregate.js";

const modules = [{rest: "attn_q.weight", nIn: 12, nOut: 10}, {rest: "ffn_down.weight", nIn: 7, nOut: 12}];
const layout: AdapterLayout = {
    architecture: "llama",
    layers: 5,
    targets: Array.from({length: 5}, (_, l) => modules.map((m) => ({name: `blk.${l}.${m.rest}`, layer: l, rest: m.rest, nIn: m.nIn, nOut: m.nOut}))).flat(),
};

/** A client adapter in client numbering with values uniform in ±1. */
function randomClientAdapter(layerMap: number[], r: number, alpha: number, seed: number): LoraAdapter {
    const rng = new Random(seed);
    const tensors = [];
    for (let k = 0; k < layerMap.length; k++)
        for (const m of modules) {
            const a = Float32Array.from({length: m.nIn * r}, () => 2 * rng.nextDouble() - 1);
            const b = Float32Array.from({length: r * m.nOut}, () => 2 * rng.nextDouble() - 1);
            tensors.push({name: `blk.${k}.${m.rest}.lora_a`, shape: [m.nIn, r] as [number, number], data: a});
            tensors.push({name: `blk.${k}.${m.rest}.lora_b`, shape: [r, m.nOut] as [number, number], data: b});
        }
    return {architecture: "llama", alpha, r, tensors};
}

const clients = [
    {client: "full", layerMap: [0, 1, 2, 3, 4], weight: 30},
    {client: "four", layerMap: [0, 1, 2, 3], weight: 10},
    {client: "alt", layerMap: [0, 2, 4], weight: 25},
];

function updatesOf(specs: typeof clients, r: number[], alpha: number[]): {updates: ClientUpdate[]; raw: LoraAdapter[]} {
    const raw = specs.map((c, i) => randomClientAdapter(c.layerMap, r[i], alpha[i], 100 + i));
    const updates = specs.map((c, i) => ({client: c.client, weight: c.weight, layerMap: c.layerMap,
        adapter: validateUpload(raw[i], layout, {layerMap: c.layerMap, r: r[i]})}));
    return {updates, raw};
}

test("layerwise: each base layer is the weighted mean over the clients that kept it; unheld layers keep their value", (t) => {
    const previous = initialGlobal(layout, "layerwise", 4, 8, 1);
    const specs = [clients[1], clients[2]];  // base layer 4 held by "alt" only; layer 3 by "four" only; 1 by "four" only
    const {updates, raw} = updatesOf(specs, [4, 4], [8, 8]);
    const result = aggregate(previous, updates, {method: "layerwise"});
    let checked = 0;
    for (const prev of previous.tensors) {
        const layer = Number(/^blk\.(\d+)\./.exec(prev.name)![1]);
        const rest = prev.name.slice(`blk.${layer}.`.length);
        // independent: find each client's tensor by its own numbering
        let num: number[] = new Array(prev.data.length).fill(0), den = 0;
        specs.forEach((c, i) => {
            const k = c.layerMap.indexOf(layer);
            if (k < 0)
                return;
            const x = raw[i].tensors.find((tt) => tt.name === `blk.${k}.${rest}`)!.data;
            num = num.map((v, j) => v + c.weight * x[j]);
            den += c.weight;
        });
        const got = result.adapter.tensors.find((tt) => tt.name === prev.name)!.data;
        for (let j = 0; j < got.length; j++) {
            const want = den > 0 ? num[j] / den : prev.data[j];
            t.true(Math.abs(got[j] - want) <= 1e-6 * (1 + Math.abs(want)), `${prev.name}[${j}]: ${got[j]} vs ${want}`);
        }
        checked++;
    }
    t.is(checked, previous.tensors.length);
    const l4 = result.targets.find((x) => x.target === "blk.4.attn_q.weight")!;
    t.deepEqual(l4.holders, ["alt"]);
    const l0 = result.targets.find((x) => x.target === "blk.0.attn_q.weight")!;
    t.deepEqual(l0.holders, ["four", "alt"]);
    t.is(l0.weight, 35);
    // base layer 1 and 3: only "four"; the global equals its values exactly
    const four3 = raw[0].tensors.find((x) => x.name === "blk.3.ffn_down.weight.lora_b")!.data;
    t.deepEqual(Array.from(result.adapter.tensors.find((x) => x.name === "blk.3.ffn_down.weight.lora_b")!.data), Array.from(four3));
});

test("layerwise: a layer no client of the round holds keeps its previous value bit for bit", (t) => {
    const previous = initialGlobal(layout, "layerwise", 4, 8, 2);
    const {updates} = updatesOf([clients[1]], [4], [8]);
    const result = aggregate(previous, updates, {method: "layerwise"});
    for (const name of ["blk.4.attn_q.weight.lora_a", "blk.4.ffn_down.weight.lora_b"]) {
        t.deepEqual(result.adapter.tensors.find((x) => x.name === name)!.data, previous.tensors.find((x) => x.name === name)!.data);
    }
    t.deepEqual(result.targets.find((x) => x.target === "blk.4.attn_q.weight")!.holders, []);
});

test("update-norm clipping scales each client's update to the bound before averaging", (t) => {
    const previous = initialGlobal(layout, "layerwise", 4, 8, 3);
    const {updates} = updatesOf(clients, [4, 4, 4], [8, 8, 8]);
    const clip = 2;
    const result = aggregate(previous, updates, {method: "layerwise", clipNorm: clip});
    const prev = new Map(previous.tensors.map((x) => [x.name, x.data]));
    // plain: norm of each update, factor, then the weighted mean of prev + factor * (x - prev)
    const factors = updates.map((u) => {
        let s = 0;
        for (const x of u.adapter.tensors)
            x.data.forEach((v, j) => (s += (v - prev.get(x.name)![j]) ** 2));
        return Math.min(1, clip / Math.sqrt(s));
    });
    t.true(factors.every((f) => f < 1), "random updates are longer than the bound");
    result.clipping.forEach((c, i) => t.true(Math.abs(c.factor - factors[i]) < 1e-12));
    const name = "blk.0.attn_q.weight.lora_b";
    const got = result.adapter.tensors.find((x) => x.name === name)!.data;
    for (let j = 0; j < got.length; j++) {
        let num = 0, den = 0;
        updates.forEach((u, i) => {
            const x = u.adapter.tensors.find((tt) => tt.name === name)!.data[j], p = prev.get(name)![j];
            num += u.weight * (p + factors[i] * (x - p));
            den += u.weight;
        });
        t.true(Math.abs(got[j] - num / den) < 1e-6);
    }
});

test("fedavg refuses clients of different depths and averages clients of one depth", (t) => {
    const previous = initialGlobal(layout, "fedavg", 4, 8, 4);
    const mixed = updatesOf(clients, [4, 4, 4], [8, 8, 8]);
    t.throws(() => aggregate(previous, mixed.updates, {method: "fedavg"}), {message: /homogeneous baseline.*layerwise/});
    const same = [clients[1], {...clients[1], client: "four-b", weight: 5}];
    const {updates, raw} = updatesOf(same, [4, 4], [8, 8]);
    const result = aggregate(previous, updates, {method: "fedavg"});
    const got = result.adapter.tensors.find((x) => x.name === "blk.2.attn_q.weight.lora_a")!.data;
    const x0 = raw[0].tensors.find((x) => x.name === "blk.2.attn_q.weight.lora_a")!.data;
    const x1 = raw[1].tensors.find((x) => x.name === "blk.2.attn_q.weight.lora_a")!.data;
    got.forEach((v, j) => t.true(Math.abs(v - (10 * x0[j] + 5 * x1[j]) / 15) < 1e-6));
});

// ---- flexlora against a plain dense computation and power-iteration SVD ----

/** Dense ΔW (nOut×nIn, row-major, double) = scale·B·A from ggml-ordered factors. */
function denseDelta(a: Float32Array, b: Float32Array, r: number, nIn: number, nOut: number, scale: number): Float64Array {
    const w = new Float64Array(nOut * nIn);
    for (let o = 0; o < nOut; o++)
        for (let c = 0; c < nIn; c++) {
            let s = 0;
            for (let j = 0; j < r; j++)
                s += b[o * r + j] * a[j * nIn + c];
            w[o * nIn + c] = scale * s;
        }
    return w;
}

/** Best rank-k approximation of W (m×n) by power iteration with deflation. */
function powerTruncate(w: Float64Array, m: number, n: number, k: number): Float64Array {
    const rest = Float64Array.from(w);
    const out = new Float64Array(m * n);
    const rng = new Random(99);
    for (let q = 0; q < k; q++) {
        let v = Float64Array.from({length: n}, () => rng.nextDouble() - 0.5);
        let u = new Float64Array(m), sigma = 0;
        for (let it = 0; it < 3000; it++) {
            u = new Float64Array(m);
            for (let i = 0; i < m; i++)
                for (let j = 0; j < n; j++)
                    u[i] += rest[i * n + j] * v[j];
            const un = Math.hypot(...u);
            u = u.map((x) => x / un);
            const nv = new Float64Array(n);
            for (let i = 0; i < m; i++)
                for (let j = 0; j < n; j++)
                    nv[j] += rest[i * n + j] * u[i];
            sigma = Math.hypot(...nv);
            v = nv.map((x) => x / sigma);
        }
        for (let i = 0; i < m; i++)
            for (let j = 0; j < n; j++) {
                out[i * n + j] += sigma * u[i] * v[j];
                rest[i * n + j] -= sigma * u[i] * v[j];
            }
    }
    return out;
}

test("flexlora: each client gets the weighted mean of ΔW truncated to its own rank", (t) => {
    const ranks = [2, 3, 4], alphas = [4, 6, 16];
    const previous = initialGlobal(layout, "flexlora", 4, 4, 5);
    const {updates, raw} = updatesOf(clients, ranks, alphas);
    const result = aggregate(previous, updates, {method: "flexlora"});
    t.is(result.adapter.r, 4);
    for (const target of ["blk.0.attn_q.weight", "blk.2.ffn_down.weight", "blk.3.attn_q.weight"]) {
        const layer = Number(target.split(".")[1]);
        const rest = target.slice(`blk.${layer}.`.length);
        const m = modules.find((x) => x.rest === rest)!;
        // plain weighted mean of the holders' ΔW
        const mean = new Float64Array(m.nOut * m.nIn);
        let den = 0;
        clients.forEach((c, i) => {
            const k = c.layerMap.indexOf(layer);
            if (k < 0)
                return;
            const a = raw[i].tensors.find((x) => x.name === `blk.${k}.${rest}.lora_a`)!.data;
            const b = raw[i].tensors.find((x) => x.name === `blk.${k}.${rest}.lora_b`)!.data;
            const d = denseDelta(a, b, ranks[i], m.nIn, m.nOut, alphas[i] / ranks[i]);
            d.forEach((v, j) => (mean[j] += c.weight * v));
            den += c.weight;
        });
        mean.forEach((_, j) => (mean[j] /= den));
        for (const [i, c] of clients.entries()) {
            const k = c.layerMap.indexOf(layer);
            if (k < 0)
                continue;
            const part = clientPart(result.adapter, c.layerMap, {method: "flexlora", r: ranks[i], loraAlpha: alphas[i], seed: 1});
            t.is(part.r, ranks[i]);
            const a = part.tensors.find((x) => x.name === `blk.${k}.${rest}.lora_a`)!;
            const b = part.tensors.find((x) => x.name === `blk.${k}.${rest}.lora_b`)!;
            t.deepEqual(a.shape, [m.nIn, ranks[i]]);
            const got = denseDelta(a.data, b.data, ranks[i], m.nIn, m.nOut, alphas[i] / ranks[i]);
            const want = powerTruncate(mean, m.nOut, m.nIn, ranks[i]);
            let err = 0, norm = 0;
            want.forEach((v, j) => {
                err = Math.max(err, Math.abs(got[j] - v));
                norm = Math.max(norm, Math.abs(v));
            });
            t.true(err <= 1e-5 * norm, `${target} client ${c.client} (r ${ranks[i]}): max err ${err} (scale ${norm})`);
        }
    }
    // layer 4 held by full and alt only; a rank-4 global of a mean of ranks 2 and 4 (rank ≤ 6) is a true truncation
    t.deepEqual(result.targets.find((x) => x.target === "blk.4.attn_q.weight")!.holders, ["full", "alt"]);
});

test("flexlora: where the global ΔW has no rank yet, a client gets B = 0 and fresh trainable A rows", (t) => {
    const global = initialGlobal(layout, "flexlora", 4, 4, 6);
    const part = clientPart(global, [0, 2], {method: "flexlora", r: 3, loraAlpha: 6, seed: 7});
    const a = part.tensors.find((x) => x.name === "blk.1.attn_q.weight.lora_a")!;
    const b = part.tensors.find((x) => x.name === "blk.1.attn_q.weight.lora_b")!;
    t.true(b.data.every((x) => x === 0));
    t.true(a.data.some((x) => x !== 0));
    t.true(a.data.every((x) => Math.abs(x) <= 1 / Math.sqrt(12)));
    t.is(part.tensors.length, 2 * 2 * modules.length);
});

// ---- upload validation ----

test("uploads with NaN, wrong shapes, layers not held, missing tensors or another rank are rejected with a reason", (t) => {
    const layerMap = [0, 2, 4];
    const good = () => randomClientAdapter(layerMap, 4, 8, 11);
    t.notThrows(() => validateUpload(good(), layout, {layerMap, r: 4}));
    const reject = (a: LoraAdapter, reason: UploadRejected["reason"], message: RegExp, r = 4) => {
        const err = t.throws(() => validateUpload(a, layout, {layerMap, r}), {instanceOf: UploadRejected});
        t.is(err?.reason, reason);
        t.regex(err!.message, message);
    };
    const nan = good();
    nan.tensors[3].data[5] = NaN;
    reject(nan, "nonfinite", /blk\.0\.ffn_down\.weight\.lora_b\b.*element 5 is NaN/);
    const inf = good();
    inf.tensors[0].data[0] = Infinity;
    reject(inf, "nonfinite", /Infinity/);
    const big = good();
    big.tensors[0].data[0] = 1e9;
    reject(big, "magnitude", /beyond/);
    const shape = good();
    shape.tensors[2] = {...shape.tensors[2], shape: [8, 4], data: new Float32Array(32)};
    reject(shape, "shape", /blk\.0\.ffn_down\.weight\.lora_a: shape \[8, 4\], expected \[7, 4\]/);
    const extra = good();
    extra.tensors.push({name: "blk.3.attn_q.weight.lora_a", shape: [12, 4], data: new Float32Array(48)});
    reject(extra, "layer", /layer 3 is not held by this client \(it declared 3 layers\)/);
    const missing = good();
    missing.tensors.pop();
    reject(missing, "missing", /blk\.4\.ffn_down\.weight\.lora_b .*missing/);
    reject(good(), "rank", /declared r = 2/, 2);
    const alpha = t.throws(() => validateUpload(good(), layout, {layerMap, r: 4, loraAlpha: 16}), {instanceOf: UploadRejected});
    t.is(alpha?.reason, "alpha");
    const foreign = good();
    foreign.tensors[0] = {...foreign.tensors[0], name: "blk.0.attn_k.weight.lora_a"};
    reject(foreign, "tensor", /not adapted/);
    t.throws(() => validateUpload(good(), layout, {layerMap: [0, 7], r: 4}), {message: /outside the base model's 5 layers/});
});

test("client numbering round-trips through base numbering", (t) => {
    const layerMap = [1, 3, 4];
    const a = randomClientAdapter(layerMap, 2, 4, 12);
    const base = validateUpload(a, layout, {layerMap, r: 2});
    t.deepEqual(base.tensors.map((x) => x.name).filter((n) => n.includes("attn_q.weight.lora_a")),
        ["blk.1.attn_q.weight.lora_a", "blk.3.attn_q.weight.lora_a", "blk.4.attn_q.weight.lora_a"]);
    const back = toClientNumbering(base, layerMap);
    t.deepEqual(back.tensors.map((x) => x.name).sort(), a.tensors.map((x) => x.name).sort());
    for (const x of back.tensors)
        t.deepEqual(x.data, a.tensors.find((y) => y.name === x.name)!.data);
});
