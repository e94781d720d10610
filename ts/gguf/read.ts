// Reading GGUF files: metadata and tensor infos through the addon's bounds-checked parser, with
// typed helpers for what every stage needs (architecture, layer count, tensors per layer).
import {native, type GgufFileInfo, type GgufMetadataEntry, type GgufScalar, type GgufTensorInfo} from "../native.js";

export type {GgufFileInfo, GgufMetadataEntry, GgufScalar, GgufTensorInfo};

const blockTensorName = /^blk\.(\d+)\./;

/** A parsed GGUF file with lookups by key and by layer. */
export class GgufModelFile {
    readonly path: string;
    readonly info: GgufFileInfo;
    private readonly byKey: Map<string, GgufMetadataEntry>;

    constructor(path: string, info: GgufFileInfo) {
        this.path = path;
        this.info = info;
        this.byKey = new Map(info.metadata.map((m) => [m.key, m]));
    }

    get metadata(): GgufMetadataEntry[] { return this.info.metadata; }
    get tensors(): GgufTensorInfo[] { return this.info.tensors; }

    entry(key: string): GgufMetadataEntry | undefined { return this.byKey.get(key); }

    value(key: string): GgufScalar | GgufScalar[] | undefined { return this.byKey.get(key)?.value; }

    get architecture(): string {
        const arch = this.value("general.architecture");
        if (typeof arch !== "string")
            throw new Error(`${this.path}: general.architecture is missing or not a string`);
        return arch;
    }

    /** `<arch>.block_count`: the number of transformer blocks. */
    get blockCount(): number {
        const key = `${this.architecture}.block_count`;
        const n = this.value(key);
        if (typeof n !== "number" && typeof n !== "bigint")
            throw new Error(`${this.path}: ${key} is missing or not an integer`);
        return Number(n);
    }

    /** Layer numbering of the unpruned model this file was cut from (identity when never pruned). */
    get originalLayers(): number[] {
        const v = this.value("ppc_gpt.pruning.original_layers");
        if (Array.isArray(v))
            return v.map(Number);
        return Array.from({length: this.blockCount}, (_, i) => i);
    }

    /** Block index of a tensor name (`blk.N.…`), or undefined for global tensors. */
    static layerOf(tensorName: string): number | undefined {
        const m = blockTensorName.exec(tensorName);
        return m ? Number(m[1]) : undefined;
    }

    /** Tensors of block `layer`. */
    layerTensors(layer: number): GgufTensorInfo[] {
        return this.tensors.filter((t) => GgufModelFile.layerOf(t.name) === layer);
    }
}

/**
 * Parses a GGUF file's header (metadata and tensor infos; no tensor data is read).
 * Arrays longer than `maxArrayValues` keep their length but only that many values.
 */
export async function readGguf(path: string, options: {maxArrayValues?: number} = {}): Promise<GgufModelFile> {
    const info = await native().ggufRead(path, options.maxArrayValues ?? 4096);
    return new GgufModelFile(path, info);
}
