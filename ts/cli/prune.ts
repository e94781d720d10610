import {Command, Option} from "commander";
import {planPruning, pruningStrategies, readScoresFile, type PruningPlan, type PruningStrategy} from "../prune/plan.js";
import {removeLayers} from "../prune/remove.js";
import {addScoringOptions, runBlockInfluence, type BiCliOptions} from "./bi.js";
import {formatBytes, formatCount, parseIndexList, parseNumber, printJson, progressReporter, UsageError} from "./output.js";
import {tableOption} from "./options.js";

interface PruneOptions extends Partial<BiCliOptions> {
    output?: string;
    layers?: string;
    strategy?: PruningStrategy;
    ratio?: string;
    count?: string;
    scores?: string;
    planOnly?: boolean;
    json?: boolean;
}

function describePlan(plan: PruningPlan): string {
    const p = plan.parameters;
    return `strategy      ${plan.strategy}${plan.targetRatio !== undefined ? ` (target ${(plan.targetRatio * 100).toFixed(1)}% of parameters)` : ""}\n` +
        `removal order ${plan.order.join(",")}\n` +
        `remove        ${plan.removed.join(",") || "(none)"}` +
        (plan.originalRemoved.join() !== plan.removed.join() ? ` (original numbering ${plan.originalRemoved.join(",")})` : "") + "\n" +
        `layers        ${plan.layersBefore} -> ${plan.layersAfter}\n` +
        `parameters    ${formatCount(p.before)} -> ${formatCount(p.after)} (${(p.removedRatio * 100).toFixed(2)}% removed)\n`;
}

const PRUNE_HELP = `
Strategies (the first layers of each order are removed):
  top        deepest layers first (ShortGPT/PPC-GPT "Seq" baseline; PruFed's best on average)
  even, odd  alternate layers (even- or odd-numbered), from the top of the stack down
  symmetric  from the middle of the stack outward
  magnitude  smallest mean |w| over the block's weight matrices first
  scores     lowest of the given per-layer scores first (e.g. the JSON that \`ppc-gpt bi --json\` writes)
  bi         Block Influence computed here from --data items (BI_label + BI_rationale) or --text lines;
             --metric, --positions, --limit, --batch-tokens, --threads, --gpu-layers apply as in \`ppc-gpt bi\`

Every kept tensor is copied byte for byte (quantized ones too); blk.N names are renumbered, the
layer count and every per-layer metadata array are rewritten, and the original layer numbering
is recorded (ppc_gpt.pruning.original_layers) so pruned models stay aligned with their base.

Examples:
  ppc-gpt prune model.gguf --layers 2,5 -o pruned.gguf
  ppc-gpt prune model.gguf --strategy top --ratio 0.3 -o pruned.gguf
  ppc-gpt prune model.gguf --strategy magnitude --count 4 --plan-only --json
  ppc-gpt prune model.gguf --strategy scores --scores bi.json --ratio 0.3 -o pruned.gguf
  ppc-gpt prune model.gguf --strategy bi --data synthetic.jsonl --ratio 0.3 -o pruned.gguf`;

/** The flag combinations that are wrong whichever layers are chosen. */
function checkPruneFlags(opts: PruneOptions, cmd: Command): void {
    // the scoring options only act with --strategy bi: given with anything else, they would be ignored unnoticed
    const scoring = cmd.options.filter((o) => ["threads", "gpuLayers", "limit", "metric", "positions", "format", "batchTokens"]
        .includes(o.attributeName()) && cmd.getOptionValueSource(o.attributeName()) === "cli").map((o) => o.long);
    if (opts.strategy !== "bi" && scoring.length > 0)
        throw new UsageError(`${scoring.join(", ")} ` +
            `${scoring.length > 1 ? "go" : "goes"} with --strategy bi (they set how Block Influence is computed)`);
    if (opts.layers !== undefined && opts.strategy !== undefined)
        throw new UsageError("give either --layers or --strategy, not both");
    if (opts.layers === undefined && opts.strategy === undefined)
        throw new UsageError("say which layers to remove: --layers <list> or --strategy <name> with --ratio or --count");
    if (!opts.planOnly && !opts.output)
        throw new UsageError("-o/--output is required (or --plan-only)");
}

/** --layers: the layers named, without the strategy's flags. */
function listedLayers(opts: PruneOptions): number[] {
    if (opts.ratio !== undefined || opts.count !== undefined || opts.scores !== undefined)
        throw new UsageError("--ratio, --count and --scores go with --strategy, not --layers");
    const layers = parseIndexList(opts.layers!, "--layers", "layer indices");
    if (opts.planOnly)
        throw new UsageError("--plan-only goes with --strategy");
    return layers;
}

