import {Command, Option} from "commander";
import {writeJsonlAtomic} from "../data/jsonl.js";
import {evaluate} from "../eval/evaluate.js";
import {evalTasks, evalTaskNames, type EvalTaskName} from "../eval/tasks.js";
import {addModelOptions, modelLoadOptions, type ModelCliOptions} from "./model-options.js";
import {aliasedOption, checkOutputFolder, parseNumber, printJson, progressReporter, table, UsageError} from "./output.js";
import {tableOption} from "./options.js";

interface EvalCliOptions extends ScorerCliOptions {
    task?: EvalTaskName;
    data?: string;
    split?: string;
    limit?: string;
    seed?: string;
    bos?: boolean;
    maxLength?: string;
    promptPrefix?: string;
    out?: string;
    json?: boolean;
}

export interface ScorerCliOptions extends ModelCliOptions {
    lora?: string[];
    loraScale?: string;
    batchSize?: string;
    batchTokens?: string;
    contextSize?: string;
    sequences?: string;
    kvCacheType?: "f32" | "f16";
    flashAttention?: boolean;
}

const positiveInt = (x: number) => Number.isInteger(x) && x >= 1;

/** Shared by eval and perplexity: the scoring context's options. */
export function addScorerOptions(cmd: Command): Command {
    return addModelOptions(cmd)
        .option("--lora <adapter...>", "LoRA adapter GGUF(s), applied at run time without merging")
        .option("--lora-scale <s>", "scale of the LoRA adapters (multiplies alpha/r; default 1)")
        .option("--batch-size <n>", "tokens per decode (default 512)")
        .option("--batch-tokens <n>", "the same as --batch-size (the name `bi` and `prune` use)")
        .option("--context-size <n>", "KV cells in flight, i.e. tokens scored together (default 256 on CPU, 2048 with --gpu-layers)")
        .option("--sequences <n>", "sequences in flight, at least the largest number of choices (default 32)")
        .addOption(new Option("--kv-cache-type <type>", "KV cache type: f32 is exact, f16 halves its memory").choices(["f32", "f16"]))
        .option("--flash-attention", "flash attention: faster on GPUs, but its fp16 accumulation moves results by ~1e-3");
}

/** Parses the options addScorerOptions adds. */
export function scorerOptions(opts: ScorerCliOptions, cmd: Command) {
    const scale = opts.loraScale === undefined ? undefined : parseNumber(opts.loraScale, "--lora-scale", Number.isFinite, "a number");
    if (scale !== undefined && !opts.lora?.length)
        throw new UsageError("--lora-scale goes with --lora");
    const batch = aliasedOption(cmd, "batchSize", "batchTokens");
    return {
        ...modelLoadOptions(opts),
        lora: opts.lora?.map((path) => ({path, scale})),
        batchSize: batch.value === undefined ? undefined : parseNumber(batch.value, batch.flag, positiveInt, "a positive integer"),
        contextSize: opts.contextSize === undefined ? undefined
            : parseNumber(opts.contextSize, "--context-size", positiveInt, "a positive integer"),
        sequences: opts.sequences === undefined ? undefined
            : parseNumber(opts.sequences, "--sequences", (x) => positiveInt(x) && x <= 256, "an integer in [1, 256]"),
        kvCacheType: opts.kvCacheType,
        flashAttention: opts.flashAttention,
    };
}

const fmt = (x: number) => (Number.isFinite(x) ? x.toFixed(4) : "N/A");

