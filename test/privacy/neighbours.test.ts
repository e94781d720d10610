// The native embedding layer against plain references: tensors read as F32 from every storage
// type, nearest neighbours, CusText's greedy partition on vocabularies big enough to exercise the
// batched search, and the on-disk index cache.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {ggmlType} from "../../ts/gguf/write.js";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {native} from "../../ts/native.js";
import {buildCusTextIndex, cusTextCacheFile} from "../../ts/privacy/custext.js";
import {loadEmbeddings} from "../../ts/privacy/embeddings.js";
import {decodeTensor, rawTensors} from "../gguf-fixtures.js";
import {tempDir} from "../helpers.js";
import {refClusters, similarity, type Metric, type RefEmbeddings} from "./reference.js";

/** Deterministic pseudo-random F32 matrix (rows x cols), with a few duplicate rows and one zero row. */
function randomMatrix(rows: number, cols: number, seed: number): Float32Array {
    const m = new Float32Array(rows * cols);
    let s = seed >>> 0;
    for (let i = 0; i < m.length; i++) {
        s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
        m[i] = (s / 2 ** 32 - 0.5) * 2;
    }
    const copy = (from: number, to: number) => m.copyWithin(to * cols, from * cols, (from + 1) * cols);
    copy(5, 100);
    copy(5, Math.min(rows - 1, 2000));
    copy(7, 8);
    m.fill(0, 40 * cols, 41 * cols);
    return m;
}

function asRef(m: Float32Array, cols: number): RefEmbeddings {
    return {rows: m.length / cols, cols, data: Float64Array.from(m)};
}

function clustersOf(offsets: Int32Array, members: Int32Array): number[][] {
    const out: number[][] = [];
    for (let c = 0; c + 1 < offsets.length; c++)
        out.push(Array.from(members.subarray(offsets[c], offsets[c + 1])));
    return out;
}

test("a token_embd stored as f16, q8_0 or q4_K reads as the same F32 values ggml's dequantization gives, with any thread count", async (t) => {
    const dir = tempDir(t);
    for (const type of ["f16", "q8_0", "q4_K"]) {
        const file = path.join(dir, `${type}.gguf`);
        await writeSyntheticModel(file, {architecture: "llama", layers: 1, embedding: 256, heads: 4, feedForward: 256, vocab: 300, type, seed: 3});
        const raw = (await rawTensors(file)).get("token_embd.weight")!;
        const one = await native().embedReadTensor(file, "token_embd.weight", 1);
        const two = await native().embedReadTensor(file, "token_embd.weight", 2);
        t.is(one.type, type);
        t.deepEqual([one.rows, one.cols], [300, 256]);
        t.deepEqual(one.data, two.data);
        // f16 and q8_0 decoded by hand in the test; q4_K by llama.cpp's own dequantize.
        const expected = type === "q4_K" ? Float64Array.from(native().dequantize(ggmlType(type).id, raw.bytes, 300 * 256)) : decodeTensor(raw);
        t.deepEqual(Float64Array.from(one.data), expected, type);
        const loaded = await loadEmbeddings(file);
        t.is(loaded.sha256, (await import("node:crypto")).createHash("sha256").update(raw.bytes).digest("hex"), "sha256 of the tensor's stored bytes");
    }
});

test("nearest neighbours equal a naive double-precision ranking (ties by token id), for both metrics", async (t) => {
    const cols = 24, rows = 400;
    const m = randomMatrix(rows, cols, 17);
    const ref = asRef(m, cols);
    const domain = Int32Array.from({length: rows - 10}, (_, i) => i + 10);
    const queries = Int32Array.from([0, 5, 7, 8, 40, 100, 399, 250]);
    for (const metric of ["cosine", "euclidean"] as Metric[]) {
        const r = await native().embedNearest(m, cols, queries, domain, 12, metric === "cosine" ? 0 : 1, 2);
        for (const [q, x] of queries.entries()) {
            const naive = Array.from(domain).filter((y) => y !== x).map((y) => ({y, s: similarity(ref, x, y, metric)}))
                .sort((a, b) => b.s - a.s || a.y - b.y).slice(0, 12);
            t.deepEqual(Array.from(r.tokens.subarray(q * 12, q * 12 + 12)), naive.map((n) => n.y), `${metric}, query ${x}`);
            for (let i = 0; i < 12; i++)
                t.true(Math.abs(r.similarity[q * 12 + i] - naive[i].s) <= 1e-12 * Math.max(1, Math.abs(naive[i].s)));
        }
    }
});

test("CusText's greedy partition equals the naive algorithm on a 3000-token vocabulary (batched searches, repacking, ties, a zero row)", async (t) => {
    const cols = 16, rows = 3000;
    const m = randomMatrix(rows, cols, 5);
    const ref = asRef(m, cols);
    const domain = Array.from({length: rows - 3}, (_, i) => i + 3);
    for (const [metric, k] of [["cosine", 5], ["euclidean", 7], ["cosine", 1], ["euclidean", 4000]] as [Metric, number][]) {
        const p = await native().embedClusters(m, cols, Int32Array.from(domain), k, metric === "cosine" ? 0 : 1, 2);
        const expected = refClusters(ref, domain, k, metric);
        t.deepEqual(clustersOf(p.offsets, p.members), expected, `${metric}, K = ${k}`);
        if (k === 5) {
            t.true(p.stats.batches > 2 && p.stats.compactions > 0, JSON.stringify(p.stats));
            t.log(`K = 5: ${JSON.stringify(p.stats)}`);
        }
        // The similarity blocks are the exact pairwise similarities of each cluster.
        for (let c = 0; c + 1 < p.offsets.length; c += 97) {
            const mem = Array.from(p.members.subarray(p.offsets[c], p.offsets[c + 1]));
            const base = p.similarityOffsets[c];
            for (let i = 0; i < mem.length; i++)
                for (let j = 0; j < mem.length; j++)
                    t.true(Math.abs(p.similarities[base + i * mem.length + j] - similarity(ref, mem[i], mem[j], metric)) < 1e-12);
        }
    }
});

