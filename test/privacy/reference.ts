// Naive double-precision references for the privacy tests, written without the code under test:
// embeddings are decoded from the raw tensor bytes (located by node-llama-cpp's GGUF parser),
// the text-token set comes from the GGUF token types, and CusText's greedy partition, the
// utilities and the Exponential Mechanism's probabilities are computed plainly here.
import {readGgufFileInfo} from "node-llama-cpp";
import {decodeTensor, rawTensors} from "../gguf-fixtures.js";

export interface RefEmbeddings {
    rows: number;
    cols: number;
    data: Float64Array;
}

export async function refEmbeddings(file: string): Promise<RefEmbeddings> {
    const t = (await rawTensors(file)).get("token_embd.weight");
    if (!t)
        throw new Error(`${file}: no token_embd.weight`);
    const data = decodeTensor(t);
    return {cols: t.dims[0], rows: data.length / t.dims[0], data};
}

/** Tokens of type NORMAL (1) or BYTE (6) in tokenizer.ggml.token_type: the ones that may be perturbed and emitted. */
export async function refTextTokens(file: string): Promise<number[]> {
    const info = await readGgufFileInfo(file, {logWarnings: false, readTensorInfo: false});
    const types = (info.metadata as unknown as {tokenizer: {ggml: {token_type: number[]}}}).tokenizer.ggml.token_type;
    const out: number[] = [];
    types.forEach((ty, t) => {
        if (ty === 1 || ty === 6)
            out.push(t);
    });
    return out;
}

export function row(e: RefEmbeddings, t: number): Float64Array {
    return e.data.subarray(t * e.cols, (t + 1) * e.cols);
}

export function cosine(e: RefEmbeddings, a: number, b: number): number {
    const x = row(e, a), y = row(e, b);
    let dot = 0, nx = 0, ny = 0;
    for (let i = 0; i < e.cols; i++) {
        dot += x[i] * y[i];
        nx += x[i] * x[i];
        ny += y[i] * y[i];
    }
    return nx === 0 || ny === 0 ? 0 : dot / (Math.sqrt(nx) * Math.sqrt(ny));
}

export function distance(e: RefEmbeddings, a: number, b: number): number {
    const x = row(e, a), y = row(e, b);
    let s = 0;
    for (let i = 0; i < e.cols; i++)
        s += (x[i] - y[i]) ** 2;
    return Math.sqrt(s);
}

export type Metric = "cosine" | "euclidean";

export function similarity(e: RefEmbeddings, a: number, b: number, metric: Metric): number {
    return metric === "cosine" ? cosine(e, a, b) : -distance(e, a, b);
}

/** CusText's greedy partition as specified: seed = smallest unassigned id, plus its K−1 most similar unassigned tokens. */
export function refClusters(e: RefEmbeddings, domain: number[], k: number, metric: Metric): number[][] {
    const remaining = new Set(domain);
    const clusters: number[][] = [];
    for (const seed of domain) {
        if (!remaining.has(seed))
            continue;
        remaining.delete(seed);
        const others = [...remaining].map((y) => ({y, s: similarity(e, seed, y, metric)}));
        others.sort((p, q) => q.s - p.s || p.y - q.y);
        const members = [seed, ...others.slice(0, k - 1).map((o) => o.y)];
        for (const m of members)
            remaining.delete(m);
        clusters.push(members);
    }
    return clusters;
}

/** Exponential Mechanism probabilities over `outputs` with utilities u: exp(ε·u/(2Δu)) normalised. */
export function refExponential(utilities: number[], epsilon: number, sensitivity: number): number[] {
    const w = utilities.map((u) => Math.exp((epsilon * u) / (2 * sensitivity)));
    const z = w.reduce((a, b) => a + b, 0);
    return w.map((x) => x / z);
}

/** CusText's exact table: token -> (output -> probability), from the reference partition. */
export function refCusTextTable(e: RefEmbeddings, clusters: number[][], epsilon: number, metric: Metric): Map<number, Map<number, number>> {
    const table = new Map<number, Map<number, number>>();
    for (const c of clusters) {
        for (const x of c) {
            const s = c.map((y) => similarity(e, x, y, metric));
            const min = Math.min(...s), max = Math.max(...s);
            const u = s.map((v) => (max > min ? (v - min) / (max - min) : 1));
            const p = refExponential(u, epsilon, 1);
            table.set(x, new Map(c.map((y, i) => [y, p[i]])));
        }
    }
    return table;
}

/** Upper quantile of the chi-square distribution (Wilson–Hilferty), e.g. alpha = 1e-4. */
export function chiSquareCritical(df: number, alpha: number): number {
    // Normal quantile by bisection on the complementary error function.
    const upperTail = (z: number) => 0.5 * erfc(z / Math.SQRT2);
    let lo = 0, hi = 10;
    for (let i = 0; i < 100; i++) {
        const mid = (lo + hi) / 2;
        if (upperTail(mid) > alpha)
            lo = mid;
        else
            hi = mid;
    }
    const z = (lo + hi) / 2;
    const h = 2 / (9 * df);
    return df * (1 - h + z * Math.sqrt(h)) ** 3;
}

function erfc(x: number): number {
    // Numerical Recipes' erfcc: fractional error below 1.2e-7.
    const z = Math.abs(x);
    const t = 1 / (1 + 0.5 * z);
    const r = t * Math.exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
        t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
    return x >= 0 ? r : 2 - r;
}

/** Pearson's statistic of observed counts against expected probabilities, pooling bins expected below 5. */
export function chiSquare(counts: number[], probabilities: number[], n: number): {statistic: number; df: number} {
    let stat = 0, bins = 0, poolObs = 0, poolExp = 0;
    for (let i = 0; i < counts.length; i++) {
        const exp = probabilities[i] * n;
        if (exp < 5) {
            poolObs += counts[i];
            poolExp += exp;
            continue;
        }
        stat += (counts[i] - exp) ** 2 / exp;
        bins++;
    }
    if (poolExp > 0) {
        stat += (poolObs - poolExp) ** 2 / Math.max(poolExp, 1e-300);
        bins++;
    }
    return {statistic: stat, df: Math.max(1, bins - 1)};
}