/** --strategy: its flags checked, the scores it needs (Block Influence computed here for bi), the plan. */
async function strategyPlan(model: string, opts: PruneOptions): Promise<PruningPlan> {
    const json = Boolean(opts.json);
    if ((opts.ratio === undefined) === (opts.count === undefined))
        throw new UsageError("--strategy needs exactly one of --ratio or --count");
    if (opts.strategy === "scores" && !opts.scores)
        throw new UsageError("--strategy scores needs --scores <file>");
    if (opts.strategy !== "scores" && opts.scores)
        throw new UsageError("--scores goes with --strategy scores");
    if (opts.strategy === "bi" && opts.text === undefined && opts.data === undefined)
        throw new UsageError("--strategy bi needs --data <items.jsonl> or --text <file> to score layers on");
    if (opts.strategy !== "bi" && (opts.text !== undefined || opts.data !== undefined))
        throw new UsageError("--data and --text go with --strategy bi");
    const ratio = opts.ratio === undefined ? undefined
        : parseNumber(opts.ratio, "--ratio", (x) => x >= 0 && x < 1, "a number in [0, 1)");
    const count = opts.count === undefined ? undefined
        : parseNumber(opts.count, "--count", (x) => Number.isInteger(x) && x >= 1, "a positive integer");
    const scores = opts.strategy === "bi" ? (await runBlockInfluence(model, opts as BiCliOptions, json)).bi
        : opts.scores ? readScoresFile(opts.scores) : undefined;
    const progress = progressReporter({json}, "magnitude", "bytes");
    const plan = await planPruning(model, {strategy: opts.strategy!, ratio, count, scores, onProgress: progress.update});
    progress.finish();
    if (!opts.planOnly && plan.removed.length === 0)
        throw new Error(`ratio ${ratio} removes no layer: the smallest step in the ${plan.strategy} order removes ` +
            `more than twice that share; raise --ratio or use --count`);
    return plan;
}

/** Writes the model without `layers` (-o) and says what was removed; with --json, the plan and the result. */
async function writePruned(model: string, opts: PruneOptions, layers: number[], plan: PruningPlan | undefined): Promise<void> {
    const json = Boolean(opts.json);
    const progress = progressReporter({json}, "writing", "bytes");
    const started = Date.now();
    const result = await removeLayers(model, opts.output!, layers, {onProgress: progress.update});
    progress.finish();
    const seconds = (Date.now() - started) / 1000;
    if (json)
        return printJson({...(plan ? {plan} : {}), result: {...result, seconds}});
    if (plan)
        process.stdout.write(describePlan(plan));
    process.stdout.write(`removed       ${result.removed.join(",")} (${result.layersBefore} -> ${result.layersAfter} layers)\n` +
        `wrote         ${result.output} (${formatBytes(result.bytesWritten)}) in ${seconds.toFixed(2)} s\n`);
}

export function pruneCommand(): Command {
    return addScoringOptions(new Command("prune"))
        .description("Remove whole transformer layers from a GGUF model (structured pruning by GGUF surgery)")
        .argument("<model>", "input GGUF model (never modified)")
        .option("-o, --output <file>", "output GGUF model (written atomically)")
        .option("--layers <list>", "layers to remove, e.g. 2,5 or 10-13 (0-based, this file's numbering)")
        .addOption(new Option("--strategy <name>", "choose the layers by a strategy").choices([...pruningStrategies]))
        .option("--ratio <r>", "share of all parameters to remove, 0 <= r < 1 (the closest layer count is chosen)")
        .option("--count <n>", "number of layers to remove (instead of --ratio)")
        .option("--scores <file>", "per-layer scores for --strategy scores: JSON array, or {\"bi\": [...]} as `ppc-gpt bi --json` writes")
        .option("--plan-only", "print the plan and write nothing")
        .addOption(tableOption("--json", "prune"))
        .addHelpText("after", PRUNE_HELP)
        .action(async (model: string, opts: PruneOptions, cmd: Command) => {
            checkPruneFlags(opts, cmd);
            const json = Boolean(opts.json);
            if (opts.layers !== undefined)
                return await writePruned(model, opts, listedLayers(opts), undefined);
            const plan = await strategyPlan(model, opts);
            if (!opts.planOnly)
                return await writePruned(model, opts, plan.removed, plan);
            if (json)
                return printJson(plan);
            process.stdout.write(describePlan(plan));
        });
}
