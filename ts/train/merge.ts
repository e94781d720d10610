// Merging an adapter into its base model: a standalone GGUF in the base's tensor types.
import fs from "node:fs";
import path from "node:path";
import {promptMetadataKeys} from "../data/prompt.js";
import {readGguf, type GgufMetadataEntry} from "../gguf/read.js";
import {writeGguf, type GgufKv, type GgufScalarType} from "../gguf/write.js";
import {native} from "../native.js";

export interface MergeOptions {
    /** Multiplies the adapter's alpha / r (default 1). */
    scale?: number;
    onProgress?: (doneBytes: number, totalBytes: number) => void;
}

export interface MergeResult {
    output: string;
    /** Base tensors that changed: W + scale * (alpha / r) * B A, requantized to W's type. */
    merged: string[];
    alpha: number;
    rank: number;
    bytesWritten: number;
    /** The adapter's prompt record (format, label prefix) now in the merged model's metadata. */
    prompt?: Record<string, string>;
}

/**
 * Writes `output` (atomically): the base model with the adapter folded into every adapted tensor;
 * all other tensors and all metadata are byte-identical to the base's, except that the adapter's
 * prompt record (ts/data/prompt.ts: format and label prefix) is carried over, so `eval` of the
 * merged model puts the same prefix before every context as `eval --lora` did.
 */
export async function mergeLora(base: string, adapter: string, output: string, options: MergeOptions = {}): Promise<MergeResult> {
    for (const [what, file] of [["base model", base], ["adapter", adapter]] as const) {
        if (!fs.existsSync(file))
            throw new Error(`${what} ${file} does not exist`);
    }
    // the output replaces its path by rename: never let it be an input (the base model would be lost)
    for (const [what, file] of [["base model", base], ["adapter", adapter]] as const) {
        if (sameFile(file, output))
            throw new Error(`the output ${output} is the ${what}: inputs are never modified; write to another path`);
    }
    const scale = options.scale ?? 1;
    if (!Number.isFinite(scale))
        throw new RangeError(`scale must be a finite number (got ${scale})`);
    const adapterInfo = await readGguf(adapter, {maxArrayValues: 0});
    const prompt = Object.values(promptMetadataKeys).flatMap((key) => {
        const v = adapterInfo.value(key);
        return typeof v === "string" ? [{key, type: "string" as const, value: v}] : [];
    });
    if (prompt.length === 0) {
        const r = await native().loraMerge(base, adapter, output, {scale}, options.onProgress);
        return {output, ...r};
    }
    // merge to a temporary file, then copy it with the prompt record added (atomic: temp + rename)
    const tmp = path.join(path.dirname(path.resolve(output)), `.${path.basename(output)}.merge-${process.pid}-${Date.now()}`);
    try {
        const r = await native().loraMerge(base, adapter, tmp, {scale}, options.onProgress);
        const bytesWritten = await copyGgufWithMetadata(tmp, output, prompt);
        return {output, ...r, bytesWritten, prompt: Object.fromEntries(prompt.map((kv) => [kv.key, kv.value]))};
    } finally {
        await fs.promises.rm(tmp, {force: true});
    }
}

/** True when `output` names the same file as `input` (same path, or a link to it). */
function sameFile(input: string, output: string): boolean {
    if (path.resolve(input) === path.resolve(output))
        return true;
    try {
        const a = fs.statSync(input), b = fs.statSync(output);
        return a.dev === b.dev && a.ino === b.ino;
    } catch {
        return false;
    }
}

function toKv(m: GgufMetadataEntry): GgufKv {
    if (m.type === "array")
        return {key: m.key, type: "array", elementType: m.elementType as GgufScalarType, value: m.value as (number | bigint | boolean | string)[]};
    return {key: m.key, type: m.type, value: m.value} as GgufKv;
}

/** Copies a GGUF file with `extra` metadata set (replacing keys of the same name); returns the bytes written. */
async function copyGgufWithMetadata(source: string, output: string, extra: GgufKv[]): Promise<number> {
    const g = await readGguf(source, {maxArrayValues: Number.MAX_SAFE_INTEGER});
    const keys = new Set(extra.map((kv) => kv.key));
    const metadata = [...g.metadata.filter((m) => !keys.has(m.key)).map(toKv), ...extra];
    const fd = fs.openSync(source, "r");
    try {
        await writeGguf(output, metadata, g.tensors.map((t) => ({
            name: t.name,
            shape: t.shape,
            type: t.type,
            data: () => {
                const buf = Buffer.alloc(t.nBytes);
                const n = fs.readSync(fd, buf, 0, t.nBytes, g.info.dataOffset + t.offset);
                if (n !== t.nBytes)
                    throw new Error(`${source}: tensor ${t.name} is truncated`);
                return buf;
            },
        })));
    } finally {
        fs.closeSync(fd);
    }
    return fs.statSync(output).size;
}
