// Generator backend for any OpenAI-compatible /v1/chat/completions server (vLLM, llama.cpp's
// server, hosted APIs). Requests are limited to `concurrency` at a time; 429, 5xx, timeouts and
// network errors are retried with exponential backoff and jitter, honouring Retry-After. Optional
// request fields the server refuses (response_format, seed, max_tokens) are downgraded once and
// the downgrade is kept for the rest of the run.
import {GeneratorError, Semaphore, type GenerateRequest, type GenerateResult, type Generator,
    type StructuredOutputSupport} from "./generator.js";

/** `response_format` ladder: schema-enforced JSON, any JSON, plain text. */
export type ResponseFormatLevel = "json_schema" | "json_object" | "none";

export interface RemoteGeneratorOptions {
    /** Server URL: "http://host:8000/v1", "http://host:8000" (/v1 is added) or a full .../chat/completions URL. */
    baseUrl: string;
    /** Model name sent in every request. */
    model: string;
    /** API key; default: the environment variable named by `apiKeyEnv`. */
    apiKey?: string;
    /** Environment variable(s) holding the API key; default PPC_GPT_API_KEY, then OPENAI_API_KEY. */
    apiKeyEnv?: string | string[];
    /** Requests in flight at once (default 8). */
    concurrency?: number;
    /** Per-request timeout in milliseconds, reading the whole reply included (default 300 000). */
    timeoutMs?: number;
    /** Retries after the first try for 429, 5xx, timeouts and network errors (default 6). */
    maxRetries?: number;
    /** First backoff delay in milliseconds; doubles each retry (default 500). */
    retryBaseMs?: number;
    /** Largest backoff delay in milliseconds (default 30 000). */
    retryMaxMs?: number;
    /** Largest Retry-After honoured, in milliseconds (default 120 000). */
    maxRetryAfterMs?: number;
    /** Highest `response_format` level to try (default "json_schema"). */
    responseFormat?: ResponseFormatLevel;
    /** Extra HTTP headers. */
    headers?: Record<string, string>;
    /** Told about every retry (for logs and progress). */
    onRetry?: (info: RetryInfo) => void;
}

export interface RetryInfo {
    retry: number;
    delayMs: number;
    reason: string;
}

export interface RemoteGeneratorStats {
    requests: number;
    retries: number;
    /** HTTP status (or "network" / "timeout") of every failed try, counted. */
    failures: Record<string, number>;
    /** Optional request fields dropped because the server refused them. */
    downgrades: string[];
}

export const defaultApiKeyEnv = ["PPC_GPT_API_KEY", "OPENAI_API_KEY"];

