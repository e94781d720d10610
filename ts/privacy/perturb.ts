// Client-side perturbation of task data (METHOD.md step 1): every question and choice text is
// tokenized with the model's tokenizer, each token is replaced through a token-level DP mechanism
// (CusText by default, or SanText), and the tokens are decoded back to text. perturbItems keeps
// ids, choice labels and answer keys; perturbFile releases only the texts under fresh random ids
// (release.ts) unless asked to keep labels. Rationales, sources and any other field are dropped,
// since they may repeat the private text. The privacy report counts, per record, the tokens that
// went through the mechanism and composes their ε sequentially.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import {DataError, readTaskItems, writeJsonlAtomic} from "../data/jsonl.js";
import type {TaskItem} from "../data/task-item.js";
import {checkModelLoadOptions, loadModel, type LoadedModel} from "../model.js";
import {checkOption, isInt, isNum, OptionError} from "../options.js";
import {native} from "../native.js";
import {buildCusTextIndex, clusterSizes, cusTextMechanism, type CusTextIndex, type SimilarityMetric} from "./custext.js";
import {checkEmbeddingsFinite, embeddingsFormat, loadEmbeddings, type TokenEmbeddings} from "./embeddings.js";
import {type PrivacyGuarantee, type TokenDistribution, type TokenMechanism} from "./mechanism.js";
import {mechanismNames, perturbDefaults, type MechanismName} from "./defaults.js";
import {idMapPath, releaseItems, writeIdMap} from "./release.js";
import {parseSeed, secureUniform, seededUniform, type UniformSource} from "../random.js";
import {sanTextMechanism} from "./santext.js";
import {englishStopwords} from "./stopwords.js";
import {isPunctuationToken, perturbationDomain, readVocabulary, type TokenVocabulary} from "./vocab.js";

export {mechanismNames, perturbDefaults, type MechanismName} from "./defaults.js";

export interface ResolvedPerturberOptions {
    mechanism: MechanismName;
    epsilon: number;
    k: number;
    similarity: SimilarityMetric;
    /** Undefined: the OS CSPRNG. */
    seed?: number;
}

/**
 * The perturber's options with perturbDefaults filled in, each checked (OptionError names the
 * option): the one place perturb's ranges are checked, for the CLI and in-process callers alike.
 */
export function resolvePerturberOptions(o: Omit<PerturberOptions, "embeddings">): ResolvedPerturberOptions {
    const r = {
        mechanism: o.mechanism ?? perturbDefaults.mechanism,
        epsilon: o.epsilon ?? perturbDefaults.epsilon,
        k: o.k ?? perturbDefaults.k,
        similarity: o.similarity ?? perturbDefaults.similarity,
    };
    checkOption((mechanismNames as readonly string[]).includes(r.mechanism), "mechanism", `one of ${mechanismNames.join(", ")}`, r.mechanism);
    checkOption(isNum(r.epsilon, Number.MIN_VALUE, Number.MAX_VALUE), "epsilon", "a finite number > 0", r.epsilon);
    checkOption(isInt(r.k, 1, 65536), "k", "an integer in [1, 65536]", r.k);
    checkOption(r.similarity === "cosine" || r.similarity === "euclidean", "similarity", "\"cosine\" or \"euclidean\"", r.similarity);
    if (r.mechanism !== "custext" && (o.k !== undefined || o.similarity !== undefined))
        throw new OptionError(["k", "similarity", "mechanism"], ([k, similarity, mechanism]) =>
            `${k} and ${similarity} apply to ${mechanism} custext only`);
    checkModelLoadOptions({threads: o.threads});
    return {...r, seed: o.seed === undefined ? undefined : checkedSeed(o.seed)};
}

/** The seed as a number; a malformed one is an OptionError saying what parseSeed says. */
function checkedSeed(seed: number | string): number {
    try {
        return parseSeed(seed);
    } catch (err) {
        const message = (err as Error).message;
        throw new OptionError(["seed"], ([name]) => `${name}: ${message}`, seed);
    }
}

