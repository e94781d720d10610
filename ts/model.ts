// A model loaded into the addon's llama.cpp: tokenization and full-sequence logits.
import {native, warnIfNoGpu, type NativeModel, type NativeModelInfo, type NativeModelOptions} from "./native.js";
import {checkOption, isInt} from "./options.js";

/** The one check of how a model is loaded (threads, GPU layers), for every stage that loads one. */
export function checkModelLoadOptions(options: Pick<NativeModelOptions, "threads" | "gpuLayers">): void {
    if (options.threads !== undefined)
        checkOption(isInt(options.threads, 1, 1024), "threads", "an integer in [1, 1024]", options.threads);
    if (options.gpuLayers !== undefined)
        checkOption(isInt(options.gpuLayers, -1, 100000), "gpuLayers", "an integer >= -1 (-1 or 999: all)", options.gpuLayers);
}

export interface LoadedModel {
    readonly path: string;
    readonly info: NativeModelInfo;
    /** Tokenizes as llama.cpp does; `addSpecial` adds BOS/EOS as the model's metadata asks (default true). */
    tokenize(text: string, options?: {addSpecial?: boolean; parseSpecial?: boolean}): Int32Array;
    tokenToPiece(token: number): string;
    detokenize(tokens: Int32Array | number[], options?: {removeSpecial?: boolean; unparseSpecial?: boolean}): string;
    /** Logits of every position of one sequence starting at position 0: tokens.length × nVocab, row-major (row t at t·nVocab). */
    logits(tokens: Int32Array | number[]): Promise<Float32Array>;
    close(): void;
    /** The underlying addon object, for native functions that take a model. */
    readonly handle: NativeModel;
}

/** Load a GGUF model through the native addon: tokenize, logits, layer hidden states. */
export async function loadModel(path: string, options: NativeModelOptions = {}): Promise<LoadedModel> {
    checkModelLoadOptions(options);
    warnIfNoGpu(options.gpuLayers);
    const m: NativeModel = await native().loadModel(path, options);
    const info = m.info();
    return {
        path,
        info,
        tokenize: (text, o = {}) => m.tokenize(text, o.addSpecial ?? true, o.parseSpecial ?? false),
        tokenToPiece: (t) => m.tokenToPiece(t),
        detokenize: (tokens, o = {}) => m.detokenize(tokens instanceof Int32Array ? tokens : Int32Array.from(tokens),
            o.removeSpecial ?? false, o.unparseSpecial ?? false),
        logits: (tokens) => m.evalLogits(tokens instanceof Int32Array ? tokens : Int32Array.from(tokens)),
        close: () => m.close(),
        handle: m,
    };
}
