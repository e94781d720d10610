// The perturbation kit: what a client needs to perturb text in a server model's vocabulary without
// the model. It is a GGUF holding all of the model's metadata (architecture, hyperparameters and the
// tokenizer, so llama.cpp loads it vocab-only) and a single tensor, token_embd.weight, stored with its
// original bytes (so the embeddings' sha256, and with it the neighbour-index cache key, is the model's).
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import {DataError} from "../data/jsonl.js";
import {readGguf, type GgufMetadataEntry} from "../gguf/read.js";
import {writeGguf, type GgufKv, type GgufScalarType} from "../gguf/write.js";

export const KIT_TENSOR = "token_embd.weight";
/** Metadata key naming the kit's format; its value is the kit format version. */
export const KIT_VERSION_KEY = "ppc_gpt.perturbation_kit.version";
/** Metadata key holding the source model's tensor count, for provenance. */
export const KIT_SOURCE_TENSORS_KEY = "ppc_gpt.perturbation_kit.source_tensors";

function kvOf(file: string, e: GgufMetadataEntry): GgufKv {
    if (e.truncated)
        throw new DataError(file, undefined, `metadata array ${e.key} was read truncated`);
    if (e.type === "array") {
        const values = e.value as (number | bigint | boolean | string)[];
        return {key: e.key, type: "array", elementType: e.elementType as GgufScalarType, value: values};
    }
    return {key: e.key, type: e.type, value: e.value} as GgufKv;
}

/** sha256 and size of a file, streamed. */
export async function fileSha256(file: string): Promise<{sha256: string; size: number}> {
    const hash = crypto.createHash("sha256");
    let size = 0;
    for await (const chunk of fs.createReadStream(file, {highWaterMark: 1 << 22})) {
        hash.update(chunk as Buffer);
        size += (chunk as Buffer).length;
    }
    return {sha256: hash.digest("hex"), size};
}

/**
 * Writes `outPath` atomically: a GGUF with every metadata key of `modelPath` (tokenizer included)
 * and only its `token_embd.weight` tensor, byte for byte. Returns the kit's sha256 and size.
 */
export async function writePerturbationKit(modelPath: string, outPath: string): Promise<{sha256: string; size: number}> {
    if (path.resolve(modelPath) === path.resolve(outPath))
        throw new RangeError(`the kit ${outPath} is the model file; write to another path`);
    const gguf = await readGguf(modelPath, {maxArrayValues: 0x7fffffff});
    const tensor = gguf.tensors.find((t) => t.name === KIT_TENSOR);
    if (!tensor)
        throw new DataError(modelPath, undefined, `no ${KIT_TENSOR} tensor: the model has no token embeddings to perturb with`);
    if (typeof gguf.value("tokenizer.ggml.model") !== "string")
        throw new DataError(modelPath, undefined, "no tokenizer (tokenizer.ggml.model is missing)");
    const metadata = gguf.metadata
        .filter((e) => e.key !== KIT_VERSION_KEY && e.key !== KIT_SOURCE_TENSORS_KEY)
        .map((e) => kvOf(modelPath, e));
    if (!metadata.some((m) => m.key === "general.alignment"))
        metadata.push({key: "general.alignment", type: "uint32", value: gguf.info.alignment});
    metadata.push({key: KIT_VERSION_KEY, type: "uint32", value: 1});
    metadata.push({key: KIT_SOURCE_TENSORS_KEY, type: "uint32", value: gguf.tensors.length});
    await fs.promises.mkdir(path.dirname(path.resolve(outPath)), {recursive: true});
    await writeGguf(outPath, metadata, [{
        name: tensor.name, shape: tensor.shape, type: tensor.type,
        data: () => {
            const buf = Buffer.alloc(tensor.nBytes);
            const fd = fs.openSync(modelPath, "r");
            try {
                let done = 0;
                while (done < buf.length) {
                    const n = fs.readSync(fd, buf, done, buf.length - done, gguf.info.dataOffset + tensor.offset + done);
                    if (n === 0)
                        throw new DataError(modelPath, undefined, `${KIT_TENSOR} is truncated (file ends inside its data)`);
                    done += n;
                }
            } finally {
                fs.closeSync(fd);
            }
            return buf;
        },
    }]);
    return fileSha256(outPath);
}

/** True when `file` is a perturbation kit (a GGUF carrying the kit version key). */
export async function isPerturbationKit(file: string): Promise<boolean> {
    const g = await readGguf(file, {maxArrayValues: 1});
    return g.value(KIT_VERSION_KEY) !== undefined;
}