export interface PerturberOptions {
    /** A GGUF model (its token_embd tensor and tokenizer), or a .npy / text embeddings file (then give `tokenizer`). */
    embeddings: string;
    /** GGUF model whose tokenizer splits and joins the texts; default: `embeddings` when it is a GGUF. */
    tokenizer?: string;
    /** GGUF tensor holding the embeddings (default "token_embd.weight"). */
    tensor?: string;
    /** Default "custext". */
    mechanism?: MechanismName;
    /** ε per token (default 3). */
    epsilon?: number;
    /** CusText cluster size K (default 20). */
    k?: number;
    /** CusText similarity (default "cosine"). */
    similarity?: SimilarityMetric;
    /** Keep punctuation, symbol and whitespace tokens verbatim (they also leave the mechanism's domain). */
    keepPunctuation?: boolean;
    /** Words kept verbatim (case-insensitive). `true`: the built-in English list. */
    stopwords?: Iterable<string> | true;
    /** Reproducible randomness (tests, audits). Default: the OS CSPRNG. */
    seed?: number | string;
    /** Neighbour-index cache folder, or false for none. Default: defaultCacheDir(). */
    cacheDir?: string | false;
    threads?: number;
    onProgress?: (stage: "embeddings" | "index" | "perturb", done: number, total: number) => void;
    onWarning?: (message: string) => void;
}

export interface TokenCounts {
    /** Tokens of the text(s). */
    tokens: number;
    /** Tokens replaced through the mechanism (each costs ε). */
    perturbed: number;
    /** Perturbed tokens whose output differs from the input. */
    changed: number;
    /** Kept verbatim: punctuation/whitespace tokens (keepPunctuation). */
    keptPunctuation: number;
    /** Kept verbatim: words of the stopword list. */
    keptStopwords: number;
    /**
     * Removed from the output: non-text tokens the tokenizer produced (unknown, control, user-defined
     * tokens, e.g. an added token's string found in the text): never emitted, never perturbed.
     */
    dropped: number;
}

export interface TextPerturbation extends TokenCounts {
    text: string;
    /** ε spent on this text: perturbed × ε (sequential composition). */
    epsilon: number;
}

export interface PerturbedItem {
    id: string;
    question: string;
    choices: {label: string; text: string}[];
    answer?: string;
}

export interface RecordReport extends TokenCounts {
    id: string;
    /** perturbed × ε: the record's budget by sequential composition over its tokens. */
    epsilon: number;
}

export interface MechanismReport {
    name: MechanismName;
    epsilon: number;
    guarantee: PrivacyGuarantee;
    /** Tokens the mechanism may perturb and emit. */
    domainSize: number;
    vocabularySize: number;
    modelHash: string;
    embeddings: {path: string; format: string; tensor?: string; type: string; rows: number; cols: number; sha256: string};
    tokenizer: string;
    custext?: {
        k: number;
        similarity: SimilarityMetric;
        clusters: number;
        smallestCluster: number;
        largestCluster: number;
        index: {cached: boolean; seconds: number; file?: string};
    };
    keepPunctuation: boolean;
    stopwords: number;
    randomness: string;
}

export interface DatasetReport extends TokenCounts {
    records: number;
    texts: number;
    epsilonPerToken: number;
    epsilonPerRecord: {min: number; mean: number; max: number};
    /** Σ over records: the budget if one person contributed every record (sequential composition). */
    epsilonTotal: number;
    composition: string;
}

export interface PerturbReport {
    mechanism: MechanismReport;
    dataset: DatasetReport;
    records: RecordReport[];
    /** Fields removed from the records because they may carry private text, with counts. */
    droppedFields: Record<string, number>;
    input?: string;
    output?: string;
    /** The id map written beside the output (absent with keepLabels). */
    idMap?: string;
    /** "text-only": perturbed texts under random ids; "with-labels": original ids and answer keys kept (keepLabels). */
    released: "text-only" | "with-labels";
    seconds: number;
    tokensPerSecond: number;
}

const KEEP_PERTURB = 0, KEEP_PUNCT = 1, KEEP_STOP = 2, DROP = 3;

function emptyCounts(): TokenCounts {
    return {tokens: 0, perturbed: 0, changed: 0, keptPunctuation: 0, keptStopwords: 0, dropped: 0};
}

