// Test-side GGUF utilities written independently of the code under test where it matters:
// raw tensor bytes are read straight from the file at offsets that node-llama-cpp's own GGUF
// parser reports, and half floats / Q8_0 blocks are decoded by hand.
import fs from "node:fs";
import {readGgufFileInfo} from "node-llama-cpp";
import {readGguf} from "../ts/gguf/read.js";
import {writeGguf, type GgufKv, type GgufScalarType} from "../ts/gguf/write.js";
import {tensorBytes} from "../ts/gguf/write.js";

export interface RawTensor {
    name: string;
    dims: number[];
    ggmlType: number;
    bytes: Buffer;
}

/** Every tensor's bytes, located by node-llama-cpp's GGUF parser (not ours). */
export async function rawTensors(file: string): Promise<Map<string, RawTensor>> {
    const info = await readGgufFileInfo(file, {logWarnings: false});
    const fd = fs.openSync(file, "r");
    const ours = await readGguf(file);
    const sizes = new Map(ours.tensors.map((t) => [t.name, t.nBytes]));
    const out = new Map<string, RawTensor>();
    try {
        for (const t of info.fullTensorInfo ?? info.tensorInfo ?? []) {
            const size = sizes.get(t.name)!;
            const bytes = Buffer.alloc(size);
            fs.readSync(fd, bytes, 0, size, Number(t.fileOffset));
            out.set(t.name, {name: t.name, dims: t.dimensions.map(Number), ggmlType: t.ggmlType, bytes});
        }
    } finally {
        fs.closeSync(fd);
    }
    return out;
}

/** IEEE half to number, by hand. */
export function halfToFloat(h: number): number {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const f = h & 0x3ff;
    if (e === 0)
        return s * f * 2 ** -24;
    if (e === 31)
        return f ? NaN : s * Infinity;
    return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** Decodes F32, F16 or Q8_0 tensor bytes into doubles (the types the tests generate). */
export function decodeTensor(t: RawTensor): Float64Array {
    const b = t.bytes;
    switch (t.ggmlType) {
        case 0: return Float64Array.from({length: b.length / 4}, (_, i) => b.readFloatLE(i * 4));
        case 1: return Float64Array.from({length: b.length / 2}, (_, i) => halfToFloat(b.readUInt16LE(i * 2)));
        case 8: {  // Q8_0: blocks of {f16 d; int8 q[32]}
            const out = new Float64Array((b.length / 34) * 32);
            for (let blk = 0; blk < b.length / 34; blk++) {
                const d = halfToFloat(b.readUInt16LE(blk * 34));
                for (let j = 0; j < 32; j++)
                    out[blk * 32 + j] = d * b.readInt8(blk * 34 + 2 + j);
            }
            return out;
        }
        default: throw new Error(`decodeTensor: type ${t.ggmlType} not handled in tests`);
    }
}

/** sha256 of a file, to prove inputs are never modified. */
export async function fileHash(file: string): Promise<string> {
    const {createHash} = await import("node:crypto");
    return createHash("sha256").update(fs.readFileSync(file)).digest("hex");
}

/**
 * Copies a model, setting the residual-branch outputs (attn_output and ffn_down) of `layers` to
 * zero: each of those blocks then passes its input through unchanged, which is what removing it
 * computes. Works on F32 models (stories260K).
 */
export async function zeroResidualBranches(src: string, dst: string, layers: number[]): Promise<void> {
    const file = await readGguf(src, {maxArrayValues: Number.MAX_SAFE_INTEGER});
    const raw = await rawTensors(src);
    const metadata: GgufKv[] = file.metadata.map((m) => m.type === "array"
        ? {key: m.key, type: "array", elementType: m.elementType as GgufScalarType, value: m.value as (number | string)[]}
        : {key: m.key, type: m.type as "uint32", value: m.value as number} as GgufKv);
    const zeroed = new Set(layers.flatMap((l) => [`blk.${l}.attn_output.weight`, `blk.${l}.ffn_down.weight`]));
    await writeGguf(dst, metadata, file.tensors.map((t) => ({
        name: t.name, shape: t.shape, type: t.type,
        data: () => (zeroed.has(t.name) ? new Uint8Array(tensorBytes(t.type, t.shape)) : raw.get(t.name)!.bytes),
    })));
}