export function evalCommand(): Command {
    return addScorerOptions(new Command("eval")
        .description("Zero-shot multiple-choice accuracy (acc, acc_norm) in the manner of lm-evaluation-harness")
        .argument("<model>", "GGUF model file")
        .addOption(new Option("--task <name>", "task to evaluate").choices([...evalTaskNames]))
        .option("--data <file>", "evaluate this file (the task's original format; task-item JSONL for mc) instead of the shared split")
        .option("--split <name>", "split of the shared dataset (default: the one lm-evaluation-harness uses)")
        .option("--limit <n>", "evaluate only N items (the first N, or a seeded sample with --seed)")
        .option("--seed <s>", "with --limit: draw a random sample of N items with this seed")
        .option("--bos", "prepend BOS to every sequence (default: as the model's GGUF says)")
        .option("--no-bos", "never prepend BOS")
        .option("--max-length <n>", "longest sequence the model sees; longer contexts are cut on the left (default: training context)")
        .option("--prompt-prefix <text>", "put before every context (default: the label prefix the model or --lora adapters record; \"\" for none)"))
        .option("-o, --out <file>", "write one JSON line per item: id, context, continuations, loglikelihoods, pred, gold, …")
        .addOption(tableOption("--json", "eval"))
        .addHelpText("after", `
Tasks and prompts (lm-evaluation-harness formats; see docs/eval.md):
${evalTaskNames.map((t) => `  ${t.padEnd(21)}${t === "mc" ? "--data <task items.jsonl>: \"Question: {question}\\nAnswer:\" + \" {choice}\"" : evalTasks[t].harnessTask !== "-" ? `harness task ${evalTasks[t].harnessTask}` : "FinLoRA's instruction prompt + \" {negative|neutral|positive}\""}`).join("\n")}

A model or adapter trained by \`ppc-gpt train\` records the label prefix it learned after ("[label] "
by default); eval puts it before every context, so the trained model sees its training format.
--prompt-prefix overrides it (--prompt-prefix "" scores the plain harness prompt).

Each choice is scored by the sum of its tokens' log-probabilities given the prompt; the prompt is
evaluated once per item and shared by all its choices. acc takes the most likely choice, acc_norm
the most likely per character of the choice; stderr = sample standard deviation / sqrt(n).

Examples:
  ppc-gpt eval model.gguf --task arc-easy
  ppc-gpt eval model.gguf --task commonsenseqa --limit 200 --seed 1 --json
  ppc-gpt eval pruned.gguf --task openbookqa --lora adapter.gguf --out obqa-items.jsonl
  ppc-gpt eval model.gguf --task mc --data synthetic-items.jsonl
  ppc-gpt eval model.gguf --task fiqa-sa --data FiQA_post.json`)
        .action(async (model: string, opts: EvalCliOptions, cmd: Command) => {
            const mode = {json: Boolean(opts.json)};
            if (!opts.task)
                throw new UsageError(`--task is required (${evalTaskNames.join(", ")})`);
            if (opts.task === "mc" && !opts.data)
                throw new UsageError("--task mc needs --data <file> (JSONL task items)");
            if (opts.data && opts.split)
                throw new UsageError("give either --data or --split, not both");
            const limit = opts.limit === undefined ? undefined : parseNumber(opts.limit, "--limit", positiveInt, "a positive integer");
            const seed = opts.seed === undefined ? undefined
                : parseNumber(opts.seed, "--seed", (x) => Number.isInteger(x) && x >= 0 && x < 2 ** 32, "an integer in [0, 2^32)");
            const maxLength = opts.maxLength === undefined ? undefined
                : parseNumber(opts.maxLength, "--max-length", (x) => Number.isInteger(x) && x >= 2, "an integer >= 2");
            checkOutputFolder(opts.out, "--out");
            const progress = progressReporter(mode, `eval ${opts.task}`, "items");
            const r = await evaluate(model, {
                task: opts.task, data: opts.data, split: opts.split, limit, seed, maxLength, bos: opts.bos, promptPrefix: opts.promptPrefix,
                ...scorerOptions(opts, cmd), onProgress: progress.update,
            });
            progress.finish();
            if (opts.out)
                await writeJsonlAtomic(opts.out, r.items.map((it) => ({
                    id: it.id, context: it.context, continuations: it.continuations, loglikelihoods: it.loglikelihoods,
                    pred: it.pred, gold: it.gold, pred_norm: it.pred_norm, is_greedy: it.is_greedy, tokens: it.tokens,
                    acc: it.acc, acc_norm: it.acc_norm,
                })));
            const nan = (x: number) => (Number.isFinite(x) ? x : null);
            if (mode.json)
                return printJson({task: r.task, n: r.n, acc: r.acc, acc_stderr: nan(r.acc_stderr), acc_norm: r.acc_norm,
                    acc_norm_stderr: nan(r.acc_norm_stderr), prompt_prefix: r.promptPrefix});
            process.stdout.write(table(["task", "n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr"],
                [[r.task, r.n, fmt(r.acc), fmt(r.acc_stderr), fmt(r.acc_norm), fmt(r.acc_norm_stderr)]]));
            process.stdout.write(`\ndata   ${r.data}\nmodel  ${r.model}${opts.lora?.length ? ` + LoRA ${opts.lora.join(", ")}` : ""}\n` +
                `bos    ${r.bos ? "prepended" : "none"}\nprefix ${JSON.stringify(r.promptPrefix)}\ntime   ${r.seconds.toFixed(2)} s (${(r.n / r.seconds).toFixed(1)} items/s)\n` +
                (opts.out ? `items  ${opts.out}\n` : ""));
        });
}
