import fs from "node:fs";
import path from "node:path";
import {Command, Option} from "commander";
import {defaultTaskFormat, taskFormatNames, type TaskFormatName} from "../data/prompt.js";
import {defaultTargetModules} from "../train/adapter.js";
import {lrSchedulers, type LrScheduler} from "../train/schedule.js";
import {trainLora, type TrainEvent, type TrainOptions} from "../train/train.js";
import {addModelOptions, modelLoadOptions, type ModelCliOptions} from "./model-options.js";
import {aliasedOption, parseNumber, printJson, table, UsageError} from "./output.js";

interface TrainCliOptions extends ModelCliOptions {
    data?: string;
    output?: string;
    task?: "cot" | "label";
    format?: TaskFormatName;
    labelPrefix?: string;
    rationaleWeight?: string;
    r?: string;
    loraAlpha?: string;
    loraDropout?: string;
    targetModules?: string;
    lr?: string;
    weightDecay?: string;
    adamBeta1?: string;
    adamBeta2?: string;
    adamEpsilon?: string;
    maxGradNorm?: string;
    lrScheduler?: LrScheduler;
    warmupSteps?: string;
    warmupRatio?: string;
    batch?: string;
    batchSize?: string;
    steps?: string;
    epochs?: string;
    maxInputLength?: string;
    maxTargetLength?: string;
    microBatchTokens?: string;
    microBatchSequences?: string;
    valData?: string;
    valSplit?: string;
    evalEvery?: string;
    checkpointDir?: string;
    saveEvery?: string;
    resume?: boolean;
    seed?: string;
    dpEpsilon?: string;
    dpDelta?: string;
    dpNoiseMultiplier?: string;
    maxPerExampleGradNorm?: string;
    json?: boolean;
}

const positiveInt = (x: number) => Number.isInteger(x) && x >= 1;
const nonNegative = (x: number) => x >= 0;

/** Progress of a training run: a status line on a TTY, JSON lines on stderr with --json. */
function trainingReporter(json: boolean): {onEvent: (e: TrainEvent) => void; finish: () => void} {
    const tty = process.stderr.isTTY && !json;
    let lastDraw = 0, drawn = false;
    const clear = () => {
        if (drawn)
            process.stderr.write("\r\x1b[2K");
    };
    return {
        onEvent(e) {
            if (json) {
                process.stderr.write(JSON.stringify({event: e.type === "step" ? "progress" : e.type, stage: "train", ...e}) + "\n");
                return;
            }
            if (!tty)
                return;
            if (e.type === "step") {
                const now = Date.now();
                if (now - lastDraw < 100 && e.step < e.steps)
                    return;
                lastDraw = now;
                const width = 24, frac = e.step / e.steps, filled = Math.round(frac * width);
                clear();
                process.stderr.write(`train [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${e.step}/${e.steps} ` +
                    `loss ${e.loss.toFixed(4)} lr ${e.learningRate.toExponential(2)} ${Math.round(e.tokensPerSecond)} tok/s ` +
                    `eta ${Math.round(e.etaSeconds)}s`);
                drawn = true;
            } else if (e.type === "eval") {
                clear();
                process.stderr.write(`step ${e.step}: validation loss ${e.loss.toFixed(4)} (label ${e.labelLoss.toFixed(4)}` +
                    `${e.rationaleLoss !== undefined ? `, rationale ${e.rationaleLoss.toFixed(4)}` : ""})\n`);
                drawn = false;
            } else {
                clear();
                process.stderr.write(`step ${e.step}: checkpoint ${e.path}\n`);
                drawn = false;
            }
        },
        finish() {
            if (drawn)
                process.stderr.write("\n");
        },
    };
}

