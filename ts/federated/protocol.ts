// The federated wire protocol v1 (docs/federated.md): types, JSON schemas, constants and defaults
// shared by the server and the client. The schemas are plain JSON Schema objects: Fastify validates
// requests with them and @fastify/swagger serves them in the OpenAPI document, so what is checked
// and what is documented are one thing. Neither side redefines any of this.
import {synthDefaults} from "../synth/defaults.js";
import {loraDefaults, trainDefaults} from "../train/defaults.js";

/** The version of the PPC-GPT job protocol, sent and checked by server and client. */
export const protocolVersion = "ppc-gpt/1";
export const apiBase = "/v1";

/** Paths of every route. */
export const routes = {
    info: `${apiBase}/info`,
    openapi: `${apiBase}/openapi.json`,
    perturbationKit: `${apiBase}/perturbation-kit`,
    jobs: `${apiBase}/jobs`,
    job: (id: string) => `${apiBase}/jobs/${encodeURIComponent(id)}`,
    jobEvents: (id: string) => `${apiBase}/jobs/${encodeURIComponent(id)}/events`,
    jobModel: (id: string) => `${apiBase}/jobs/${encodeURIComponent(id)}/model`,
    /** Admin tokens only: the workers and the stages they hold (docs/federated.md, Scale-out). */
    workers: `${apiBase}/workers`,
} as const;

export const headers = {
    idempotencyKey: "idempotency-key",
    contentSha256: "x-content-sha256",
} as const;

/** Bearer tokens: `ppc_` + base64url(32 random bytes). */
export const tokenPrefix = "ppc_";
export const tokenPattern = /^ppc_[A-Za-z0-9_-]{43}$/;
/** Where the client reads its token from (never a command-line argument). */
export const tokenEnvVar = "PPC_GPT_TOKEN";

export const idempotencyKeyMaxLength = 200;

/** Job ids: `job_` + base64url random. */
export const jobIdPattern = "^job_[A-Za-z0-9_-]{8,64}$";

export const privacyMechanisms = ["custext", "santext"] as const;
export type PrivacyMechanism = (typeof privacyMechanisms)[number];
export const epsilonRange = {min: 0.1, max: 100} as const;

/** Pruning strategies a job may ask for (`scores` is local-only: the server computes BI itself). */
export const jobStrategies = ["bi", "top", "even", "odd", "symmetric", "magnitude"] as const;
export type JobStrategy = (typeof jobStrategies)[number];

export const stageNames = ["synth", "bi", "prune", "train", "merge", "quantize"] as const;
export type StageName = (typeof stageNames)[number];

/**
 * Quantization types a job may ask for (llama-quantize's names; ts/quantize): the k-quant mixes and
 * the plain block types, none of which needs more than the task importance matrix the server computes.
 */
export const jobQuantizeTypes = ["q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q3_k_l", "q2_k"] as const;
export type JobQuantizeType = (typeof jobQuantizeTypes)[number];

export const jobStates = ["queued", "running", "succeeded", "failed", "cancelled"] as const;
export type JobState = (typeof jobStates)[number];
export const terminalJobStates: readonly JobState[] = ["succeeded", "failed", "cancelled"];

export const stageStates = ["pending", "running", "done", "skipped", "failed"] as const;
export type StageState = (typeof stageStates)[number];

/** Short machine codes of error responses. */
export const errorCodes = {
    unauthorized: "unauthorized",
    notFound: "not_found",
    invalidRequest: "invalid_request",
    payloadTooLarge: "payload_too_large",
    unsupportedMediaType: "unsupported_media_type",
    tooManyJobs: "too_many_jobs",
    idempotencyMismatch: "idempotency_mismatch",
    notReady: "not_ready",
    rangeNotSatisfiable: "range_not_satisfiable",
    internal: "internal_error",
} as const;
export type ErrorCode = (typeof errorCodes)[keyof typeof errorCodes];

export interface ApiError {
    error: string;
    code: ErrorCode | string;
}

export interface PrivacyDeclaration {
    mechanism: PrivacyMechanism;
    epsilon: number;
}

/** What a client asks of a job (snake_case, PEFT names). Every field is optional on the wire. */
export interface JobSpec {
    /** Share of parameters to remove, 0 <= ratio < 1. */
    ratio?: number;
    strategy?: JobStrategy;
    /** Synthetic items per perturbed item. */
    k?: number;
    /** CoT multi-task loss (label + rationale); false = label loss only. */
    rationales?: boolean;
    /** false skips train + merge: the job returns the pruned model. */
    server_retraining?: boolean;
    server_steps?: number;
    batch_size?: number;
    learning_rate?: number;
    r?: number;
    lora_alpha?: number;
    lora_dropout?: number;
    /** Projections to adapt; absent = every default projection the model has. */
    target_modules?: string[];
    rationale_weight?: number;
    max_input_length?: number;
    max_target_length?: number;
    seed?: number;
    /** Quantize the final model (llama.cpp's quantizer, with a task importance matrix from the synthetic items); "none": deliver it as is. */
    quantize?: JobQuantizeType | "none";
    privacy?: PrivacyDeclaration;
}

