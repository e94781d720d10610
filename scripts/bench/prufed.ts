// Benchmark: PruFed server-side aggregation throughput, in MB/s of client adapters read, against a
// plain memory copy of the same bytes (Float32Array.set) in the same run. Adapters are random F32
// LoRA matrices (r 8, 7 projections) of a LLaMA-shaped base (n_embd 2048, n_ff 5504, 16 layers),
// three clients of depths 16, 12 and 8 (top-layer pruning). Also: flexlora (QR + Jacobi SVD per
// matrix) and secure aggregation (X25519, AES-CTR masks, Shamir), each as MB/s of the same input.
//
//   node dist/scripts/bench/prufed.js [--embd 2048] [--ff 5504] [--layers 16] [--r 8] [--reps 3]
import {Random} from "../../ts/random.js";
import type {LoraAdapter} from "../../ts/train/adapter.js";
import type {AdapterLayout} from "../../ts/federated/prufed/align.js";
import {aggregate, initialGlobal, type AggregationMethod, type ClientUpdate} from "../../ts/federated/prufed/aggregate.js";
import {secureAggregateRound} from "../../ts/federated/prufed/secure.js";

const arg = (name: string, def: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : def;
};
const embd = Number(arg("--embd", "2048")), ff = Number(arg("--ff", "5504")), layers = Number(arg("--layers", "16"));
const r = Number(arg("--r", "8")), reps = Number(arg("--reps", "3"));
const shapes: [string, number, number][] = [["attn_q", embd, embd], ["attn_k", embd, embd], ["attn_v", embd, embd], ["attn_output", embd, embd],
    ["ffn_gate", embd, ff], ["ffn_up", embd, ff], ["ffn_down", ff, embd]];
const layout: AdapterLayout = {
    architecture: "llama", layers,
    targets: Array.from({length: layers}, (_, l) => shapes.map(([m, nIn, nOut]) => ({name: `blk.${l}.${m}.weight`, layer: l, rest: `${m}.weight`, nIn, nOut}))).flat(),
};

function clientAdapter(depth: number, seed: number): LoraAdapter {
    const rng = new Random(seed);
    const tensors = layout.targets.filter((t) => t.layer! < depth).flatMap((t) => [
        {name: `${t.name}.lora_a`, shape: [t.nIn, r] as [number, number], data: Float32Array.from({length: t.nIn * r}, () => rng.nextDouble() - 0.5)},
        {name: `${t.name}.lora_b`, shape: [r, t.nOut] as [number, number], data: Float32Array.from({length: r * t.nOut}, () => 0.01 * (rng.nextDouble() - 0.5))},
    ]);
    return {architecture: "llama", alpha: 16, r, tensors};
}

const depths = [layers, Math.round(layers * 0.75), Math.round(layers * 0.5)];
const updates: ClientUpdate[] = depths.map((d, i) => ({client: `c${i}`, weight: 10 + 5 * i, layerMap: Array.from({length: d}, (_, k) => k),
    adapter: clientAdapter(d, i + 1)}));
const inputBytes = updates.reduce((s, u) => s + u.adapter.tensors.reduce((a, t) => a + t.data.byteLength, 0), 0);
const mb = inputBytes / 1e6;

function best(fn: () => void, n = reps): number {
    let min = Infinity;
    for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        fn();
        min = Math.min(min, (performance.now() - t0) / 1000);
    }
    return min;
}

// anchor: copy every input matrix once into preallocated destinations
const dest = updates.flatMap((u) => u.adapter.tensors.map((t) => new Float32Array(t.data.length)));
const copySeconds = best(() => {
    let k = 0;
    for (const u of updates)
        for (const t of u.adapter.tensors)
            dest[k++].set(t.data);
});
const rows: {what: string; seconds: number}[] = [{what: "memory copy (Float32Array.set)", seconds: copySeconds}];
for (const method of ["layerwise"] as AggregationMethod[]) {
    const previous = initialGlobal(layout, method, r, 16, 1);
    rows.push({what: `${method} aggregate`, seconds: best(() => aggregate(previous, updates, {method}))});
    rows.push({what: `${method} aggregate + clip`, seconds: best(() => aggregate(previous, updates, {method, clipNorm: 1}))});
}
const flexPrev = initialGlobal(layout, "flexlora", r, r, 1);
rows.push({what: "flexlora aggregate (QR + Jacobi SVD)", seconds: best(() => aggregate(flexPrev, updates, {method: "flexlora"}), 1)});
const securePrev = initialGlobal(layout, "layerwise", r, 16, 1);
const participants = updates.map((u) => ({id: u.client, weight: u.weight, layerMap: u.layerMap, adapter: u.adapter}));
rows.push({what: "secure aggregation (all clients and server, one process)", seconds: best(() => secureAggregateRound(securePrev, participants, {round: 1}), 1)});

console.log(`input: ${updates.length} client adapters (depths ${depths.join(", ")} of ${layers}; n_embd ${embd}, n_ff ${ff}, r ${r}), ${mb.toFixed(1)} MB`);
console.log("| operation | seconds | MB/s | vs copy |");
console.log("|---|---|---|---|");
for (const row of rows)
    console.log(`| ${row.what} | ${row.seconds.toFixed(4)} | ${(mb / row.seconds).toFixed(0)} | ${(copySeconds / row.seconds).toFixed(3)}× |`);
