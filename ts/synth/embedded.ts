// Generator backend on a local GGUF model. The weights run in the addon's llama.cpp with continuous
// batching (ts/generate: every request in flight decodes in one llama_decode per step).
// node-llama-cpp, with the model's vocabulary only, supplies what it does well: the chat template
// (resolveChatWrapper, Jinja included), its stop triggers, and JSON-schema grammars (GBNF).
import fs from "node:fs";
import path from "node:path";
import {getLlama, isLlamaText, LlamaLogLevel, resolveChatWrapper, SpecialToken, SpecialTokensText, type ChatHistoryItem, type ChatWrapper, type Llama,
    type LlamaModel, type LlamaText, type LlamaTextValue, type Token} from "node-llama-cpp";
import {BatchGenerator} from "../generate/batch-generator.js";
import {loadModel, type LoadedModel} from "../model.js";
import {GeneratorError, type ChatMessage, type GenerateRequest, type GenerateResult, type Generator, type JsonSchema} from "./generator.js";

export interface EmbeddedGeneratorOptions {
    /** Path of a GGUF model. */
    modelPath: string;
    /** Sequences decoded together (default 4). */
    sequences?: number;
    /** Context of each sequence in tokens, prompt and reply (default: the model's training context, between 2048 and 8192). */
    contextSize?: number;
    /** CPU threads (default: all cores). */
    threads?: number;
    /** Layers offloaded to the GPU in a CUDA build of the addon (default 0). */
    gpuLayers?: number;
    /** Tokens per decode step (default 512). */
    batchSize?: number;
}

let llamaPromise: Promise<Llama> | undefined;

/** node-llama-cpp for templates, tokenization and grammars only: its CPU binary, never built or downloaded. */
function llamaInstance(): Promise<Llama> {
    llamaPromise ??= getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false});
    llamaPromise.catch(() => { llamaPromise = undefined; });
    return llamaPromise;
}

interface CompiledGrammar {
    gbnf: string;
    root: string;
    /** node-llama-cpp's JSON grammars end in a run of newlines and stop on it (then trim it). */
    stop: string[];
}

export class EmbeddedGenerator implements Generator {
    readonly name: string;
    readonly concurrency: number;
    readonly structuredOutput = "enforced" as const;
    private readonly grammars = new Map<string, Promise<CompiledGrammar>>();
    private readonly stopStrings: string[] = [];
    private readonly stopTokens: number[] = [];

    private constructor(private readonly llama: Llama, private readonly vocab: LlamaModel, private readonly chatWrapper: ChatWrapper,
        private readonly model: LoadedModel, private readonly batch: BatchGenerator, modelPath: string) {
        this.name = `ppc-gpt:${path.basename(modelPath)}`;
        this.concurrency = batch.options.sequences ?? 4;
    }

    static async create(options: EmbeddedGeneratorOptions): Promise<EmbeddedGenerator> {
        const sequences = options.sequences ?? 4;
        if (!Number.isInteger(sequences) || sequences < 1 || sequences > 256)
            throw new RangeError(`sequences must be an integer in [1, 256] (got ${options.sequences})`);
        try {
            await fs.promises.access(options.modelPath, fs.constants.R_OK);
        } catch (err) {
            throw new GeneratorError(`${options.modelPath}: cannot read the model (${(err as Error).message})`, true);
        }
        const llama = await llamaInstance();
        let vocab: LlamaModel | undefined;
        let model: LoadedModel | undefined;
        try {
            vocab = await llama.loadModel({modelPath: options.modelPath, vocabOnly: true});
            model = await loadModel(options.modelPath, {threads: options.threads, gpuLayers: options.gpuLayers});
            const contextSize = options.contextSize ?? Math.min(8192, Math.max(2048, model.info.nCtxTrain));
            const batch = await BatchGenerator.open(model, {sequences, contextSize, threads: options.threads,
                batchSize: Math.max(options.batchSize ?? 512, sequences)});
            const generator = new EmbeddedGenerator(llama, vocab, resolveChatWrapper(vocab), model, batch, options.modelPath);
            generator.resolveStopTriggers();
            return generator;
        } catch (err) {
            model?.close();
            await vocab?.dispose();
            throw new GeneratorError(`${options.modelPath}: cannot load the model: ${(err as Error).message}`, true, undefined, {cause: err});
        }
    }

