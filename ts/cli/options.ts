// The CLI's option table: every option once — flag, the library's name for it, help, how to parse
// it, its default (read from the library's exported defaults) — grouped, and tagged with the verbs
// that take it (llama.cpp's common/arg.cpp; PEFT's LoraConfig keeps default and help together).
// The CLI only parses: ranges are checked by the library's option resolution (ts/options.ts), whose
// OptionError `withOptionFlags` rewrites with the flags given. Verb-specific options that no other
// verb takes stay declared in their verb's file.
import {Command, Option} from "commander";
import {defaultTaskFormat, taskFormatNames} from "../data/prompt.js";
import {maxSequences, scorerDefaults} from "../eval/options.js";
import {evalTaskNames} from "../eval/tasks.js";
import {jobSpecDefaults} from "../federated/protocol.js";
import {OptionError} from "../options.js";
import {mechanismNames, perturbDefaults} from "../privacy/defaults.js";
import {defaultTargetModules} from "../train/adapter.js";
import {loraDefaults, trainDefaults} from "../train/defaults.js";
import {lrSchedulers} from "../train/schedule.js";
import {UsageError} from "./output.js";

export type OptionGroup = "model" | "scoring" | "lora" | "optimizer" | "data" | "checkpoint" | "privacy" | "output";

/** "number" and "int" are read with Number() (the library checks the range); "list" is comma-separated. */
type Parse = "number" | "int" | "string" | "list" | "flag" | {choices: readonly string[]};

export interface OptionSpec {
    flags: string;
    /** The library's name of the option (TrainOptions, NativeModelOptions, ...). */
    key: string;
    group: OptionGroup;
    help: string;
    parse: Parse;
    /** The library's default, shown by --help; nothing is passed when the option is not given. */
    default?: string | number;
    /** The other name of an option (`--batch-size` for `--batch`): both set `key`. */
    aliasOf?: string;
    verbs: readonly string[];
}

const modelVerbs = ["train", "eval", "bi", "prune", "perplexity", "quantize"] as const;
const scoringVerbs = ["eval", "perplexity"] as const;
/** PruFed's verbs: the table's LoRA and optimizer options, with prufedDefaults shown as their named default set. */
const flVerbs = ["fl simulate", "fl server", "fl client"] as const;
const flTrainingVerbs = ["fl simulate", "fl client"] as const;
const jsonVerbs = ["train", "eval", "bi", "prune", "perplexity", "quantize", "perturb", "synth", "merge", "inspect", "experiment", "build", "doctor",
    "client finish"] as const;

