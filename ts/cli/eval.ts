import {Command, Option} from "commander";
import {writeJsonlAtomic} from "../data/jsonl.js";
import {evaluate} from "../eval/evaluate.js";
import {evalTasks, evalTaskNames, type EvalTaskName} from "../eval/tasks.js";
import {addModelOptions, modelLoadOptions, type ModelCliOptions} from "./model-options.js";
import {checkOutputFolder, parseNumber, printJson, progressReporter, table, UsageError} from "./output.js";
import {addOptions, addTableOptions, readOptions, tableOption, withOptionFlags} from "./options.js";

interface EvalCliOptions extends ScorerCliOptions {
    task?: EvalTaskName;
    data?: string;
    split?: string;
    bos?: boolean;
    promptPrefix?: string;
    out?: string;
    json?: boolean;
}

export interface ScorerCliOptions extends ModelCliOptions {
    lora?: string[];
    loraScale?: string;
    kvCacheType?: "f32" | "f16";
    flashAttention?: boolean;
}

/** Shared by eval and perplexity: the scoring context's options (the table's "scoring" group). */
export function addScorerOptions(cmd: Command, verb: "eval" | "perplexity"): Command {
    return addOptions(addModelOptions(cmd)
        .option("--lora <adapter...>", "LoRA adapter GGUF(s), applied at run time without merging")
        .option("--lora-scale <s>", "scale of the LoRA adapters (multiplies alpha/r; default 1)"), verb, ["scoring"])
        .addOption(new Option("--kv-cache-type <type>", "KV cache type: f32 is exact, f16 halves its memory").choices(["f32", "f16"]))
        .option("--flash-attention", "flash attention: faster on GPUs, but its fp16 accumulation moves results by ~1e-3");
}

/** The scorer's options as the library names them (parsed only: the stage checks them, checkScorerOptions). */
export function scorerOptions(opts: ScorerCliOptions, cmd: Command, verb: "eval" | "perplexity") {
    const scale = opts.loraScale === undefined ? undefined : parseNumber(opts.loraScale, "--lora-scale", Number.isFinite, "a number");
    if (scale !== undefined && !opts.lora?.length)
        throw new UsageError("--lora-scale goes with --lora");
    return {
        ...modelLoadOptions(opts),
        ...readOptions(cmd, verb, ["scoring"]),
        lora: opts.lora?.map((path) => ({path, scale})),
        kvCacheType: opts.kvCacheType,
        flashAttention: opts.flashAttention,
    };
}

const fmt = (x: number) => (Number.isFinite(x) ? x.toFixed(4) : "N/A");

export function evalCommand(): Command {
    const cmd = addTableOptions(new Command("eval")
        .description("Zero-shot multiple-choice accuracy (acc, acc_norm) in the manner of lm-evaluation-harness")
        .argument("<model>", "GGUF model file"), "eval", "--task", "--data", "--split", "--limit", "--seed");
    return addScorerOptions(cmd
        .option("--bos", "prepend BOS to every sequence (default: as the model's GGUF says)")
        .option("--no-bos", "never prepend BOS")
        .addOption(tableOption("--max-length", "eval"))
        .option("--prompt-prefix <text>", "put before every context (default: the label prefix the model or --lora adapters record; \"\" for none)"), "eval")
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
            checkOutputFolder(opts.out, "--out");
            const progress = progressReporter(mode, `eval ${opts.task}`, "items");
            const r = await withOptionFlags(cmd, "eval", () => evaluate(model, {
                task: opts.task!, bos: opts.bos, promptPrefix: opts.promptPrefix,
                ...readOptions(cmd, "eval", ["data"]), ...scorerOptions(opts, cmd, "eval"), onProgress: progress.update,
            }));
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