    /** The chat template's end-of-turn triggers. */
    private resolveStopTriggers(): void {
        const {stopGenerationTriggers} = this.chatWrapper.generateContextState({chatHistory: [{type: "model", response: []}]});
        const stops = this.stops(stopGenerationTriggers);
        this.stopStrings.push(...stops.strings);
        this.stopTokens.push(...stops.tokens);
    }

    /** node-llama-cpp stop triggers as the generator takes them: plain text a stop string, a lone special token a stop token. */
    private stops(triggers: readonly (string | LlamaText | readonly (string | Token)[])[]): {strings: string[]; tokens: number[]} {
        const strings: string[] = [], tokens: number[] = [];
        for (const trigger of triggers) {
            const raw: readonly (LlamaTextValue | Token)[] = typeof trigger === "string" ? [trigger] : isLlamaText(trigger) ? trigger.values : trigger;
            const values = raw.filter((v) => v !== "");
            if (values.length > 0 && values.every((v): v is string => typeof v === "string")) {
                strings.push(values.join(""));
                continue;
            }
            const v = values.length === 1 ? values[0] : undefined;
            const ids = typeof v === "number" ? [v]
                : v instanceof SpecialToken ? v.tokenize(this.vocab.tokenizer)
                    : v instanceof SpecialTokensText ? v.tokenizeSpecialTokensOnly(this.vocab.tokenizer).filter((x) => typeof x !== "string")
                        : [];  // a mix of text and special tokens: no template in node-llama-cpp ends a turn with one
            if (ids.length === 1)
                tokens.push(ids[0] as number);
        }
        return {strings, tokens};
    }

    private grammar(schema: JsonSchema): Promise<CompiledGrammar> {
        const key = JSON.stringify(schema);
        let g = this.grammars.get(key);
        if (!g) {
            g = this.llama.createGrammarForJsonSchema(schema as any)
                .then((x) => ({gbnf: x.grammar, root: x.rootRuleName, stop: this.stops(x.stopGenerationTriggers).strings}));
            this.grammars.set(key, g);
        }
        return g;
    }

    /** The prompt as the model's chat template renders it, ending where the assistant's reply begins. */
    promptTokens(messages: ChatMessage[]): Int32Array {
        const history: ChatHistoryItem[] = messages.map((m): ChatHistoryItem =>
            m.role === "system" ? {type: "system", text: m.content}
                : m.role === "user" ? {type: "user", text: m.content}
                    : {type: "model", response: [m.content]});
        history.push({type: "model", response: []});
        const {contextText} = this.chatWrapper.generateContextState({chatHistory: history});
        return Int32Array.from(contextText.tokenize(this.vocab.tokenizer));
    }

    async generate(request: GenerateRequest): Promise<GenerateResult> {
        const grammar = request.jsonSchema ? await this.grammar(request.jsonSchema.schema) : undefined;
        const prompt = this.promptTokens(request.messages);
        let res;
        try {
            res = await this.batch.generate({
                prompt,
                temperature: request.temperature,
                maxTokens: request.maxTokens,
                seed: request.seed,
                grammar: grammar?.gbnf,
                grammarRoot: grammar?.root,
                stop: [...this.stopStrings, ...(grammar?.stop ?? []), ...(request.stop ?? [])],
                stopTokens: Int32Array.from(this.stopTokens),
                signal: request.signal,
            });
        } catch (err) {
            if (err instanceof RangeError)  // this request can never run here (e.g. prompt longer than the context)
                throw new GeneratorError(`${this.name}: ${err.message}`, false, undefined, {cause: err});
            throw err;
        }
        return {
            text: res.text.trim(),
            finishReason: res.finish,
            structured: grammar !== undefined,
            promptTokens: res.promptTokens,
            completionTokens: res.completionTokens,
        };
    }

    async close(): Promise<void> {
        await this.batch.close();
        this.model.close();
        await this.vocab.dispose();
    }
}

/** A generator running a local GGUF model in process (node-llama-cpp), for `synthesize`. */
export function createEmbeddedGenerator(options: EmbeddedGeneratorOptions): Promise<EmbeddedGenerator> {
    return EmbeddedGenerator.create(options);
}
