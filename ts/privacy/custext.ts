// CusText (Chen et al., ACL Findings 2023) with its conservative mapping: the vocabulary is
// partitioned into clusters of K mutually near tokens, and a token is replaced by a member of
// its own cluster through the Exponential Mechanism with the similarity min-max normalised to
// [0, 1] (Δu = 1). Any two tokens of one cluster share the output set and get ε-DP.
//
// The partition is built greedily in token-id order (the seed is always the smallest unassigned
// token), not in corpus-frequency order as in the paper's code: an order taken from the private
// data would make the mechanism itself depend on that data.
import crypto from "node:crypto";
import path from "node:path";
import {native, type NativeEmbedMetric, type ProgressCallback} from "../native.js";
import {defaultCacheDir, readCacheFile, writeCacheFile} from "./cache.js";
import {checkEpsilon, exponentialMechanism, type TokenMechanism, type TokenUtilities} from "./mechanism.js";

export type SimilarityMetric = "cosine" | "euclidean";

export const metricIds: Record<SimilarityMetric, NativeEmbedMetric> = {cosine: 0, euclidean: 1};

/** An embedding matrix: row t is token t (rows x cols, row-major). */
export interface EmbeddingMatrix {
    rows: number;
    cols: number;
    data: Float32Array;
}

export interface CusTextIndex {
    k: number;
    metric: SimilarityMetric;
    /** Identifies the embeddings and tokenizer the index was built from. */
    modelHash: string;
    /** The partitioned tokens, ascending. */
    domain: Int32Array;
    /** n_clusters + 1 offsets into members. */
    offsets: Int32Array;
    /** Cluster by cluster: the seed, then its neighbours by similarity. */
    members: Int32Array;
    /** n_clusters + 1 offsets into similarities. */
    similarityOffsets: Float64Array;
    /** Per cluster of size n, n x n exact similarities: [i*n + j] = s(member i, member j). */
    similarities: Float64Array;
    /** Per token id: its cluster, or -1 outside the domain. */
    clusterOf: Int32Array;
    /** Per token id: its position inside its cluster. */
    rankOf: Int32Array;
    build: {
        seconds: number;
        /** True when read from the cache. */
        cached: boolean;
        file?: string;
        batches?: number;
        rowsSearched?: number;
        rowsWasted?: number;
    };
}

export interface CusTextIndexOptions {
    /** Cluster size K (default 20). */
    k?: number;
    /** Similarity of embeddings (default "cosine"). */
    metric?: SimilarityMetric;
    /** Hash of the model (embeddings + tokenizer) that keys the cache; no caching without it. */
    modelHash?: string;
    /** Cache folder; false disables the cache. Default: defaultCacheDir(). */
    cacheDir?: string | false;
    threads?: number;
    onProgress?: ProgressCallback;
    /** Called when a cache file exists but cannot be used (it is rebuilt). */
    onWarning?: (message: string) => void;
}

export function checkK(k: number): void {
    if (!Number.isInteger(k) || k < 1 || k > 65536)
        throw new RangeError(`K must be an integer in [1, 65536] (got ${k})`);
}

export function checkMetric(metric: string): asserts metric is SimilarityMetric {
    if (metric !== "cosine" && metric !== "euclidean")
        throw new RangeError(`similarity must be "cosine" or "euclidean" (got ${JSON.stringify(metric)})`);
}

function sha256(bytes: ArrayBufferView): string {
    return crypto.createHash("sha256").update(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)).digest("hex");
}

function finishIndex(base: Omit<CusTextIndex, "clusterOf" | "rankOf">): CusTextIndex {
    const size = base.domain.length ? base.domain[base.domain.length - 1] + 1 : 0;
    const clusterOf = new Int32Array(size).fill(-1);
    const rankOf = new Int32Array(size).fill(-1);
    const nClusters = base.offsets.length - 1;
    for (let c = 0; c < nClusters; c++) {
        for (let i = base.offsets[c]; i < base.offsets[c + 1]; i++) {
            const t = base.members[i];
            if (t < 0 || t >= size || clusterOf[t] !== -1)
                throw new Error(`corrupt CusText index: token ${t} is outside the domain or in two clusters`);
            clusterOf[t] = c;
            rankOf[t] = i - base.offsets[c];
        }
    }
    for (const t of base.domain)
        if (clusterOf[t] === -1)
            throw new Error(`corrupt CusText index: token ${t} is in no cluster`);
    return {...base, clusterOf, rankOf};
}

/** Cache file of an index: <cacheDir>/embed/<model hash>/custext-k<K>-<metric>-<domain hash>.idx */
export function cusTextCacheFile(cacheDir: string, modelHash: string, k: number, metric: SimilarityMetric, domain: Int32Array): string {
    return path.join(cacheDir, "embed", modelHash.slice(0, 32), `custext-k${k}-${metric}-${sha256(domain).slice(0, 16)}.idx`);
}

/**
 * CusText's partition of `domain` (ascending token ids) into clusters of K, with the exact
 * similarities inside each cluster. Built natively (matrix product + top-K, multithreaded);
 * read from / written to the cache when `modelHash` is given.
 */