function addCounts(a: TokenCounts, b: TokenCounts): void {
    a.tokens += b.tokens;
    a.perturbed += b.perturbed;
    a.changed += b.changed;
    a.keptPunctuation += b.keptPunctuation;
    a.keptStopwords += b.keptStopwords;
    a.dropped += b.dropped;
}

/** Reads a stopword file: one word per line, '#' comments and blank lines skipped. */
export function readStopwords(file: string): string[] {
    let text: string;
    try {
        text = fs.readFileSync(file, "utf8");
    } catch (err) {
        throw new DataError(file, undefined, `cannot read: ${(err as Error).message}`);
    }
    return text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"));
}

/** sha256 identifying the embeddings and the tokenizer together: the neighbour-index cache key. */
export function modelHash(e: TokenEmbeddings, v: TokenVocabulary): string {
    return crypto.createHash("sha256")
        .update(`ppc-gpt/model/v1\n${e.sha256}\n${e.rows}x${e.cols}\n${e.type}\n${v.sha256}\n`)
        .digest("hex");
}

const whitespaceStart = /^\s/u;
const whitespaceEnd = /\s$/u;

/** Tokenizes, perturbs and detokenizes texts with one mechanism and one stream of randomness. */
export class TextPerturber {
    private readonly stopwords: Set<string>;
    private readonly punct: Uint8Array;

    private constructor(
        readonly model: LoadedModel,
        readonly vocabulary: TokenVocabulary,
        readonly embeddings: TokenEmbeddings,
        readonly mechanism: TokenMechanism,
        readonly summary: MechanismReport,
        readonly rng: UniformSource,
        readonly index: CusTextIndex | undefined,
        stopwords: Set<string>,
        private readonly threads: number,
    ) {
        this.stopwords = stopwords;
        this.punct = new Uint8Array(vocabulary.size);
        for (let t = 0; t < vocabulary.size; t++)
            this.punct[t] = isPunctuationToken(vocabulary, t) ? 1 : 0;
    }

    /** Loads the tokenizer and embeddings, and builds (or reads from the cache) the mechanism. */
    static async create(o: PerturberOptions): Promise<TextPerturber> {
        const {mechanism: name, epsilon, k, similarity, seed} = resolvePerturberOptions(o);
        const rng = seed === undefined ? secureUniform() : seededUniform(seed);
        const format = embeddingsFormat(o.embeddings);
        if (format !== "gguf" && /\.gguf$/i.test(o.embeddings))
            throw new DataError(o.embeddings, undefined, "not a GGUF file (it does not start with the GGUF magic)");
        const tokenizer = o.tokenizer ?? (format === "gguf" ? o.embeddings : undefined);
        if (!tokenizer)
            throw new RangeError(`${o.embeddings} is a ${format === "npy" ? ".npy" : "text"} embeddings file: give the tokenizer's GGUF model too`);
        if (tokenizer !== o.embeddings && embeddingsFormat(tokenizer) !== "gguf")
            throw new DataError(tokenizer, undefined, "the tokenizer must be a GGUF model");

        const model = await loadModel(tokenizer, {vocabOnly: true});
        try {
            const vocabulary = readVocabulary(model);
            const embeddings = await loadEmbeddings(o.embeddings, {
                tensor: o.tensor,
                threads: o.threads,
                onProgress: o.onProgress ? (d, t) => o.onProgress!("embeddings", d, t) : undefined,
            });
            checkEmbeddingsFinite(embeddings);
            if (embeddings.rows < vocabulary.size)
                throw new DataError(o.embeddings, undefined, `${embeddings.rows} embedding rows for a tokenizer of ${vocabulary.size} tokens ` +
                    `(${tokenizer}): every token needs a row`);
            const domain = perturbationDomain(vocabulary, {keepPunctuation: o.keepPunctuation, limit: vocabulary.size});
            if (domain.length < 2)
                throw new Error(`the tokenizer has ${domain.length} text token(s): nothing to choose from`);
            const hash = modelHash(embeddings, vocabulary);
            let mechanism: TokenMechanism;
            let index: CusTextIndex | undefined;
            if (name === "custext") {
                index = await buildCusTextIndex(embeddings, domain, {
                    k, metric: similarity, modelHash: hash, cacheDir: o.cacheDir, threads: o.threads, onWarning: o.onWarning,
                    onProgress: o.onProgress ? (d, t) => o.onProgress!("index", d, t) : undefined,
                });
                mechanism = cusTextMechanism(index, epsilon);
            } else {
                mechanism = sanTextMechanism(embeddings, domain, epsilon, {threads: o.threads});
            }
            const stop = new Set<string>();
            if (o.stopwords)
                for (const w of o.stopwords === true ? englishStopwords : o.stopwords)
                    stop.add(w.trim().toLowerCase());
            const sizes = index ? clusterSizes(index) : undefined;
            const summary: MechanismReport = {
                name, epsilon, guarantee: mechanism.guarantee, domainSize: domain.length, vocabularySize: vocabulary.size,
                modelHash: hash,
                embeddings: {
                    path: embeddings.path, format: embeddings.format, ...(embeddings.tensor ? {tensor: embeddings.tensor} : {}),
                    type: embeddings.type, rows: embeddings.rows, cols: embeddings.cols, sha256: embeddings.sha256,
                },
                tokenizer,
                ...(index && sizes ? {
                    custext: {
                        k, similarity, clusters: sizes.clusters, smallestCluster: sizes.smallest, largestCluster: sizes.largest,
                        index: {cached: index.build.cached, seconds: index.build.seconds, ...(index.build.file ? {file: index.build.file} : {})},
                    },
                } : {}),
                keepPunctuation: Boolean(o.keepPunctuation),
                stopwords: stop.size,
                randomness: rng.description,
            };
            return new TextPerturber(model, vocabulary, embeddings, mechanism, summary, rng, index, stop, o.threads ?? 0);
        } catch (err) {
            model.close();
            throw err;
        }
    }

