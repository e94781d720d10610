// One interface for every text generator the synthetic-data stage can use: an embedded GGUF model
// (node-llama-cpp) or any OpenAI-compatible chat server. The pipeline only sees this file.

export interface ChatMessage {
    role: "system" | "user" | "assistant";
    content: string;
}

/** A JSON schema in the subset both backends accept (node-llama-cpp grammars, OpenAI `json_schema`). */
export type JsonSchema = Readonly<Record<string, unknown>>;

export interface GenerateRequest {
    messages: ChatMessage[];
    /** Sampling temperature (> 0 for the answer votes, which must be able to disagree). */
    temperature: number;
    maxTokens: number;
    /**
     * Structured output: the reply must be JSON matching this schema. The embedded backend enforces
     * it with a grammar; the remote backend sends it as `response_format` where the server accepts it.
     */
    jsonSchema?: {name: string; schema: JsonSchema};
    /** Strings that end the reply (not included in it). */
    stop?: string[];
    /** Sampling seed, for reproducible runs where the backend supports one. */
    seed?: number;
    signal?: AbortSignal;
}

export type FinishReason = "stop" | "length" | "other";

export interface GenerateResult {
    text: string;
    finishReason: FinishReason;
    /** Whether `jsonSchema` was enforced by the backend for this reply. */
    structured: boolean;
    promptTokens: number;
    completionTokens: number;
}

/** How the backend handles `jsonSchema`: enforced, possibly enforced (not yet known), or ignored. */
export type StructuredOutputSupport = "enforced" | "unknown" | "none";

export interface Generator {
    /** Recorded in every synthetic item: backend and model, e.g. "node-llama-cpp:model.gguf". */
    readonly name: string;
    /** How many requests it serves at once (parallel sequences or HTTP requests). */
    readonly concurrency: number;
    readonly structuredOutput: StructuredOutputSupport;
    generate(request: GenerateRequest): Promise<GenerateResult>;
    close(): Promise<void>;
}

/**
 * A request that failed. `fatal` errors mean the whole run cannot go on (server unreachable after
 * every retry, bad credentials, unknown model); the others concern one request only (the server
 * refused this request, or answered with something that is not a chat completion).
 */
export class GeneratorError extends Error {
    override name = "GeneratorError";
    constructor(message: string, readonly fatal: boolean, readonly status?: number, options?: {cause?: unknown}) {
        super(message, options);
    }
}

/** A counting semaphore: at most `limit` holders; waiters are served first come, first served. */
export class Semaphore {
    private active = 0;
    private readonly waiting: (() => void)[] = [];
    constructor(readonly limit: number) {
        if (!Number.isInteger(limit) || limit < 1)
            throw new RangeError(`semaphore limit must be a positive integer (got ${limit})`);
    }

    async acquire(signal?: AbortSignal): Promise<void> {
        signal?.throwIfAborted();
        if (this.active < this.limit) {
            this.active++;
            return;
        }
        await new Promise<void>((resolve, reject) => {
            const grant = () => {
                signal?.removeEventListener("abort", onAbort);
                resolve();
            };
            const onAbort = () => {
                const i = this.waiting.indexOf(grant);
                if (i >= 0)
                    this.waiting.splice(i, 1);
                reject(signal!.reason);
            };
            this.waiting.push(grant);
            signal?.addEventListener("abort", onAbort, {once: true});
        });
    }

    release(): void {
        const next = this.waiting.shift();
        if (next)
            next();  // the slot passes straight to the next waiter
        else
            this.active--;
    }

    async run<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
        await this.acquire(signal);
        try {
            return await fn();
        } finally {
            this.release();
        }
    }
}