/** A spec with every default filled in (target_modules and privacy stay optional). */
export type FilledJobSpec = Required<Omit<JobSpec, "target_modules" | "privacy">> & Pick<JobSpec, "target_modules" | "privacy">;

/** The paper's values (METHOD.md): what the server uses for every field a client leaves out; the training fields are `ppc-gpt train`'s (loraDefaults, trainDefaults). */
export const jobSpecDefaults: FilledJobSpec = {
    ratio: 0.3,
    strategy: "bi",
    k: synthDefaults.ratio,
    rationales: true,
    server_retraining: true,
    server_steps: 300,
    batch_size: trainDefaults.batchSize,
    learning_rate: trainDefaults.learningRate,
    r: loraDefaults.r,
    lora_alpha: loraDefaults.loraAlpha,
    lora_dropout: loraDefaults.loraDropout,
    rationale_weight: trainDefaults.rationaleWeight,
    max_input_length: trainDefaults.maxInputLength,
    max_target_length: trainDefaults.maxTargetLength,
    seed: 0,
    quantize: "none",
};

/** Fills the defaults of a (validated) spec; the result is what the server records and runs. */
export function fillJobSpec(spec: JobSpec | undefined): FilledJobSpec {
    const filled: FilledJobSpec = {...jobSpecDefaults};
    for (const [key, value] of Object.entries(spec ?? {}))
        if (value !== undefined)
            (filled as unknown as Record<string, unknown>)[key] = value;
    return filled;
}

export interface JobChoice {
    label: string;
    text: string;
}

/** One perturbed item as it crosses the wire: no answer, rationale, source or original id. */
export interface JobItem {
    /** A random id made by the client (the map to its own ids stays local). */
    id: string;
    question: string;
    choices: JobChoice[];
}

export interface SubmitJobRequest {
    spec?: JobSpec;
    items: JobItem[];
}

export interface SubmitJobResponse {
    id: string;
    status: "queued";
    location: string;
}

export interface JobProgress {
    stage: string;
    done: number;
    total: number;
}

export interface StageStatus {
    name: StageName;
    status: StageState;
    started_at: string | null;
    finished_at: string | null;
    seconds: number | null;
}

export interface JobModelInfo {
    sha256: string;
    size: number;
    layers: number;
    parameters: number;
}

export interface JobStatus {
    id: string;
    status: JobState;
    stage: StageName | null;
    progress: JobProgress | null;
    stages: StageStatus[];
    items: number;
    spec: FilledJobSpec;
    created_at: string;
    updated_at: string;
    error: string | null;
    synth: {accepted: number; rejected: number} | null;
    /** The BlockInfluenceReport of ts/prune/block-influence.ts (its local `model.path` removed). */
    bi_report: Record<string, unknown> | null;
    /** The PruningPlan of ts/prune/plan.ts (its local `model` path removed). */
    plan: Record<string, unknown> | null;
    /** What the quantize stage did, once done: the type, the task imatrix's entries, the model's bytes before and after. */
    quantization: JobQuantization | null;
    model: JobModelInfo | null;
}

export interface JobQuantization {
    type: JobQuantizeType;
    imatrix_entries: number;
    size_before: number;
    size_after: number;
}

export interface JobList {
    jobs: JobStatus[];
}

export interface ServerInfo {
    protocol: string;
    model: {name: string; sha256: string; architecture: string; layers: number; parameters: number};
    generator: {kind: "embedded" | "remote"; name: string};
    privacy: {mechanisms: PrivacyMechanism[]; epsilon: {min: number; max: number}};
    limits: {max_body_bytes: number; max_items_per_job: number; max_concurrent_jobs_per_client: number};
    job_spec_defaults: FilledJobSpec;
    /** What a job's `quantize` may be. */
    quantization_types: JobQuantizeType[];
    perturbation_kit: {sha256: string; size: number};
}

/** Server-sent event names on /v1/jobs/:id/events. */
export const eventNames = {status: "status", progress: "progress"} as const;

// ---- JSON schemas (draft-07, as Fastify's ajv reads them) ----

const sha256Schema = {type: "string", pattern: "^[0-9a-f]{64}$"} as const;
const isoSchema = {type: "string"} as const;
const nullableIso = {type: ["string", "null"]} as const;
const nullableNumber = {type: ["number", "null"]} as const;

