import {Command} from "commander";
import fs from "node:fs";
import {readGguf} from "../gguf/read.js";
import {mergeLora} from "../train/merge.js";
import {formatBytes, parseNumber, printJson, progressReporter, UsageError} from "./output.js";
import {tableOption} from "./options.js";

interface MergeCliOptions {
    output?: string;
    scale?: string;
    json?: boolean;
}

/** Names the usual mistake, the two files swapped, before the merge says only "general.type is not adapter". */
async function checkArgumentOrder(base: string, adapter: string): Promise<void> {
    // undefined: not a readable GGUF (the merge itself names what is wrong); "" : a GGUF without general.type
    const typeOf = async (file: string) => {
        const header = fs.existsSync(file) ? await readGguf(file, {maxArrayValues: 0}).catch(() => undefined) : undefined;
        return header === undefined ? undefined : String(header.value("general.type") ?? "");
    };
    const [baseType, adapterType] = [await typeOf(base), await typeOf(adapter)];
    if (adapterType !== undefined && adapterType !== "adapter")
        throw new UsageError(baseType === "adapter"
            ? `the arguments are <base> <adapter>: ${base} is the adapter and ${adapter} the model; swap them`
            : `${adapter} is not a LoRA adapter (general.type ${adapterType ? `"${adapterType}"` : "missing"}); give the adapter \`ppc-gpt train\` wrote`);
}

export function mergeCommand(): Command {
    return new Command("merge")
        .description("Fold a LoRA adapter into its base model: a standalone GGUF in the base's tensor types")
        .argument("<base>", "base GGUF model (never modified)")
        .argument("<adapter>", "LoRA adapter GGUF (llama.cpp layout, e.g. from `ppc-gpt train`)")
        .option("-o, --output <file>", "merged GGUF model (written atomically)")
        .option("--scale <x>", "multiplies the adapter's alpha / r, as llama.cpp's --lora-scaled", "1")
        .addOption(tableOption("--json", "merge"))
        .addHelpText("after", `
Every adapted tensor becomes W + scale * (alpha / r) * B A, computed in double precision from the
dequantized W and requantized to W's own type (F32, F16, Q8_0, Q4_K, …); every other tensor and all
metadata are copied byte for byte, so the merged model loads wherever the base did.

Examples:
  ppc-gpt merge pruned.gguf server-lora.gguf -o pruned-distilled.gguf
  ppc-gpt merge model-q8_0.gguf client-lora.gguf -o merged-q8_0.gguf --json`)
        .action(async (base: string, adapter: string, opts: MergeCliOptions) => {
            if (!opts.output)
                throw new UsageError("-o/--output is required");
            const scale = parseNumber(opts.scale ?? "1", "--scale", Number.isFinite, "a number");
            await checkArgumentOrder(base, adapter);
            const mode = {json: Boolean(opts.json)};
            const progress = progressReporter(mode, "merging", "bytes");
            const started = Date.now();
            const result = await mergeLora(base, adapter, opts.output, {scale, onProgress: progress.update});
            progress.finish();
            const seconds = (Date.now() - started) / 1000;
            if (mode.json)
                return printJson({...result, seconds});
            process.stdout.write(`merged   ${result.merged.length} tensors (rank ${result.rank || "mixed"}, alpha ${result.alpha}, scale ${scale})\n` +
                `wrote    ${result.output} (${formatBytes(result.bytesWritten)}) in ${seconds.toFixed(2)} s\n`);
        });
}
