import fs from "node:fs";
import {Command} from "commander";
import {DataError} from "../data/jsonl.js";
import {writeFileDurable} from "../durable-file.js";
import {embeddingsFormat} from "../privacy/embeddings.js";
import {perturbFile, readStopwords, createPerturber, resolvePerturberOptions, type MechanismName, type PerturberOptions,
    type PerturbReport} from "../privacy/perturb.js";
import {checkOutputFolder, formatCount, parseIndexList, printJson, progressReporter, table, UsageError} from "./output.js";
import {readOptions, tableOption, withOptionFlags} from "./options.js";

interface PerturbCliOptions {
    embeddings?: string;
    tokenizer?: string;
    tensor?: string;
    mechanism: MechanismName;
    epsilon: string;
    k?: string;
    similarity?: "cosine" | "euclidean";
    in?: string;
    out?: string;
    seed?: string;
    keepPunctuation?: boolean;
    keepStopwords?: boolean;
    stopwords?: string;
    table?: boolean;
    tokens?: string;
    report?: string;
    cacheDir?: string;
    cache: boolean;
    keepLabels?: boolean;
    idMap?: string;
    threads?: string;
    json?: boolean;
}

const GUARANTEES = `
Mechanisms (each token x is replaced by y with P(y|x) ∝ exp(ε·u(x,y) / (2·Δu))):
  custext  (default) CusText, conservative mapping. The text tokens are partitioned greedily into
           clusters of K (default 20) nearest tokens (seed = smallest unassigned token id; the last
           cluster holds the remainder); x is replaced only by a member of its own cluster, with
           u = similarity of embeddings (cosine by default) min-max normalised to [0,1] over the
           cluster, Δu = 1. Guarantee: for any two tokens x, x′ of the same cluster and every output
           y, P(y|x) ≤ e^ε·P(y|x′) (ε-DP per token within a cluster). Clusters have disjoint
           outputs: the cluster of every token is revealed.
  santext  SanText. Every text token may become every text token, u(x,y) = −‖e_x − e_y‖ (Euclidean
           distance of the raw dequantised token_embd rows), Δu = 1. Guarantee (metric DP): for all
           tokens x, x′, y, P(y|x) ≤ exp(ε·d(x,x′))·P(y|x′).
Composition: a record (question + choices) whose n tokens are perturbed spends n·ε (sequential
composition); the report gives ε per token, per record and summed over the dataset. Tokens kept
verbatim (--keep-punctuation, stopwords) are not protected. Control, unknown, unused and
user-defined tokens are never emitted: the tokenizer runs without special-token parsing, and any
such token it still produces (e.g. an added token's string) is dropped and counted.
Released records: the output holds only the perturbed question and choice texts (labels kept)
under fresh random ids, in shuffled order: no answer keys, no original ids, no rationale or
source. The id map (random id -> original id, answer) is written beside it, <out>.idmap.jsonl,
for the client alone: never send it. --keep-labels keeps the original ids, order and answer
keys instead (local experiments only; a warning says so). The sampler draws
53-bit uniforms from the OS CSPRNG unless --seed is given (a seed makes the noise reproducible by
anyone who knows it: tests and audits only). Details: docs/perturb.md.`;


/** Streams {"<x>": {"<y>": p, …}, …} to stdout (inputs and outputs ascending), honouring backpressure. */
async function writeTableJson(rows: AsyncIterable<{input: number; outputs: Int32Array; probabilities: Float64Array}>): Promise<void> {
    const out = process.stdout;
    const write = async (s: string) => {
        if (!out.write(s))
            await new Promise<void>((resolve) => out.once("drain", resolve));
    };
    let first = true, chunk = "{";
    for await (const d of rows) {
        const idx = Array.from(d.outputs.keys()).sort((a, b) => d.outputs[a] - d.outputs[b]);
        chunk += `${first ? "" : ","}\n"${d.input}":{` + idx.map((i) => `"${d.outputs[i]}":${JSON.stringify(d.probabilities[i])}`).join(",") + "}";
        first = false;
        if (chunk.length > 1 << 20) {
            await write(chunk);
            chunk = "";
        }
    }
    await write(chunk + "\n}\n");
}

