// The samplers follow the exact tables (chi-square), a seed reproduces the output, and the limits
// behave: ε → large keeps every token, ε → 0 tends to the uniform choice over the allowed set.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {createPerturber, perturbFile, type TextPerturber} from "../../ts/privacy/perturb.js";
import {secureUniform, seededUniform} from "../../ts/random.js";
import {exponentialMechanism} from "../../ts/privacy/mechanism.js";
import {hasShared, stories260K, tempDir} from "../helpers.js";
import {chiSquare, chiSquareCritical, cosine, distance, refEmbeddings} from "./reference.js";

const maybe = hasShared ? test : test.skip;

async function withPerturber<T>(o: Parameters<typeof createPerturber>[0], fn: (p: TextPerturber) => Promise<T>): Promise<T> {
    const p = await createPerturber({cacheDir: false, ...o});
    try {
        return await fn(p);
    } finally {
        p.close();
    }
}

/** Samples `n` outputs for each input, interleaved in one call, and tests each input's frequencies. */
async function chiSquareCheck(t: import("ava").ExecutionContext, p: TextPerturber, inputs: number[], n: number, seed: number): Promise<void> {
    const tokens = new Int32Array(inputs.length * n);
    for (let i = 0; i < tokens.length; i++)
        tokens[i] = inputs[i % inputs.length];
    const out = await p.mechanism.perturbTokens(tokens, seededUniform(seed));
    for (const [k, x] of inputs.entries()) {
        const d = await p.mechanism.distribution(x);
        const at = new Map(Array.from(d.outputs, (y, i) => [y, i]));
        const counts = new Array<number>(d.outputs.length).fill(0);
        for (let i = k; i < out.length; i += inputs.length) {
            const j = at.get(out[i]);
            if (j === undefined)
                return t.fail(`input ${x}: sampled ${out[i]}, which is not among its outputs`);
            counts[j]++;
        }
        const probs = Array.from(d.probabilities);
        const {statistic, df} = chiSquare(counts, probs, n);
        const critical = chiSquareCritical(df, 1e-4);
        t.true(statistic < critical, `input ${x}: chi-square ${statistic.toFixed(1)} >= ${critical.toFixed(1)} (df ${df})`);
        // The same counts against the uniform distribution must be rejected: the check has power.
        const uniform = chiSquare(counts, probs.map(() => 1 / probs.length), n);
        t.true(uniform.statistic > chiSquareCritical(uniform.df, 1e-4), `input ${x}: the test cannot tell the table from uniform`);
    }
}

maybe("custext: sampled frequencies match the exact table (chi-square, 5 inputs x 40,000 draws, interleaved)", async (t) => {
    await withPerturber({embeddings: stories260K, mechanism: "custext", epsilon: 3}, async (p) => {
        const idx = p.index!;
        const inputs = [0, 5, 11, 17, 25].map((c) => idx.members[idx.offsets[c] + 1]);
        await chiSquareCheck(t, p, inputs, 40_000, 1);
    });
});

maybe("santext: sampled frequencies over all 509 outputs match the exact table (chi-square, 3 inputs x 60,000 draws)", async (t) => {
    await withPerturber({embeddings: stories260K, mechanism: "santext", epsilon: 8}, async (p) => {
        await chiSquareCheck(t, p, [300, 5, 420], 60_000, 2);
    });
});

