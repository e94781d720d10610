// Quantization: the library entry point over the addon's binding of llama.cpp's own quantizer.
// The ppc_gpt.* provenance of the input is copied as every other key is; a ppc_gpt.quantization.*
// record is added through the quantizer's metadata overrides (llama-quantize --override-kv), and
// with an importance matrix the same quantize.imatrix.* keys llama-quantize adds, in its order:
// `llama-quantize --override-kv` with quantizationOverrides(...) gives a byte-identical file.
import fs from "node:fs";
import path from "node:path";
import {native, type NativeQuantizeOptions, type NativeQuantizeResult} from "../native.js";
import {imatrixValues, type ImportanceMatrix} from "./imatrix.js";

export type QuantizeOverride = NonNullable<NativeQuantizeOptions["overrides"]>[number];

export interface QuantizationType {
    name: string;
    ftype: number;
    description: string;
}

/** The types `--type` takes (llama-quantize's list, lower case). */
export function quantizationTypes(): QuantizationType[] {
    return native().quantizeTypes();
}

/** Canonical lower-case name of a quantization type; throws RangeError listing the known ones. */
export function quantizationType(name: string): string {
    const types = quantizationTypes();
    const t = types.find((x) => x.name === name.toLowerCase());
    if (!t)
        throw new RangeError(`unknown quantization type "${name}"; known: ${types.map((x) => x.name).join(", ")}`);
    return t.name;
}

/** Where an importance matrix came from, for the provenance record. */
export interface ImatrixSource {
    matrix: ImportanceMatrix;
    /** "task": computed here from task items or text; "file": read from a file. */
    kind: "task" | "file";
    /** The file it was read from or written to, or the data it was computed on (llama-quantize: the --imatrix path). */
    file: string;
}

export interface QuantizeModelOptions {
    type: string;
    imatrix?: ImatrixSource;
    threads?: number;
    allowRequantize?: boolean;
    onProgress?: (doneTensors: number, totalTensors: number) => void;
    /** Replace an existing output file (default true; the input itself is never replaced). */
    overwrite?: boolean;
}

export type QuantizeModelResult = NativeQuantizeResult & {input: string; output: string; imatrix: "none" | "task" | "file"; metadataAdded: string[]};

/** llama-quantize keeps the first 127 bytes of a string override. */
function truncated127(s: string): string {
    const b = Buffer.from(s, "utf8");
    return b.length <= 127 ? s : b.subarray(0, 127).toString("utf8").replace(/\uFFFD$/, "");
}

/**
 * The metadata a quantization adds, in the order llama-quantize writes it: the ppc_gpt.quantization
 * record (its --override-kv), then, with an importance matrix, its own quantize.imatrix.* keys.
 */
export function quantizationOverrides(type: string, imatrix?: ImatrixSource): QuantizeOverride[] {
    const record: QuantizeOverride[] = [
        {key: "ppc_gpt.quantization.type", type: "str", value: quantizationType(type)},
        {key: "ppc_gpt.quantization.imatrix", type: "str", value: imatrix?.kind ?? "none"},
    ];
    if (!imatrix)
        return record;
    const m = imatrix.matrix;
    return [
        ...record,
        {key: "quantize.imatrix.file", type: "str", value: truncated127(imatrix.file)},
        ...(m.datasets.length ? [{key: "quantize.imatrix.dataset", type: "str" as const, value: truncated127(m.datasets[0])}] : []),
        {key: "quantize.imatrix.entries_count", type: "int", value: m.entries.length},
        ...(m.chunkCount > 0 ? [{key: "quantize.imatrix.chunks_count", type: "int" as const, value: m.chunkCount}] : []),
    ];
}

/** The same overrides as `llama-quantize --override-kv KEY=TYPE:VALUE` arguments (the record only). */
export function overrideKvArguments(overrides: QuantizeOverride[]): string[] {
    return overrides.filter((o) => o.key.startsWith("ppc_gpt.")).flatMap((o) => ["--override-kv", `${o.key}=${o.type}:${o.value}`]);
}

/**
 * Writes `output`: `input` quantized to `type` by llama.cpp's quantizer, with the quantization
 * recorded in its metadata. The output appears only when complete.
 */
export async function quantizeModel(input: string, output: string, options: QuantizeModelOptions): Promise<QuantizeModelResult> {
    const type = quantizationType(options.type);
    if (path.resolve(input) === path.resolve(output))
        throw new Error(`the output ${output} is the input file; write to another path`);
    if (options.overwrite === false && fs.existsSync(output))
        throw new Error(`${output} exists (pass overwrite to replace it)`);
    const overrides = quantizationOverrides(type, options.imatrix);
    const result = await native().quantizeModel(input, output, {
        type,
        threads: options.threads,
        allowRequantize: options.allowRequantize,
        imatrix: options.imatrix ? imatrixValues(options.imatrix.matrix) : undefined,
        overrides,
    }, options.onProgress);
    return {...result, input, output, imatrix: options.imatrix?.kind ?? "none", metadataAdded: overrides.map((o) => o.key)};
}