test("the index cache: written once, read back identical, keyed by model hash, K and metric; a corrupt file is rebuilt", async (t) => {
    const dir = tempDir(t);
    const cols = 8, rows = 500;
    const e = {rows, cols, data: randomMatrix(rows, cols, 9)};
    const domain = Int32Array.from({length: rows - 3}, (_, i) => i + 3);
    const warnings: string[] = [];
    const o = {k: 6, metric: "cosine" as const, modelHash: "ab".repeat(32), cacheDir: dir, onWarning: (w: string) => warnings.push(w)};
    const first = await buildCusTextIndex(e, domain, o);
    t.false(first.build.cached);
    const file = cusTextCacheFile(dir, o.modelHash, 6, "cosine", domain);
    t.is(first.build.file, file);
    t.true(fs.existsSync(file));
    const second = await buildCusTextIndex(e, domain, o);
    t.true(second.build.cached);
    t.deepEqual([second.offsets, second.members, second.similarities], [first.offsets, first.members, first.similarities]);
    t.deepEqual(warnings, []);

    const other = await buildCusTextIndex(e, domain, {...o, k: 7});
    t.false(other.build.cached);
    t.not(other.build.file, file);
    t.false((await buildCusTextIndex(e, domain, {...o, metric: "euclidean"})).build.cached);
    t.false((await buildCusTextIndex(e, domain, {...o, modelHash: "cd".repeat(32)})).build.cached);

    const bytes = fs.readFileSync(file);
    bytes[bytes.length - 5] ^= 0xff;
    fs.writeFileSync(file, bytes);
    const rebuilt = await buildCusTextIndex(e, domain, o);
    t.false(rebuilt.build.cached);
    t.regex(warnings.join("\n"), /ignoring cache file .*checksum mismatch; rebuilding/);
    t.deepEqual(rebuilt.members, first.members);
    t.true((await buildCusTextIndex(e, domain, o)).build.cached, "the rebuilt file is valid again");
    fs.writeFileSync(file, bytes.subarray(0, 40));
    t.false((await buildCusTextIndex(e, domain, o)).build.cached);
    t.regex(warnings.at(-1)!, /truncated|does not match/);
    t.false((await buildCusTextIndex(e, domain, {...o, cacheDir: false})).build.cached);
    t.deepEqual(fs.readdirSync(path.dirname(file)).filter((f) => f.includes(".tmp-")), [], "no temporary files");
    // An unusable cache folder costs a warning, not the run.
    const notADir = path.join(dir, "plain-file");
    fs.writeFileSync(notADir, "x");
    const uncached = await buildCusTextIndex(e, domain, {...o, cacheDir: notADir});
    t.deepEqual(uncached.members, first.members);
    t.is(uncached.build.file, undefined);
    t.regex(warnings.at(-1)!, /cannot write the index cache .*plain-file.*; continuing without it/);
});

test("bad arguments to the native layer fail with clear errors", async (t) => {
    const m = randomMatrix(50, 4, 1);
    await t.throwsAsync(native().embedClusters(m, 4, Int32Array.of(3, 2), 5, 0, 1), {message: /distinct token ids in ascending order/});
    await t.throwsAsync(native().embedClusters(m, 4, Int32Array.of(3, 50), 5, 0, 1), {message: /outside the embedding matrix \(50 rows\)/});
    t.throws(() => native().embedClusters(m, 4, Int32Array.of(3), 0, 0, 1), {message: /k must be in/});
    t.throws(() => native().embedClusters(m, 3, Int32Array.of(3), 2, 0, 1), {message: /multiple of the column count/});
    t.throws(() => native().embedClusters(m, 4, Int32Array.of(3), 2, 7 as 0, 1), {message: /metric must be/});
    t.throws(() => native().embedNearest(new Float64Array(8) as unknown as Float32Array, 4, Int32Array.of(0), Int32Array.of(1), 1, 0, 1),
        {message: /Float32Array/});
    await t.throwsAsync(native().embedSimilarityRows(m, 4, Int32Array.of(60), Int32Array.of(1), 0, 1), {message: /queries\[0\] = 60 is outside/});
    await t.throwsAsync(native().embedReadTensor("/nonexistent.gguf", "token_embd.weight", 1), {message: /nonexistent\.gguf: cannot open/});
    await t.throwsAsync(buildCusTextIndex({rows: 50, cols: 4, data: m}, Int32Array.of(3, 60), {cacheDir: false}), {message: /no embedding row/});
    await t.throwsAsync(buildCusTextIndex({rows: 50, cols: 4, data: m}, Int32Array.of(3, 4), {k: 0, cacheDir: false}), {message: /K must be an integer/});
});
