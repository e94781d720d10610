// Loads the native addon and types its bindings; native-loader.ts chooses the binary.
import {noNativeError, selectNative, type NativeSelection} from "./native-loader.js";

/** A GGUF metadata value as the addon returns it (64-bit integers beyond 2^53 as bigint). */
export type GgufScalar = number | bigint | boolean | string;

export interface GgufMetadataEntry {
    key: string;
    /** GGUF value type: uint8 … float64, bool, string or array. */
    type: string;
    /** Arrays only: element type, full length, and whether `value` holds fewer elements. */
    elementType?: string;
    length?: number;
    truncated?: boolean;
    value: GgufScalar | GgufScalar[];
}

export interface GgufTensorInfo {
    name: string;
    /** ggml order: shape[0] is the contiguous (row) dimension. */
    shape: number[];
    /** ggml type name, e.g. "f32", "q8_0", "q4_K". */
    type: string;
    typeId: number;
    /** Offset within the data section. */
    offset: number;
    nBytes: number;
    nElements: number;
}

export interface GgufFileInfo {
    version: number;
    alignment: number;
    fileSize: number;
    dataOffset: number;
    metadata: GgufMetadataEntry[];
    tensors: GgufTensorInfo[];
}

export interface NativeLayerRemovalResult {
    layersBefore: number;
    layersAfter: number;
    removed: number[];
    kept: number[];
    originalKept: number[];
    bytesWritten: number;
    metadataChanged: string[];
}

export interface GgmlTypeInfo {
    id: number;
    name: string;
    blockSize: number;
    typeSize: number;
    quantized: boolean;
}

export interface NativeModelInfo {
    description: string;
    nLayer: number;
    nEmbd: number;
    nVocab: number;
    nCtxTrain: number;
    nParams: number;
    sizeBytes: number;
    bos: number;
    eos: number;
}

export interface NativeModel {
    info(): NativeModelInfo;
    tokenize(text: string, addSpecial: boolean, parseSpecial: boolean): Int32Array;
    tokenToPiece(token: number): string;
    detokenize(tokens: Int32Array, removeSpecial: boolean, unparseSpecial: boolean): string;
    /** Logits of every position, row-major [tokens.length][nVocab]. */
    evalLogits(tokens: Int32Array): Promise<Float32Array>;
    close(): void;
}

export interface NativeModelOptions {
    gpuLayers?: number;
    threads?: number;
    contextSize?: number;
    batchSize?: number;
    /** Load the tokenizer only (no weights): tokenize/detokenize work, evaluation does not. */
    vocabOnly?: boolean;
    /** logits(): flash attention on/off (default: llama.cpp's auto). */
    flashAttention?: boolean;
    /** logits(): KV cache type (default "f16", llama.cpp's default; "f32" avoids rounding keys and values). */
    kvCacheType?: "f16" | "f32";
}

export type ProgressCallback = (done: number, total: number) => void;

/** A log-likelihood scoring context (native/capture/loglik_bindings.cpp), from `LoglikScorer.open`. */
export interface NativeLoglikScorer {
    score(requests: NativeLoglikRequest[], onProgress?: ProgressCallback): Promise<NativeLoglikResult>;
    /** Stops the score() in flight (it rejects); harmless after close(). */
    cancel(): void;
    /** Frees the context once the call in flight (if any) is done with it; later calls throw. */
    close(): void;
    info(): {contextSize: number; batchSize: number; sequences: number; shareContext: boolean; flashAttention: boolean;
        kvCacheType: "f32" | "f16"; adapters: number};
}

/** The scoring context's options; the defaults are the native scorer's. `LoglikScorerOptions` (eval/loglik.ts) is this. */
export interface NativeLoglikOptions {
    /** KV cells in flight: the tokens of all requests packed into one pass; grows to fit a larger request.
     * Default (0): 256 on the CPU, where every token attends to the whole pool and small packs are
     * fastest; 2048 when the model is offloaded to a GPU. */
    contextSize?: number;
    /** Tokens per llama_decode. Default 512. */
    batchSize?: number;
    /** Sequences in flight (>= the largest number of choices, <= 256). Default 32. */
    sequences?: number;
    /** CPU threads; default: the model's setting, else all cores. */
    threads?: number;
    /** false re-evaluates the context for every continuation: the naive anchor, for benchmarks. Default true. */
    shareContext?: boolean;
    /** Flash attention. Default false: ggml's CPU kernel accumulates in fp16 for small batches, which
     * makes results depend on how tokens are batched (~1e-3); enable it for speed on GPUs. */
    flashAttention?: boolean;
    /** KV cache type. Default "f32": keys and values are not rounded to half precision, which moves
     * log-likelihoods by up to ~1e-2 on small models; "f16" halves the cache memory. */
    kvCacheType?: "f16" | "f32";
    /** LoRA adapters applied to the base weights at run time, never merged; scale multiplies alpha / r. */
    lora?: {path: string; scale?: number}[];
}

