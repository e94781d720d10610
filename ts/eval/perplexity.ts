// Perplexity of a text, the way lm-evaluation-harness computes loglikelihood_rolling: the text's
// tokens (no BOS) are cut into windows of at most `window` tokens; the first window is predicted
// from the prefix token (BOS, else EOS), every later one from the tokens before it; each token is
// predicted exactly once. With `stride` < `window`, each window predicts `stride` new tokens and
// sees up to window - stride earlier ones as context (llama.cpp's perplexity uses window / 2).
import {checkPerplexityOptions} from "./options.js";
import {loadModel, type LoadedModel} from "../model.js";
import {vocabInfo} from "./encode.js";
import {LoglikScorer, type LoglikScorerOptions, type TokenRequest} from "./loglik.js";

export interface PerplexityOptions extends Omit<LoglikScorerOptions, "shareContext"> {
    /** Tokens the model sees at once (harness: max_length). Default: min(training context, 2048). */
    window?: number;
    /** New tokens predicted per window after the first (harness: max_length - context_len + 1). Default: window. */
    stride?: number;
    gpuLayers?: number;
    onProgress?: (done: number, total: number) => void;
    signal?: AbortSignal;
}

export interface PerplexityResult {
    /** Tokens predicted (every token of the text). */
    tokens: number;
    windows: number;
    window: number;
    stride: number;
    /** Sum of log p over all tokens. */
    loglikelihood: number;
    /** exp(-loglikelihood / tokens). */
    perplexity: number;
    /** lm-evaluation-harness's rolling metrics: words split on whitespace, bytes in UTF-8. */
    words: number;
    bytes: number;
    word_perplexity: number;
    byte_perplexity: number;
    bits_per_byte: number;
}

/** The harness's get_rolling_token_windows + make_disjoint_window, as (context, continuation) requests. */
export function rollingWindows(tokens: ArrayLike<number>, prefixToken: number, window: number, stride: number): TokenRequest[] {
    if (!Number.isInteger(window) || window < 1)
        throw new Error(`window must be a positive integer (got ${window})`);
    if (!Number.isInteger(stride) || stride < 1 || stride > window)
        throw new Error(`stride must be an integer in [1, window] (got ${stride})`);
    const list = Array.from(tokens);
    const out: TokenRequest[] = [];
    if (list.length === 0)
        return out;
    const first = Math.min(window, list.length);
    out.push({context: [prefixToken], continuations: [list.slice(0, first)]});
    let predicted = first;
    while (predicted < list.length) {
        const n = Math.min(list.length - predicted, stride);
        const end = predicted + n;
        const start = Math.max(0, end - window - 1);
        // input = list[start : end - 1], targets = list[end - n : end]; the context is the input
        // before the first target.
        out.push({context: list.slice(start, end - n), continuations: [list.slice(end - n, end)]});
        predicted = end;
    }
    return out;
}

/** Perplexity of `text` under a model (a GGUF path or a loaded model). */
export async function perplexity(model: string | LoadedModel, text: string, options: PerplexityOptions = {}): Promise<PerplexityResult> {
    checkPerplexityOptions(options);
    const loaded = typeof model === "string" ? await loadModel(model, {threads: options.threads, gpuLayers: options.gpuLayers}) : model;
    try {
        const info = vocabInfo(loaded);
        const prefix = info.bos >= 0 ? info.bos : info.eos;
        if (prefix < 0)
            throw new Error(`${loaded.path}: the model has neither BOS nor EOS to start the first window`);
        const window = options.window ?? Math.min(info.nCtxTrain > 0 ? info.nCtxTrain : 2048, 2048);
        const stride = options.stride ?? window;
        const tokens = loaded.tokenize(text, {addSpecial: false, parseSpecial: false});
        if (tokens.length === 0)
            throw new Error("the text has no tokens");
        const requests = rollingWindows(tokens, prefix, window, stride);
        const scorer = await LoglikScorer.open(loaded, {...options, contextSize: options.contextSize ?? window + 1});
        let scores;
        try {
            scores = await scorer.score(requests, {onProgress: options.onProgress, signal: options.signal});
        } finally {
            scorer.close();
        }
        let ll = 0;
        for (const s of scores)
            ll += s[0].logprob;
        const words = text.split(/\s+/u).length;
        const bytes = Buffer.byteLength(text, "utf8");
        return {
            tokens: tokens.length, windows: requests.length, window, stride,
            loglikelihood: ll,
            perplexity: Math.exp(-ll / tokens.length),
            words, bytes,
            word_perplexity: Math.exp(-ll / words),
            byte_perplexity: Math.exp(-ll / bytes),
            bits_per_byte: -ll / bytes / Math.LN2,
        };
    } finally {
        if (typeof model === "string")
            loaded.close();
    }
}
