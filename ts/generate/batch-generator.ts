// Continuous-batching generation on the addon's llama.cpp: every request in flight decodes in one
// llama_decode per step (native/generate). Requests are awaited one by one; the batching happens
// underneath, so callers just issue `generate()` calls concurrently.
import type {LoadedModel} from "../model.js";
import {native, type NativeGenerationRequest, type NativeGenerationResult, type NativeGenerator,
    type NativeGeneratorOptions} from "../native.js";

export type BatchGeneratorOptions = NativeGeneratorOptions;

export interface GenerationRequest extends Omit<NativeGenerationRequest, "prompt"> {
    /** Prompt tokens (already formatted with the chat template, BOS included where the model wants it). */
    prompt: Int32Array | readonly number[];
    /** Aborting ends the request at the next step; its promise rejects with the signal's reason. */
    signal?: AbortSignal;
}

export interface GenerationResult {
    text: string;
    /** The reply's tokens (an end-of-generation or stop token is not included; a stop string's last token is). */
    tokens: Int32Array;
    /** "stop": an end-of-generation token or a stop string; "length": maxTokens or the context ran out. */
    finish: "stop" | "length";
    promptTokens: number;
    completionTokens: number;
}

interface Waiter {
    resolve(r: GenerationResult): void;
    reject(e: unknown): void;
    signal?: AbortSignal;
    onAbort?: () => void;
}

/** Continuous batched sampling on one loaded model: many prompts decoded together in one llama.cpp context. */
export class BatchGenerator {
    private readonly waiters = new Map<number, Waiter>();
    private loop: Promise<void> | undefined;
    private closed = false;

    private constructor(private readonly generator: NativeGenerator, readonly model: LoadedModel, readonly options: BatchGeneratorOptions) {}

    /** A generation context on `model` with `sequences` slots (default 4). */
    static async open(model: LoadedModel, options: BatchGeneratorOptions = {}): Promise<BatchGenerator> {
        return new BatchGenerator(await native().BatchGenerator.open(model.handle, options), model, options);
    }

    /** Requests queued or decoding. */
    get pending(): number {
        return this.waiters.size;
    }

    generate(request: GenerationRequest): Promise<GenerationResult> {
        if (this.closed)
            return Promise.reject(new Error("the generator was closed"));
        if (request.signal?.aborted)
            return Promise.reject(request.signal.reason);
        const {signal, prompt, ...rest} = request;
        let id: number;
        try {  // a request that can never run (RangeError) rejects before anything is queued
            id = this.generator.submit({...rest, prompt: prompt instanceof Int32Array ? prompt : Int32Array.from(prompt)});
        } catch (err) {
            return Promise.reject(err);
        }
        return new Promise<GenerationResult>((resolve, reject) => {
            const w: Waiter = {resolve, reject, signal};
            if (signal) {
                w.onAbort = () => this.generator.cancel(id);
                signal.addEventListener("abort", w.onAbort, {once: true});
            }
            this.waiters.set(id, w);
            this.loop ??= this.drive();
        });
    }

    /** Keeps one native run in flight while anything is pending; a run returns as requests finish. */
    private async drive(): Promise<void> {
        try {
            while (this.waiters.size > 0) {
                const done = await this.generator.run();
                if (done.length === 0 && this.waiters.size > 0)
                    throw new Error("the native generator went idle with requests pending");
                for (const r of done)
                    this.settle(r);
            }
        } catch (err) {
            const e = this.closed ? new Error("the generator was closed") : err;
            for (const [id, w] of this.waiters)
                this.settle({id, text: "", tokens: new Int32Array(0), finish: "cancelled", promptTokens: 0, completionTokens: 0}, e, w);
        } finally {
            this.loop = undefined;
        }
    }

    private settle(r: NativeGenerationResult, error?: unknown, w = this.waiters.get(r.id)): void {
        if (!w)
            return;
        this.waiters.delete(r.id);
        if (w.onAbort)
            w.signal!.removeEventListener("abort", w.onAbort);
        if (error !== undefined)
            w.reject(error);
        else if (r.finish === "cancelled")
            w.reject(w.signal?.reason ?? new Error("generation cancelled"));
        else
            w.resolve({text: r.text, tokens: r.tokens, finish: r.finish, promptTokens: r.promptTokens, completionTokens: r.completionTokens});
    }

    /** Stops after the current step; pending requests reject. The model stays loaded (its owner closes it). */
    async close(): Promise<void> {
        if (this.closed)
            return;
        this.closed = true;
        this.generator.close();
        await this.loop;
    }
}
