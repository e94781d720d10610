// Importance matrices: per block weight, the sum over tokens of each input column's squared
// activation, and the token count (llama-imatrix's data). Read from the files llama-imatrix writes
// (its GGUF format and the legacy .dat), written in its GGUF format, and turned into the values
// llama_model_quantize takes exactly as llama-quantize turns a file into them (tools/quantize/
// quantize.cpp, load_imatrix), so that the same file quantizes to the same bytes.
import fs from "node:fs";
import type {NativeImatrixEntry} from "../native.js";
import {readGguf} from "../gguf/read.js";
import {writeGguf, type GgufKv, type GgufTensorSpec} from "../gguf/write.js";

export interface ImatrixEntry {
    name: string;
    /** float32 sums (as every llama-imatrix file stores them); n_mat x row length. */
    sums: Float32Array;
    /** Tokens per matrix (GGUF format), or [ncall] for the legacy format (sums then hold mean x ncall). */
    counts: number[];
}

export interface ImportanceMatrix {
    entries: ImatrixEntry[];
    /** What it was computed on (file names), as llama-imatrix records them. */
    datasets: string[];
    chunkCount: number;
    chunkSize: number;
    /** Read from a legacy .dat file (sums already divided by the count and multiplied by ncall). */
    legacy: boolean;
}

/** The matrix of a capture pass (double sums rounded to float32, as llama-imatrix stores them). */
export function imatrixFromCapture(entries: NativeImatrixEntry[], info: {datasets: string[]; chunkCount: number; chunkSize: number}): ImportanceMatrix {
    if (entries.length === 0)
        throw new Error("the capture pass saw no block weight multiplication: nothing to build an importance matrix from");
    return {
        entries: entries.map((e) => ({name: e.name, sums: Float32Array.from(e.sums), counts: [...e.counts]})),
        datasets: info.datasets, chunkCount: info.chunkCount, chunkSize: info.chunkSize, legacy: false,
    };
}

/** Adds `b`'s sums and counts into `a` (two passes over different sequences of one model). */
export function mergeCaptured(a: NativeImatrixEntry[], b: NativeImatrixEntry[]): NativeImatrixEntry[] {
    const byName = new Map(a.map((e) => [e.name, {name: e.name, sums: Float64Array.from(e.sums), counts: [...e.counts]}]));
    for (const e of b) {
        const into = byName.get(e.name);
        if (!into) {
            byName.set(e.name, {name: e.name, sums: Float64Array.from(e.sums), counts: [...e.counts]});
            continue;
        }
        if (into.sums.length !== e.sums.length || into.counts.length !== e.counts.length)
            throw new Error(`importance matrix entry ${e.name} changed shape between passes`);
        e.sums.forEach((x, i) => (into.sums[i] += x));
        e.counts.forEach((c, i) => (into.counts[i] += c));
    }
    return [...byName.values()].sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
}

/**
 * The per-weight values llama_model_quantize takes: GGUF format sums / count per matrix (1 where
 * a matrix saw no token); legacy format sums / ncall. float32 arithmetic, as llama-quantize's.
 */
export function imatrixValues(m: ImportanceMatrix): {name: string; values: Float32Array}[] {
    return m.entries.map((e) => {
        const values = new Float32Array(e.sums.length);
        if (m.legacy) {
            const ncall = e.counts[0] ?? 0;
            for (let i = 0; i < values.length; i++)
                values[i] = ncall > 0 ? e.sums[i] / ncall : e.sums[i];
        } else {
            const rowLength = e.sums.length / e.counts.length;
            for (let j = 0; j < e.counts.length; j++)
                for (let i = 0; i < rowLength; i++)
                    values[j * rowLength + i] = e.counts[j] > 0 ? e.sums[j * rowLength + i] / e.counts[j] : 1;
        }
        return {name: e.name, values};
    });
}

/** Reads a file written by llama-imatrix (or `ppc-gpt bi --imatrix`): GGUF, else the legacy .dat format. */
export async function readImatrixFile(file: string): Promise<ImportanceMatrix> {
    const fd = fs.openSync(file, "r");
    const magic = Buffer.alloc(4);
    try {
        fs.readSync(fd, magic, 0, 4, 0);
    } finally {
        fs.closeSync(fd);
    }
    return magic.toString("latin1") === "GGUF" ? readImatrixGguf(file) : readImatrixLegacy(file);
}