function humanReport(r: PerturbReport): string {
    const m = r.mechanism, d = r.dataset;
    let s = `mechanism      ${m.name}, ε = ${m.epsilon} per token` +
        (m.custext ? `, K = ${m.custext.k}, ${m.custext.similarity}, ${formatCount(m.custext.clusters)} clusters ` +
            `(${m.custext.smallestCluster}..${m.custext.largestCluster} tokens), index ${m.custext.index.cached ? "from cache" :
                `built in ${m.custext.index.seconds.toFixed(2)} s`}` : "") + "\n" +
        `guarantee      ${m.guarantee.statement}\n` +
        `domain         ${formatCount(m.domainSize)} of ${formatCount(m.vocabularySize)} tokens (model ${m.modelHash.slice(0, 16)})\n` +
        `randomness     ${m.randomness}\n` +
        `records        ${formatCount(d.records)} (${formatCount(d.texts)} texts) -> ${r.output}\n` +
        (r.idMap ? `released       perturbed texts under random ids, shuffled; id map (keep it private) -> ${r.idMap}\n`
            : `released       WITH original ids and answer keys (--keep-labels): local use only\n`) +
        `tokens         ${formatCount(d.tokens)}: ${formatCount(d.perturbed)} perturbed (${formatCount(d.changed)} changed), ` +
        `kept ${formatCount(d.keptPunctuation)} punctuation, ${formatCount(d.keptStopwords)} stopword; dropped ${formatCount(d.dropped)} non-text\n` +
        `ε per record   min ${d.epsilonPerRecord.min}, mean ${d.epsilonPerRecord.mean.toFixed(1)}, max ${d.epsilonPerRecord.max} ` +
        `(sequential composition over its perturbed tokens)\n` +
        `ε dataset      ${d.epsilonTotal} summed over all records\n`;
    const dropped = Object.entries(r.droppedFields);
    if (dropped.length)
        s += `dropped fields ${dropped.map(([k, n]) => `${k} (${n})`).join(", ")}\n`;
    s += `time           ${r.seconds.toFixed(2)} s (${formatCount(Math.round(r.tokensPerSecond))} tokens/s)\n`;
    const show = r.records.slice(0, 10);
    s += "\n" + table(["id", "tokens", "perturbed", "changed", "kept", "dropped", "ε"], show.map((x) => [
        x.id, x.tokens, x.perturbed, x.changed, x.keptPunctuation + x.keptStopwords, x.dropped, x.epsilon]));
    if (r.records.length > show.length)
        s += `… ${formatCount(r.records.length - show.length)} more records (--json or --report for all)\n`;
    return s;
}