export interface NativeLoglikRequest {
    context: Int32Array;
    continuations: Int32Array[];
}

/** One entry per continuation, in request order. */
export interface NativeLoglikResult {
    logprobs: Float64Array;
    greedy: Uint8Array;
    tokens: Int32Array;
}

/** A continuous-batching generator (native/generate/bindings.cpp), from `BatchGenerator.open`. */
export interface NativeGenerator {
    /** Queues a request; throws RangeError for one that can never run (prompt too long, bad grammar...). */
    submit(request: NativeGenerationRequest): number;
    cancel(id: number): void;
    /** Decodes until at least one request finished; resolves with those; [] when idle. One run at a time. */
    run(): Promise<NativeGenerationResult[]>;
    /** Stops a run in flight after its current step and frees the context; later calls throw. */
    close(): void;
}

export interface NativeGeneratorOptions {
    /** Sequences decoded together (slots), 1..256 (default 4). */
    sequences?: number;
    /** KV cells of each sequence: prompt and reply together (default 2048). */
    contextSize?: number;
    /** Tokens per llama_decode, at least `sequences` (default 512). */
    batchSize?: number;
    threads?: number;
    /** Default: llama.cpp's choice (auto). */
    flashAttention?: boolean;
    /** Default "f16". */
    kvCacheType?: "f16" | "f32";
}

export interface NativeGenerationRequest {
    prompt: Int32Array;
    /** Default 256. */
    maxTokens?: number;
    /** 0 (default): greedy. */
    temperature?: number;
    /** Defaults as node-llama-cpp's: topK 40, topP 0.95, minP 0. */
    topK?: number;
    topP?: number;
    minP?: number;
    seed?: number;
    /** GBNF grammar the reply must follow. */
    grammar?: string;
    grammarRoot?: string;
    /** Strings that end the reply (cut from the text). */
    stop?: string[];
    /** Tokens that end the reply, besides the vocabulary's end-of-generation tokens. */
    stopTokens?: Int32Array;
}

export interface NativeGenerationResult {
    id: number;
    text: string;
    /** The reply's tokens; an end-of-generation or stop token is not included. */
    tokens: Int32Array;
    finish: "stop" | "length" | "cancelled";
    promptTokens: number;
    completionTokens: number;
}

export interface NativeVocabInfo {
    bos: number;
    eos: number;
    addBos: boolean;
    addEos: boolean;
    nCtxTrain: number;
}

/** A GGUF tensor read as F32 (`embedReadTensor`): row i of `data` is rows x cols, row-major. */
export interface NativeF32Tensor {
    name: string;
    /** ggml type of the stored tensor. */
    type: string;
    typeId: number;
    rows: number;
    cols: number;
    /** Absolute file offset and size of the stored bytes. */
    offset: number;
    nBytes: number;
    data: Float32Array;
}

/** Similarity metric of the embedding functions: 0 cosine, 1 negative Euclidean distance. */
export type NativeEmbedMetric = 0 | 1;

export interface NativeNeighbourLists {
    m: number;
    /** Per query: entries filled (fewer than m only when the domain is smaller). */
    count: Int32Array;
    /** queries x m token ids, most similar first (ties: smaller id first); -1 past count. */
    tokens: Int32Array;
    /** queries x m exact similarities (double precision). */
    similarity: Float64Array;
}

export interface NativeClusterPartition {
    /** n_clusters + 1 offsets into members. */
    offsets: Int32Array;
    /** Token ids, cluster by cluster: seed first, then by similarity to the seed. */
    members: Int32Array;
    /** n_clusters + 1 offsets into similarities. */
    similarityOffsets: Float64Array;
    /** Per cluster of size n: n x n exact similarities, [i * n + j] = s(member i, member j). */
    similarities: Float64Array;
    stats: {batches: number; rowsSearched: number; rowsWasted: number; compactions: number};
}

/**
 * LoRA training (native/lora/bindings.cpp), from `LoraTrainer.open`: a model, its adapter with
 * trainable A/B, gradients and AdamW state. Calls after close() throw "the trainer was closed".
 */