async function readImatrixGguf(file: string): Promise<ImportanceMatrix> {
    const g = await readGguf(file, {maxArrayValues: 1 << 20});
    const datasets = g.value("imatrix.datasets");
    const chunkCount = g.value("imatrix.chunk_count");
    const chunkSize = g.value("imatrix.chunk_size");
    if (datasets === undefined || chunkCount === undefined || chunkSize === undefined)
        throw new Error(`${file}: not an importance matrix (no imatrix.datasets / chunk_count / chunk_size metadata)`);
    const data = fs.readFileSync(file);
    const f32 = (name: string): Float32Array => {
        const t = g.tensors.find((x) => x.name === name)!;
        if (t.type !== "f32")
            throw new Error(`${file}: ${name} is ${t.type}; importance sums and counts must be f32`);
        const start = g.info.dataOffset + t.offset;
        return new Float32Array(data.buffer.slice(data.byteOffset + start, data.byteOffset + start + t.nBytes));
    };
    const names = new Set<string>();
    for (const t of g.tensors) {
        const m = /^(.*)\.(in_sum2|counts)$/.exec(t.name);
        if (m)
            names.add(m[1]);
    }
    const entries: ImatrixEntry[] = [];
    for (const name of [...names].sort()) {
        if (!g.tensors.some((t) => t.name === `${name}.in_sum2`) || !g.tensors.some((t) => t.name === `${name}.counts`))
            throw new Error(`${file}: mismatched sums and counts for ${name}`);
        entries.push({name, sums: f32(`${name}.in_sum2`), counts: [...f32(`${name}.counts`)].map((c) => Math.round(c))});
    }
    if (entries.length === 0)
        throw new Error(`${file}: no importance data (no *.in_sum2 tensors)`);
    return {entries, datasets: (Array.isArray(datasets) ? datasets : [datasets]).map(String), chunkCount: Number(chunkCount),
        chunkSize: Number(chunkSize), legacy: false};
}

function readImatrixLegacy(file: string): ImportanceMatrix {
    const b = fs.readFileSync(file);
    let at = 0;
    const need = (n: number, what: string) => {
        if (at + n > b.length)
            throw new Error(`${file}: not an importance matrix (neither GGUF nor llama-imatrix's .dat format: truncated at ${what})`);
    };
    const i32 = (what: string) => { need(4, what); const v = b.readInt32LE(at); at += 4; return v; };
    const n = i32("the entry count");
    if (n < 1 || n > 1e6)
        throw new Error(`${file}: not an importance matrix (neither GGUF nor llama-imatrix's .dat format)`);
    const entries: ImatrixEntry[] = [];
    for (let i = 0; i < n; i++) {
        const len = i32(`entry ${i + 1}'s name`);
        if (len < 0 || len > 4096)
            throw new Error(`${file}: implausible name length ${len} in entry ${i + 1}`);
        need(len, `entry ${i + 1}'s name`);
        const name = b.toString("utf8", at, at + len);
        at += len;
        const ncall = i32(`${name}'s call count`);
        const nval = i32(`${name}'s value count`);
        if (nval < 1)
            throw new Error(`${file}: entry ${name} has no values`);
        need(nval * 4, `${name}'s values`);
        const sums = new Float32Array(nval);
        for (let k = 0; k < nval; k++)
            sums[k] = b.readFloatLE(at + 4 * k);
        at += nval * 4;
        entries.push({name, sums, counts: [ncall]});
    }
    let chunkCount = 0;
    const datasets: string[] = [];
    if (at + 4 <= b.length) {
        chunkCount = b.readInt32LE(at);
        at += 4;
        if (at + 4 <= b.length) {
            const len = b.readInt32LE(at);
            at += 4;
            if (len > 0 && at + len <= b.length)
                datasets.push(b.toString("utf8", at, at + len));
        }
    }
    return {entries, datasets, chunkCount, chunkSize: 0, legacy: true};
}

/** Writes `m` in llama-imatrix's GGUF format (which llama-quantize --imatrix and `ppc-gpt quantize --imatrix` read). */
export async function writeImatrixGguf(file: string, m: ImportanceMatrix): Promise<void> {
    if (m.legacy)
        throw new Error("a legacy-format matrix has no raw sums to write in the GGUF format");
    const metadata: GgufKv[] = [
        {key: "general.type", type: "string", value: "imatrix"},
        {key: "imatrix.datasets", type: "array", elementType: "string", value: m.datasets},
        {key: "imatrix.chunk_count", type: "uint32", value: m.chunkCount},
        {key: "imatrix.chunk_size", type: "uint32", value: m.chunkSize},
    ];
    const bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    const tensors: GgufTensorSpec[] = [...m.entries].sort((a, b) => (a.name < b.name ? -1 : 1)).flatMap((e) => {
        const nMat = e.counts.length;
        return [
            {name: `${e.name}.in_sum2`, shape: [e.sums.length / nMat, nMat], type: "f32", data: () => bytes(e.sums)},
            {name: `${e.name}.counts`, shape: [1, nMat], type: "f32", data: () => bytes(Float32Array.from(e.counts))},
        ];
    });
    await writeGguf(file, metadata, tensors);
}