export const optionTable: readonly OptionSpec[] = [
    // model: how a verb that runs a model loads it
    {flags: "--threads <n>", key: "threads", group: "model", parse: "int", verbs: [...modelVerbs, ...flTrainingVerbs, "perturb"],
        help: "CPU threads (default: all cores)"},
    {flags: "--gpu-layers <n>", key: "gpuLayers", group: "model", parse: "int", verbs: modelVerbs,
        help: "layers to offload to the GPU in a CUDA build (default 0; 999 = all)"},
    // scoring: the log-likelihood context of eval and perplexity
    {flags: "--batch-size <n>", key: "batchSize", group: "scoring", parse: "int", default: scorerDefaults.batchSize, verbs: scoringVerbs,
        help: "tokens per decode"},
    {flags: "--batch-tokens <n>", key: "batchSize", aliasOf: "--batch-size", group: "scoring", parse: "int", verbs: scoringVerbs,
        help: "the same as --batch-size (the name `bi` and `prune` use)"},
    {flags: "--context-size <n>", key: "contextSize", group: "scoring", parse: "int", verbs: scoringVerbs,
        help: "KV cells in flight, i.e. tokens scored together (default 256 on CPU, 2048 with --gpu-layers)"},
    {flags: "--sequences <n>", key: "sequences", group: "scoring", parse: "int", default: scorerDefaults.sequences, verbs: scoringVerbs,
        help: `sequences in flight, at least the largest number of choices (at most ${maxSequences})`},
    // eval's items and encoding; perplexity's windows
    {flags: "--task <name>", key: "task", group: "data", parse: {choices: evalTaskNames}, verbs: ["eval"], help: "task to evaluate"},
    {flags: "--data <file>", key: "data", group: "data", parse: "string", verbs: ["eval"],
        help: "evaluate this file (the task's original format; task-item JSONL for mc) instead of the shared split"},
    {flags: "--split <name>", key: "split", group: "data", parse: "string", verbs: ["eval"],
        help: "split of the shared dataset (default: the one lm-evaluation-harness uses)"},
    {flags: "--limit <n>", key: "limit", group: "data", parse: "int", verbs: ["eval"],
        help: "evaluate only N items (the first N, or a seeded sample with --seed)"},
    {flags: "--seed <s>", key: "seed", group: "data", parse: "int", verbs: ["eval"],
        help: "with --limit: draw a random sample of N items with this seed"},
    {flags: "--max-length <n>", key: "maxLength", group: "data", parse: "int", verbs: ["eval"],
        help: "longest sequence the model sees; longer contexts are cut on the left (default: training context)"},
    {flags: "--window <n>", key: "window", group: "data", parse: "int", verbs: ["perplexity"],
        help: "tokens the model sees at once (default: training context, at most 2048)"},
    {flags: "--stride <n>", key: "stride", group: "data", parse: "int", verbs: ["perplexity"],
        help: "new tokens predicted per window after the first (default: the window; smaller gives every token more context)"},
    // data: what the training examples are
    {flags: "--task <task>", key: "task", group: "data", parse: {choices: ["cot", "label"]}, default: trainDefaults.task, verbs: ["train"],
        help: "cot: L_label + λ·L_rationale (server stage); label: L_label only (client stage)"},
    {flags: "--format <task>", key: "format", group: "data", parse: {choices: taskFormatNames}, default: defaultTaskFormat, verbs: ["train"],
        help: "the evaluation task whose prompt format the examples take (see below)"},
    {flags: "--label-prefix <text>", key: "labelPrefix", group: "data", parse: "string", verbs: ["train"],
        help: "put before the context of label examples; recorded in the adapter, applied by eval " +
            "(default: the base model's recorded prefix, else \"[label] \"; \"\" for none)"},
    {flags: "--rationale-weight <λ>", key: "rationaleWeight", group: "data", parse: "number", default: trainDefaults.rationaleWeight,
        verbs: ["train"], help: "weight of the rationale loss for --task cot"},
    {flags: "--max-input-length <n>", key: "maxInputLength", group: "data", parse: "int", default: trainDefaults.maxInputLength,
        verbs: ["train", "fl client"], help: "prompt tokens kept per example (the middle of longer prompts is dropped)"},
    {flags: "--max-target-length <n>", key: "maxTargetLength", group: "data", parse: "int", default: trainDefaults.maxTargetLength,
        verbs: ["train"], help: "target tokens kept per example, EOS included"},
    {flags: "--val-data <items.jsonl>", key: "validationData", group: "data", parse: "string", verbs: ["train"],
        help: "held-out items for the validation loss"},
    {flags: "--val-split <r>", key: "validationSplit", group: "data", parse: "number", verbs: ["train"],
        help: "hold out this share of the training items instead (seeded)"},
    {flags: "--eval-every <n>", key: "evalEvery", group: "data", parse: "int", verbs: ["train"],
        help: "validation loss every N steps (always at the end)"},
    // PruFed's local rounds (defaults: prufedDefaults)
    {flags: "--local-steps <n>", key: "localSteps", group: "optimizer", parse: "int", verbs: flTrainingVerbs,
        help: "optimizer steps of local training per round (E)"},
    {flags: "--held-out <share>", key: "heldOutShare", group: "data", parse: "number", verbs: flTrainingVerbs,
        help: "share of each client's items held out for accuracy"},
    // LoRA: the adapter's shape
    {flags: "--r <n>", key: "r", group: "lora", parse: "int", default: loraDefaults.r, verbs: ["train", ...flVerbs], help: "LoRA rank"},
    {flags: "--lora-alpha <a>", key: "loraAlpha", group: "lora", parse: "number", default: loraDefaults.loraAlpha, verbs: ["train", ...flVerbs],
        help: "LoRA alpha: the update is scaled by alpha / r"},
    {flags: "--lora-dropout <p>", key: "loraDropout", group: "lora", parse: "number", default: loraDefaults.loraDropout, verbs: ["train", ...flTrainingVerbs],
        help: "dropout on the input of every LoRA branch"},
    {flags: "--target-modules <list>", key: "targetModules", group: "lora", parse: "list", verbs: ["train", "fl simulate", "fl server"],
        help: `projections to adapt (default ${defaultTargetModules.join(",")}, those the model has)`},
    // optimizer: AdamW, schedule, batching
    {flags: "--lr <x>", key: "learningRate", group: "optimizer", parse: "number", default: trainDefaults.learningRate, verbs: ["train", ...flTrainingVerbs],
        help: "learning rate (AdamW; the peak when --lr-scheduler decays it)"},
    {flags: "--weight-decay <x>", key: "weightDecay", group: "optimizer", parse: "number", default: trainDefaults.weightDecay,
        verbs: ["train"], help: "AdamW decoupled weight decay"},
    {flags: "--adam-beta1 <x>", key: "adamBeta1", group: "optimizer", parse: "number", default: trainDefaults.adamBeta1, verbs: ["train"],
        help: "AdamW beta1"},
    {flags: "--adam-beta2 <x>", key: "adamBeta2", group: "optimizer", parse: "number", default: trainDefaults.adamBeta2, verbs: ["train"],
        help: "AdamW beta2"},
    {flags: "--adam-epsilon <x>", key: "adamEpsilon", group: "optimizer", parse: "number", default: trainDefaults.adamEpsilon,
        verbs: ["train"], help: "AdamW epsilon"},
    {flags: "--max-grad-norm <x>", key: "maxGradNorm", group: "optimizer", parse: "number", default: trainDefaults.maxGradNorm,
        verbs: ["train"], help: "clip the global gradient norm (0: off)"},
    {flags: "--lr-scheduler <name>", key: "lrScheduler", group: "optimizer", parse: {choices: lrSchedulers}, default: trainDefaults.lrScheduler,
        verbs: ["train"], help: "learning-rate decay after warmup"},
    {flags: "--warmup-steps <n>", key: "warmupSteps", group: "optimizer", parse: "int", verbs: ["train"],
        help: "linear warmup from 0 over N steps"},
    {flags: "--warmup-ratio <r>", key: "warmupRatio", group: "optimizer", parse: "number", verbs: ["train"],
        help: "warmup over this share of the steps"},
    {flags: "--batch <n>", key: "batchSize", group: "optimizer", parse: "int", default: trainDefaults.batchSize, verbs: ["train", ...flTrainingVerbs],
        help: "items per optimizer step (gradients accumulate over its micro-batches)"},
    {flags: "--batch-size <n>", key: "batchSize", aliasOf: "--batch", group: "optimizer", parse: "int", verbs: ["train", ...flTrainingVerbs],
        help: "the same as --batch (the name `run`, `client` and the job spec use)"},
    {flags: "--steps <n>", key: "steps", group: "optimizer", parse: "int", verbs: ["train"],
        help: "optimizer steps (default: --epochs passes over the items)"},
    {flags: "--epochs <n>", key: "epochs", group: "optimizer", parse: "int", verbs: ["train"],
        help: `passes over the items (default ${trainDefaults.epochs} when --steps is not given)`},
    {flags: "--micro-batch-tokens <n>", key: "microBatchTokens", group: "optimizer", parse: "int", verbs: ["train"],
        help: "tokens per forward/backward pass (memory bound; default: longest example, >= 256)"},
    {flags: "--micro-batch-sequences <n>", key: "microBatchSequences", group: "optimizer", parse: "int",
        default: trainDefaults.microBatchSequences, verbs: ["train"], help: "sequences per forward/backward pass (<= 256)"},
    {flags: "--seed <n>", key: "seed", group: "optimizer", parse: "int", default: trainDefaults.seed, verbs: ["train"],
        help: "seed of the adapter init, data order, split and dropout"},
    // checkpoint
    {flags: "--checkpoint-dir <dir>", key: "checkpointDir", group: "checkpoint", parse: "string", verbs: ["train"],
        help: "save checkpoints (adapter, AdamW state, data position) here"},
    {flags: "--save-every <n>", key: "saveEvery", group: "checkpoint", parse: "int", default: trainDefaults.saveEvery, verbs: ["train"],
        help: "checkpoint every N steps (and at the end)"},
    {flags: "--resume", key: "resume", group: "checkpoint", parse: "flag", verbs: ["train"],
        help: "continue from --checkpoint-dir's checkpoint (same data and settings)"},
    // privacy: DP-SGD
    {flags: "--dp-epsilon <ε>", key: "dpEpsilon", group: "privacy", parse: "number", verbs: ["train"],
        help: "DP-SGD to this (ε, δ) guarantee per item: the noise multiplier is calibrated by the RDP accountant"},
    {flags: "--dp-delta <δ>", key: "dpDelta", group: "privacy", parse: "number", verbs: ["train"],
        help: `DP-SGD: δ (default ${trainDefaults.dpDelta}; keep it below 1 / items)`},
    {flags: "--dp-noise-multiplier <σ>", key: "dpNoiseMultiplier", group: "privacy", parse: "number", verbs: ["train"],
        help: "DP-SGD with this noise multiplier (noise std σ·C); the spent ε is reported"},
    {flags: "--max-per-example-grad-norm <C>", key: "maxPerExampleGradNorm", group: "privacy", parse: "number", verbs: ["train"],
        help: `DP-SGD: clip each item's gradient to this L2 norm (default ${trainDefaults.maxPerExampleGradNorm})`},
    // privacy: perturb's token-level DP mechanism (perturbDefaults)
    {flags: "--mechanism <name>", key: "mechanism", group: "privacy", parse: {choices: mechanismNames}, default: perturbDefaults.mechanism,
        verbs: ["perturb"], help: "perturbation mechanism"},
    {flags: "--epsilon <e>", key: "epsilon", group: "privacy", parse: "number", default: perturbDefaults.epsilon, verbs: ["perturb"],
        help: "privacy parameter ε per token, > 0"},
    {flags: "--k <n>", key: "k", group: "privacy", parse: "int", verbs: ["perturb"],
        help: `custext: cluster size K (default ${perturbDefaults.k})`},
    {flags: "--similarity <metric>", key: "similarity", group: "privacy", parse: {choices: ["cosine", "euclidean"]}, verbs: ["perturb"],
        help: `custext: embedding similarity (default ${perturbDefaults.similarity})`},
    {flags: "--seed <n>", key: "seed", group: "privacy", parse: "string", verbs: ["perturb"],
        help: "reproducible randomness (tests and audits only; default: OS CSPRNG)"},
    // output
    {flags: "--json", key: "json", group: "output", parse: "flag", verbs: jsonVerbs,
        help: "print the result as JSON (progress as JSON lines on stderr)"},
];

