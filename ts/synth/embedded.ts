// Generator backend on a local GGUF model through node-llama-cpp: the chat template comes from the
// model, JSON schemas are enforced by grammars, and `sequences` requests run in parallel on one
// context (node-llama-cpp batches the sequences' tokens into shared decode calls).
import fs from "node:fs";
import path from "node:path";
import {getLlama, LlamaChat, LlamaLogLevel, type ChatHistoryItem, type Llama, type LlamaContext, type LlamaGrammar,
    type LlamaModel} from "node-llama-cpp";
import {GeneratorError, Semaphore, type GenerateRequest, type GenerateResult, type Generator, type JsonSchema} from "./generator.js";

export interface EmbeddedGeneratorOptions {
    /** Path of a GGUF model. */
    modelPath: string;
    /** Parallel sequences on the context (default 4). */
    sequences?: number;
    /** Context size of each sequence in tokens (default: the model's training context, between 2048 and 8192). */
    contextSize?: number;
    /** CPU threads (default: node-llama-cpp's choice). */
    threads?: number;
    /** false (default): CPU only; "auto": node-llama-cpp's prebuilt GPU backend when one works here. */
    gpu?: false | "auto";
    /** Layers to offload with a GPU (default: node-llama-cpp's choice). */
    gpuLayers?: number | "auto" | "max";
    batchSize?: number;
}

const llamas = new Map<string, Promise<Llama>>();

/** One Llama instance per GPU setting per process; never builds or downloads anything. */
function llamaInstance(gpu: false | "auto"): Promise<Llama> {
    const key = String(gpu);
    let p = llamas.get(key);
    if (!p) {
        p = getLlama({gpu, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false});
        llamas.set(key, p);
        p.catch(() => llamas.delete(key));
    }
    return p;
}

export class EmbeddedGenerator implements Generator {
    readonly name: string;
    readonly concurrency: number;
    readonly structuredOutput = "enforced" as const;
    private readonly semaphore: Semaphore;
    private readonly free: LlamaChat[];
    private readonly grammars = new Map<string, Promise<LlamaGrammar>>();

    private constructor(readonly llama: Llama, readonly model: LlamaModel, readonly context: LlamaContext, chats: LlamaChat[], modelPath: string) {
        this.name = `node-llama-cpp:${path.basename(modelPath)}`;
        this.concurrency = chats.length;
        this.free = chats;
        this.semaphore = new Semaphore(chats.length);
    }

    static async create(options: EmbeddedGeneratorOptions): Promise<EmbeddedGenerator> {
        const sequences = options.sequences ?? 4;
        if (!Number.isInteger(sequences) || sequences < 1)
            throw new RangeError(`sequences must be a positive integer (got ${options.sequences})`);
        try {
            await fs.promises.access(options.modelPath, fs.constants.R_OK);
        } catch (err) {
            throw new GeneratorError(`${options.modelPath}: cannot read the model (${(err as Error).message})`, true);
        }
        const llama = await llamaInstance(options.gpu ?? false);
        let model: LlamaModel;
        try {
            model = await llama.loadModel({modelPath: options.modelPath, gpuLayers: options.gpuLayers ?? (options.gpu ? "auto" : 0)});
        } catch (err) {
            throw new GeneratorError(`${options.modelPath}: cannot load the model: ${(err as Error).message}`, true, undefined, {cause: err});
        }
        try {
            const contextSize = options.contextSize ?? Math.min(8192, Math.max(2048, model.trainContextSize));
            const context = await model.createContext({sequences, contextSize, threads: options.threads, batchSize: options.batchSize});
            const chats = Array.from({length: sequences}, () => new LlamaChat({contextSequence: context.getSequence()}));
            return new EmbeddedGenerator(llama, model, context, chats, options.modelPath);
        } catch (err) {
            await model.dispose();
            throw new GeneratorError(`${options.modelPath}: cannot create a context: ${(err as Error).message}`, true, undefined, {cause: err});
        }
    }

    private grammar(schema: JsonSchema): Promise<LlamaGrammar> {
        const key = JSON.stringify(schema);
        let g = this.grammars.get(key);
        if (!g) {
            g = this.llama.createGrammarForJsonSchema(schema as any) as Promise<LlamaGrammar>;
            this.grammars.set(key, g);
        }
        return g;
    }

    async generate(request: GenerateRequest): Promise<GenerateResult> {
        const grammar = request.jsonSchema ? await this.grammar(request.jsonSchema.schema) : undefined;
        await this.semaphore.acquire(request.signal);
        const chat = this.free.pop()!;
        try {
            const history: ChatHistoryItem[] = request.messages.map((m): ChatHistoryItem =>
                m.role === "system" ? {type: "system", text: m.content}
                    : m.role === "user" ? {type: "user", text: m.content}
                        : {type: "model", response: [m.content]});
            history.push({type: "model", response: []});
            let completionTokens = 0;
            const inputBefore = chat.sequence.tokenMeter.usedInputTokens;
            const res = await chat.generateResponse(history, {
                temperature: request.temperature,
                maxTokens: request.maxTokens,
                seed: request.seed,
                grammar,
                customStopTriggers: request.stop,
                signal: request.signal,
                onToken: (tokens) => {
                    completionTokens += tokens.length;
                },
            });
            const reason = res.metadata.stopReason;
            return {
                text: res.response,
                finishReason: reason === "maxTokens" ? "length" : reason === "abort" || reason === "functionCalls" ? "other" : "stop",
                structured: grammar !== undefined,
                // prompt tokens actually evaluated (a prefix still in the sequence's KV cache is reused, not counted)
                promptTokens: chat.sequence.tokenMeter.usedInputTokens - inputBefore,
                completionTokens,
            };
        } finally {
            this.free.push(chat);
            this.semaphore.release();
        }
    }

    async close(): Promise<void> {
        for (const chat of this.free)
            chat.dispose();
        await this.context.dispose();
        await this.model.dispose();
    }
}

export function createEmbeddedGenerator(options: EmbeddedGeneratorOptions): Promise<EmbeddedGenerator> {
    return EmbeddedGenerator.create(options);
}