    /** What each token of `ids` becomes (written to `action`): perturbed, or kept for a reason. */
    private plan(ids: Int32Array, action: Uint8Array): void {
        const m = this.mechanism, v = this.vocabulary;
        for (let i = 0; i < ids.length; i++) {
            const t = ids[i];
            action[i] = m.has(t) ? KEEP_PERTURB : this.summary.keepPunctuation && this.punct[t] ? KEEP_PUNCT : DROP;
        }
        if (this.stopwords.size === 0)
            return;
        // Words: a token starts one after whitespace or punctuation, or when it begins with whitespace.
        let start = 0;
        const flush = (end: number) => {
            if (end <= start)
                return;
            let word = "";
            for (let i = start; i < end; i++)
                word += v.pieces[ids[i]];
            if (this.stopwords.has(word.trim().toLowerCase()))
                for (let i = start; i < end; i++)
                    if (action[i] === KEEP_PERTURB)
                        action[i] = KEEP_STOP;
        };
        for (let i = 1; i <= ids.length; i++) {
            if (i === ids.length) {
                flush(i);
                break;
            }
            const prev = v.pieces[ids[i - 1]], cur = v.pieces[ids[i]];
            if (whitespaceStart.test(cur) || whitespaceEnd.test(prev) || this.punct[ids[i]] || this.punct[ids[i - 1]]) {
                flush(i);
                start = i;
            }
        }
    }