const attribute = (spec: OptionSpec) => new Option(spec.flags).attributeName();
const longFlag = (spec: OptionSpec) => new Option(spec.flags).long!;

/** The table's options of one verb (optionally of some groups only), in table order. */
export function verbOptions(verb: string, groups?: readonly OptionGroup[]): OptionSpec[] {
    return optionTable.filter((s) => s.verbs.includes(verb) && (groups === undefined || groups.includes(s.group)));
}

function optionOf(spec: OptionSpec): Option {
    const option = new Option(spec.flags, spec.help);
    if (typeof spec.parse === "object")
        option.choices([...spec.parse.choices]);
    if (spec.default !== undefined)
        option.default(String(spec.default), String(spec.default));
    return option;
}

/** Declares a verb's options from the table; a default shows in --help as "(default: 32)". */
export function addOptions(cmd: Command, verb: string, groups?: readonly OptionGroup[]): Command {
    for (const spec of verbOptions(verb, groups))
        cmd.addOption(optionOf(spec));
    return cmd;
}

/** One option of the table, for a verb that declares the rest of its options itself (`.addOption(tableOption("--json", "eval"))`). */
export function tableOption(long: string, verb: string): Option {
    const spec = verbOptions(verb).find((s) => longFlag(s) === long);
    if (spec === undefined)
        throw new Error(`the option table gives ${verb} no ${long}`);
    return optionOf(spec);
}

