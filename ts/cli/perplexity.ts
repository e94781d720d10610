import {Command} from "commander";
import {perplexity} from "../eval/perplexity.js";
import {addScorerOptions, scorerOptions, type ScorerCliOptions} from "./eval.js";
import {readTextFile, printJson, progressReporter, table, UsageError} from "./output.js";
import {checkPerplexityOptions} from "../eval/options.js";
import {readOptions, tableOption, withOptionFlags} from "./options.js";

interface PerplexityCliOptions extends ScorerCliOptions {
    text?: string;
    json?: boolean;
}

export function perplexityCommand(): Command {
    return addScorerOptions(new Command("perplexity")
        .description("Perplexity of a text file (lm-evaluation-harness rolling log-likelihood)")
        .argument("<model>", "GGUF model file")
        .option("--text <file>", "UTF-8 text file to score")
        .addOption(tableOption("--window", "perplexity"))
        .addOption(tableOption("--stride", "perplexity")), "perplexity")
        .addOption(tableOption("--json", "perplexity"))
        .addHelpText("after", `
Every token of the text is predicted once: the first window from BOS, each later window from the
tokens before it. Reported: token perplexity exp(-LL/tokens), and the harness's word_perplexity,
byte_perplexity and bits_per_byte.

Examples:
  ppc-gpt perplexity stories260K.gguf --text story.txt
  ppc-gpt perplexity model.gguf --text wiki.txt --window 512 --stride 256 --json`)
        .action(async (model: string, opts: PerplexityCliOptions, cmd: Command) => {
            const mode = {json: Boolean(opts.json)};
            if (!opts.text)
                throw new UsageError("--text <file> is required");
            // the options are checked before the text is read (a bad --stride is a usage error, whatever the file)
            const options = await withOptionFlags(cmd, "perplexity", () => {
                const o = {...readOptions(cmd, "perplexity", ["data"]), ...scorerOptions(opts, cmd, "perplexity")};
                checkPerplexityOptions(o);
                return o;
            });
            const text = readTextFile(opts.text);
            if (text.trim() === "")
                throw new Error(`${opts.text}: the file is empty`);
            const progress = progressReporter(mode, "perplexity", "items");
            const started = performance.now();
            const r = await perplexity(model, text, {...options, onProgress: progress.update});
            progress.finish();
            const seconds = (performance.now() - started) / 1000;
            if (mode.json)
                return printJson({model, text: opts.text, ...r, seconds});
            process.stdout.write(table(["tokens", "windows", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"],
                [[r.tokens, r.windows, r.perplexity.toFixed(4), r.word_perplexity.toFixed(4), r.byte_perplexity.toFixed(4),
                    r.bits_per_byte.toFixed(4)]]));
            process.stdout.write(`\nlog-likelihood ${r.loglikelihood.toFixed(4)} over ${r.tokens} tokens (window ${r.window}, stride ${r.stride})\n` +
                `time           ${seconds.toFixed(2)} s\n`);
        });
}
