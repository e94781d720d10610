import {Command, Option} from "commander";
import {GeneratorError, type Generator} from "../synth/generator.js";
import {synthesize, type SynthProgress, type SynthSummary} from "../synth/pipeline.js";
import {createRemoteGenerator, defaultApiKeyEnv, type RetryInfo} from "../synth/remote.js";
import {rejectionReasons} from "../synth/validate.js";
import {checkGgufFile} from "./model-options.js";
import {aliasedOption, formatCount, parseNumber, printJson, table, UsageError, type OutputMode} from "./output.js";
import {synthDefaults} from "../synth/defaults.js";
import {tableOption, useDefaultSet} from "./options.js";

interface SynthOptions {
    in?: string;
    out?: string;
    model?: string;
    baseUrl?: string;
    remoteModel?: string;
    ratio: string;
    k?: string;
    maxAttempts?: string;
    concurrency?: string;
    format: "auto" | "json" | "lines";
    temperature?: string;
    maxTokens?: string;
    seed?: string;
    limit?: string;
    timeout: string;
    retries: string;
    apiKeyEnv?: string;
    contextSize?: string;
    threads?: string;
    gpuLayers?: string;
    json?: boolean;
}

/** A bar with accepted / rejected counts on a TTY; JSON lines on stderr with --json. */
function synthProgress(mode: OutputMode) {
    const tty = process.stderr.isTTY && !mode.json;
    const started = Date.now();
    let last = 0, retries = 0, shown = false;
    let latest: SynthProgress | undefined;
    const draw = (p: SynthProgress, force: boolean) => {
        const now = Date.now();
        if (!force && now - last < 200)
            return;
        last = now;
        if (mode.json) {
            process.stderr.write(JSON.stringify({event: "progress", stage: "synth", done: p.settled, total: p.target, unit: "items",
                accepted: p.accepted, rejected: p.rejected, parentsDone: p.parentsDone, parents: p.parents, inFlight: p.inFlight, retries}) + "\n");
        } else if (tty) {
            const width = 24;
            const frac = p.target > 0 ? Math.min(1, p.settled / p.target) : 1;
            const filled = Math.round(frac * width);
            const elapsed = (now - started) / 1000;
            const eta = frac > 0 && p.acceptedThisRun + p.rejectedThisRun > 0 ? elapsed / frac - elapsed : NaN;
            process.stderr.write(`\rsynth [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ` +
                `${formatCount(p.settled)}/${formatCount(p.target)}  accepted ${formatCount(p.accepted)}  rejected ${formatCount(p.rejected)}` +
                `${retries ? `  retries ${retries}` : ""}${Number.isFinite(eta) ? `  eta ${eta.toFixed(0)}s` : ""} `);
            shown = true;
        }
    };
    return {
        update(p: SynthProgress) {
            latest = p;
            draw(p, p.settled >= p.target);
        },
        retry(info: RetryInfo) {
            retries++;
            if (mode.json)
                process.stderr.write(JSON.stringify({event: "retry", retry: info.retry, delayMs: Math.round(info.delayMs), reason: info.reason}) + "\n");
            else if (latest)
                draw(latest, false);
        },
        finish() {
            if (latest)
                draw(latest, true);
            if (tty && shown)
                process.stderr.write("\n");
        },
    };
}

function describe(s: SynthSummary): string {
    const rows = rejectionReasons.filter((r) => s.reasons[r] || s.reasonsThisRun[r])
        .map((r) => [r, formatCount(s.reasonsThisRun[r] ?? 0), formatCount(s.reasons[r] ?? 0)]);
    const resumed = s.resumed.previousRuns > 0
        ? `resumed       ${s.resumed.previousRuns} earlier run(s) had written ${formatCount(s.resumed.acceptedBefore)} items and ` +
            `${formatCount(s.resumed.rejectedBefore)} rejections` +
            (s.resumed.droppedTornLines.length ? `; cut a torn last line from ${s.resumed.droppedTornLines.join(", ")}` : "") + "\n"
        : "";
    return `input         ${s.input} (${formatCount(s.parents)} items, ratio ${s.ratio}, at most ${s.maxAttempts} attempts each)\n` +
        `generator     ${s.generator} (${s.promptVersions.join(", ") || "no requests"})\n` + resumed +
        `accepted      ${formatCount(s.acceptedThisRun)} this run, ${formatCount(s.accepted)} of ${formatCount(s.target)} in all\n` +
        `rejected      ${formatCount(s.rejectedThisRun)} this run, ${formatCount(s.rejected)} in all` +
        (s.parentsShort ? ` (${formatCount(s.parentsShort)} items ran out of attempts before ${s.ratio})` : "") + "\n" +
        `requests      ${formatCount(s.requests)} (${formatCount(s.promptTokens)} prompt + ${formatCount(s.completionTokens)} completion tokens) ` +
        `in ${s.seconds.toFixed(1)} s\n` +
        `wrote         ${s.output} (journal ${s.journal})\n` +
        (rows.length ? "\n" + table(["rejection reason", "this run", "all runs"], rows) : "");
}

