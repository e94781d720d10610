// Experiment configurations (`ppc-gpt experiment <config>`): which models, tasks, methods, seeds
// and ablations make the grid of the paper's Tables 1–7, and the hyperparameters of every stage.
// Two ship: `small` (runs on 2 CPU cores from ../shared) and `paper` (METHOD.md's setting).
import fs from "node:fs";
import path from "node:path";
import type {TaskFormatName} from "../data/prompt.js";
import type {DatasetName} from "../data/loaders/index.js";
import {jobQuantizeTypes} from "../federated/protocol.js";

export const methodNames = ["zero-shot", "dense-sft", "plain-c", "dp-instruct-c", "ppc-gpt"] as const;
export type MethodName = typeof methodNames[number];

/** Where a task's items come from: a shared dataset, or a generated task (ts/experiment/generated.ts). */
export interface TaskSpec {
    /** Name in tables. */
    name: string;
    /** The evaluation task (its prompt format; training uses the same: one format per task). */
    eval: TaskFormatName;
    /** A shared dataset (train split = the client's private data; eval split scored), or a generated task. */
    source: {dataset: DatasetName; trainSplit: string; evalSplit?: string} | {generated: "copy-word"};
    /** Private items of the client (sampled from the train split with the cell's seed). */
    trainItems: number;
    /** Items scored (a seeded sample of the eval split). */
    evalItems: number;
}

/** One setting of the ablation factors; the defaults are the paper's main setting. */
export interface Settings {
    /** ε per token of the client's text perturbation (PPC-GPT) or the DP-SGD ε (DP-Instruct-C). */
    epsilon: number;
    /** Synthetic items per private item. */
    k: number;
    /** Rationales in server retraining and BI (off: label task only, BI_label only). */
    rationales: boolean;
    /** Server-side retraining (CoT distillation) before the model goes to the client. */
    serverRetrain: boolean;
    /** Layer-importance metric: Block Influence, or "seq" (drop the top layers). */
    metric: "bi" | "seq";
    /** Share of parameters pruned. */
    ratio: number;
    /**
     * Quantization of the model the server hands over (the federated job's quantize stage):
     * "none" (absent: none), a type such as "q4_k_m" (llama.cpp's quantizer, no importance matrix),
     * or "q4_k_m+imatrix" (with an importance matrix of the synthetic items, as the job's stage).
     */
    quantize?: string;
}

/** A `quantize` setting read: undefined for none. */
export function quantizeSetting(value: string | undefined): {type: string; imatrix: boolean} | undefined {
    if (value === undefined || value === "none")
        return undefined;
    const [type, suffix, ...rest] = value.split("+");
    if (!(jobQuantizeTypes as readonly string[]).includes(type) || (suffix !== undefined && suffix !== "imatrix") || rest.length > 0)
        throw new RangeError(`quantize "${value}" must be "none", a type or a type+imatrix (types: ${jobQuantizeTypes.join(", ")})`);
    return {type, imatrix: suffix === "imatrix"};
}

export interface TrainSettings {
    r: number;
    loraAlpha: number;
    loraDropout: number;
    learningRate: number;
    batchSize: number;
    steps?: number;
    epochs?: number;
    maxInputLength: number;
    maxTargetLength: number;
    microBatchTokens?: number;
    rationaleWeight?: number;
}

export interface ExperimentConfig {
    name: string;
    description: string;
    /** M_S, the source model (GGUF). Relative paths resolve against the shared folder. */
    source: string;
    /** M_L for PPC-GPT's synthetic data: an embedded GGUF, or an OpenAI-compatible server. */
    generator: {model: string} | {url: string; modelName: string; apiKeyEnv?: string; concurrency?: number};
    /** The small generator DP-Instruct-C DP-tunes on the client (GGUF). */
    dpGenerator: string;
    /** Token embeddings of the perturbation (GGUF; default: the source model). */
    embeddings?: string;
    tasks: TaskSpec[];
    methods: MethodName[];
    seeds: number[];
    defaults: Settings;
    /** One factor at a time, on `ablationTasks`, PPC-GPT only (as the paper's Tables 3–7). */
    ablations: {epsilon?: number[]; k?: number[]; rationales?: boolean[]; serverRetrain?: boolean[]; metric?: ("bi" | "seq")[]; ratio?: number[];
        quantize?: string[]};
    ablationTasks: string[];
    ablationSeeds: number[];
    train: {server: TrainSettings; client: TrainSettings; dpGenerator: TrainSettings & {delta: number; maxPerExampleGradNorm: number}};
    synth: {maxTokens: {question: number; answer: number; rationale: number}; maxAttemptsFactor: number; sequences?: number};
    /** Most tokens a DP-Instruct-C sample may have. */
    dpSampleTokens: number;
    threads?: number;
    gpuLayers?: number;
    /** Throughput assumed by the GPU-time estimate (tokens per second). */
    throughput?: {generatorTokensPerSecond: number; trainTokensPerSecond: number; evalTokensPerSecond: number};
}