export function perturbCommand(): Command {
    return new Command("perturb")
        .description("Perturb private task data token by token with a differentially private Exponential Mechanism (client side)")
        .option("--embeddings <file>", "GGUF model (its token_embd tensor, any type) or embeddings file (.npy, or text: one row of numbers per token id)")
        .option("--tokenizer <gguf>", "GGUF model for the tokenizer (default: the --embeddings model)")
        .option("--tensor <name>", "GGUF tensor holding the embeddings (default token_embd.weight)")
        .addOption(tableOption("--mechanism", "perturb"))
        .addOption(tableOption("--epsilon", "perturb"))
        .addOption(tableOption("--k", "perturb"))
        .addOption(tableOption("--similarity", "perturb"))
        .option("--in <file>", "task items JSONL ({id, question, choices:[{label,text}], answer?}); never modified")
        .option("--out <file>", "perturbed JSONL, written atomically")
        .addOption(tableOption("--seed", "perturb"))
        .option("--keep-punctuation", "keep punctuation/symbol/whitespace tokens verbatim (and never emit them)")
        .option("--keep-stopwords", "keep the built-in English stopwords verbatim")
        .option("--stopwords <file>", "keep the words of this file (one per line) verbatim")
        .option("--id-map <file>", "where the id map (random id -> original id, answer) goes (default <out>.idmap.jsonl)")
        .option("--keep-labels", "keep original ids, order and answer keys in --out (local experiments only: never send that file)")
        .option("--table", "print the exact output distribution of every input token instead of perturbing")
        .option("--tokens <ids>", "with --table: only these input token ids, e.g. 3,17,100-120")
        .option("--report <file>", "also write the JSON privacy report to this file")
        .option("--cache-dir <dir>", "neighbour-index cache (default $PPC_GPT_CACHE_DIR, $XDG_CACHE_HOME/ppc-gpt or ~/.cache/ppc-gpt)")
        .option("--no-cache", "build the custext index without reading or writing the cache")
        .addOption(tableOption("--threads", "perturb"))
        .addOption(tableOption("--json", "perturb"))
        .addHelpText("after", `${GUARANTEES}

Examples:
  ppc-gpt perturb --embeddings model.gguf --mechanism custext --epsilon 3 --in private.jsonl --out perturbed.jsonl
  ppc-gpt perturb --embeddings model.gguf --epsilon 1 --keep-punctuation --keep-stopwords --in d.jsonl --out p.jsonl --json
  ppc-gpt perturb --embeddings model.gguf --mechanism santext --epsilon 10 --in d.jsonl --out p.jsonl --seed 7
  ppc-gpt perturb --embeddings model.gguf --mechanism custext --epsilon 3 --table --json > table.json
  ppc-gpt perturb --embeddings vectors.npy --tokenizer model.gguf --table --tokens 100-120`)
        .action(async (opts: PerturbCliOptions, cmd: Command) => withOptionFlags(cmd, "perturb", async () => {
            const options = perturberOptions(opts, cmd);
            if (opts.table)
                return await printDistributions(opts, options);
            if (opts.keepLabels)
                process.stderr.write(opts.json ? JSON.stringify({event: "warning", message: "--keep-labels: the output keeps answer keys and original ids; it is for local experiments and must not be sent"}) + "\n"
                    : "ppc-gpt perturb: warning: --keep-labels: the output keeps answer keys and original ids; it is for local experiments and must not be sent to a server\n");
            const report = await perturbFile({...options, input: opts.in!, output: opts.out!, keepLabels: opts.keepLabels, idMap: opts.idMap});
            if (opts.report)
                await writeFileDurable(opts.report, JSON.stringify(report, null, 2) + "\n");
            if (opts.json)
                return printJson(report);
            process.stdout.write(humanReport(report));
        }));
}

/** The command line as the library's options, after the checks of what goes with what (usage errors); the library checks the ranges. */
function perturberOptions(opts: PerturbCliOptions, cmd: Command): PerturberOptions {
    if (!opts.embeddings)
        throw new UsageError("--embeddings <file> is required (a GGUF model, or a .npy/text embeddings file with --tokenizer)");
    if (!opts.tokenizer && !/\.gguf$/i.test(opts.embeddings) && embeddingsFormat(opts.embeddings) !== "gguf")
        throw new UsageError(`${opts.embeddings} is an embeddings file, not a GGUF model: give the tokenizer with --tokenizer <gguf>`);
    const {mechanism, epsilon, k, similarity, seed, threads} = readOptions(cmd, "perturb", ["model", "privacy"]) as
        Pick<PerturberOptions, "mechanism" | "epsilon" | "k" | "similarity" | "seed" | "threads">;
    resolvePerturberOptions({mechanism, epsilon, k, similarity, seed, threads});  // range errors before any file is read
    if (opts.keepStopwords && opts.stopwords)
        throw new UsageError("give --keep-stopwords (built-in English list) or --stopwords <file>, not both");
    if (opts.cacheDir !== undefined && !opts.cache)
        throw new UsageError("give --cache-dir or --no-cache, not both");
    const stopwords = opts.stopwords ? readStopwords(opts.stopwords) : opts.keepStopwords ? true as const : undefined;
    checkFiles(opts);
    const json = Boolean(opts.json);
    return {
        embeddings: opts.embeddings, tokenizer: opts.tokenizer, tensor: opts.tensor, mechanism, epsilon, k,
        similarity, keepPunctuation: opts.keepPunctuation, stopwords, seed, threads,
        cacheDir: opts.cache ? opts.cacheDir : false,
        onProgress: stageBars({json}),
        onWarning: (message) => process.stderr.write(json ? JSON.stringify({event: "warning", message}) + "\n"
            : `ppc-gpt perturb: warning: ${message}\n`),
    };
}

