// `inspectModel`: what a GGUF model holds, in numbers a person can check against its card.
import {GgufModelFile, readGguf} from "./read.js";

export interface LayerSummary {
    layer: number;
    /** Index in the unpruned model this one was cut from. */
    originalLayer: number;
    parameters: number;
    bytes: number;
    tensors: number;
}

export interface ModelInspection {
    path: string;
    architecture: string;
    name?: string;
    blockCount: number;
    ggufVersion: number;
    fileSize: number;
    alignment: number;
    parameters: {
        total: number;
        /** Token embeddings, output head, final norm and any other tensor outside the blocks. */
        outsideLayers: number;
        perLayer: LayerSummary[];
    };
    /** Tensor count and parameters per ggml type. */
    tensorTypes: Record<string, {tensors: number; parameters: number; bytes: number}>;
    metadata: {key: string; type: string; value: unknown}[];
    tensors?: {name: string; type: string; shape: number[]; bytes: number}[];
}

/** Longest array shown in full; longer ones are summarised as first values and a length. */
const arrayPreview = 16;

function summariseValue(entry: GgufModelFile["metadata"][number]): unknown {
    const v = entry.value;
    if (!Array.isArray(v))
        return typeof v === "bigint" ? v.toString() : v;
    const length = entry.length ?? v.length;
    if (length <= arrayPreview)
        return v;
    return {length, elementType: entry.elementType, first: v.slice(0, 8)};
}

/** Architecture, block count, parameters per layer and in total, tensor types and all metadata. */
export async function inspectModel(path: string, options: {tensors?: boolean} = {}): Promise<ModelInspection> {
    const file = await readGguf(path, {maxArrayValues: 4096});
    const n = file.blockCount;
    const original = file.originalLayers;
    const perLayer: LayerSummary[] = Array.from({length: n}, (_, layer) => ({
        layer, originalLayer: original[layer] ?? layer, parameters: 0, bytes: 0, tensors: 0,
    }));
    const tensorTypes: ModelInspection["tensorTypes"] = {};
    let total = 0;
    let outside = 0;
    for (const t of file.tensors) {
        total += t.nElements;
        const layer = GgufModelFile.layerOf(t.name);
        if (layer === undefined || layer >= n) {
            outside += t.nElements;
        } else {
            perLayer[layer].parameters += t.nElements;
            perLayer[layer].bytes += t.nBytes;
            perLayer[layer].tensors += 1;
        }
        const bucket = (tensorTypes[t.type] ??= {tensors: 0, parameters: 0, bytes: 0});
        bucket.tensors += 1;
        bucket.parameters += t.nElements;
        bucket.bytes += t.nBytes;
    }
    const name = file.value("general.name");
    return {
        path,
        architecture: file.architecture,
        ...(typeof name === "string" ? {name} : {}),
        blockCount: n,
        ggufVersion: file.info.version,
        fileSize: file.info.fileSize,
        alignment: file.info.alignment,
        parameters: {total, outsideLayers: outside, perLayer},
        tensorTypes,
        metadata: file.metadata.map((m) => ({key: m.key, type: m.type === "array" ? `array<${m.elementType}>` : m.type,
            value: summariseValue(m)})),
        ...(options.tensors ? {tensors: file.tensors.map((t) => ({name: t.name, type: t.type, shape: t.shape, bytes: t.nBytes}))} : {}),
    };
}