export interface NativeLoraTrainer {
    info(): {alpha: number; nVocab: number; step: number; tensors: {name: string; shape: [number, number]}[]};
    /** Forward + backward over every micro-batch, then one AdamW update; loss = sum of weight * CE. */
    step(batches: NativeMicroBatch[], options: NativeLoraStepOptions): Promise<{loss: number; gradNorm: number; targets: number}>;
    /** The gradient of the summed loss (one array per tensor, in info() order); nothing is updated. */
    gradients(batches: NativeMicroBatch[], options?: {dropout?: number; dropoutSeed?: number}):
        Promise<{loss: number; gradNorm: number; targets: number; gradients: Float32Array[]}>;
    /** Loss without gradients or dropout; `logits`: rows of n_vocab for every position with a target. */
    evaluate(batches: NativeMicroBatch[], options?: {logits?: boolean}): Promise<{loss: number; targets: number; logits?: Float32Array}>;
    state(): {step: number; tensors: NativeLoraTensorState[]};
    setState(state: {step: number; tensors: NativeLoraTensorState[]}): void;
    /** Stops the call in flight between micro-batches (it rejects with "cancelled"); harmless after close(). */
    cancel(): void;
    /** Releases the trainer once the call in flight (if any) has finished with it. */
    close(): void;
}

/** Sequences packed into one llama_train_step call (native/lora). */
export interface NativeMicroBatch {
    tokens: Int32Array;
    /** From 0 within each sequence; the tokens of a sequence are contiguous. */
    positions: Int32Array;
    /** In [0, sequences) of the trainer. */
    seqIds: Int32Array;
    /** Next-token target per position, -1 where no loss is taken. */
    targets: Int32Array;
    weights: Float32Array;
}

/** One trainable LoRA matrix and its AdamW moments. */
export interface NativeLoraTensorState {
    /** "<base tensor>.lora_a" / ".lora_b". */
    name: string;
    /** ggml order: [n_in, r] (A) or [r, n_out] (B). */
    shape: [number, number];
    value: Float32Array;
    m: Float32Array;
    v: Float32Array;
}

export interface NativeLoraStepOptions {
    lr: number;
    beta1?: number;
    beta2?: number;
    eps?: number;
    weightDecay?: number;
    /** Global gradient-norm clipping; 0 (default) disables it. */
    maxGradNorm?: number;
    /** LoRA dropout probability on each branch input. */
    dropout?: number;
    /** Non-negative integer below 2^53: the step's dropout masks. */
    dropoutSeed?: number;
}

/** One weight's importance sums as the capture pass collects them (quantize/imatrix_collector). */
export interface NativeImatrixEntry {
    name: string;
    /** Sum over tokens of each input column's squared activation; n_mat x row length. */
    sums: Float64Array;
    /** Tokens per matrix (one per expert for MUL_MAT_ID). */
    counts: number[];
}

export interface NativeQuantizeOptions {
    type: string;
    threads?: number;
    allowRequantize?: boolean;
    pure?: boolean;
    /** Per-weight mean squared activations, as llama-quantize passes them. */
    imatrix?: {name: string; values: Float32Array}[];
    /** Metadata written into the output, in order (llama-quantize --override-kv). */
    overrides?: {key: string; type: "str" | "int" | "float" | "bool"; value: string | number | boolean}[];
}

export interface NativeQuantizeResult {
    type: string;
    ftype: number;
    tensors: number;
    bytesIn: number;
    bytesOut: number;
}