/** Several of the table's options of one verb, in the order given: `addTableOptions(cmd, "fl client", "--r", "--lora-alpha")`. */
export function addTableOptions(cmd: Command, verb: string, ...longs: string[]): Command {
    for (const long of longs)
        cmd.addOption(tableOption(long, verb));
    return cmd;
}

function parseValue(spec: OptionSpec, value: unknown): unknown {
    if (spec.parse === "number" || spec.parse === "int")
        return String(value).trim() === "" ? NaN : Number(value);
    if (spec.parse === "list")
        return String(value).split(",").map((s) => s.trim()).filter(Boolean);
    return value;
}

/**
 * The options given on the command line, parsed, under the library's names: an option left out is
 * not passed (the library fills its default, the one --help showed). Both names of an aliased
 * option with different values is a usage error.
 */
export function readOptions(cmd: Command, verb: string, groups?: readonly OptionGroup[]): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    const given = new Map<string, OptionSpec>();
    for (const spec of verbOptions(verb, groups)) {
        const name = attribute(spec);
        const value = cmd.getOptionValue(name);
        if (value === undefined || cmd.getOptionValueSource(name) === "default")
            continue;
        const other = given.get(spec.key);
        if (other !== undefined && String(cmd.getOptionValue(attribute(other))) !== String(value))
            throw new UsageError(`give ${longFlag(other)} or ${longFlag(spec)} (the same option), not both`);
        given.set(spec.key, spec);
        out[spec.key] = parseValue(spec, value);
    }
    return out;
}

