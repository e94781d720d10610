// Batched log-likelihood scoring over the native scorer: each request's context is evaluated once
// and shared (KV-cache sequence copy) by all its continuations; many requests go into one decode.
import type {LoadedModel} from "../model.js";
import {native, type NativeLoglikOptions, type NativeLoglikScorer} from "../native.js";

export interface LoraAdapterSpec {
    /** A llama.cpp LoRA adapter GGUF (general.type = adapter, adapter.type = lora). */
    path: string;
    /** Multiplies alpha / r (llama.cpp's adapter scale). Default 1. */
    scale?: number;
}

/** A scoring context's options (contextSize, batchSize, sequences, threads, shareContext, flashAttention,
 * kvCacheType, lora): passed to the native scorer as they are, so they are declared once, with it. */
export interface LoglikScorerOptions extends NativeLoglikOptions {
    /** LoRA adapters applied to the base weights at run time, never merged. */
    lora?: LoraAdapterSpec[];
}

export interface TokenRequest {
    /** At least one token (a context that is empty as text is [BOS]). */
    context: Int32Array | number[];
    continuations: (Int32Array | number[])[];
}

export interface ContinuationScore {
    /** Sum over the continuation's tokens of log p(token | context and the tokens before it). */
    logprob: number;
    /** Every token of the continuation is the model's argmax. */
    isGreedy: boolean;
    /** Tokens in the continuation. */
    tokens: number;
}

export interface ScoreOptions {
    /** (requests done, requests total). */
    onProgress?: (done: number, total: number) => void;
    signal?: AbortSignal;
}

const asInt32 = (t: Int32Array | number[]) => (t instanceof Int32Array ? t : Int32Array.from(t));

/** A scoring context on a loaded model, reusable across calls; close() frees it (and its adapters). */
export class LoglikScorer {
    private constructor(readonly model: LoadedModel, private readonly scorer: NativeLoglikScorer, readonly options: Readonly<LoglikScorerOptions>) {}

    static async open(model: LoadedModel, options: LoglikScorerOptions = {}): Promise<LoglikScorer> {
        for (const a of options.lora ?? []) {
            if (a.scale !== undefined && !Number.isFinite(a.scale))
                throw new Error(`LoRA adapter ${a.path}: scale must be a finite number`);
        }
        return new LoglikScorer(model, await native().LoglikScorer.open(model.handle, options), {...options});
    }

    /** Scores every continuation of every request; result[i][j] belongs to requests[i].continuations[j]. */
    async score(requests: TokenRequest[], options: ScoreOptions = {}): Promise<ContinuationScore[][]> {
        const {signal} = options;
        signal?.throwIfAborted();
        const onAbort = () => this.scorer.cancel();
        signal?.addEventListener("abort", onAbort, {once: true});
        let raw;
        try {
            raw = await this.scorer.score(requests.map((r) => ({
                context: asInt32(r.context),
                continuations: r.continuations.map(asInt32),
            })), options.onProgress);
        } catch (err) {
            signal?.throwIfAborted();
            throw err;
        } finally {
            signal?.removeEventListener("abort", onAbort);
        }
        const out: ContinuationScore[][] = [];
        let k = 0;
        for (const r of requests) {
            const row: ContinuationScore[] = [];
            for (let j = 0; j < r.continuations.length; j++, k++)
                row.push({logprob: raw.logprobs[k], isGreedy: raw.greedy[k] === 1, tokens: raw.tokens[k]});
            out.push(row);
        }
        return out;
    }

    close(): void {
        this.scorer.close();
    }
}

/** One-shot scoring: opens a scorer, scores, closes it. */
export async function scoreLoglikelihoods(model: LoadedModel, requests: TokenRequest[],
    options: LoglikScorerOptions & ScoreOptions = {}): Promise<ContinuationScore[][]> {
    const scorer = await LoglikScorer.open(model, options);
    try {
        return await scorer.score(requests, options);
    } finally {
        scorer.close();
    }
}