    /**
     * Perturbs texts in order: tokenized without special-token parsing (a literal "<s>" stays text),
     * one uniform draw per perturbed token (so a seed reproduces the output), decoded back to text.
     * Tokenization and decoding run natively on `threads` threads.
     */
    async perturbTexts(texts: readonly string[]): Promise<TextPerturbation[]> {
        const nat = native();
        const {offsets, tokens} = await nat.embedTokenizeBatch(this.model.handle, texts as string[], false, false, this.threads);
        const action = new Uint8Array(tokens.length);
        for (let i = 0; i < texts.length; i++)
            this.plan(tokens.subarray(offsets[i], offsets[i + 1]), action.subarray(offsets[i], offsets[i + 1]));
        let n = 0;
        for (let j = 0; j < action.length; j++)
            if (action[j] === KEEP_PERTURB)
                n++;
        const inputs = new Int32Array(n);
        n = 0;
        for (let j = 0; j < action.length; j++)
            if (action[j] === KEEP_PERTURB)
                inputs[n++] = tokens[j];
        const outputs = await this.mechanism.perturbTokens(inputs, this.rng);
        // Output tokens, without the dropped ones: text i is out[outOffsets[i] .. outOffsets[i+1]).
        const out = new Int32Array(tokens.length);
        const outOffsets = new Int32Array(texts.length + 1);
        const counts: TokenCounts[] = [];
        let at = 0;
        n = 0;
        for (let i = 0; i < texts.length; i++) {
            const c = emptyCounts();
            c.tokens = offsets[i + 1] - offsets[i];
            for (let j = offsets[i]; j < offsets[i + 1]; j++) {
                switch (action[j]) {
                    case KEEP_PERTURB:
                        out[at] = outputs[n++];
                        c.perturbed++;
                        if (out[at++] !== tokens[j])
                            c.changed++;
                        break;
                    case KEEP_PUNCT: out[at++] = tokens[j]; c.keptPunctuation++; break;
                    case KEEP_STOP: out[at++] = tokens[j]; c.keptStopwords++; break;
                    default: c.dropped++; break;
                }
            }
            outOffsets[i + 1] = at;
            counts.push(c);
        }
        const decoded = await nat.embedDetokenizeBatch(this.model.handle, out.subarray(0, at), outOffsets, false, false, this.threads);
        const eps = this.mechanism.epsilon;
        return counts.map((c, i) => ({...c, text: c.tokens === 0 ? texts[i] : decoded[i], epsilon: c.perturbed * eps}));
    }

    /** Perturbs the question and choice texts of task items; ids, labels and answers pass through. */
    async perturbItems(items: readonly TaskItem[], onProgress?: (done: number, total: number) => void): Promise<{
        items: PerturbedItem[];
        records: RecordReport[];
        droppedFields: Record<string, number>;
    }> {
        const out: PerturbedItem[] = [];
        const records: RecordReport[] = [];
        const dropped: Record<string, number> = {};
        // Batches of about 256 KiB of text: each distinct input's distribution is computed once per batch.
        for (let b = 0; b < items.length;) {
            let e = b, chars = 0;
            while (e < items.length && (e === b || chars < 1 << 18)) {
                chars += items[e].question.length + items[e].choices.reduce((n, c) => n + c.text.length, 0);
                e++;
            }
            const chunk = items.slice(b, e);
            b = e;
            const texts: string[] = [];
            for (const it of chunk) {
                texts.push(it.question);
                for (const c of it.choices)
                    texts.push(c.text);
            }
            const done = await this.perturbTexts(texts);
            let at = 0;
            for (const it of chunk) {
                const counts = emptyCounts();
                const q = done[at++];
                addCounts(counts, q);
                const choices = it.choices.map((c) => {
                    const r = done[at++];
                    addCounts(counts, r);
                    return {label: c.label, text: r.text};
                });
                out.push({id: it.id, question: q.text, choices, ...(it.answer !== undefined ? {answer: it.answer} : {})});
                records.push({id: it.id, ...counts, epsilon: counts.perturbed * this.mechanism.epsilon});
                for (const key of Object.keys(it))
                    if (!["id", "question", "choices", "answer"].includes(key))
                        dropped[key] = (dropped[key] ?? 0) + 1;
            }
            onProgress?.(b, items.length);
        }
        return {items: out, records, droppedFields: dropped};
    }

    /** Exact output distributions of the given inputs (default: the whole domain), in ascending input order. */
    async *table(inputs?: ArrayLike<number>): AsyncGenerator<TokenDistribution> {
        const list = inputs ? Int32Array.from(inputs).sort() : this.mechanism.domain;
        for (const t of list)
            if (!this.mechanism.has(t))
                throw new RangeError(`token ${t} is not in the mechanism's domain (${this.describeToken(t)})`);
        const step = this.summary.name === "santext" ? 64 : 4096;
        for (let i = 0; i < list.length; i += step)
            yield* await this.mechanism.distributions(list.subarray(i, i + step));
    }

    describeToken(t: number): string {
        if (!Number.isInteger(t) || t < 0 || t >= this.vocabulary.size)
            return `not a token of this ${this.vocabulary.size}-token vocabulary`;
        return `${JSON.stringify(this.vocabulary.texts[t])}`;
    }