test("the generic mechanism: a custom utility and sensitivity give the textbook distribution and its sampler follows it", async (t) => {
    const domain = [10, 11, 12, 13];
    const m = exponentialMechanism({
        epsilon: 2, sensitivity: 4, domain,
        utility: (x) => ({outputs: Int32Array.from(domain), utilities: Float64Array.from(domain, (y) => -Math.abs(x - y))}),
    });
    t.is(m.guarantee.kind, "epsilon-dp");
    const d = await m.distribution(11);
    const w = domain.map((y) => Math.exp((2 * -Math.abs(11 - y)) / (2 * 4)));
    const z = w.reduce((a, b) => a + b);
    t.deepEqual(Array.from(d.probabilities).map((p) => p.toPrecision(14)), w.map((x) => (x / z).toPrecision(14)));
    const out = await m.perturbTokens(new Int32Array(50_000).fill(11), seededUniform(9));
    const counts = domain.map((y) => out.filter((o) => o === y).length);
    const {statistic, df} = chiSquare(counts, Array.from(d.probabilities), 50_000);
    t.true(statistic < chiSquareCritical(df, 1e-4));
    await t.throwsAsync(m.distribution(14), {message: /not in the mechanism's domain/});
    const bad = exponentialMechanism({epsilon: 1, sensitivity: 1, domain, utility: () => ({outputs: Int32Array.of(10, 99), utilities: Float64Array.of(0, 0)})});
    await t.throwsAsync(bad.distribution(10), {message: /output 99 is outside the mechanism's domain/});
    const nan = exponentialMechanism({epsilon: 1, sensitivity: 1, domain, utility: () => ({outputs: Int32Array.of(10, 11), utilities: Float64Array.of(0, NaN)})});
    await t.throwsAsync(nan.distribution(10), {message: /not all finite/});
    t.throws(() => exponentialMechanism({epsilon: 0, sensitivity: 1, domain, utility: () => ({outputs: Int32Array.of(10), utilities: Float64Array.of(0)})}),
        {message: /epsilon must be a finite number > 0/});
    t.throws(() => exponentialMechanism({epsilon: 1, sensitivity: -1, domain, utility: () => ({outputs: Int32Array.of(10), utilities: Float64Array.of(0)})}),
        {message: /sensitivity must be a finite number > 0/});
});

maybe("a fixed seed reproduces the perturbed file byte for byte; another seed, or the CSPRNG, does not", async (t) => {
    const dir = tempDir(t);
    const input = path.join(dir, "in.jsonl");
    fs.writeFileSync(input, [
        {id: "a", question: "Which gas do plants absorb from the air?", choices: [{label: "A", text: "carbon dioxide"}, {label: "B", text: "oxygen"}], answer: "A"},
        {id: "b", question: "The girl went to the park with her dog.", choices: [{label: "A", text: "happy"}, {label: "B", text: "sad"}]},
    ].map((x) => JSON.stringify(x)).join("\n") + "\n");
    const outs: string[] = [];
    for (const [name, seed] of [["s7a", 7], ["s7b", 7], ["s8", 8], ["r1", undefined], ["r2", undefined]] as [string, number | undefined][]) {
        const output = path.join(dir, `${name}.jsonl`);
        await perturbFile({embeddings: stories260K, input, output, epsilon: 3, seed, cacheDir: false});
        outs.push(fs.readFileSync(output, "utf8"));
    }
    // released ids and order are random whatever the seed (privacy/release.ts): the seed reproduces the texts
    const texts = (out: string) => out.trim().split("\n").map((l) => {
        const {id: _id, ...rest} = JSON.parse(l) as Record<string, unknown>;
        return JSON.stringify(rest);
    }).sort().join("\n");
    t.is(texts(outs[0]), texts(outs[1]));
    t.not(outs[0], outs[1], "the ids are not derived from the seed");
    t.not(texts(outs[0]), texts(outs[2]));
    t.not(texts(outs[3]), texts(outs[4]));
    t.is(secureUniform().description, "secure");
});

maybe("ε → large keeps every token (custext and santext); the texts come back unchanged", async (t) => {
    const text = "Once upon a time, a little girl named Lily found a shiny red ball in the park.";
    for (const mechanism of ["custext", "santext"] as const) {
        const e = await refEmbeddings(stories260K);
        let previous: Float64Array | undefined;
        for (const epsilon of [1, 30, 300]) {
            await withPerturber({embeddings: stories260K, mechanism, epsilon, seed: 3}, async (p) => {
                const domain = p.mechanism.domain;
                const keep = new Float64Array(domain.length);
                for (const [i, d] of (await p.mechanism.distributions(domain)).entries())
                    keep[i] = d.probabilities[Array.from(d.outputs).indexOf(d.input)];
                if (previous)
                    for (let i = 0; i < keep.length; i++)
                        t.true(keep[i] >= previous[i] - 1e-15, `${mechanism}: P(x|x) must grow with ε (token ${domain[i]})`);
                previous = keep;
                if (epsilon === 300) {
                    const [r] = await p.perturbTexts([text]);
                    t.is(r.text, text, `${mechanism} at ε = 300`);
                    t.is(r.changed, 0);
                    // Every token whose runner-up is far enough behind (ε·gap/2 ≥ 60) is kept with probability
                    // 1 − O(n·e^−60); gap = 1 − the best other normalised utility (custext), the nearest distance (santext).
                    let checked = 0;
                    for (let i = 0; i < domain.length; i++) {
                        const x = domain[i];
                        let gap = Infinity;
                        if (mechanism === "santext") {
                            for (const y of domain)
                                if (y !== x)
                                    gap = Math.min(gap, distance(e, x, y));
                        } else {
                            const c = p.index!.clusterOf[x];
                            const members = Array.from(p.index!.members.subarray(p.index!.offsets[c], p.index!.offsets[c + 1]));
                            const sims = members.map((y) => cosine(e, x, y));
                            const min = Math.min(...sims), max = Math.max(...sims);
                            gap = 1 - Math.max(...members.map((y, j) => (y === x ? -Infinity : (sims[j] - min) / (max - min))));
                        }
                        if ((epsilon * gap) / 2 < 60)
                            continue;
                        checked++;
                        t.true(keep[i] > 1 - 1e-15, `${mechanism}: P(${x}|${x}) = ${keep[i]}`);
                    }
                    t.log(`${mechanism}: ${checked} of ${domain.length} tokens have ε·gap/2 ≥ 60`);
                    t.true(checked > domain.length / 4);
                }
            });
        }
    }
});

maybe("ε → 0 tends to the uniform choice over the allowed set: the cluster (custext) or every text token (santext)", async (t) => {
    for (const mechanism of ["custext", "santext"] as const) {
        await withPerturber({embeddings: stories260K, mechanism, epsilon: 1e-9}, async (p) => {
            let worst = 0;
            for (const d of await p.mechanism.distributions(p.mechanism.domain)) {
                const n = mechanism === "custext" ? p.index!.offsets[p.index!.clusterOf[d.input] + 1] - p.index!.offsets[p.index!.clusterOf[d.input]]
                    : p.mechanism.domain.length;
                t.is(d.outputs.length, n);
                for (const q of d.probabilities)
                    worst = Math.max(worst, Math.abs(q * n - 1));
            }
            t.true(worst < 1e-8, `${mechanism}: largest |n·P(y|x) − 1| = ${worst}`);
        });
    }
});