export const privacySchema = {
    type: "object",
    additionalProperties: false,
    required: ["mechanism", "epsilon"],
    properties: {
        mechanism: {type: "string", enum: [...privacyMechanisms]},
        epsilon: {type: "number", minimum: epsilonRange.min, maximum: epsilonRange.max},
    },
} as const;

export const jobSpecSchema = {
    type: "object",
    additionalProperties: false,
    description: "Job settings; every field optional, defaults are the paper's (see job_spec_defaults in /v1/info).",
    properties: {
        ratio: {type: "number", minimum: 0, exclusiveMaximum: 1, default: jobSpecDefaults.ratio},
        strategy: {type: "string", enum: [...jobStrategies], default: jobSpecDefaults.strategy},
        k: {type: "integer", minimum: 1, maximum: 64, default: jobSpecDefaults.k},
        rationales: {type: "boolean", default: jobSpecDefaults.rationales},
        server_retraining: {type: "boolean", default: jobSpecDefaults.server_retraining},
        server_steps: {type: "integer", minimum: 1, maximum: 100000, default: jobSpecDefaults.server_steps},
        batch_size: {type: "integer", minimum: 1, maximum: 4096, default: jobSpecDefaults.batch_size},
        learning_rate: {type: "number", exclusiveMinimum: 0, maximum: 10, default: jobSpecDefaults.learning_rate},
        r: {type: "integer", minimum: 1, maximum: 4096, default: jobSpecDefaults.r},
        lora_alpha: {type: "number", exclusiveMinimum: 0, maximum: 1e6, default: jobSpecDefaults.lora_alpha},
        lora_dropout: {type: "number", minimum: 0, maximum: 0.99, default: jobSpecDefaults.lora_dropout},
        target_modules: {type: "array", minItems: 1, maxItems: 32, uniqueItems: true,
            items: {type: "string", pattern: "^[a-z][a-z0-9_]{0,63}$"}},
        rationale_weight: {type: "number", minimum: 0, maximum: 1e6, default: jobSpecDefaults.rationale_weight},
        max_input_length: {type: "integer", minimum: 1, maximum: 8192, default: jobSpecDefaults.max_input_length},
        max_target_length: {type: "integer", minimum: 1, maximum: 8192, default: jobSpecDefaults.max_target_length},
        seed: {type: "integer", minimum: 0, maximum: 4294967295, default: jobSpecDefaults.seed},
        quantize: {type: "string", enum: ["none", ...jobQuantizeTypes], default: jobSpecDefaults.quantize},
        privacy: privacySchema,
    },
} as const;

export const jobItemSchema = {
    type: "object",
    additionalProperties: false,
    required: ["id", "question", "choices"],
    properties: {
        id: {type: "string", minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9_-]+$"},
        question: {type: "string", minLength: 1, maxLength: 20000},
        choices: {
            type: "array", minItems: 2, maxItems: 10,
            items: {
                type: "object",
                additionalProperties: false,
                required: ["label", "text"],
                properties: {
                    label: {type: "string", minLength: 1, maxLength: 8},
                    text: {type: "string", minLength: 0, maxLength: 5000},
                },
            },
        },
    },
} as const;

export const submitJobSchema = {
    type: "object",
    additionalProperties: false,
    required: ["items"],
    properties: {
        spec: jobSpecSchema,
        items: {type: "array", minItems: 1, items: jobItemSchema},
    },
} as const;

export const errorSchema = {
    type: "object",
    required: ["error", "code"],
    properties: {error: {type: "string"}, code: {type: "string"}},
} as const;

export const submitJobResponseSchema = {
    type: "object",
    required: ["id", "status", "location"],
    properties: {id: {type: "string"}, status: {type: "string", enum: ["queued"]}, location: {type: "string"}},
} as const;

export const jobProgressSchema = {
    type: "object",
    required: ["stage", "done", "total"],
    properties: {stage: {type: "string"}, done: {type: "number"}, total: {type: "number"}},
} as const;

/** Spec as the server reports it (filled): same fields, no defaults applied to it by validation. */
const filledSpecSchema = {
    type: "object",
    additionalProperties: true,
    properties: Object.fromEntries(Object.entries(jobSpecSchema.properties).map(([k, v]) => {
        const {default: _omit, ...rest} = v as Record<string, unknown>;
        return [k, rest];
    })),
} as const;

