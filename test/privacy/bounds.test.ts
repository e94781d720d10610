// Exhaustive verification of the mechanisms' guarantees on whole real vocabularies: every input
// pair and every output of the exact probability tables the code exposes (library and CLI), and
// agreement of those tables with an independent double-precision computation from the raw
// embedding bytes.
import {execFile} from "node:child_process";
import path from "node:path";
import {promisify} from "node:util";
import test from "ava";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {createPerturber} from "../../ts/privacy/perturb.js";
import {cliPath, hasShared, stories260K, tempDir} from "../helpers.js";
import {distance, refClusters, refCusTextTable, refEmbeddings, refExponential, refTextTokens, type Metric, type RefEmbeddings} from "./reference.js";

const run = promisify(execFile);
const maybe = hasShared ? test : test.skip;

type Table = Map<number, Map<number, number>>;

/** Relative slack for double rounding in the probabilities (the bounds hold exactly in real arithmetic). */
const SLACK = 1e-12;

function tableFromJson(text: string): Table {
    const raw = JSON.parse(text) as Record<string, Record<string, number>>;
    return new Map(Object.entries(raw).map(([x, row]) => [Number(x), new Map(Object.entries(row).map(([y, p]) => [Number(y), p]))]));
}

async function tableFromLibrary(o: Parameters<typeof createPerturber>[0]): Promise<{table: Table; clusters?: number[][]; domain: number[]}> {
    const p = await createPerturber(o);
    try {
        const table: Table = new Map();
        for await (const d of p.table())
            table.set(d.input, new Map(Array.from(d.outputs, (y, i) => [y, d.probabilities[i]])));
        let clusters: number[][] | undefined;
        if (p.index) {
            clusters = [];
            for (let c = 0; c + 1 < p.index.offsets.length; c++)
                clusters.push(Array.from(p.index.members.subarray(p.index.offsets[c], p.index.offsets[c + 1])));
        }
        return {table, clusters, domain: Array.from(p.mechanism.domain)};
    } finally {
        p.close();
    }
}

/** Rows of a probability table: each sums to 1, every probability is positive, outputs lie in `allowed`. */
function checkRows(t: import("ava").ExecutionContext, table: Table, allowed: Set<number>): void {
    for (const [x, row] of table) {
        let sum = 0;
        for (const [y, p] of row) {
            if (!allowed.has(y))
                t.fail(`input ${x}: output ${y} is not a text token`);
            if (!(p > 0))
                t.fail(`input ${x}: P(${y}) = ${p}`);
            sum += p;
        }
        if (Math.abs(sum - 1) > 1e-12)
            t.fail(`input ${x}: probabilities sum to ${sum}`);
    }
}

/**
 * CusText's guarantee, re-derived from the table alone: inputs with the same output set form a
 * cluster; for every pair x, x′ of a cluster and every output y, P(y|x) ≤ e^ε·P(y|x′).
 * Returns the clusters found and the largest ratio seen, over e^ε.
 */
function checkClusterBound(t: import("ava").ExecutionContext, table: Table, epsilon: number): {clusters: number[][]; worst: number} {
    const groups = new Map<string, number[]>();
    for (const [x, row] of table) {
        const key = [...row.keys()].sort((a, b) => a - b).join(",");
        groups.set(key, [...(groups.get(key) ?? []), x]);
    }
    let worst = 0;
    const bound = Math.exp(epsilon);
    for (const [key, members] of groups) {
        const outputs = key.split(",").map(Number);
        // Conservative mapping: a cluster's inputs are exactly its outputs.
        t.deepEqual([...members].sort((a, b) => a - b), outputs, `cluster ${key}: inputs and outputs differ`);
        for (const x of members)
            for (const x2 of members)
                for (const y of outputs) {
                    const ratio = table.get(x)!.get(y)! / table.get(x2)!.get(y)!;
                    worst = Math.max(worst, ratio / bound);
                    if (ratio > bound * (1 + SLACK))
                        t.fail(`P(${y}|${x}) / P(${y}|${x2}) = ${ratio} > e^${epsilon}`);
                }
    }
    return {clusters: [...groups.values()], worst};
}

/** SanText's metric-DP bound for every x, x′, y: log P(y|x) − log P(y|x′) ≤ ε·d(x,x′). Returns the largest ratio of the two sides. */
function checkMetricBound(t: import("ava").ExecutionContext, table: Table, e: RefEmbeddings, epsilon: number): number {
    const inputs = [...table.keys()].sort((a, b) => a - b);
    const outputs = [...table.get(inputs[0])!.keys()].sort((a, b) => a - b);
    const n = inputs.length, m = outputs.length;
    const logp = new Float64Array(n * m);
    inputs.forEach((x, i) => outputs.forEach((y, j) => (logp[i * m + j] = Math.log(table.get(x)!.get(y)!))));
    let worst = 0, violations = 0;
    for (let i = 0; i < n; i++) {
        for (let i2 = 0; i2 < n; i2++) {
            const allowance = epsilon * distance(e, inputs[i], inputs[i2]);
            let most = -Infinity;
            for (let j = 0; j < m; j++)
                most = Math.max(most, logp[i * m + j] - logp[i2 * m + j]);
            if (allowance > 0)
                worst = Math.max(worst, most / allowance);
            if (most > allowance + 1e-9)
                violations++;
        }
    }
    t.is(violations, 0, `metric-DP bound violated for ${violations} input pairs`);
    return worst;
}