export function synthCommand(): Command {
    const cmd = new Command("synth")
        .description("Generate synthetic task items with rationales from perturbed ones (PPC-GPT step 2), on a local GGUF or an OpenAI-compatible server")
        .option("--in <file>", "perturbed task items (JSONL); never modified")
        .option("--out <file>", "synthetic items (JSONL); an existing file is continued, not overwritten")
        .option("--model <gguf>", "generate with a local GGUF model (the addon's llama.cpp, continuous batching)")
        .option("--base-url <url>", "generate with an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
        .option("--remote-model <name>", "model name to request from --base-url")
        .option("--ratio <k>", "synthetic items per perturbed item")
        .option("--k <n>", "the same as --ratio (the paper's k; the name `run`, `client` and the job spec use)")
        .option("--max-attempts <n>", "attempts per perturbed item, rejected ones included (default 2 x ratio)")
        .option("--concurrency <n>", "parallel sequences (--model, default 4) or requests in flight (--base-url, default 8)")
        .addOption(new Option("--format <f>", "reply format: JSON with a schema, the paper's line format, or auto").choices(["auto", "json", "lines"]))
        .option("--temperature <t>", "sampling temperature of the three answer votes, > 0 (default 0.7)")
        .option("--max-tokens <n>", "token limit of every reply (default 1024 for questions and answers, 512 for rationales)")
        .option("--seed <n>", "base sampling seed (without it, a random one)")
        .option("--limit <n>", "only the first n perturbed items")
        .option("--timeout <seconds>", "per-request timeout (--base-url)", "300")
        .option("--retries <n>", "retries of a request on 429, 5xx, timeouts and network errors (--base-url)", "6")
        .option("--api-key-env <name>", `environment variable holding the API key (default ${defaultApiKeyEnv.join(", then ")})`)
        .option("--context-size <n>", "context tokens per sequence (--model)")
        .option("--threads <n>", "CPU threads (--model)")
        .option("--gpu-layers <n>", "layers to offload to the GPU in a CUDA build of the addon (--model; default 0, 999 = all)")
        .addOption(tableOption("--json", "synth"))
        .addHelpText("after", `
For each perturbed item the generator writes up to k new multiple-choice questions. Each new
question is answered three times at temperature > 0 and kept only if the three final letters
agree; then it gets a short rationale. Questions with fewer than 2 or more than 5 choices, repeated
labels or choices, and duplicates of any earlier question are dropped. Every rejection is counted
by reason. Items carry parent_id, votes, generator and prompt_version.

The run is resumable: accepted items are appended to --out and rejected attempts to
<out>.journal, one whole line at a time; re-running the same command continues where it stopped
and never generates an item twice. A server that is down or keeps failing ends the run with exit
code 1 and leaves both files intact.

Examples:
  ppc-gpt synth --in perturbed.jsonl --out synthetic.jsonl --model qwen2.5-7b-instruct-q4_k_m.gguf
  PPC_GPT_API_KEY=... ppc-gpt synth --in perturbed.jsonl --out synthetic.jsonl \\
      --base-url https://api.example.com/v1 --remote-model llama-3-70b-instruct --concurrency 16
  ppc-gpt synth --in perturbed.jsonl --out syn.jsonl --base-url http://127.0.0.1:8080 \\
      --remote-model local --ratio 4 --format lines --json`)
        .action(async (opts: SynthOptions, cmd: Command) => {
            opts.ratio = aliasedOption(cmd, "ratio", "k").value!;
            const parsed = synthNumbers(opts);
            const progress = synthProgress({json: Boolean(opts.json)});
            const generator = await openGenerator(opts, parsed, progress.retry);
            const summary = await runSynthesis(opts, parsed, generator, progress);
            if (opts.json)
                return printJson(summary);
            process.stdout.write(describe(summary));
        });
    return useDefaultSet(cmd, "synthDefaults", synthDefaults);
}

type SynthNumbers = ReturnType<typeof synthNumbers>;

/** The generator choice checked and the numeric options parsed (usage errors name the flag). */
function synthNumbers(opts: SynthOptions) {
    if (!opts.in || !opts.out)
        throw new UsageError("--in <perturbed.jsonl> and --out <synthetic.jsonl> are required");
    if ((opts.model === undefined) === (opts.baseUrl === undefined))
        throw new UsageError("choose the generator: --model <local.gguf> or --base-url <url> --remote-model <name>");
    if (opts.baseUrl !== undefined && !opts.remoteModel)
        throw new UsageError("--base-url needs --remote-model <name>");
    if (opts.model !== undefined && opts.remoteModel !== undefined)
        throw new UsageError("--remote-model goes with --base-url, not --model");
    const int = (v: string | undefined, name: string, min: number) => v === undefined ? undefined
        : parseNumber(v, name, (x) => Number.isInteger(x) && x >= min, min === 0 ? "a non-negative integer" : `an integer >= ${min}`);
    const ratio = int(opts.ratio, opts.k !== undefined ? "--k" : "--ratio", 1)!;
    const maxAttempts = int(opts.maxAttempts, "--max-attempts", 1);
    if (maxAttempts !== undefined && maxAttempts < ratio)
        throw new UsageError(`--max-attempts (${maxAttempts}) must be at least --ratio (${ratio})`);
    const parsed = {
        ratio, maxAttempts,
        concurrency: int(opts.concurrency, "--concurrency", 1),
        temperature: opts.temperature === undefined ? undefined
            : parseNumber(opts.temperature, "--temperature", (x) => x > 0 && x <= 2, "a number in (0, 2]"),
        seed: opts.seed === undefined ? undefined
            : parseNumber(opts.seed, "--seed", (x) => Number.isInteger(x) && x >= 0 && x < 2 ** 32, "an integer in [0, 2^32)"),
        limit: int(opts.limit, "--limit", 1),
        maxTokens: int(opts.maxTokens, "--max-tokens", 16),
        timeout: parseNumber(opts.timeout, "--timeout", (x) => x > 0, "a positive number of seconds"),
        retries: int(opts.retries, "--retries", 0)!,
        contextSize: int(opts.contextSize, "--context-size", 64),
        threads: int(opts.threads, "--threads", 1),
        gpuLayers: int(opts.gpuLayers, "--gpu-layers", 0),
    };
    if (opts.baseUrl !== undefined && (opts.contextSize || opts.threads || opts.gpuLayers))
        throw new UsageError("--context-size, --threads and --gpu-layers go with --model");
    if (opts.model !== undefined && opts.apiKeyEnv)
        throw new UsageError("--api-key-env goes with --base-url");
    return parsed;
}

/** The local GGUF generator (--model) or the OpenAI-compatible client (--base-url). */
async function openGenerator(opts: SynthOptions, n: SynthNumbers, onRetry: (info: RetryInfo) => void): Promise<Generator> {
    if (opts.model !== undefined) {
        // the model and node-llama-cpp (chat templates, grammars) are loaded only for the embedded backend
        await checkGgufFile(opts.model, "--model");
        const {createEmbeddedGenerator} = await import("../synth/embedded.js");
        return await createEmbeddedGenerator({modelPath: opts.model, sequences: n.concurrency ?? 4, contextSize: n.contextSize,
            threads: n.threads, gpuLayers: n.gpuLayers});
    }
    try {
        return createRemoteGenerator({baseUrl: opts.baseUrl!, model: opts.remoteModel!, apiKeyEnv: opts.apiKeyEnv,
            concurrency: n.concurrency ?? 8, timeoutMs: n.timeout * 1000, maxRetries: n.retries, onRetry});
    } catch (err) {
        throw new UsageError((err as Error).message);  // a malformed --base-url
    }
}

/** Runs the pipeline until done or interrupted (SIGINT/SIGTERM leave the output resumable); closes the generator. */
async function runSynthesis(opts: SynthOptions, n: SynthNumbers, generator: Generator,
    progress: ReturnType<typeof synthProgress>): Promise<SynthSummary> {
    const interrupt = new AbortController();
    const onSignal = (sig: string) => interrupt.abort(new Error(`interrupted by ${sig}; the output is intact: run the same command again to continue`));
    const onInt = () => onSignal("SIGINT"), onTerm = () => onSignal("SIGTERM");
    process.once("SIGINT", onInt);
    process.once("SIGTERM", onTerm);
    let summary: SynthSummary;
    try {
        summary = await synthesize({
            input: opts.in!, output: opts.out!, generator, ratio: n.ratio, maxAttempts: n.maxAttempts, concurrency: n.concurrency,
            format: opts.format, temperature: n.temperature === undefined ? undefined : {answer: n.temperature}, seed: n.seed,
            limit: n.limit, signal: interrupt.signal, onProgress: progress.update,
            maxTokens: n.maxTokens === undefined ? undefined : {question: n.maxTokens, answer: n.maxTokens, rationale: n.maxTokens},
        });
    } catch (err) {
        progress.finish();
        if (err instanceof RangeError)
            throw new UsageError(err.message);
        if (err instanceof GeneratorError && !interrupt.signal.aborted)
            throw new Error(`${err.message}\n(everything finished so far is saved in ${opts.out}; run the same command again to continue)`, {cause: err});
        throw err;
    } finally {
        process.off("SIGINT", onInt);
        process.off("SIGTERM", onTerm);
        await generator.close();
    }
    progress.finish();
    return summary;
}
