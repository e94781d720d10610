// A model's vocabulary as the perturbation needs it: which tokens may be perturbed or emitted
// (text tokens) and which never (control, unknown, unused and user-defined tokens), each token's
// text, and a digest that identifies the tokenizer in the neighbour-index cache.
import crypto from "node:crypto";
import type {LoadedModel} from "../model.js";
import {native} from "../native.js";

/** llama.cpp's llama_token_attr bits. */
export const TokenAttribute = {
    UNKNOWN: 1 << 0,
    UNUSED: 1 << 1,
    NORMAL: 1 << 2,
    CONTROL: 1 << 3,
    USER_DEFINED: 1 << 4,
    BYTE: 1 << 5,
} as const;

export interface TokenVocabulary {
    size: number;
    /** llama_token_attr bits per token. */
    attributes: Int32Array;
    /** Raw vocabulary strings (e.g. "▁the", "<0x0A>"). */
    texts: string[];
    /** Detokenized text of each token alone (byte tokens: the byte as Latin-1 when ASCII, else ""). */
    pieces: string[];
    /** sha256 (hex) over every token's raw text and attributes. */
    sha256: string;
}

const byteToken = /^<0x([0-9A-Fa-f]{2})>$/;

/** Reads the vocabulary of a loaded model (a vocab-only load is enough). */
export function readVocabulary(model: LoadedModel): TokenVocabulary {
    const v = native().embedVocab(model.handle);
    const hash = crypto.createHash("sha256");
    hash.update("ppc-gpt/vocab/v1\n");
    const pieces = v.pieces.slice();
    for (let t = 0; t < v.texts.length; t++) {
        hash.update(`${v.attributes[t]}\t${v.texts[t]}\n`);
        if (v.attributes[t] & TokenAttribute.BYTE) {
            // A lone byte >= 0x80 is not text; its piece would be a replacement character.
            const m = byteToken.exec(v.texts[t]);
            const b = m ? parseInt(m[1], 16) : 0x80;
            pieces[t] = b < 0x80 ? String.fromCharCode(b) : "";
        }
    }
    return {size: v.texts.length, attributes: v.attributes, texts: v.texts, pieces, sha256: hash.digest("hex")};
}

/** True for tokens that stand for text: NORMAL or BYTE, and none of CONTROL, UNKNOWN, UNUSED, USER_DEFINED. */
export function isTextToken(v: TokenVocabulary, t: number): boolean {
    const a = v.attributes[t];
    const bad = TokenAttribute.CONTROL | TokenAttribute.UNKNOWN | TokenAttribute.UNUSED | TokenAttribute.USER_DEFINED;
    return (a & (TokenAttribute.NORMAL | TokenAttribute.BYTE)) !== 0 && (a & bad) === 0 && v.texts[t] !== "";
}

const punctuationOrSpace = /^[\s\p{P}\p{S}]+$/u;

/** True for text tokens made only of Unicode punctuation, symbols and whitespace. */
export function isPunctuationToken(v: TokenVocabulary, t: number): boolean {
    return isTextToken(v, t) && punctuationOrSpace.test(v.pieces[t]);
}

export interface DomainOptions {
    /** Leave punctuation/symbol/whitespace tokens out of the domain (they are then kept verbatim). */
    keepPunctuation?: boolean;
    /** Only tokens below this id (e.g. the embedding matrix's row count). */
    limit?: number;
}

/** The tokens a mechanism may perturb and emit, ascending. */
export function perturbationDomain(v: TokenVocabulary, o: DomainOptions = {}): Int32Array {
    const n = Math.min(v.size, o.limit ?? v.size);
    const out: number[] = [];
    for (let t = 0; t < n; t++)
        if (isTextToken(v, t) && !(o.keepPunctuation && isPunctuationToken(v, t)))
            out.push(t);
    return Int32Array.from(out);
}
