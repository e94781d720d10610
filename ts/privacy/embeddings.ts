// Token embedding matrices for the perturbation mechanisms: a GGUF model's token_embd tensor
// (dequantized natively, any ggml type), a NumPy .npy file, or a plain text file. Each comes with
// the sha256 of the bytes it was read from, which keys the neighbour-index cache.
import crypto from "node:crypto";
import fs from "node:fs";
import readline from "node:readline";
import {DataError} from "../data/jsonl.js";
import {native, type ProgressCallback} from "../native.js";

export type EmbeddingsFormat = "gguf" | "npy" | "text";

/** A vocabulary's embedding matrix: row t is token t's vector (rows x cols, row-major F32). */
export interface TokenEmbeddings {
    rows: number;
    cols: number;
    data: Float32Array;
    format: EmbeddingsFormat;
    path: string;
    /** GGUF only: the tensor that was read. */
    tensor?: string;
    /** Stored element type: a ggml type name for GGUF ("f16", "q4_K", …), "f2"/"f4"/"f8" for .npy, "text". */
    type: string;
    /** sha256 (hex) of the stored bytes: the tensor's bytes for GGUF, the whole file otherwise. */
    sha256: string;
}

export interface LoadEmbeddingsOptions {
    /** GGUF tensor to read (default "token_embd.weight"). */
    tensor?: string;
    threads?: number;
    onProgress?: ProgressCallback;
}

/** Detects the format from the file's first bytes: "GGUF", "\x93NUMPY", anything else is text. */
export function embeddingsFormat(file: string): EmbeddingsFormat {
    let fd: number;
    try {
        fd = fs.openSync(file, "r");
    } catch (err) {
        throw new DataError(file, undefined, `cannot read: ${(err as Error).message}`);
    }
    try {
        const head = Buffer.alloc(6);
        const n = fs.readSync(fd, head, 0, 6, 0);
        if (n >= 4 && head.subarray(0, 4).toString("latin1") === "GGUF")
            return "gguf";
        if (n === 6 && head[0] === 0x93 && head.subarray(1, 6).toString("latin1") === "NUMPY")
            return "npy";
        return "text";
    } finally {
        fs.closeSync(fd);
    }
}

async function sha256Range(file: string, start: number, length: number): Promise<string> {
    const hash = crypto.createHash("sha256");
    if (length > 0) {
        const stream = fs.createReadStream(file, {start, end: start + length - 1, highWaterMark: 1 << 22});
        for await (const chunk of stream)
            hash.update(chunk as Buffer);
    }
    return hash.digest("hex");
}

/** Loads an embedding matrix from a GGUF model, a .npy file or a text file (see docs/perturb.md). */
export async function loadEmbeddings(file: string, options: LoadEmbeddingsOptions = {}): Promise<TokenEmbeddings> {
    const format = embeddingsFormat(file);
    if (format === "gguf") {
        const tensor = options.tensor ?? "token_embd.weight";
        const t = await native().embedReadTensor(file, tensor, options.threads ?? 0, options.onProgress);
        return {
            rows: t.rows, cols: t.cols, data: t.data, format, path: file, tensor, type: t.type,
            sha256: await sha256Range(file, t.offset, t.nBytes),
        };
    }
    if (options.tensor !== undefined)
        throw new DataError(file, undefined, "a tensor name only applies to GGUF files; this is a " +
            (format === "npy" ? ".npy file" : "text embeddings file"));
    const size = fs.statSync(file).size;
    const sha256 = await sha256Range(file, 0, size);
    const m = format === "npy" ? readNpy(file) : await readTextEmbeddings(file);
    return {...m, format, path: file, sha256};
}

