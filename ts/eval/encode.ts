// Tokenization of (context, continuation) pairs exactly as lm-evaluation-harness's HFLM does it
// (`_encode_pair`): trailing whitespace of the context moves to the continuation; the whole string
// and the context are encoded separately and the continuation is the whole encoding's tokens after
// the context's token count. BOS is prepended to both encodings when the model's GGUF asks for it
// (tokenizer.ggml.add_bos_token), as llama.cpp itself does; `bos` overrides that.
import type {LoadedModel} from "../model.js";
import {native, type NativeVocabInfo} from "../native.js";

export interface EncodeOptions {
    /** Prepend BOS to every encoding: default the model's add_bos_token metadata. */
    bos?: boolean;
    /** Longest token sequence the model sees (context + continuation - 1); longer contexts lose
     * tokens on the left, as in the harness. Default: the model's training context. */
    maxLength?: number;
}

export interface EncodedPair {
    context: Int32Array;
    continuation: Int32Array;
}

/** Tokenizer facts about a loaded model: BOS/EOS and whether the model adds them. */
export function vocabInfo(model: LoadedModel): NativeVocabInfo {
    return native().modelVocabInfo(model.handle);
}

/** Tokenizes harness-style; `encodePair` is built on it. */
export class PairEncoder {
    readonly addBos: boolean;
    readonly maxLength: number;
    /** The token that stands for an empty context (BOS, or EOS for models without BOS). */
    readonly prefixToken: number;
    private readonly bos: number;

    constructor(readonly model: LoadedModel, options: EncodeOptions = {}) {
        const info = vocabInfo(model);
        this.addBos = options.bos ?? info.addBos;
        if (this.addBos && info.bos < 0)
            throw new Error(`${model.path}: the model has no BOS token to prepend`);
        this.bos = info.bos;
        this.prefixToken = info.bos >= 0 ? info.bos : info.eos;
        this.maxLength = options.maxLength ?? (info.nCtxTrain > 0 ? info.nCtxTrain : 2048);
        if (!Number.isInteger(this.maxLength) || this.maxLength < 2)
            throw new Error(`maxLength must be an integer >= 2 (got ${this.maxLength})`);
    }

    /** tok_encode: the text's tokens, with BOS first when addBos. */
    encode(text: string): number[] {
        const t = Array.from(this.model.tokenize(text, {addSpecial: false, parseSpecial: false}));
        return this.addBos ? [this.bos, ...t] : t;
    }

    /** The harness's `_encode_pair` (plus its empty-context rule and left truncation). */
    encodePair(context: string, continuation: string): EncodedPair {
        let ctxTokens: number[];
        let contTokens: number[];
        if (context === "") {
            ctxTokens = [this.prefixToken];
            contTokens = Array.from(this.model.tokenize(continuation, {addSpecial: false, parseSpecial: false}));
        } else {
            const stripped = context.replace(/\s+$/u, "");
            const nSpaces = context.length - stripped.length;
            if (nSpaces > 0) {
                continuation = context.slice(stripped.length) + continuation;
                context = stripped;
            }
            const whole = this.encode(context + continuation);
            ctxTokens = this.encode(context);
            contTokens = whole.slice(ctxTokens.length);
        }
        if (contTokens.length === 0)
            throw new Error(`the continuation ${JSON.stringify(continuation)} has no tokens of its own after the context`);
        const total = ctxTokens.length + contTokens.length;
        if (total > this.maxLength + 1) {
            const keep = this.maxLength + 1 - contTokens.length;
            if (keep < 1)
                throw new Error(`the continuation has ${contTokens.length} tokens, more than the model's length ${this.maxLength}`);
            ctxTokens = ctxTokens.slice(ctxTokens.length - keep);
        }
        return {context: Int32Array.from(ctxTokens), continuation: Int32Array.from(contTokens)};
    }
}
