import {Command} from "commander";
import {readTaskItems} from "../data/jsonl.js";
import {loadModel} from "../model.js";
import {defaultImatrixContext, taskImatrix, textImatrix} from "../quantize/collect.js";
import {readImatrixFile, writeImatrixGguf} from "../quantize/imatrix.js";
import {quantizationType, quantizationTypes, quantizeModel, type ImatrixSource} from "../quantize/quantize.js";
import {addModelOptions, modelLoadOptions, type ModelCliOptions} from "./model-options.js";
import {tableOption} from "./options.js";
import {checkOutputFolder, formatBytes, parseNumber, printJson, progressReporter, readTextFile, UsageError} from "./output.js";

interface QuantizeOptions extends ModelCliOptions {
    output?: string;
    type?: string;
    imatrix?: string;
    imatrixData?: string;
    imatrixText?: string;
    imatrixContext?: string;
    imatrixOut?: string;
    allowRequantize?: boolean;
    json?: boolean;
}

/** The importance matrix the options name: read from a file, computed from task items or text, or none. */
async function resolveImatrix(model: string, opts: QuantizeOptions, json: boolean): Promise<ImatrixSource | undefined> {
    const sources = [opts.imatrix, opts.imatrixData, opts.imatrixText].filter((s) => s !== undefined);
    if (sources.length > 1)
        throw new UsageError("give at most one of --imatrix, --imatrix-data and --imatrix-text");
    if (opts.imatrixContext !== undefined && opts.imatrixText === undefined)
        throw new UsageError("--imatrix-context goes with --imatrix-text");
    if (opts.imatrixOut !== undefined && opts.imatrixData === undefined && opts.imatrixText === undefined)
        throw new UsageError("--imatrix-out goes with --imatrix-data or --imatrix-text (a computed matrix)");
    checkOutputFolder(opts.imatrixOut, "--imatrix-out");
    if (opts.imatrix !== undefined)
        return {matrix: await readImatrixFile(opts.imatrix), kind: "file", file: opts.imatrix};
    if (opts.imatrixData === undefined && opts.imatrixText === undefined)
        return undefined;
    const context = opts.imatrixContext === undefined ? defaultImatrixContext
        : parseNumber(opts.imatrixContext, "--imatrix-context", (x) => Number.isInteger(x) && x >= 16, "an integer >= 16");
    const text = opts.imatrixText !== undefined ? readTextFile(opts.imatrixText) : undefined;
    const items = opts.imatrixData !== undefined ? await readTaskItems(opts.imatrixData) : undefined;
    const m = await loadModel(model, modelLoadOptions(opts));
    const progress = progressReporter({json}, "importance matrix", "tokens");
    try {
        const matrix = text !== undefined
            ? (await textImatrix(m, text, opts.imatrixText!, {context, onProgress: progress.update})).matrix
            : (await taskImatrix(m, items!, opts.imatrixData!, {onProgress: progress.update})).matrix;
        if (opts.imatrixOut)
            await writeImatrixGguf(opts.imatrixOut, matrix);
        return {matrix, kind: "task", file: opts.imatrixOut ?? (opts.imatrixData ?? opts.imatrixText)!};
    } finally {
        progress.finish();
        m.close();
    }
}

export function quantizeCommand(): Command {
    return addModelOptions(new Command("quantize"))
        .description("Quantize a GGUF model with llama.cpp's own quantizer (q4_k_m, q5_k_m, q6_k, q8_0, ...), optionally with a task importance matrix")
        .argument("<model>", "input GGUF model (never modified)")
        .option("-o, --output <file>", "output GGUF model (written atomically)")
        .option("--type <t>", "quantization type, as llama-quantize names it (case-insensitive): q4_k_m, q5_k_m, q6_k, q8_0, q4_0, ...")
        .option("--imatrix <file>", "importance matrix file: llama-imatrix's GGUF or legacy .dat format, or `ppc-gpt bi --imatrix`'s")
        .option("--imatrix-data <items.jsonl>", "compute the importance matrix from task items (the label and rationale sequences BI scores)")
        .option("--imatrix-text <file>", "compute the importance matrix from plain text, in llama-imatrix's chunks")
        .option("--imatrix-context <n>", `with --imatrix-text: tokens per chunk, as llama-imatrix -c (default ${defaultImatrixContext})`)
        .option("--imatrix-out <file>", "also write the computed importance matrix (llama-imatrix's GGUF format)")
        .option("--allow-requantize", "allow quantizing tensors that are already quantized (loses quality; as llama-quantize)")
        .addOption(tableOption("--json", "quantize"))
        .addHelpText("after", `
Types: ${quantizationTypes().map((t) => t.name).join(", ")}

The quantizer is llama_model_quantize from the bundled llama.cpp: without an importance matrix the
output is byte-identical to \`llama-quantize in.gguf out.gguf TYPE\` of the same llama.cpp run with
--override-kv for the record this command adds (ppc_gpt.quantization.type and .imatrix); every other
key, ppc_gpt.* provenance included, is copied. With an importance matrix the quantize.imatrix.* keys
are added as llama-quantize --imatrix adds them.

Examples:
  ppc-gpt quantize pruned.gguf -o pruned-q4.gguf --type q4_k_m
  ppc-gpt quantize pruned.gguf -o pruned-q4.gguf --type q4_k_m --imatrix-data synthetic.jsonl
  ppc-gpt bi model.gguf --data synthetic.jsonl --imatrix task.imatrix.gguf
  ppc-gpt quantize model.gguf -o model-q4.gguf --type q4_k_m --imatrix task.imatrix.gguf`)
        .action(async (model: string, opts: QuantizeOptions) => {
            const mode = {json: Boolean(opts.json)};
            if (!opts.output)
                throw new UsageError("-o/--output is required");
            if (!opts.type)
                throw new UsageError("--type is required (e.g. --type q4_k_m)");
            let type: string;
            try {
                type = quantizationType(opts.type);
            } catch (err) {
                throw new UsageError((err as Error).message);
            }
            checkOutputFolder(opts.output, "-o");
            const imatrix = await resolveImatrix(model, opts, mode.json);
            const threads = modelLoadOptions(opts).threads;
            const progress = progressReporter(mode, "quantizing", "items");
            const started = Date.now();
            const result = await quantizeModel(model, opts.output, {type, imatrix, threads, allowRequantize: opts.allowRequantize,
                onProgress: progress.update});
            progress.finish();
            const seconds = (Date.now() - started) / 1000;
            if (mode.json)
                return printJson({result: {...result, seconds}});
            process.stdout.write(`quantized     ${result.input} -> ${result.output} as ${result.type}` +
                `${imatrix ? ` with a ${imatrix.kind} importance matrix (${imatrix.matrix.entries.length} entries)` : ""}\n` +
                `size          ${formatBytes(result.bytesIn)} -> ${formatBytes(result.bytesOut)} ` +
                `(${(100 * result.bytesOut / result.bytesIn).toFixed(1)}%), ${result.tensors} tensors in ${seconds.toFixed(2)} s\n`);
        });
}