export interface NativeAddon {
    ggufRead(path: string, maxArrayValues: number): Promise<GgufFileInfo>;
    removeLayers(input: string, output: string, layers: number[], onProgress?: ProgressCallback): Promise<NativeLayerRemovalResult>;
    tensorAbsSums(path: string, names: string[], onProgress?: ProgressCallback): Promise<{name: string; sumAbs: number; count: number}[]>;
    quantize(type: number, data: Float32Array, rowLength: number): Buffer;
    dequantize(type: number, data: Uint8Array, count: number): Float32Array;
    ggmlTypes(): GgmlTypeInfo[];
    systemInfo(): {llama: string; cuda: boolean; devices: {name: string; description: string; memoryTotal: number}[]};
    loadModel(path: string, options?: NativeModelOptions): Promise<NativeModel>;
    /** Per-layer sums of cos / angular / contribution over counted positions (capture/layer_scores). */
    layerScores(model: NativeModel, sequences: {tokens: Int32Array; mask?: Uint8Array}[],
        options: {maxBatchTokens: number; maxSequences: number; capture?: boolean; imatrix?: boolean}, onProgress?: ProgressCallback):
        Promise<{nLayer: number; tokens: number; cosSum: number[]; angularSum: number[]; contributionSum: number[]; deviceSteps: number;
            imatrix?: NativeImatrixEntry[]}>;
    /** llama.cpp's quantizer (llama_model_quantize), off the JS thread; progress counts tensors. */
    quantizeModel(input: string, output: string, options: NativeQuantizeOptions, onProgress?: ProgressCallback): Promise<NativeQuantizeResult>;
    /** The types llama-quantize offers, in its order. */
    quantizeTypes(): {name: string; ftype: number; description: string}[];
    /** Hidden states at every block boundary: (nLayer + 1) x tokens x nEmbd. */
    dumpHiddenStates(model: NativeModel, tokens: Int32Array): Promise<Float32Array>;
    LoglikScorer: {open(model: NativeModel, options?: NativeLoglikOptions): Promise<NativeLoglikScorer>};
    modelVocabInfo(model: NativeModel): NativeVocabInfo;
    BatchGenerator: {open(model: NativeModel, options?: NativeGeneratorOptions): Promise<NativeGenerator>};
    embedReadTensor(path: string, name: string, threads: number, onProgress?: ProgressCallback): Promise<NativeF32Tensor>;
    /** Every token's llama_token_attr bits, raw vocabulary text and detokenized piece. */
    embedVocab(model: NativeModel): {attributes: Int32Array; texts: string[]; pieces: string[]};
    /** queries x domain exact similarities (double precision); domain: ascending distinct ids. */
    embedSimilarityRows(data: Float32Array, cols: number, queries: Int32Array, domain: Int32Array, metric: NativeEmbedMetric,
        threads: number): Promise<Float64Array>;
    embedNearest(data: Float32Array, cols: number, queries: Int32Array, domain: Int32Array, m: number, metric: NativeEmbedMetric,
        threads: number, onProgress?: ProgressCallback): Promise<NativeNeighbourLists>;
    embedClusters(data: Float32Array, cols: number, domain: Int32Array, k: number, metric: NativeEmbedMetric, threads: number,
        onProgress?: ProgressCallback): Promise<NativeClusterPartition>;
    /** Tokenizes many texts on several threads: text i is tokens[offsets[i] .. offsets[i+1]). */
    embedTokenizeBatch(model: NativeModel, texts: string[], addSpecial: boolean, parseSpecial: boolean, threads: number):
        Promise<{offsets: Int32Array; tokens: Int32Array}>;
    /** Detokenizes many token sequences (same layout) on several threads. */
    embedDetokenizeBatch(model: NativeModel, tokens: Int32Array, offsets: Int32Array, removeSpecial: boolean, unparseSpecial: boolean,
        threads: number): Promise<string[]>;
    LoraTrainer: {open(options: {modelPath: string; adapterPath: string; contextSize?: number; sequences?: number; threads?: number;
        gpuLayers?: number}): Promise<NativeLoraTrainer>};
    /** W + scale * (alpha / r) * B A in each adapted tensor's own type; everything else byte for byte. */
    loraMerge(base: string, adapter: string, output: string, options?: {scale?: number}, onProgress?: ProgressCallback):
        Promise<{merged: string[]; alpha: number; rank: number; bytesWritten: number}>;
    /** Logits of one sequence through llama.cpp's inference path with adapters loaded from files. */
    loraLogits(modelPath: string, adapters: {path: string; scale?: number}[], tokens: Int32Array,
        options?: {threads?: number; gpuLayers?: number}): Promise<Float32Array>;
}

let cached: NativeAddon | undefined;
let selection: NativeSelection | undefined;

/**
 * The native addon, loaded on first use: the best binary that works here (see native-loader.ts for
 * the order and the checks). Throws, listing every path tried and why, when none does.
 */
export function native(): NativeAddon {
    if (cached)
        return cached;
    const result = selectNative();
    selection = {chosen: result.chosen, candidates: result.candidates};
    if (!result.chosen)
        throw noNativeError(selection);
    cached = result.module as NativeAddon;
    return cached;
}

let noGpuWarned = false;

/**
 * Warns once per process (a Node warning, code PPC_GPT_NO_GPU) when layers are to be offloaded but
 * the binary in use sees no CUDA device: everything then runs on the CPU, which whoever asked for
 * the GPU should hear, with the reason the loader recorded.
 */
export function warnIfNoGpu(gpuLayers: number | undefined): void {
    if (!gpuLayers || noGpuWarned)
        return;
    const info = native().systemInfo();
    if (info.devices.some((d) => /^CUDA/i.test(d.name)))
        return;
    noGpuWarned = true;
    const label = selection?.chosen?.label ?? "the native binary";
    const skipped = (selection?.candidates ?? []).filter((c) => c.cuda && c.status === "rejected");
    const why = info.cuda ? `${label} is a CUDA build but sees no CUDA device`
        : `${label} is a CPU build` + (skipped.length ? ` (${skipped.map((c) => `${c.label}: ${c.reason}`).join("; ")})` : "");
    process.emitWarning(`--gpu-layers ${gpuLayers} asks for the GPU, but ${why}: running on the CPU (\`ppc-gpt doctor\` says more)`,
        {code: "PPC_GPT_NO_GPU"});
}

/** Which binary native() loaded and every candidate's verdict (undefined before the first load). */
export function nativeSelection(): NativeSelection | undefined {
    return selection;
}