/** Resolves the chat-completions endpoint from a base URL; throws on a malformed URL. */
export function chatCompletionsUrl(baseUrl: string): URL {
    let url: URL;
    try {
        url = new URL(baseUrl);
    } catch {
        throw new GeneratorError(`--base-url "${baseUrl}" is not a URL (expected e.g. http://127.0.0.1:8000/v1)`, true);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:")
        throw new GeneratorError(`--base-url "${baseUrl}" must be an http:// or https:// URL`, true);
    const p = url.pathname.replace(/\/+$/, "");
    if (p.endsWith("/chat/completions"))
        url.pathname = p;
    else if (p === "")
        url.pathname = "/v1/chat/completions";
    else
        url.pathname = `${p}/chat/completions`;
    return url;
}

/** Milliseconds to wait from a Retry-After header (delta-seconds or HTTP-date); undefined if absent or unreadable. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
    if (value === null || value.trim() === "")
        return undefined;
    const v = value.trim();
    if (/^\d+(\.\d+)?$/.test(v))
        return Math.round(Number(v) * 1000);
    const date = Date.parse(v);
    return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

const levels: ResponseFormatLevel[] = ["json_schema", "json_object", "none"];

/** The fields one request still sends, and its retries so far. */
interface Attempt {
    level: ResponseFormatLevel;
    maxTokensField: "max_tokens" | "max_completion_tokens";
    sendSeed: boolean;
    retries: number;
}

interface TryOutcome {
    status: number;
    headers: Headers;
    body: string;
}

export class RemoteGenerator implements Generator {
    readonly name: string;
    readonly concurrency: number;
    readonly url: URL;
    readonly stats: RemoteGeneratorStats = {requests: 0, retries: 0, failures: {}, downgrades: []};
    private readonly semaphore: Semaphore;
    private readonly apiKey: string | undefined;
    private level: ResponseFormatLevel;
    private levelConfirmed = false;
    private maxTokensField: "max_tokens" | "max_completion_tokens" = "max_tokens";
    private sendSeed = true;
    private readonly closed = new AbortController();

    constructor(readonly options: RemoteGeneratorOptions) {
        if (!options.model)
            throw new GeneratorError("a remote generator needs a model name (--remote-model)", true);
        this.url = chatCompletionsUrl(options.baseUrl);
        this.concurrency = options.concurrency ?? 8;
        if (!Number.isInteger(this.concurrency) || this.concurrency < 1)
            throw new RangeError(`concurrency must be a positive integer (got ${options.concurrency})`);
        this.semaphore = new Semaphore(this.concurrency);
        this.level = options.responseFormat ?? "json_schema";
        this.name = `openai:${options.model}@${this.url.host}`;
        const envNames = options.apiKeyEnv === undefined ? defaultApiKeyEnv
            : Array.isArray(options.apiKeyEnv) ? options.apiKeyEnv : [options.apiKeyEnv];
        this.apiKey = options.apiKey ?? envNames.map((n) => process.env[n]).find((v) => v !== undefined && v !== "");
    }

    get structuredOutput(): StructuredOutputSupport {
        if (this.level === "none")
            return "none";
        return this.levelConfirmed ? "enforced" : "unknown";
    }

    get responseFormatLevel(): ResponseFormatLevel {
        return this.level;
    }

    async generate(request: GenerateRequest): Promise<GenerateResult> {
        return this.semaphore.run(() => this.generateNow(request), request.signal);
    }

    async close(): Promise<void> {
        this.closed.abort(new GeneratorError("generator closed", true));
    }

    private body(request: GenerateRequest, level: ResponseFormatLevel, maxTokensField: string, sendSeed: boolean): string {
        const body: Record<string, unknown> = {
            model: this.options.model,
            messages: request.messages,
            temperature: request.temperature,
            [maxTokensField]: request.maxTokens,
            stream: false,
        };
        if (request.stop && request.stop.length > 0)
            body.stop = request.stop;
        if (sendSeed && request.seed !== undefined)
            body.seed = request.seed;
        if (request.jsonSchema && level === "json_schema")
            body.response_format = {type: "json_schema", json_schema: {name: request.jsonSchema.name, schema: wireSchema(request.jsonSchema.schema), strict: true}};
        else if (request.jsonSchema && level === "json_object")
            body.response_format = {type: "json_object"};
        return JSON.stringify(body);
    }

    private async tryOnce(body: string, signal: AbortSignal | undefined): Promise<TryOutcome> {
        const timeout = AbortSignal.timeout(this.options.timeoutMs ?? 300_000);
        const signals = [timeout, this.closed.signal, ...(signal ? [signal] : [])];
        const headers: Record<string, string> = {"content-type": "application/json", accept: "application/json", ...this.options.headers};
        if (this.apiKey)
            headers.authorization = `Bearer ${this.apiKey}`;
        this.stats.requests++;
        const res = await fetch(this.url, {method: "POST", headers, body, signal: AbortSignal.any(signals)});
        return {status: res.status, headers: res.headers, body: await res.text()};
    }

    /** One request's tries: sends, retries with backoff, and drops optional fields a server refuses. */
    private async generateNow(request: GenerateRequest): Promise<GenerateResult> {
        const attempt: Attempt = {level: request.jsonSchema ? this.level : "none", maxTokensField: this.maxTokensField, sendSeed: this.sendSeed, retries: 0};
        for (;;) {
            request.signal?.throwIfAborted();
            let outcome: TryOutcome;
            try {
                outcome = await this.tryOnce(this.body(request, attempt.level, attempt.maxTokensField, attempt.sendSeed), request.signal);
            } catch (err) {
                await this.afterNetworkError(attempt, request, err);
                continue;
            }
            const {status, headers, body} = outcome;
            if (status >= 200 && status < 300) {
                const parsed = parseCompletion(body);
                if (typeof parsed !== "string") {
                    this.adopt(attempt, request);
                    return {...parsed, structured: attempt.level === "json_schema"};
                }
                this.stats.failures.protocol = (this.stats.failures.protocol ?? 0) + 1;
                await this.retryOrThrow(attempt, request, `HTTP ${status} but ${parsed}`, undefined, false, status);
                continue;
            }
            this.stats.failures[String(status)] = (this.stats.failures[String(status)] ?? 0) + 1;
            const message = errorMessage(body);
            if ((status === 400 || status === 422) && this.dropRefusedField(attempt, request, message))
                continue;
            if (status === 408 || status === 409 || status === 425 || status === 429 || status >= 500) {
                const retryAfterMs = headers.get("retry-after-ms");  // OpenAI and Azure send milliseconds too
                const wait = retryAfterMs !== null && /^\d+(\.\d+)?$/.test(retryAfterMs.trim()) ? Number(retryAfterMs)
                    : parseRetryAfter(headers.get("retry-after"));
                await this.retryOrThrow(attempt, request, `HTTP ${status}: ${message}`, wait, true, status);
                continue;
            }
            throw this.refusal(status, message);
        }
    }

    /** Waits before the next try ("equal jitter" backoff, at least Retry-After), or gives up after maxRetries. */
    private async retryOrThrow(attempt: Attempt, request: GenerateRequest, reason: string, retryAfterMs: number | undefined, fatal: boolean,
        status?: number): Promise<void> {
        if (attempt.retries >= (this.options.maxRetries ?? 6))
            throw new GeneratorError(`${this.url.href}: gave up after ${attempt.retries + 1} tries: ${reason}`, fatal, status);
        const base = this.options.retryBaseMs ?? 500;
        const cap = Math.min(this.options.retryMaxMs ?? 30_000, base * 2 ** attempt.retries);
        let delayMs = cap / 2 + Math.random() * cap / 2;  // "equal jitter": spread retries, keep a floor
        if (retryAfterMs !== undefined)
            delayMs = Math.max(delayMs, Math.min(retryAfterMs, this.options.maxRetryAfterMs ?? 120_000));
        attempt.retries++;
        this.stats.retries++;
        this.options.onRetry?.({retry: attempt.retries, delayMs, reason});
        await sleep(delayMs, AbortSignal.any([this.closed.signal, ...(request.signal ? [request.signal] : [])]));
    }

    /** A try that got no reply: the caller's abort or close ends the request; a timeout or network error is retried. */
    private async afterNetworkError(attempt: Attempt, request: GenerateRequest, err: unknown): Promise<void> {
        if (request.signal?.aborted)
            throw request.signal.reason;
        if (this.closed.signal.aborted)
            throw this.closed.signal.reason;
        const timedOut = (err as Error)?.name === "TimeoutError";
        const kind = timedOut ? "timeout" : "network";
        this.stats.failures[kind] = (this.stats.failures[kind] ?? 0) + 1;
        const reason = timedOut ? `no reply within ${this.options.timeoutMs ?? 300_000} ms` : networkErrorText(err);
        await this.retryOrThrow(attempt, request, reason, undefined, true);
    }

    /** After a reply: what worked (a lower response_format, the other max-tokens field, no seed) is used from now on. */
    private adopt(attempt: Attempt, request: GenerateRequest): void {
        if (request.jsonSchema) {
            if (attempt.level !== this.level && levels.indexOf(attempt.level) > levels.indexOf(this.level)) {
                this.stats.downgrades.push(`response_format ${this.level} -> ${attempt.level}`);
                this.level = attempt.level;
            }
            if (attempt.level === this.level && attempt.level !== "none")
                this.levelConfirmed = true;
        }
        if (attempt.maxTokensField !== this.maxTokensField) {
            this.stats.downgrades.push(`${this.maxTokensField} -> ${attempt.maxTokensField}`);
            this.maxTokensField = attempt.maxTokensField;
        }
        if (attempt.sendSeed !== this.sendSeed) {
            this.stats.downgrades.push("seed dropped");
            this.sendSeed = attempt.sendSeed;
        }
    }

    /** A 400/422 naming an optional field: drop or rename it and try again at once (true), else not (false). */
    private dropRefusedField(attempt: Attempt, request: GenerateRequest, message: string): boolean {
        const m = message.toLowerCase();
        if (attempt.maxTokensField === "max_tokens" && m.includes("max_completion_tokens")) {
            attempt.maxTokensField = "max_completion_tokens";
            return true;
        }
        if (attempt.sendSeed && request.seed !== undefined && /\bseed\b/.test(m)) {
            attempt.sendSeed = false;
            return true;
        }
        if (attempt.level !== "none" && !/context|too long|too many tokens|maximum.*length/.test(m)) {
            attempt.level = levels[levels.indexOf(attempt.level) + 1];
            return true;
        }
        return false;
    }

    /** The error of a status no retry mends: the key (401/403), the URL or model (404), or the request itself. */
    private refusal(status: number, message: string): GeneratorError {
        const where = this.url.href;
        if (status === 401 || status === 403)
            return new GeneratorError(`${where}: HTTP ${status} (${message}): check the API key ` +
                `(environment variable ${[this.options.apiKeyEnv ?? defaultApiKeyEnv].flat().join(" or ")})`, true, status);
        if (status === 404)
            return new GeneratorError(`${where}: HTTP 404 (${message}): check --base-url and the model name "${this.options.model}"`, true, status);
        return new GeneratorError(`${where}: HTTP ${status}: ${message}`, false, status);
    }
}

/** A generator speaking the OpenAI chat-completions protocol to a remote server, for `synthesize`. */
export function createRemoteGenerator(options: RemoteGeneratorOptions): RemoteGenerator {
    return new RemoteGenerator(options);
}

/** The schema as sent: OpenAI's strict mode refuses string length keywords (the reply parser checks lengths instead). */
export function wireSchema(schema: unknown): unknown {
    if (Array.isArray(schema))
        return schema.map(wireSchema);
    if (schema && typeof schema === "object") {
        const out: Record<string, unknown> = {};
        for (const [k, v] of Object.entries(schema))
            if (k !== "minLength" && k !== "maxLength")
                out[k] = k === "properties" ? Object.fromEntries(Object.entries(v as object).map(([p, s]) => [p, wireSchema(s)])) : wireSchema(v);
        return out;
    }
    return schema;
}

/** A server that streams although asked not to: server-sent events folded into one completion. */
function foldEventStream(body: string): any | undefined {
    if (!/^\s*data:/.test(body))
        return undefined;
    let content = "", finish: unknown = null, usage: unknown;
    for (const line of body.split(/\r?\n/)) {
        const m = /^data:\s*(.*)$/.exec(line);
        if (!m || m[1] === "[DONE]")
            continue;
        let chunk: any;
        try {
            chunk = JSON.parse(m[1]);
        } catch {
            return undefined;
        }
        const c = chunk?.choices?.[0];
        if (typeof c?.delta?.content === "string")
            content += c.delta.content;
        if (c?.finish_reason)
            finish = c.finish_reason;
        usage = chunk?.usage ?? usage;
    }
    return {choices: [{message: {role: "assistant", content}, finish_reason: finish}], usage};
}

/** Reads an OpenAI chat completion; returns a problem description if the body is not one. */
function parseCompletion(body: string): Omit<GenerateResult, "structured"> | string {
    let json: any;
    try {
        json = JSON.parse(body);
    } catch {
        json = foldEventStream(body);
        if (json === undefined)
            return `the reply is not JSON (${JSON.stringify(body.slice(0, 80))})`;
    }
    const choice = json?.choices?.[0];
    if (!choice || typeof choice !== "object")
        return "the reply has no choices[0]";
    const message = choice.message;
    if (!message || typeof message !== "object")
        return "the reply has no choices[0].message";
    let text: string;
    if (typeof message.content === "string")
        text = message.content;
    else if (Array.isArray(message.content))
        text = message.content.map((p: any) => (typeof p === "string" ? p : typeof p?.text === "string" ? p.text : "")).join("");
    else if (message.content === null || message.content === undefined)
        text = "";  // a refusal or an empty reply: the caller's parser rejects it
    else
        return "choices[0].message.content is neither text nor a list of parts";
    const fr = choice.finish_reason;
    const finishReason = fr === "stop" || fr === "eos" || fr === null || fr === undefined ? "stop" : fr === "length" ? "length" : "other";
    const usage = json.usage ?? {};
    return {
        text,
        finishReason,
        promptTokens: Number.isFinite(usage.prompt_tokens) ? usage.prompt_tokens : 0,
        completionTokens: Number.isFinite(usage.completion_tokens) ? usage.completion_tokens : 0,
    };
}

/** The human part of an error body: OpenAI's {"error": {"message"}}, else the start of the text. */
function errorMessage(body: string): string {
    try {
        const json = JSON.parse(body);
        const m = json?.error?.message ?? json?.message ?? json?.detail ?? json?.error;
        if (typeof m === "string" && m !== "")
            return m.slice(0, 500);
    } catch {
        // not JSON: fall through
    }
    const text = body.replace(/\s+/g, " ").trim();
    return text === "" ? "(empty body)" : text.slice(0, 200);
}

function networkErrorText(err: unknown): string {
    const e = err as {message?: string; cause?: {code?: string; message?: string}};
    const code = e?.cause?.code ?? e?.cause?.message;
    return code ? `${e.message ?? "network error"} (${code})` : e?.message ?? String(err);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
        if (signal.aborted)
            return reject(signal.reason);
        const timer = setTimeout(() => {
            signal.removeEventListener("abort", onAbort);
            resolve();
        }, ms);
        const onAbort = () => {
            clearTimeout(timer);
            reject(signal.reason);
        };
        signal.addEventListener("abort", onAbort, {once: true});
    });
}