function halfToFloat(h: number): number {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const f = h & 0x3ff;
    if (e === 0)
        return s * f * 2 ** -24;
    if (e === 31)
        return f ? NaN : s * Infinity;
    return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** NumPy .npy (format 1.0 to 3.0): 2-D, C order, little-endian float16/32/64. */
function readNpy(file: string): {rows: number; cols: number; data: Float32Array; type: string} {
    const buf = fs.readFileSync(file);
    const fail = (msg: string): never => {
        throw new DataError(file, undefined, `not a usable .npy embeddings file: ${msg}`);
    };
    if (buf.length < 10)
        fail("truncated header");
    const major = buf[6];
    if (major < 1 || major > 3)
        fail(`unsupported format version ${major}.${buf[7]}`);
    const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
    const start = (major === 1 ? 10 : 12) + headerLen;
    if (start > buf.length)
        fail("truncated header");
    const header = buf.subarray(major === 1 ? 10 : 12, start).toString(major === 3 ? "utf8" : "latin1");
    const descr = /'descr'\s*:\s*'([^']*)'/.exec(header)?.[1];
    const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
    const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
    if (descr === undefined || fortran === undefined || shapeText === undefined)
        fail(`cannot parse header ${JSON.stringify(header.trim())}`);
    if (fortran === "True")
        fail("fortran_order is True; save a C-ordered array (np.ascontiguousarray)");
    const shape = shapeText!.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
    if (shape.length !== 2 || !shape.every((d) => Number.isInteger(d) && d > 0))
        fail(`shape (${shapeText}) is not a 2-D [tokens, dims] shape`);
    const [rows, cols] = shape;
    const kinds: Record<string, {type: string; size: number}> = {
        "<f2": {type: "f2", size: 2}, "<f4": {type: "f4", size: 4}, "<f8": {type: "f8", size: 8},
    };
    const kind = kinds[descr!];
    if (!kind)
        fail(`dtype ${descr} is not little-endian float16, float32 or float64`);
    const need = rows * cols * kind.size;
    if (buf.length - start < need)
        fail(`data is truncated: ${rows} x ${cols} ${descr} needs ${need} bytes, ${buf.length - start} present`);
    const data = new Float32Array(rows * cols);
    for (let i = 0; i < data.length; i++) {
        const at = start + i * kind.size;
        data[i] = kind.size === 4 ? buf.readFloatLE(at) : kind.size === 8 ? buf.readDoubleLE(at) : halfToFloat(buf.readUInt16LE(at));
    }
    checkFinite(file, data, cols);
    return {rows, cols, data, type: kind.type};
}

/** Text: one row per line (token 0 first), whitespace-separated numbers; blank lines and lines starting with '#' skipped. */
async function readTextEmbeddings(file: string): Promise<{rows: number; cols: number; data: Float32Array; type: string}> {
    const lines = readline.createInterface({input: fs.createReadStream(file, {encoding: "utf8"}), crlfDelay: Infinity});
    let cols = -1, rows = 0, lineNo = 0;
    let data = new Float32Array(1 << 16);
    for await (const line of lines) {
        lineNo++;
        const text = line.trim();
        if (text === "" || text.startsWith("#"))
            continue;
        const parts = text.split(/\s+/);
        if (cols < 0)
            cols = parts.length;
        else if (parts.length !== cols)
            throw new DataError(file, lineNo, `row ${rows} has ${parts.length} values; earlier rows have ${cols}`);
        if ((rows + 1) * cols > data.length) {
            const grown = new Float32Array(Math.max(data.length * 2, (rows + 1) * cols));
            grown.set(data);
            data = grown;
        }
        for (let j = 0; j < cols; j++) {
            const v = Number(parts[j]);
            if (!Number.isFinite(v))
                throw new DataError(file, lineNo, `value ${j + 1} ("${parts[j]}") is not a finite number`);
            data[rows * cols + j] = v;
        }
        rows++;
    }
    if (rows === 0)
        throw new DataError(file, undefined, "no embedding rows (expected one line of numbers per token)");
    return {rows, cols, data: data.slice(0, rows * cols), type: "text"};
}

function checkFinite(file: string, data: Float32Array, cols: number): void {
    for (let i = 0; i < data.length; i++)
        if (!Number.isFinite(data[i]))
            throw new DataError(file, undefined, `row ${Math.floor(i / cols)} column ${i % cols} is not finite (${data[i]})`);
}

/** Throws naming the first non-finite value (a NaN row would poison every similarity). */
export function checkEmbeddingsFinite(e: TokenEmbeddings): void {
    checkFinite(e.path + (e.tensor ? ` (${e.tensor})` : ""), e.data, e.cols);
}