    close(): void {
        this.model.close();
    }
}

/** Open a text perturber (CusText / SanText / exponential mechanism over a model's embeddings). */
export function createPerturber(o: PerturberOptions): Promise<TextPerturber> {
    return TextPerturber.create(o);
}

/** Aggregates per-record reports into the dataset's privacy report. */
export function datasetReport(records: readonly RecordReport[], texts: number, epsilon: number): DatasetReport {
    const total = emptyCounts();
    let min = Infinity, max = 0, sum = 0;
    for (const r of records) {
        addCounts(total, r);
        min = Math.min(min, r.epsilon);
        max = Math.max(max, r.epsilon);
        sum += r.epsilon;
    }
    return {
        records: records.length, texts, ...total, epsilonPerToken: epsilon,
        epsilonPerRecord: {min: records.length ? min : 0, mean: records.length ? sum / records.length : 0, max},
        epsilonTotal: sum,
        composition: "Each perturbed token costs ε; a record's ε is the sum over its perturbed tokens (sequential " +
            "composition). Records are disjoint, so the guarantee for any one record is its own ε (parallel composition); " +
            "epsilonTotal is the sum over all records, the budget if one person contributed all of them. Kept tokens " +
            "(punctuation, stopwords) are released unperturbed and are not protected; dropped (non-text) tokens are not released.",
    };
}

export interface PerturbFileOptions extends PerturberOptions {
    input: string;
    output: string;
    /**
     * Keep the original ids, order and answer keys in the output (local experiments only: the file
     * then must not be sent anywhere). Default false: fresh random ids, shuffled order, no answers,
     * and the id map written to `idMap`.
     */
    keepLabels?: boolean;
    /** Where the id map (random id -> original id, answer) goes; default idMapPath(output). */
    idMap?: string;
}

/** Perturbs a JSONL file of task items into another (written atomically) and reports the privacy spent. */
export async function perturbFile(o: PerturbFileOptions): Promise<PerturbReport> {
    const inAbs = path.resolve(o.input), outAbs = path.resolve(o.output);
    let same = inAbs === outAbs;
    try {
        same ||= fs.realpathSync(inAbs) === fs.realpathSync(outAbs);
    } catch {
        // the output does not exist yet
    }
    if (same)
        throw new RangeError(`the output ${o.output} is the input file: inputs are never modified`);
    const idMap = o.keepLabels ? undefined : o.idMap ?? idMapPath(o.output);
    if (idMap && [inAbs, outAbs].includes(path.resolve(idMap)))
        throw new RangeError(`the id map ${idMap} would overwrite the ${path.resolve(idMap) === inAbs ? "input" : "output"}`);
    if (!fs.existsSync(path.dirname(outAbs)))
        throw new DataError(o.output, undefined, `folder ${path.dirname(outAbs)} does not exist`);
    const items = await readTaskItems(o.input);
    const perturber = await createPerturber(o);
    try {
        const started = performance.now();
        const r = await perturber.perturbItems(items, o.onProgress ? (d, t) => o.onProgress!("perturb", d, t) : undefined);
        let records = r.records;
        if (idMap) {
            const released = releaseItems(r.items);
            // The id map first: a released file never exists without the map that makes it usable.
            await writeIdMap(idMap, released.idMap);
            await writeJsonlAtomic(o.output, released.items);
            records = released.sourceIndex.map((i, n) => ({...r.records[i], id: released.items[n].id}));
        } else {
            await writeJsonlAtomic(o.output, r.items);
        }
        const seconds = (performance.now() - started) / 1000;
        const texts = items.reduce((n, it) => n + 1 + it.choices.length, 0);
        const dataset = datasetReport(records, texts, perturber.mechanism.epsilon);
        return {
            mechanism: perturber.summary, dataset, records, droppedFields: r.droppedFields,
            input: o.input, output: o.output, ...(idMap ? {idMap} : {}), released: idMap ? "text-only" : "with-labels",
            seconds, tokensPerSecond: seconds > 0 ? dataset.tokens / seconds : 0,
        };
    } finally {
        perturber.close();
    }
}