/** --table takes no files; a release needs --in and --out, in existing folders. */
function checkFiles(opts: PerturbCliOptions): void {
    if (opts.table) {
        if (opts.in || opts.out || opts.report)
            throw new UsageError("--table prints the mechanism's distributions; it takes no --in, --out or --report");
        return;
    }
    if (opts.tokens)
        throw new UsageError("--tokens goes with --table");
    if (!opts.in || !opts.out)
        throw new UsageError("--in <file> and --out <file> are required (or --table)");
    if (!fs.existsSync(opts.in))
        throw new DataError(opts.in, undefined, "no such file");
    if (opts.keepLabels && opts.idMap)
        throw new UsageError("--id-map goes with the default release (random ids); --keep-labels writes no id map");
    checkOutputFolder(opts.out, "--out");
    checkOutputFolder(opts.idMap, "--id-map");
    checkOutputFolder(opts.report, "--report");
}

/** One progress bar per stage (embeddings, index, perturb), finished once its stage is done. */
function stageBars(mode: {json: boolean}): NonNullable<PerturberOptions["onProgress"]> {
    const bars = new Map<string, ReturnType<typeof progressReporter>>();
    const finished = new Set<string>();
    return (stage, done, total) => {
        if (finished.has(stage))
            return;
        let bar = bars.get(stage);
        if (!bar) {
            bar = progressReporter(mode, stage, stage === "embeddings" ? "items" : stage === "index" ? "tokens" : "items");
            bars.set(stage, bar);
        }
        bar.update(done, total);
        if (done >= total) {
            bar.finish();
            finished.add(stage);
        }
    };
}

/** --table: the exact output distribution of every input token (or of --tokens), as JSON or the top 8 per line. */
async function printDistributions(opts: PerturbCliOptions, options: PerturberOptions): Promise<void> {
    const tokens = opts.tokens ? parseIndexList(opts.tokens, "--tokens", "token ids") : undefined;
    const perturber = await createPerturber(options);
    try {
        for (const t of tokens ?? [])
            if (!perturber.mechanism.has(t))
                throw new UsageError(`--tokens: token ${t} is not in the ${perturber.summary.name} domain ` +
                    `(${perturber.describeToken(t)}; control, unknown, unused and user-defined tokens are never perturbed` +
                    `${perturber.summary.keepPunctuation ? ", nor punctuation with --keep-punctuation" : ""})`);
        const inputs = tokens ?? Array.from(perturber.mechanism.domain);
        if (opts.mechanism === "santext" && inputs.length * perturber.mechanism.domain.length > 5e7)
            throw new UsageError(`the santext table of ${formatCount(inputs.length)} inputs x ${formatCount(perturber.mechanism.domain.length)} ` +
                `outputs has ${(inputs.length * perturber.mechanism.domain.length).toExponential(1)} entries; choose inputs with --tokens`);
        if (opts.json)
            return await writeTableJson(perturber.table(inputs));
        const v = perturber.vocabulary;
        process.stdout.write(`${perturber.summary.guarantee.statement}\n\n`);
        for await (const d of perturber.table(inputs)) {
            const idx = Array.from(d.outputs.keys()).sort((a, b) => d.probabilities[b] - d.probabilities[a]);
            const top = idx.slice(0, 8).map((i) => `${JSON.stringify(v.pieces[d.outputs[i]])}(${d.outputs[i]}) ${d.probabilities[i].toPrecision(3)}`);
            process.stdout.write(`${String(d.input).padStart(6)} ${JSON.stringify(v.pieces[d.input]).padEnd(14)} -> ${top.join(", ")}` +
                `${idx.length > 8 ? `, … (${idx.length} outputs)` : ""}\n`);
        }
    } finally {
        perturber.close();
    }
}