const defaults: Settings = {epsilon: 3, k: 8, rationales: true, serverRetrain: true, metric: "bi", ratio: 0.3, quantize: "none"};

/** The quantization ablation: unquantized, q4_k_m without and with the task importance matrix. */
const quantizeAblation = ["none", "q4_k_m", "q4_k_m+imatrix"];

/** Runs here on 2 CPU cores in well under 30 minutes; stories260K is source, generator and DP generator. */
export const smallConfig: ExperimentConfig = {
    name: "small",
    description: "stories260K as source, generator and DP generator; a generated copy task and ARC-Easy; 2 seeds; ablations on the copy task",
    source: "models/stories260K.gguf",
    generator: {model: "models/stories260K.gguf"},
    dpGenerator: "models/stories260K.gguf",
    tasks: [
        {name: "copy-word", eval: "mc", source: {generated: "copy-word"}, trainItems: 32, evalItems: 60},
        {name: "arc-easy", eval: "arc-easy", source: {dataset: "arc-easy", trainSplit: "train", evalSplit: "test"}, trainItems: 32, evalItems: 100},
    ],
    methods: [...methodNames],
    seeds: [1, 2],
    defaults: {...defaults, k: 2},
    ablations: {epsilon: [1, 3, 5, 10], k: [1, 2, 4], rationales: [true, false], serverRetrain: [true, false], metric: ["bi", "seq"], ratio: [0, 0.3, 0.5, 0.7],
        quantize: quantizeAblation},
    ablationTasks: ["copy-word"],
    ablationSeeds: [1],
    train: {
        server: {r: 8, loraAlpha: 32, loraDropout: 0.1, learningRate: 3e-3, batchSize: 8, steps: 24, maxInputLength: 64, maxTargetLength: 64, microBatchTokens: 256},
        client: {r: 8, loraAlpha: 32, loraDropout: 0.1, learningRate: 3e-3, batchSize: 8, steps: 30, maxInputLength: 64, maxTargetLength: 32, microBatchTokens: 128},
        dpGenerator: {r: 8, loraAlpha: 32, loraDropout: 0, learningRate: 3e-3, batchSize: 8, epochs: 4, maxInputLength: 16, maxTargetLength: 64,
            microBatchTokens: 128, delta: 1e-3, maxPerExampleGradNorm: 1},
    },
    synth: {maxTokens: {question: 128, answer: 48, rationale: 64}, maxAttemptsFactor: 1, sequences: 8},
    dpSampleTokens: 256,
    threads: 2,
};

/** METHOD.md's setting: LLaMA-2-7B source, a 70B generator behind an OpenAI-compatible server, the paper's hyperparameters. */
export const paperConfig: ExperimentConfig = {
    name: "paper",
    description: "LLaMA-2-7B source (GGUF), LLaMA-3-70B generator behind an OpenAI-compatible server, the paper's tasks and hyperparameters",
    source: "llama-2-7b.Q8_0.gguf",
    generator: {url: "http://localhost:8000/v1", modelName: "meta-llama/Meta-Llama-3-70B-Instruct", concurrency: 32},
    dpGenerator: "llama-2-7b.Q8_0.gguf",
    tasks: [
        {name: "CQA", eval: "commonsenseqa", source: {dataset: "commonsenseqa", trainSplit: "train", evalSplit: "validation"}, trainItems: 9741, evalItems: 1221},
        {name: "OBQA", eval: "openbookqa", source: {dataset: "openbookqa", trainSplit: "train", evalSplit: "test"}, trainItems: 4957, evalItems: 500},
        {name: "ARC-E", eval: "arc-easy", source: {dataset: "arc-easy", trainSplit: "train", evalSplit: "test"}, trainItems: 2251, evalItems: 2376},
        {name: "ARC-C", eval: "arc-challenge", source: {dataset: "arc-challenge", trainSplit: "train", evalSplit: "test"}, trainItems: 1119, evalItems: 1172},
        {name: "FiQA-SA", eval: "fiqa-sa", source: {dataset: "fiqa-sa", trainSplit: "train", evalSplit: "test"}, trainItems: 675, evalItems: 235},
    ],
    methods: ["dense-sft", "plain-c", "dp-instruct-c", "ppc-gpt"],
    seeds: [1, 2, 3],
    defaults,
    ablations: {epsilon: [1, 3, 5, 10], k: [1, 2, 4, 8], rationales: [true, false], serverRetrain: [true, false], metric: ["bi", "seq"], ratio: [0, 0.3, 0.5, 0.7],
        quantize: quantizeAblation},
    ablationTasks: ["OBQA", "ARC-E"],
    ablationSeeds: [1],
    train: {
        server: {r: 8, loraAlpha: 32, loraDropout: 0.1, learningRate: 5e-5, batchSize: 32, steps: 3200, maxInputLength: 64, maxTargetLength: 128},
        client: {r: 8, loraAlpha: 32, loraDropout: 0.1, learningRate: 5e-5, batchSize: 32, steps: 300, maxInputLength: 64, maxTargetLength: 128},
        dpGenerator: {r: 8, loraAlpha: 32, loraDropout: 0, learningRate: 5e-4, batchSize: 256, epochs: 3, maxInputLength: 16, maxTargetLength: 192,
            delta: 1e-5, maxPerExampleGradNorm: 1},
    },
    synth: {maxTokens: {question: 1024, answer: 1024, rationale: 512}, maxAttemptsFactor: 2},
    dpSampleTokens: 192,
    gpuLayers: 999,
    throughput: {generatorTokensPerSecond: 2500, trainTokensPerSecond: 6000, evalTokensPerSecond: 20000},
};

