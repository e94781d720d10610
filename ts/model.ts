// A model loaded into the addon's llama.cpp: tokenization and full-sequence logits.
import {native, type NativeModel, type NativeModelInfo, type NativeModelOptions} from "./native.js";

export interface LoadedModel {
    readonly path: string;
    readonly info: NativeModelInfo;
    /** Tokenizes as llama.cpp does; `addSpecial` adds BOS/EOS as the model's metadata asks (default true). */
    tokenize(text: string, options?: {addSpecial?: boolean; parseSpecial?: boolean}): Int32Array;
    tokenToPiece(token: number): string;
    /** Logits of every position of one sequence starting at position 0: [tokens.length][nVocab]. */
    logits(tokens: Int32Array | number[]): Promise<Float32Array>;
    close(): void;
}

export async function loadModel(path: string, options: NativeModelOptions = {}): Promise<LoadedModel> {
    const m: NativeModel = await native().loadModel(path, options);
    const info = m.info();
    return {
        path,
        info,
        tokenize: (text, o = {}) => m.tokenize(text, o.addSpecial ?? true, o.parseSpecial ?? false),
        tokenToPiece: (t) => m.tokenToPiece(t),
        logits: (tokens) => m.evalLogits(tokens instanceof Int32Array ? tokens : Int32Array.from(tokens)),
        close: () => m.close(),
    };
}
