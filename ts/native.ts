// Loads the native addon and types its bindings. Lookup order: PPC_GPT_NATIVE (a path), the
// source build (build/Release), then a prebuilt binary for this platform (prebuilds/).
import fs from "node:fs";
import {createRequire} from "node:module";
import path from "node:path";
import {fileURLToPath} from "node:url";

/** A GGUF metadata value as the addon returns it (64-bit integers beyond 2^53 as bigint). */
export type GgufScalar = number | bigint | boolean | string;

export interface GgufMetadataEntry {
    key: string;
    /** GGUF value type: uint8 … float64, bool, string or array. */
    type: string;
    /** Arrays only: element type, full length, and whether `value` holds fewer elements. */
    elementType?: string;
    length?: number;
    truncated?: boolean;
    value: GgufScalar | GgufScalar[];
}

export interface GgufTensorInfo {
    name: string;
    /** ggml order: shape[0] is the contiguous (row) dimension. */
    shape: number[];
    /** ggml type name, e.g. "f32", "q8_0", "q4_K". */
    type: string;
    typeId: number;
    /** Offset within the data section. */
    offset: number;
    nBytes: number;
    nElements: number;
}

export interface GgufFileInfo {
    version: number;
    alignment: number;
    fileSize: number;
    dataOffset: number;
    metadata: GgufMetadataEntry[];
    tensors: GgufTensorInfo[];
}

export interface NativeLayerRemovalResult {
    layersBefore: number;
    layersAfter: number;
    removed: number[];
    kept: number[];
    originalKept: number[];
    bytesWritten: number;
    metadataChanged: string[];
}

export interface GgmlTypeInfo {
    id: number;
    name: string;
    blockSize: number;
    typeSize: number;
    quantized: boolean;
}

export interface NativeModelInfo {
    description: string;
    nLayer: number;
    nEmbd: number;
    nVocab: number;
    nCtxTrain: number;
    nParams: number;
    sizeBytes: number;
    bos: number;
    eos: number;
}

export interface NativeModel {
    info(): NativeModelInfo;
    tokenize(text: string, addSpecial: boolean, parseSpecial: boolean): Int32Array;
    tokenToPiece(token: number): string;
    detokenize(tokens: Int32Array, removeSpecial: boolean, unparseSpecial: boolean): string;
    /** Logits of every position, row-major [tokens.length][nVocab]. */
    evalLogits(tokens: Int32Array): Promise<Float32Array>;
    close(): void;
}

export interface NativeModelOptions {
    gpuLayers?: number;
    threads?: number;
    contextSize?: number;
    batchSize?: number;
    /** Load the tokenizer only (no weights): tokenize/detokenize work, evaluation does not. */
    vocabOnly?: boolean;
}

export type ProgressCallback = (done: number, total: number) => void;

export interface NativeAddon {
    ggufRead(path: string, maxArrayValues: number): Promise<GgufFileInfo>;
    removeLayers(input: string, output: string, layers: number[], onProgress?: ProgressCallback): Promise<NativeLayerRemovalResult>;
    tensorAbsSums(path: string, names: string[], onProgress?: ProgressCallback): Promise<{name: string; sumAbs: number; count: number}[]>;
    quantize(type: number, data: Float32Array, rowLength: number): Buffer;
    dequantize(type: number, data: Uint8Array, count: number): Float32Array;
    ggmlTypes(): GgmlTypeInfo[];
    systemInfo(): {llama: string; cuda: boolean; devices: {name: string; description: string; memoryTotal: number}[]};
    loadModel(path: string, options?: NativeModelOptions): Promise<NativeModel>;
}

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

function candidates(): string[] {
    const list: string[] = [];
    if (process.env.PPC_GPT_NATIVE)
        list.push(path.resolve(process.env.PPC_GPT_NATIVE));
    list.push(path.join(packageRoot, "build", "Release", "ppc_gpt.node"));
    list.push(path.join(packageRoot, "prebuilds", `${process.platform}-${process.arch}`, "ppc_gpt.node"));
    return list;
}

let cached: NativeAddon | undefined;

/** The native addon, loaded on first use. Throws with build instructions when none is found. */
export function native(): NativeAddon {
    if (cached)
        return cached;
    const require = createRequire(import.meta.url);
    const tried: string[] = [];
    for (const file of candidates()) {
        if (!fs.existsSync(file)) {
            tried.push(`${file} (missing)`);
            continue;
        }
        try {
            cached = require(file) as NativeAddon;
            return cached;
        } catch (err) {
            tried.push(`${file} (${(err as Error).message.split("\n")[0]})`);
        }
    }
    throw new Error("the ppc-gpt native addon is not available; build it with `npm run build:native`.\n" +
        `Tried:\n  ${tried.join("\n  ")}`);
}