/** The built-in experiment configurations by name (`small`, `paper`). */
export const builtinConfigs: Record<string, ExperimentConfig> = {small: smallConfig, paper: paperConfig};

/** Every field of ExperimentConfig (the check below names a misspelt one). */
const configFields: readonly (keyof ExperimentConfig)[] = ["name", "description", "source", "generator", "dpGenerator", "embeddings", "tasks",
    "methods", "seeds", "defaults", "ablations", "ablationTasks", "ablationSeeds", "train", "synth", "dpSampleTokens", "threads", "gpuLayers",
    "throughput"];

/** A built-in config by name, or a JSON file: its fields replace the `small` config's (`"base": "paper"` starts from paper). */
export function loadExperimentConfig(nameOrFile: string): ExperimentConfig {
    if (builtinConfigs[nameOrFile])
        return structuredClone(builtinConfigs[nameOrFile]);
    if (!fs.existsSync(nameOrFile))
        throw new Error(`${nameOrFile}: no such config file (built-in configs: ${Object.keys(builtinConfigs).join(", ")})`);
    let json: Record<string, unknown>;
    try {
        json = JSON.parse(fs.readFileSync(nameOrFile, "utf8"));
    } catch (err) {
        throw new Error(`${nameOrFile}: not valid JSON (${(err as Error).message})`);
    }
    if (!json || typeof json !== "object" || Array.isArray(json))
        throw new Error(`${nameOrFile}: the config must be a JSON object`);
    const base = typeof json.base === "string" ? json.base : "small";
    if (!builtinConfigs[base])
        throw new Error(`${nameOrFile}: "base" must be one of ${Object.keys(builtinConfigs).join(", ")}`);
    const {base: _, ...rest} = json;
    // a misspelt field would otherwise be ignored and the run would use the base's value unnoticed
    const known: readonly string[] = configFields;
    const unknown = Object.keys(rest).filter((k) => !known.includes(k));
    if (unknown.length > 0)
        throw new Error(`${nameOrFile}: unknown field${unknown.length > 1 ? "s" : ""} ${unknown.map((k) => `"${k}"`).join(", ")} ` +
            `(the fields: base, ${known.join(", ")})`);
    const config = {...structuredClone(builtinConfigs[base]), name: path.basename(nameOrFile, ".json"), ...rest} as ExperimentConfig;
    checkConfig(config, nameOrFile);
    return config;
}

/** Throws naming the field when the config cannot run. */
export function checkConfig(c: ExperimentConfig, where = c.name): void {
    const fail = (field: string, why: string) => { throw new Error(`${where}: "${field}" ${why}`); };
    if (!Array.isArray(c.methods) || c.methods.some((m) => !methodNames.includes(m)))
        fail("methods", `must list methods of ${methodNames.join(", ")}`);
    if (!Array.isArray(c.tasks) || c.tasks.length === 0)
        fail("tasks", "must be a non-empty list");
    const names = new Set(c.tasks.map((t) => t.name));
    if (names.size !== c.tasks.length)
        fail("tasks", "must have distinct names");
    for (const t of c.ablationTasks ?? [])
        if (!names.has(t))
            fail("ablationTasks", `names "${t}", which is not one of the tasks`);
    if (!Array.isArray(c.seeds) || c.seeds.length === 0 || c.seeds.some((s) => !Number.isSafeInteger(s) || s < 0))
        fail("seeds", "must be non-negative integers");
    const r = c.ablations.ratio ?? [];
    if ([c.defaults.ratio, ...r].some((x) => !(x >= 0 && x < 1)))
        fail("ratio", "must be in [0, 1)");
    if ([c.defaults.epsilon, ...(c.ablations.epsilon ?? [])].some((x) => !(x > 0)))
        fail("epsilon", "must be positive");
    if ([c.defaults.k, ...(c.ablations.k ?? [])].some((x) => !Number.isInteger(x) || x < 1))
        fail("k", "must be positive integers");
    for (const q of [c.defaults.quantize, ...(c.ablations.quantize ?? [])]) {
        try {
            quantizeSetting(q);
        } catch (err) {
            fail("quantize", (err as Error).message.replace(/^quantize /, "value "));
        }
    }
}