/** The flag of a library option name for this verb: the one given on the command line if several. */
function flagOf(cmd: Command, verb: string, key: string): {flag: string; given?: unknown} | undefined {
    const specs = verbOptions(verb).filter((s) => s.key === key);
    const given = specs.find((s) => cmd.getOptionValueSource(attribute(s)) === "cli") ?? specs[0];
    return given && {flag: longFlag(given), given: cmd.getOptionValue(attribute(given))};
}

/** An OptionError as a usage error (exit 2) naming the flags and the text given; `flagOf` maps a library name to its flag. */
export function flagError(err: unknown, flagOf: (key: string) => {flag: string; given?: unknown} | undefined): unknown {
    if (!(err instanceof OptionError))
        return err;
    const flags = err.options.map(flagOf);
    if (flags.some((f) => f === undefined))
        return err;
    const given = flags[0]!.given;
    return new UsageError(err.messageWith(flags.map((f) => f!.flag), given !== undefined ? JSON.stringify(String(given)) : JSON.stringify(err.got)));
}

/** Runs the library with the verb's options: an OptionError becomes a usage error naming the flags given. */
export async function withOptionFlags<T>(cmd: Command, verb: string, run: () => T | Promise<T>): Promise<T> {
    try {
        return await run();
    } catch (err) {
        throw flagError(err, (key) => flagOf(cmd, verb, key));
    }
}

/**
 * Shows the defaults of a named set in --help as "(default: 16, prufedDefaults)" and makes them the
 * options' values: for the options whose name (or `keys[name]`) is in the set. A verb whose
 * defaults differ from the table's (PruFed's local rounds) says so by name.
 */
export function useDefaultSet(cmd: Command, setName: string, set: Readonly<Record<string, unknown>>,
    keys: Readonly<Record<string, string>> = {}): Command {
    for (const option of cmd.options) {
        const name = option.attributeName(), key = keys[name] ?? name;
        if (!(key in set) || option.isBoolean())
            continue;
        option.default(String(set[key]), `${set[key]}, ${setName}`);
        cmd.setOptionValueWithSource(name, String(set[key]), "default");
    }
    return cmd;
}

/** Names the defaults a verb declares itself as a set in --help ("(default: 1e-3, runDemoDefaults)"): they are not the table's. */
export function labelDefaults(setName: string, cmd: Command): Command {
    for (const option of cmd.options)
        if (option.defaultValue !== undefined && !option.isBoolean())
            option.defaultValueDescription = `${option.defaultValue}, ${setName}`;
    return cmd;
}

/** A job-spec field with a default (`client run`, `run`). */
export type SpecDefaultField = keyof typeof jobSpecDefaults;

/**
 * A job-spec flag's help with the default the server fills in when it is left out, named as the set
 * it comes from; nothing is sent for a flag not given (the server's jobSpecDefaults decide).
 */
export const specHelp = (field: SpecDefaultField, help: string) => `${help} (default: ${jobSpecDefaults[field]}, jobSpecDefaults)`;
