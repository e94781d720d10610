// Writing GGUF files from TypeScript: typed metadata, tensors produced one at a time (so memory
// holds one tensor, not the model), written durably (durable-file.ts: temporary file, fsync, rename, fsync folder).
import {native, type GgmlTypeInfo} from "../native.js";
import {writeFileDurableWith} from "../durable-file.js";

export type GgufScalarType = "uint8" | "int8" | "uint16" | "int16" | "uint32" | "int32" | "float32" | "bool" |
    "string" | "uint64" | "int64" | "float64";

export type GgufValue =
    | {type: Exclude<GgufScalarType, "string" | "bool" | "uint64" | "int64">; value: number}
    | {type: "uint64" | "int64"; value: number | bigint}
    | {type: "bool"; value: boolean}
    | {type: "string"; value: string}
    | {type: "array"; elementType: GgufScalarType; value: (number | bigint | boolean | string)[]};

export type GgufKv = {key: string} & GgufValue;

export interface GgufTensorSpec {
    name: string;
    /** ggml order: shape[0] is the row length. */
    shape: number[];
    /** ggml type name ("f32", "f16", "q8_0", "q4_K", …). */
    type: string;
    /** Produces the tensor's bytes in `type`'s layout; called once, when the tensor is written. */
    data: () => Uint8Array;
}

const typeIds: Record<GgufScalarType | "array", number> = {
    uint8: 0, int8: 1, uint16: 2, int16: 3, uint32: 4, int32: 5, float32: 6, bool: 7, string: 8, array: 9,
    uint64: 10, int64: 11, float64: 12,
};

let typeTable: Map<string, GgmlTypeInfo> | undefined;

/** ggml type by name, case-insensitive ("q4_k" finds "q4_K"). */
export function ggmlType(name: string): GgmlTypeInfo {
    typeTable ??= new Map(native().ggmlTypes().map((t) => [t.name.toLowerCase(), t]));
    const t = typeTable.get(name.toLowerCase());
    if (!t)
        throw new Error(`unknown ggml type "${name}"; known: ${[...typeTable.values()].map((x) => x.name).join(", ")}`);
    return t;
}

/** Bytes of a tensor of `type` and `shape`. */
export function tensorBytes(type: string, shape: number[]): number {
    const t = ggmlType(type);
    if (shape[0] % t.blockSize !== 0)
        throw new Error(`row length ${shape[0]} is not a multiple of ${t.name}'s block size ${t.blockSize}`);
    return shape.reduce((acc, d, i) => acc * (i === 0 ? d / t.blockSize : d), t.typeSize);
}

class ByteWriter {
    private chunks: Buffer[] = [];
    length = 0;
    push(b: Buffer): void { this.chunks.push(b); this.length += b.length; }
    u32(v: number): void { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b); }
    u64(v: number | bigint): void { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b); }
    str(s: string): void { const b = Buffer.from(s, "utf8"); this.u64(b.length); this.push(b); }
    scalar(type: GgufScalarType, v: number | bigint | boolean | string): void {
        const b = Buffer.alloc(8);
        switch (type) {
            case "uint8": b.writeUInt8(v as number); return this.push(b.subarray(0, 1));
            case "int8": b.writeInt8(v as number); return this.push(b.subarray(0, 1));
            case "bool": b.writeUInt8(v ? 1 : 0); return this.push(b.subarray(0, 1));
            case "uint16": b.writeUInt16LE(v as number); return this.push(b.subarray(0, 2));
            case "int16": b.writeInt16LE(v as number); return this.push(b.subarray(0, 2));
            case "uint32": b.writeUInt32LE(v as number); return this.push(b.subarray(0, 4));
            case "int32": b.writeInt32LE(v as number); return this.push(b.subarray(0, 4));
            case "float32": b.writeFloatLE(v as number); return this.push(b.subarray(0, 4));
            case "uint64": b.writeBigUInt64LE(BigInt(v as number)); return this.push(b);
            case "int64": b.writeBigInt64LE(BigInt(v as number)); return this.push(b);
            case "float64": b.writeDoubleLE(v as number); return this.push(b);
            case "string": return this.str(v as string);
        }
    }
    pad(alignment: number): void {
        const rem = this.length % alignment;
        if (rem)
            this.push(Buffer.alloc(alignment - rem));
    }
    concat(): Buffer { return Buffer.concat(this.chunks, this.length); }
}

/** Encodes a GGUF header: magic, counts, metadata, tensor infos, padding to the data section. */
function encodeHeader(metadata: GgufKv[], tensors: {name: string; shape: number[]; typeId: number; offset: number}[],
    alignment: number): Buffer {
    const w = new ByteWriter();
    w.push(Buffer.from("GGUF"));
    w.u32(3);
    w.u64(tensors.length);
    w.u64(metadata.length);
    for (const kv of metadata) {
        w.str(kv.key);
        w.u32(typeIds[kv.type]);
        if (kv.type === "array") {
            w.u32(typeIds[kv.elementType]);
            w.u64(kv.value.length);
            for (const v of kv.value)
                w.scalar(kv.elementType, v);
        } else {
            w.scalar(kv.type, kv.value);
        }
    }
    for (const t of tensors) {
        w.str(t.name);
        w.u32(t.shape.length);
        for (const d of t.shape)
            w.u64(d);
        w.u32(t.typeId);
        w.u64(t.offset);
    }
    w.pad(alignment);
    return w.concat();
}

/**
 * Writes a GGUF file atomically. `general.alignment` in `metadata` sets the alignment (default 32).
 */
export async function writeGguf(file: string, metadata: GgufKv[], tensors: GgufTensorSpec[]): Promise<void> {
    const alignKv = metadata.find((m) => m.key === "general.alignment");
    const alignment = alignKv ? Number(alignKv.value) : 32;
    let offset = 0;
    const infos = tensors.map((t) => {
        const bytes = tensorBytes(t.type, t.shape);
        const info = {name: t.name, shape: t.shape, typeId: ggmlType(t.type).id, offset, bytes};
        offset += Math.ceil(bytes / alignment) * alignment;
        return info;
    });
    await writeFileDurableWith(file, async (fh) => {
        await fh.write(encodeHeader(metadata, infos, alignment));
        for (let i = 0; i < tensors.length; i++) {
            const data = tensors[i].data();
            if (data.byteLength !== infos[i].bytes)
                throw new Error(`tensor ${tensors[i].name}: data has ${data.byteLength} bytes, ${tensors[i].type} ${JSON.stringify(tensors[i].shape)} needs ${infos[i].bytes}`);
            await fh.write(data);
            const pad = Math.ceil(data.byteLength / alignment) * alignment - data.byteLength;
            if (pad)
                await fh.write(Buffer.alloc(pad));
        }
    });
}