export const jobStatusSchema = {
    type: "object",
    required: ["id", "status", "stage", "progress", "stages", "items", "spec", "created_at", "updated_at", "error", "synth",
        "bi_report", "plan", "quantization", "model"],
    properties: {
        id: {type: "string"},
        status: {type: "string", enum: [...jobStates]},
        stage: {type: ["string", "null"], enum: [...stageNames, null]},
        progress: {anyOf: [jobProgressSchema, {type: "null"}]},
        stages: {
            type: "array",
            items: {
                type: "object",
                required: ["name", "status", "started_at", "finished_at", "seconds"],
                properties: {
                    name: {type: "string", enum: [...stageNames]},
                    status: {type: "string", enum: [...stageStates]},
                    started_at: nullableIso,
                    finished_at: nullableIso,
                    seconds: nullableNumber,
                },
            },
        },
        items: {type: "integer"},
        spec: filledSpecSchema,
        created_at: isoSchema,
        updated_at: isoSchema,
        error: {type: ["string", "null"]},
        synth: {anyOf: [{type: "object", required: ["accepted", "rejected"],
            properties: {accepted: {type: "integer"}, rejected: {type: "integer"}}}, {type: "null"}]},
        bi_report: {anyOf: [{type: "object", additionalProperties: true}, {type: "null"}]},
        plan: {anyOf: [{type: "object", additionalProperties: true}, {type: "null"}]},
        quantization: {anyOf: [{type: "object", required: ["type", "imatrix_entries", "size_before", "size_after"],
            properties: {type: {type: "string", enum: [...jobQuantizeTypes]}, imatrix_entries: {type: "integer"}, size_before: {type: "integer"},
                size_after: {type: "integer"}}}, {type: "null"}]},
        model: {anyOf: [{type: "object", required: ["sha256", "size", "layers", "parameters"],
            properties: {sha256: sha256Schema, size: {type: "integer"}, layers: {type: "integer"}, parameters: {type: "integer"}}},
        {type: "null"}]},
    },
} as const;

export const jobListSchema = {
    type: "object",
    required: ["jobs"],
    properties: {jobs: {type: "array", items: jobStatusSchema}},
} as const;

export const serverInfoSchema = {
    type: "object",
    required: ["protocol", "model", "generator", "privacy", "limits", "job_spec_defaults", "perturbation_kit"],
    properties: {
        protocol: {type: "string"},
        model: {type: "object", required: ["name", "sha256", "architecture", "layers", "parameters"], properties: {
            name: {type: "string"}, sha256: sha256Schema, architecture: {type: "string"}, layers: {type: "integer"},
            parameters: {type: "integer"}}},
        generator: {type: "object", required: ["kind", "name"], properties: {
            kind: {type: "string", enum: ["embedded", "remote"]}, name: {type: "string"}}},
        privacy: {type: "object", required: ["mechanisms", "epsilon"], properties: {
            mechanisms: {type: "array", items: {type: "string", enum: [...privacyMechanisms]}},
            epsilon: {type: "object", required: ["min", "max"], properties: {min: {type: "number"}, max: {type: "number"}}}}},
        limits: {type: "object", required: ["max_body_bytes", "max_items_per_job", "max_concurrent_jobs_per_client"], properties: {
            max_body_bytes: {type: "integer"}, max_items_per_job: {type: "integer"}, max_concurrent_jobs_per_client: {type: "integer"}}},
        job_spec_defaults: filledSpecSchema,
        quantization_types: {type: "array", items: {type: "string", enum: [...jobQuantizeTypes]}},
        perturbation_kit: {type: "object", required: ["sha256", "size"], properties: {sha256: sha256Schema, size: {type: "integer"}}},
    },
} as const;

export const jobIdParamsSchema = {
    type: "object",
    required: ["id"],
    properties: {id: {type: "string", minLength: 1, maxLength: 100}},
} as const;

/** Header name of a job submission's idempotency key, and its JSON schema. */
export const submitHeadersSchema = {
    type: "object",
    properties: {[headers.idempotencyKey]: {type: "string", minLength: 1, maxLength: idempotencyKeyMaxLength}},
} as const;

/**
 * What the schemas cannot say: item ids unique within the job, choice labels unique within an
 * item. Returns a message naming the item (as `items/<i>/…`), or undefined.
 */
export function jobItemsProblem(items: JobItem[]): string | undefined {
    const ids = new Map<string, number>();
    for (const [i, item] of items.entries()) {
        const first = ids.get(item.id);
        if (first !== undefined)
            return `items/${i}/id "${item.id}" repeats items/${first}/id`;
        ids.set(item.id, i);
        const labels = new Set<string>();
        for (const [j, c] of item.choices.entries()) {
            if (labels.has(c.label))
                return `items/${i}/choices/${j}/label "${c.label}" appears twice in the item`;
            labels.add(c.label);
        }
    }
    return undefined;
}
