import path from "node:path";
import test from "ava";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {parseScores, planPruning, strategyOrder} from "../../ts/prune/plan.js";
import {decodeTensor, rawTensors} from "../gguf-fixtures.js";
import {hasShared, stories260K, tempDir} from "../helpers.js";

test("position strategies: orders follow their definitions for every depth", (t) => {
    for (let n = 1; n <= 13; n++) {
        const all = Array.from({length: n}, (_, i) => i);
        t.deepEqual(strategyOrder("top", n), [...all].reverse());
        const even = strategyOrder("even", n);
        t.deepEqual(even, all.filter((i) => i % 2 === 0).sort((a, b) => b - a));
        t.deepEqual(strategyOrder("odd", n), all.filter((i) => i % 2 === 1).sort((a, b) => b - a));
        const sym = strategyOrder("symmetric", n);
        t.deepEqual([...sym].sort((a, b) => a - b), all, "a permutation");
        const centre = (n - 1) / 2;
        for (let i = 1; i < n; i++)
            t.true(Math.abs(sym[i] - centre) >= Math.abs(sym[i - 1] - centre), `symmetric moves outward (n=${n})`);
    }
});

/** Parameters per layer and in total from node-llama-cpp's parse of the file. */
async function paramCounts(file: string): Promise<{perLayer: number[]; total: number}> {
    const raw = await rawTensors(file);
    const perLayer: number[] = [];
    let total = 0;
    for (const t of raw.values()) {
        const n = t.dims.reduce((a, b) => a * b, 1);
        total += n;
        const m = /^blk\.(\d+)\./.exec(t.name);
        if (m)
            perLayer[Number(m[1])] = (perLayer[Number(m[1])] ?? 0) + n;
    }
    return {perLayer, total};
}

test("ratio picks the layer count whose removed share is closest (brute force over every count)", async (t) => {
    const dir = tempDir(t);
    const file = path.join(dir, "m.gguf");
    // Unequal layers (per-layer feed-forward sizes) so that the order matters for the share.
    await writeSyntheticModel(file, {architecture: "openelm", layers: 7, embedding: 64, heads: 4, kvHeads: 2,
        feedForward: [64, 256, 96, 128, 32, 192, 160], type: "f32"});
    const {perLayer, total} = await paramCounts(file);
    for (const strategy of ["top", "even", "odd", "symmetric"] as const) {
        const order = strategyOrder(strategy, 7);
        for (const ratio of [0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.5, 0.7, 0.9]) {
            let bestK = 0, bestErr = ratio, removed = 0;
            for (let k = 1; k <= Math.min(order.length, 6); k++) {
                removed += perLayer[order[k - 1]];
                if (Math.abs(removed / total - ratio) < bestErr - 1e-12) {
                    bestErr = Math.abs(removed / total - ratio);
                    bestK = k;
                }
            }
            const plan = await planPruning(file, {strategy, ratio});
            t.deepEqual(plan.removed, order.slice(0, bestK).sort((a, b) => a - b), `${strategy} ${ratio}`);
            const removedParams = plan.removed.reduce((a, l) => a + perLayer[l], 0);
            t.is(plan.parameters.before, total);
            t.is(plan.parameters.after, total - removedParams);
            t.deepEqual(plan.kept, Array.from({length: 7}, (_, i) => i).filter((i) => !plan.removed.includes(i)));
        }
    }
});

test("magnitude: per-layer mean |w| equals a plain double-precision computation, and a planted weak layer goes first", async (t) => {
    const dir = tempDir(t);
    for (const type of ["f32", "f16", "q8_0"]) {
        const file = path.join(dir, `m-${type}.gguf`);
        await writeSyntheticModel(file, {architecture: "llama", layers: 5, embedding: 64, heads: 4, kvHeads: 2,
            feedForward: 96, type, branchScale: {2: 0.05}});
        const sum = new Array(5).fill(0), count = new Array(5).fill(0);
        for (const raw of (await rawTensors(file)).values()) {
            const m = /^blk\.(\d+)\./.exec(raw.name);
            if (!m || raw.dims.length < 2)
                continue;
            for (const x of decodeTensor(raw))
                sum[Number(m[1])] += Math.abs(x);
            count[Number(m[1])] += raw.dims.reduce((a, b) => a * b, 1);
        }
        const expected = sum.map((s, i) => s / count[i]);
        const plan = await planPruning(file, {strategy: "magnitude", count: 1});
        for (let i = 0; i < 5; i++)
            t.true(Math.abs(plan.layerValues![i] - expected[i]) <= 1e-6 * expected[i], `${type} layer ${i}: ${plan.layerValues![i]} vs ${expected[i]}`);
        t.deepEqual(plan.removed, [2], type);
    }
});

test("scores: lowest first, validated against the layer count; bi --json output is accepted", async (t) => {
    const dir = tempDir(t);
    const file = path.join(dir, "m.gguf");
    await writeSyntheticModel(file, {architecture: "llama", layers: 6, embedding: 32, heads: 4, feedForward: 64});
    const scores = [0.5, 0.1, 0.9, 0.05, 0.7, 0.3];
    const plan = await planPruning(file, {strategy: "scores", count: 3, scores});
    t.deepEqual(plan.removed, [1, 3, 5]);
    t.deepEqual(plan.order.slice(0, 3), [3, 1, 5]);
    await t.throwsAsync(planPruning(file, {strategy: "scores", count: 1, scores: [1, 2]}), {message: /2 scores given for a model of 6 layers/});
    await t.throwsAsync(planPruning(file, {strategy: "scores", count: 1}), {message: /needs per-layer scores/});
    await t.throwsAsync(planPruning(file, {strategy: "top", count: 6}), {message: /one layer must stay/});
    await t.throwsAsync(planPruning(file, {strategy: "even", count: 4}), {message: /only removes 3 layers/});
    await t.throwsAsync(planPruning(file, {strategy: "top", ratio: 1}), {message: /ratio must be in \[0, 1\)/});
    t.deepEqual(parseScores({n_layer: 2, bi: [0.2, 0.1], bi_label: [0, 0]}, "x"), [0.2, 0.1]);
    t.deepEqual(parseScores([3, 4], "x"), [3, 4]);
    t.throws(() => parseScores({bi: ["a"]}, "bi.json"), {message: /bi\.json: expected an array of finite numbers/});
});

test("stories260K: a 30% plan with the paper's Seq baseline drops the top layers", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const {perLayer, total} = await paramCounts(stories260K);
    const plan = await planPruning(stories260K, {strategy: "top", ratio: 0.3});
    // Every layer has the same size here: the closest count is round(0.3 * total / layer size).
    const k = Math.round((0.3 * total) / perLayer[0]);
    t.deepEqual(plan.removed, Array.from({length: k}, (_, i) => 5 - k + i));
    t.is(plan.layersAfter, 5 - k);
});