export async function buildCusTextIndex(e: EmbeddingMatrix, domain: Int32Array, o: CusTextIndexOptions = {}): Promise<CusTextIndex> {
    const k = o.k ?? 20;
    const metric = o.metric ?? "cosine";
    checkK(k);
    checkMetric(metric);
    if (domain.length === 0)
        throw new Error("the CusText domain is empty");
    if (domain[domain.length - 1] >= e.rows)
        throw new Error(`domain token ${domain[domain.length - 1]} has no embedding row (${e.rows} rows)`);
    const cacheDir = o.cacheDir === false || !o.modelHash ? undefined : (o.cacheDir ?? defaultCacheDir());
    const file = cacheDir ? cusTextCacheFile(cacheDir, o.modelHash!, k, metric, domain) : undefined;
    const domainHash = sha256(domain);
    if (file) {
        const c = readCacheFile(file);
        if (c && "problem" in c) {
            o.onWarning?.(`ignoring cache file ${file}: ${c.problem}; rebuilding`);
        } else if (c) {
            const m = c.meta;
            const a = c.arrays;
            const ok = m.kind === "custext-clusters" && m.modelHash === o.modelHash && m.k === k && m.metric === metric &&
                m.domainSha256 === domainHash && a.domain instanceof Int32Array && a.offsets instanceof Int32Array &&
                a.members instanceof Int32Array && a.similarityOffsets instanceof Float64Array && a.similarities instanceof Float64Array &&
                sha256(a.domain) === domainHash;
            if (ok) {
                try {
                    return finishIndex({
                        k, metric, modelHash: o.modelHash!, domain: a.domain as Int32Array, offsets: a.offsets as Int32Array,
                        members: a.members as Int32Array, similarityOffsets: a.similarityOffsets as Float64Array,
                        similarities: a.similarities as Float64Array,
                        build: {seconds: Number(m.buildSeconds ?? 0), cached: true, file},
                    });
                } catch (err) {
                    o.onWarning?.(`ignoring cache file ${file}: ${(err as Error).message}; rebuilding`);
                }
            } else {
                o.onWarning?.(`ignoring cache file ${file}: it describes a different index; rebuilding`);
            }
        }
    }
    const started = performance.now();
    const p = await native().embedClusters(e.data, e.cols, domain, k, metricIds[metric], o.threads ?? 0, o.onProgress);
    const seconds = (performance.now() - started) / 1000;
    const index = finishIndex({
        k, metric, modelHash: o.modelHash ?? "", domain, offsets: p.offsets, members: p.members,
        similarityOffsets: p.similarityOffsets, similarities: p.similarities,
        build: {seconds, cached: false, ...(file ? {file} : {}), ...p.stats},
    });
    if (file) {
        try {
            writeCacheFile(file, {
                kind: "custext-clusters", version: 1, modelHash: o.modelHash, k, metric, domainSha256: domainHash,
                rows: e.rows, cols: e.cols, buildSeconds: seconds, createdAt: new Date().toISOString(),
            }, {
                domain, offsets: p.offsets, members: p.members, similarityOffsets: p.similarityOffsets, similarities: p.similarities,
            });
        } catch (err) {
            o.onWarning?.(`cannot write the index cache ${file}: ${(err as Error).message}; continuing without it`);
            delete index.build.file;
        }
    }
    return index;
}

/** Cluster sizes: smallest and largest, and how many clusters there are. */
export function clusterSizes(index: CusTextIndex): {clusters: number; smallest: number; largest: number} {
    let smallest = Infinity, largest = 0;
    const n = index.offsets.length - 1;
    for (let c = 0; c < n; c++) {
        const s = index.offsets[c + 1] - index.offsets[c];
        smallest = Math.min(smallest, s);
        largest = Math.max(largest, s);
    }
    return {clusters: n, smallest, largest};
}

/**
 * Utilities of input x: its cluster's members, u(x,y) = (s(x,y) − min) / (max − min) over the
 * cluster (so u ∈ [0, 1] and Δu = 1); all 1 when every similarity is equal (a uniform choice).
 */
export function cusTextUtilities(index: CusTextIndex, x: number): TokenUtilities {
    const c = x >= 0 && x < index.clusterOf.length ? index.clusterOf[x] : -1;
    if (c < 0)
        throw new Error(`token ${x} is not in the CusText index's domain`);
    const start = index.offsets[c], n = index.offsets[c + 1] - start;
    const row = index.similarityOffsets[c] + index.rankOf[x] * n;
    let min = Infinity, max = -Infinity;
    for (let j = 0; j < n; j++) {
        const s = index.similarities[row + j];
        min = Math.min(min, s);
        max = Math.max(max, s);
    }
    const u = new Float64Array(n);
    for (let j = 0; j < n; j++)
        u[j] = max > min ? (index.similarities[row + j] - min) / (max - min) : 1;
    return {outputs: index.members.subarray(start, start + n), utilities: u};
}

/** CusText over a built index: ε-DP among the tokens of each cluster. */
export function cusTextMechanism(index: CusTextIndex, epsilon: number): TokenMechanism {
    checkEpsilon(epsilon);
    const sizes = clusterSizes(index);
    return exponentialMechanism({
        name: "custext",
        epsilon,
        sensitivity: 1,
        domain: index.domain,
        utility: (x) => cusTextUtilities(index, x),
        maxOutputs: sizes.largest,
        guarantee: {
            kind: "cluster-epsilon-dp",
            epsilon,
            clusterSize: index.k,
            statement: `CusText, K = ${index.k}, ${index.metric} similarity: the ${index.domain.length} text tokens are ` +
                `partitioned into ${sizes.clusters} clusters of ${sizes.smallest === sizes.largest ? sizes.largest
                    : `${sizes.largest} (one of ${sizes.smallest})`}; a token is replaced only by a token of its own cluster, with ` +
                `utility min-max normalised to [0,1] (Δu = 1). For any two tokens x, x′ of one cluster and any output y: ` +
                `P(y|x) ≤ e^${epsilon}·P(y|x′) (ε-DP per token within a cluster). Clusters have disjoint outputs, so the ` +
                `cluster of every perturbed token is revealed.`,
        },
    });
}