function maxDiff(a: Table, b: Table): number {
    let d = 0;
    for (const [x, row] of b) {
        const r = a.get(x);
        if (!r || r.size !== row.size)
            return Infinity;
        for (const [y, p] of row) {
            const q = r.get(y);
            if (q === undefined)
                return Infinity;
            d = Math.max(d, Math.abs(q - p));
        }
    }
    return a.size === b.size ? d : Infinity;
}

function refSanTextTable(e: RefEmbeddings, domain: number[], epsilon: number): Table {
    const table: Table = new Map();
    for (const x of domain) {
        const p = refExponential(domain.map((y) => -distance(e, x, y)), epsilon, 1);
        table.set(x, new Map(domain.map((y, i) => [y, p[i]])));
    }
    return table;
}

for (const [metric, epsilon] of [["cosine", 3], ["euclidean", 1]] as [Metric, number][]) {
    maybe(`custext (${metric}, ε = ${epsilon}) on stories260K: greedy clusters and exact table match the naive computation; ` +
        `every pair in every cluster stays within e^ε for every output`, async (t) => {
        const e = await refEmbeddings(stories260K);
        const domain = await refTextTokens(stories260K);
        const refParts = refClusters(e, domain, 20, metric);
        const ours = await tableFromLibrary({embeddings: stories260K, mechanism: "custext", epsilon, similarity: metric, cacheDir: false});
        t.deepEqual(ours.domain, domain, "the domain is every NORMAL and BYTE token: 512 minus <unk>, <s>, </s>");
        t.is(domain.length, 509);
        t.deepEqual(ours.clusters, refParts, "clusters (members in rank order) equal the naive greedy partition");
        t.deepEqual(refParts.map((c) => c.length).filter((n) => n !== 20), [509 % 20]);
        t.true(maxDiff(ours.table, refCusTextTable(e, refParts, epsilon, metric)) < 1e-12);
        checkRows(t, ours.table, new Set(domain));
        const {clusters, worst} = checkClusterBound(t, ours.table, epsilon);
        t.is(clusters.length, refParts.length);
        t.log(`largest P(y|x)/P(y|x′) within a cluster: ${worst.toFixed(4)}·e^ε`);
    });
}

maybe("santext (ε = 3) on stories260K: exact table matches the naive computation; metric DP holds for all 509^3 (x, x′, y)", async (t) => {
    const e = await refEmbeddings(stories260K);
    const domain = await refTextTokens(stories260K);
    const ours = await tableFromLibrary({embeddings: stories260K, mechanism: "santext", epsilon: 3, cacheDir: false});
    t.deepEqual(ours.domain, domain);
    t.true(maxDiff(ours.table, refSanTextTable(e, domain, 3)) < 1e-12);
    checkRows(t, ours.table, new Set(domain));
    const worst = checkMetricBound(t, ours.table, e, 3);
    t.log(`largest max_y log(P(y|x)/P(y|x′)) / (ε·d(x,x′)) over x ≠ x′: ${worst.toFixed(4)}`);
});

maybe("the CLI's --table --json is the exact table, and an auditor re-deriving the bounds from it finds none violated", async (t) => {
    const e = await refEmbeddings(stories260K);
    const domain = await refTextTokens(stories260K);
    const args = (m: string, eps: number) => [cliPath, "perturb", "--embeddings", stories260K, "--mechanism", m, "--epsilon", String(eps),
        "--table", "--json", "--no-cache"];
    const c = await run(process.execPath, args("custext", 5), {maxBuffer: 1 << 28});
    const custext = tableFromJson(c.stdout);
    t.deepEqual([...custext.keys()], domain, "one row per text token, ascending");
    t.true(maxDiff(custext, refCusTextTable(e, refClusters(e, domain, 20, "cosine"), 5, "cosine")) < 1e-12);
    checkRows(t, custext, new Set(domain));
    checkClusterBound(t, custext, 5);

    const s = await run(process.execPath, args("santext", 2), {maxBuffer: 1 << 28});
    const santext = tableFromJson(s.stdout);
    t.true(maxDiff(santext, refSanTextTable(e, domain, 2)) < 1e-12);
    checkMetricBound(t, santext, e, 2);
});

test("on an unseen quantized vocabulary (q8_0, 700 tokens) both tables match the naive computation and keep their bounds", async (t) => {
    const dir = tempDir(t);
    const model = path.join(dir, "q8.gguf");
    await writeSyntheticModel(model, {architecture: "llama", layers: 1, embedding: 64, heads: 4, feedForward: 32, vocab: 700, type: "q8_0", seed: 11});
    const e = await refEmbeddings(model);
    const domain = await refTextTokens(model);
    t.is(domain.length, 697);
    const cus = await tableFromLibrary({embeddings: model, mechanism: "custext", epsilon: 2, k: 7, cacheDir: false});
    const parts = refClusters(e, domain, 7, "cosine");
    t.deepEqual(cus.clusters, parts);
    t.true(maxDiff(cus.table, refCusTextTable(e, parts, 2, "cosine")) < 1e-12);
    checkRows(t, cus.table, new Set(domain));
    checkClusterBound(t, cus.table, 2);
    const san = await tableFromLibrary({embeddings: model, mechanism: "santext", epsilon: 0.5, cacheDir: false});
    t.true(maxDiff(san.table, refSanTextTable(e, domain, 0.5)) < 1e-12);
    checkMetricBound(t, san.table, e, 0.5);
});
