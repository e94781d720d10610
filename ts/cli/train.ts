import fs from "node:fs";
import path from "node:path";
import {Command} from "commander";
import {resolveTrainOptions, trainLora, type TrainEvent, type TrainOptions, type TrainResult} from "../train/train.js";
import {addOptions, readOptions, withOptionFlags} from "./options.js";
import {printJson, table, UsageError} from "./output.js";

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
    return addOptions(new Command("train"), "train")
        .description("LoRA-train a model on task items: CoT distillation (label + rationale) or label fine-tuning")
        .argument("<model>", "base GGUF model (never modified): F32, F16, Q8_0, Q4_K…")
        .requiredOption("--data <items.jsonl>", "training items (task-item JSONL; an item may carry a numeric \"weight\")")
        .option("-o, --output <adapter.gguf>", "adapter to write (llama.cpp's LoRA GGUF layout, written atomically)")
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
        .action(async (model: string, opts: {data: string; output?: string; checkpointDir?: string; resume?: boolean; json?: boolean},
            cmd: Command) => {
            if (!opts.output)
                throw new UsageError("-o/--output <adapter.gguf> is required");
            const options = {model, data: opts.data, output: opts.output, ...readOptions(cmd, "train")} as TrainOptions;
            await withOptionFlags(cmd, "train", () => resolveTrainOptions(options));
            // re-running the first command after an interruption would start over and overwrite the checkpoint
            if (opts.checkpointDir && !opts.resume && fs.existsSync(path.join(opts.checkpointDir, "checkpoint.json")))
                throw new UsageError(`${opts.checkpointDir} holds a checkpoint: add --resume to continue it, or give another ` +
                    `--checkpoint-dir (or remove ${opts.checkpointDir}) to start over`);
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
            process.stdout.write(trainSummary(result));
        });
}

/** The result as a two-column table without its header. */
function trainSummary(result: TrainResult): string {
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
    return table(["", ""], rows).split("\n").slice(2).join("\n");
}