export function trainCommand(): Command {
    return addModelOptions(new Command("train"))
        .description("LoRA-train a model on task items: CoT distillation (label + rationale) or label fine-tuning")
        .argument("<model>", "base GGUF model (never modified): F32, F16, Q8_0, Q4_K…")
        .requiredOption("--data <items.jsonl>", "training items (task-item JSONL; an item may carry a numeric \"weight\")")
        .option("-o, --output <adapter.gguf>", "adapter to write (llama.cpp's LoRA GGUF layout, written atomically)")
        .addOption(new Option("--task <task>", "cot: L_label + λ·L_rationale (server stage); label: L_label only (client stage)")
            .choices(["cot", "label"]).default("cot"))
        .addOption(new Option("--format <task>", "the evaluation task whose prompt format the examples take (see below)")
            .choices([...taskFormatNames]).default(defaultTaskFormat))
        .option("--label-prefix <text>", "put before the context of label examples; recorded in the adapter, applied by eval " +
            "(default: the base model's recorded prefix, else \"[label] \"; \"\" for none)")
        .option("--rationale-weight <λ>", "weight of the rationale loss for --task cot", "1")
        .option("--r <n>", "LoRA rank", "8")
        .option("--lora-alpha <a>", "LoRA alpha: the update is scaled by alpha / r", "32")
        .option("--lora-dropout <p>", "dropout on the input of every LoRA branch", "0.1")
        .option("--target-modules <list>", `projections to adapt (default ${defaultTargetModules.join(",")}, those the model has)`)
        .option("--lr <x>", "peak learning rate (AdamW)", "5e-5")
        .option("--weight-decay <x>", "AdamW decoupled weight decay", "0")
        .option("--adam-beta1 <x>", "AdamW beta1", "0.9")
        .option("--adam-beta2 <x>", "AdamW beta2", "0.999")
        .option("--adam-epsilon <x>", "AdamW epsilon", "1e-8")
        .option("--max-grad-norm <x>", "clip the global gradient norm (0: off)", "1")
        .addOption(new Option("--lr-scheduler <name>", "learning-rate decay after warmup").choices([...lrSchedulers]).default("linear"))
        .option("--warmup-steps <n>", "linear warmup from 0 over N steps")
        .option("--warmup-ratio <r>", "warmup over this share of the steps")
        .option("--batch <n>", "items per optimizer step (gradients accumulate over its micro-batches)", "32")
        .option("--batch-size <n>", "the same as --batch (the name `run`, `client` and the job spec use)")
        .option("--steps <n>", "optimizer steps (default: --epochs passes over the items)")
        .option("--epochs <n>", "passes over the items (default 3 when --steps is not given)")
        .option("--max-input-length <n>", "prompt tokens kept per example (the middle of longer prompts is dropped)", "64")
        .option("--max-target-length <n>", "target tokens kept per example, EOS included", "128")
        .option("--micro-batch-tokens <n>", "tokens per forward/backward pass (memory bound; default: longest example, >= 256)")
        .option("--micro-batch-sequences <n>", "sequences per forward/backward pass (<= 256)", "64")
        .option("--val-data <items.jsonl>", "held-out items for the validation loss")
        .option("--val-split <r>", "hold out this share of the training items instead (seeded)")
        .option("--eval-every <n>", "validation loss every N steps (always at the end)")
        .option("--checkpoint-dir <dir>", "save checkpoints (adapter, AdamW state, data position) here")
        .option("--save-every <n>", "checkpoint every N steps (and at the end)", "100")
        .option("--resume", "continue from --checkpoint-dir's checkpoint (same data and settings)")
        .option("--seed <n>", "seed of the adapter init, data order, split and dropout", "42")
        .option("--dp-epsilon <ε>", "DP-SGD to this (ε, δ) guarantee per item: the noise multiplier is calibrated by the RDP accountant")
        .option("--dp-delta <δ>", "DP-SGD: δ (default 1e-5; keep it below 1 / items)")
        .option("--dp-noise-multiplier <σ>", "DP-SGD with this noise multiplier (noise std σ·C); the spent ε is reported")
        .option("--max-per-example-grad-norm <C>", "DP-SGD: clip each item's gradient to this L2 norm (default 1)")
        .option("--json", "print the result as JSON (progress as JSON lines on stderr)")
        .addHelpText("after", `
Each item gives a label example (label prefix + the --format task's context -> the gold continuation
that task's evaluation scores) and, for --task cot, a rationale example ("[rationale] " + the same
context -> " <rationale>"). Formats (--format; the same names as \`ppc-gpt eval --task\`):
  mc, arc-easy, arc-challenge  "Question: {question}\\nAnswer:" -> " {gold choice text}"
  openbookqa                   "{question}" -> " {gold choice text}"
  commonsenseqa                "Question: {question}\\nA. {choice}\\n…\\nAnswer:" -> " {gold letter}"
  fiqa-sa, financial-phrasebank "Instruction: …\\nInput: {text}\\nAnswer:" -> " {class word}"
The adapter records the format and label prefix; \`ppc-gpt eval\` applies the prefix by itself.
The loss is the cross-entropy of the target tokens only, L = L_label + λ·L_rationale, each the mean
over the step's target tokens. A is initialised Kaiming-uniform and B = 0 (PEFT), so training starts at the base model.
Learning-rate schedules follow transformers (linear warmup from 0; linear, cosine or constant after).
DP-SGD (--dp-epsilon or --dp-noise-multiplier): each step samples items independently with rate
q = batch / items (Poisson), computes each item's gradient on its own, clips it to L2 norm C, sums,
adds N(0, σ²C²) noise and divides by the expected batch q·items; AdamW as usual. The RDP accountant
of the sampled Gaussian gives ε for (σ, q, steps, δ); the spent (ε, δ) is in the JSON result and the
adapter's metadata (ppc_gpt.dp.*). --max-grad-norm does not apply (the per-item clip replaces it).
The adapter loads in llama.cpp (--lora) and node-llama-cpp; \`ppc-gpt merge\` folds it into the model.

Examples:
  ppc-gpt train pruned.gguf --data synthetic.jsonl --task cot -o server-lora.gguf --steps 300
  ppc-gpt train pruned.gguf --data private.jsonl --task label --lr 1e-4 --epochs 3 --val-split 0.1 -o client-lora.gguf
  ppc-gpt train model.gguf --data items.jsonl -o a.gguf --checkpoint-dir ckpt --save-every 50
  ppc-gpt train model.gguf --data items.jsonl -o a.gguf --checkpoint-dir ckpt --resume
  ppc-gpt train small.gguf --data private.jsonl --task label -o dp.gguf --epochs 3 --batch 16 --dp-epsilon 3 --dp-delta 1e-5 --max-per-example-grad-norm 1
  ppc-gpt train model.gguf --data items.jsonl -o a.gguf --r 16 --lora-alpha 32 --target-modules attn_q,attn_v --json`)
        .action(async (model: string, opts: TrainCliOptions, cmd: Command) => {
            if (!opts.output)
                throw new UsageError("-o/--output <adapter.gguf> is required");
            const batch = aliasedOption(cmd, "batch", "batchSize");
            if (opts.steps !== undefined && opts.epochs !== undefined)
                throw new UsageError("give --steps or --epochs, not both");
            if (opts.warmupSteps !== undefined && opts.warmupRatio !== undefined)
                throw new UsageError("give --warmup-steps or --warmup-ratio, not both");
            if (opts.valData !== undefined && opts.valSplit !== undefined)
                throw new UsageError("give --val-data or --val-split, not both");
            if (opts.resume && !opts.checkpointDir)
                throw new UsageError("--resume needs --checkpoint-dir");
            // re-running the first command after an interruption would start over and overwrite the checkpoint
            if (opts.checkpointDir && !opts.resume && fs.existsSync(path.join(opts.checkpointDir, "checkpoint.json")))
                throw new UsageError(`${opts.checkpointDir} holds a checkpoint: add --resume to continue it, or give another ` +
                    `--checkpoint-dir (or remove ${opts.checkpointDir}) to start over`);
            if (opts.dpEpsilon !== undefined && opts.dpNoiseMultiplier !== undefined)
                throw new UsageError("give --dp-epsilon or --dp-noise-multiplier, not both");
            if (opts.dpEpsilon === undefined && opts.dpNoiseMultiplier === undefined &&
                (opts.dpDelta !== undefined || opts.maxPerExampleGradNorm !== undefined))
                throw new UsageError("--dp-delta and --max-per-example-grad-norm go with --dp-epsilon or --dp-noise-multiplier");
            const num = (v: string | undefined, name: string, ok: (x: number) => boolean, expect: string) =>
                v === undefined ? undefined : parseNumber(v, name, ok, expect);
            const load = modelLoadOptions(opts);
            const options: TrainOptions = {
                model,
                data: opts.data!,
                output: opts.output,
                task: opts.task,
                format: opts.format,
                labelPrefix: opts.labelPrefix,
                rationaleWeight: num(opts.rationaleWeight, "--rationale-weight", nonNegative, "a non-negative number"),
                r: num(opts.r, "--r", (x) => positiveInt(x) && x <= 4096, "an integer in [1, 4096]"),
                loraAlpha: num(opts.loraAlpha, "--lora-alpha", (x) => x > 0, "a positive number"),
                loraDropout: num(opts.loraDropout, "--lora-dropout", (x) => x >= 0 && x <= 0.99, "a number in [0, 0.99]"),
                targetModules: opts.targetModules?.split(",").map((s) => s.trim()).filter(Boolean),
                learningRate: num(opts.lr, "--lr", (x) => x > 0 && x <= 10, "a positive number"),
                weightDecay: num(opts.weightDecay, "--weight-decay", nonNegative, "a non-negative number"),
                adamBeta1: num(opts.adamBeta1, "--adam-beta1", (x) => x >= 0 && x < 1, "in [0, 1)"),
                adamBeta2: num(opts.adamBeta2, "--adam-beta2", (x) => x >= 0 && x < 1, "in [0, 1)"),
                adamEpsilon: num(opts.adamEpsilon, "--adam-epsilon", (x) => x > 0 && x <= 1, "a positive number"),
                maxGradNorm: num(opts.maxGradNorm, "--max-grad-norm", nonNegative, "a non-negative number"),
                lrScheduler: opts.lrScheduler,
                warmupSteps: num(opts.warmupSteps, "--warmup-steps", (x) => Number.isInteger(x) && x >= 0, "a non-negative integer"),
                warmupRatio: num(opts.warmupRatio, "--warmup-ratio", (x) => x >= 0 && x <= 1, "a number in [0, 1]"),
                batchSize: num(batch.value, batch.flag, positiveInt, "a positive integer"),
                steps: num(opts.steps, "--steps", positiveInt, "a positive integer"),
                epochs: num(opts.epochs, "--epochs", positiveInt, "a positive integer"),
                maxInputLength: num(opts.maxInputLength, "--max-input-length", positiveInt, "a positive integer"),
                maxTargetLength: num(opts.maxTargetLength, "--max-target-length", positiveInt, "a positive integer"),
                microBatchTokens: num(opts.microBatchTokens, "--micro-batch-tokens", (x) => Number.isInteger(x) && x >= 2, "an integer >= 2"),
                microBatchSequences: num(opts.microBatchSequences, "--micro-batch-sequences", (x) => positiveInt(x) && x <= 256, "an integer in [1, 256]"),
                validationData: opts.valData,
                validationSplit: num(opts.valSplit, "--val-split", (x) => x > 0 && x < 1, "a number in (0, 1)"),
                evalEvery: num(opts.evalEvery, "--eval-every", positiveInt, "a positive integer"),
                checkpointDir: opts.checkpointDir,
                saveEvery: num(opts.saveEvery, "--save-every", positiveInt, "a positive integer"),
                resume: opts.resume,
                seed: num(opts.seed, "--seed", (x) => Number.isSafeInteger(x) && x >= 0, "a non-negative integer"),
                threads: load.threads,
                gpuLayers: load.gpuLayers,
                dpEpsilon: num(opts.dpEpsilon, "--dp-epsilon", (x) => x > 0 && x <= 1e6, "a positive number"),
                dpDelta: num(opts.dpDelta, "--dp-delta", (x) => x > 0 && x < 1, "a number in (0, 1)"),
                dpNoiseMultiplier: num(opts.dpNoiseMultiplier, "--dp-noise-multiplier", (x) => x >= 0 && x <= 1e6, "a non-negative number"),
                maxPerExampleGradNorm: num(opts.maxPerExampleGradNorm, "--max-per-example-grad-norm", (x) => x > 0, "a positive number"),
            };
            const reporter = trainingReporter(Boolean(opts.json));
            const controller = new AbortController();
            const onSignal = () => controller.abort();
            process.once("SIGINT", onSignal);
            let result;
            try {
                result = await trainLora({...options, onProgress: reporter.onEvent, signal: controller.signal});
            } finally {
                process.off("SIGINT", onSignal);
                reporter.finish();
            }
            if (opts.json)
                return printJson(result);
            const rows: (string | number)[][] = [
                ["adapter", result.output],
                ["task", `${result.task} (format ${result.format}, label prefix ${JSON.stringify(result.labelPrefix)})`],
                ["steps", `${result.steps}/${result.totalSteps} (${result.epochs.toFixed(2)} epochs)`],
                ["items", `${result.items} training, ${result.validationItems} validation (${result.examples} examples)`],
                ["trainable parameters", `${result.trainableParameters.toLocaleString("en-US")} in ${result.targetTensors} adapted tensors`],
                ["last step loss", result.trainLoss.toFixed(4)],
            ];
            if (result.validation)
                rows.push(["validation loss", `${result.validation.loss.toFixed(4)} (label ${result.validation.labelLoss.toFixed(4)}` +
                    `${result.validation.rationaleLoss !== undefined ? `, rationale ${result.validation.rationaleLoss.toFixed(4)}` : ""})`]);
            if (result.dp)
                rows.push(["differential privacy", `(ε ${result.dp.epsilon.toFixed(3)}, δ ${result.dp.delta}) after ${result.dp.steps} steps: ` +
                    `σ ${result.dp.noiseMultiplier.toFixed(4)}, C ${result.dp.maxPerExampleGradNorm}, q ${result.dp.sampleRate.toFixed(4)}`]);
            rows.push(["tokens", `${result.tokens.toLocaleString("en-US")} (${Math.round(result.tokensPerSecond)} tok/s)`]);
            rows.push(["time", `${result.seconds.toFixed(1)} s`]);
            if (result.checkpoint)
                rows.push(["checkpoint", result.checkpoint]);
            process.stdout.write(table(["", ""], rows).split("\n").slice(2).join("\n"));
        });
}
