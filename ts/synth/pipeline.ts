// The synthetic-data step (METHOD.md step 2): for every perturbed item, up to k new questions;
// each is answered three times at temperature > 0 and kept only when the three final letters
// agree, then given a rationale. Attempts run concurrently; every outcome is recorded at once
// (accepted items in the output, rejections in the journal), so a re-run continues where a killed
// one stopped and never generates an item twice.
import path from "node:path";
import {DataError, readTaskItems} from "../data/jsonl.js";
import type {SyntheticItem, TaskItem} from "../data/task-item.js";
import {GeneratorError, type GenerateRequest, type GenerateResult, type Generator} from "./generator.js";
import {parseAnswerReply, parseQuestionReply, parseRationaleReply} from "./parse.js";
import {answerMessages, answerSchema, promptVersion, questionMessages, questionSchema, rationaleMessages, rationaleSchema,
    RATIONALE_END, type PromptFormat} from "./prompts.js";
import {SyntheticStore} from "./store.js";
import {agreeVotes, questionKey, reject, validateDraft, type Checked, type RejectionReason} from "./validate.js";
import {synthDefaults} from "./defaults.js";
import {checkOption, isInt, isNum, OptionError} from "../options.js";

export interface SynthTemperatures {
    /** Question generation (default 0.9: the k questions of one parent should differ). */
    question: number;
    /** Each of the three answer votes (default 0.7; must be > 0). */
    answer: number;
    /** Rationale (default 0.3). */
    rationale: number;
}

export interface SynthMaxTokens {
    question: number;
    answer: number;
    rationale: number;
}

export interface SynthesizeOptions {
    /** Perturbed task items (JSONL, TaskItem schema). Never modified. */
    input: string;
    /** Synthetic items (JSONL, SyntheticItem schema); appended to, and resumed from, if it exists. */
    output: string;
    generator: Generator;
    /** Synthetic items wanted per perturbed item, k (default 8). */
    ratio?: number;
    /** Attempts allowed per perturbed item, rejected ones included (default 2k). */
    maxAttempts?: number;
    /** Attempts in flight at once (default: the generator's concurrency). */
    concurrency?: number;
    /** Reply format: JSON with a schema, the paper's line format, or JSON unless the generator cannot enforce it (default). */
    format?: "auto" | PromptFormat;
    temperature?: Partial<SynthTemperatures>;
    maxTokens?: Partial<SynthMaxTokens>;
    /** Base sampling seed; each request's seed derives from it, the parent id, the attempt and the vote. Default: random. */
    seed?: number;
    /** Only the first `limit` input items. */
    limit?: number;
    signal?: AbortSignal;
    onProgress?: (progress: SynthProgress) => void;
}

export interface SynthProgress {
    parents: number;
    parentsDone: number;
    /** parents × k */
    target: number;
    /** Accepted items plus the shortfall of parents that ran out of attempts: reaches `target` at the end. */
    settled: number;
    accepted: number;
    rejected: number;
    acceptedThisRun: number;
    rejectedThisRun: number;
    inFlight: number;
}

export interface SynthSummary {
    input: string;
    output: string;
    journal: string;
    generator: string;
    promptVersions: string[];
    ratio: number;
    maxAttempts: number;
    parents: number;
    target: number;
    /** Accepted items of these parents in the output, earlier runs included. */
    accepted: number;
    /** Rejected attempts of these parents, earlier runs included. */
    rejected: number;
    acceptedThisRun: number;
    rejectedThisRun: number;
    /** Rejection reasons over all runs (from the journal). */
    reasons: Partial<Record<RejectionReason, number>>;
    reasonsThisRun: Partial<Record<RejectionReason, number>>;
    /** Parents that ran out of attempts before reaching k items. */
    parentsShort: number;
    resumed: {previousRuns: number; acceptedBefore: number; rejectedBefore: number; droppedTornLines: string[]};
    requests: number;
    promptTokens: number;
    completionTokens: number;
    seconds: number;
}

/** What one attempt produced. */
export type AttemptOutcome =
    | {accepted: true; item: SyntheticItem}
    | {accepted: false; reason: RejectionReason; detail: string; question?: string; votes?: string[]};

export interface AttemptContext {
    generator: Generator;
    format: PromptFormat;
    temperature: SynthTemperatures;
    maxTokens: SynthMaxTokens;
    /** Seed of this attempt; each request adds its own offset. */
    seed: number;
    /** Duplicate keys of questions already taken; the attempt adds its own when it is new. */
    seen: Set<string>;
    signal?: AbortSignal;
    /** Called with every request's result (for token counts). */
    onResult?: (r: GenerateResult) => void;
}

export const defaultTemperatures: SynthTemperatures = {question: 0.9, answer: 0.7, rationale: 0.3};
export const defaultMaxTokens: SynthMaxTokens = {question: 1024, answer: 1024, rationale: 512};

/** FNV-1a of the parts, as an unsigned 32-bit seed. */
export function deriveSeed(...parts: (string | number)[]): number {
    let h = 0x811c9dc5;
    for (const b of Buffer.from(parts.join("\u0000"))) {
        h ^= b;
        h = Math.imul(h, 0x01000193) >>> 0;
    }
    return h >>> 0;
}

/** Item id of attempt `attempt` of a parent. */
export function syntheticId(parentId: string, attempt: number): string {
    return `${parentId}-syn${attempt}`;
}

/** Runs one request; a non-fatal generator error becomes a "request-failed" rejection. */
async function request(ctx: AttemptContext, req: GenerateRequest): Promise<Checked<GenerateResult>> {
    try {
        const r = await ctx.generator.generate({...req, signal: ctx.signal});
        ctx.onResult?.(r);
        return {ok: true, value: r};
    } catch (err) {
        if (err instanceof GeneratorError && !err.fatal)
            return reject("request-failed", err.message);
        throw err;
    }
}

/** One attempt: a new question from `parent`, three votes, a rationale. Throws only fatal errors. */
export async function synthesizeOne(parent: TaskItem, attempt: number, ctx: AttemptContext): Promise<AttemptOutcome> {
    const json = ctx.format === "json";
    const fail = (c: {reason: RejectionReason; detail: string}, extra: {question?: string; votes?: string[]} = {}): AttemptOutcome =>
        ({accepted: false, reason: c.reason, detail: c.detail, ...extra});

    const qr = await request(ctx, {
        messages: questionMessages(parent, ctx.format),
        temperature: ctx.temperature.question,
        maxTokens: ctx.maxTokens.question,
        jsonSchema: json ? {name: "new_question", schema: questionSchema} : undefined,
        seed: ctx.seed,
    });
    if (!qr.ok)
        return fail(qr);
    const parsed = parseQuestionReply(qr.value.text, qr.value.finishReason);
    if (!parsed.ok)
        return fail(parsed);
    const valid = validateDraft(parsed.value);
    if (!valid.ok)
        return fail(valid, {question: parsed.value.question});
    const draft = valid.value;
    const key = questionKey(draft.question);
    if (ctx.seen.has(key))
        return fail({reason: "duplicate-question", detail: "same question as the parent or another generated one"}, {question: draft.question});
    ctx.seen.add(key);

    const labels = draft.choices.map((c) => c.label);
    const replies = await Promise.all([0, 1, 2].map((v) => request(ctx, {
        messages: answerMessages(draft, ctx.format),
        temperature: ctx.temperature.answer,
        maxTokens: ctx.maxTokens.answer,
        jsonSchema: json ? {name: "answer", schema: answerSchema(labels)} : undefined,
        seed: (ctx.seed + 1 + v) >>> 0,
    })));
    const votes: string[] = [];
    for (const r of replies) {
        if (!r.ok)
            return fail(r, {question: draft.question});
        const a = parseAnswerReply(r.value.text, r.value.finishReason);
        if (!a.ok)
            return fail(a, {question: draft.question, votes});
        votes.push(a.value.letter);
    }
    const agreed = agreeVotes(votes, labels);
    if (!agreed.ok)
        return fail(agreed, {question: draft.question, votes});

    const rr = await request(ctx, {
        messages: rationaleMessages(draft, agreed.value, ctx.format),
        temperature: ctx.temperature.rationale,
        maxTokens: ctx.maxTokens.rationale,
        jsonSchema: json ? {name: "rationale", schema: rationaleSchema} : undefined,
        stop: json ? undefined : [RATIONALE_END],
        seed: (ctx.seed + 4) >>> 0,
    });
    if (!rr.ok)
        return fail(rr, {question: draft.question, votes});
    const rationale = parseRationaleReply(rr.value.text, rr.value.finishReason);
    if (!rationale.ok)
        return fail(rationale, {question: draft.question, votes});

    return {
        accepted: true,
        item: {
            id: syntheticId(parent.id, attempt),
            question: draft.question,
            choices: draft.choices,
            answer: agreed.value,
            rationale: rationale.value,
            parent_id: parent.id,
            votes,
            generator: ctx.generator.name,
            prompt_version: promptVersion(ctx.format),
            source: {stage: "synth", attempt},
        },
    };
}

interface ParentState {
    item: TaskItem;
    accepted: number;
    /** Attempt numbers finished (accepted or rejected), earlier runs included. */
    used: Set<number>;
    inFlight: Set<number>;
    nextAttempt: number;
    done: boolean;
}

function positiveInt(x: number, what: string): number {
    if (!Number.isInteger(x) || x < 1)
        throw new RangeError(`${what} must be a positive integer (got ${x})`);
    return x;
}

/** Reads and checks the perturbed items: TaskItem schema, unique ids. */
export async function readParents(input: string, limit?: number): Promise<TaskItem[]> {
    const items = await readTaskItems(input);
    const seen = new Set<string>();
    for (const [i, item] of items.entries()) {
        if (seen.has(item.id))
            throw new DataError(input, undefined, `item ${i + 1} repeats the id "${item.id}"; ids must be unique`);
        seen.add(item.id);
    }
    if (items.length === 0)
        throw new DataError(input, undefined, "no items");
    return limit === undefined ? items : items.slice(0, limit);
}

/** The validated settings of one synthesize() call. */
interface SynthSettings {
    k: number;
    maxAttempts: number;
    concurrency: number;
    temperature: SynthTemperatures;
    maxTokens: SynthMaxTokens;
    baseSeed: number;
    generator: Generator;
    formatFor: () => PromptFormat;
}

/** synthesize's numeric options with synthDefaults filled in, each checked (OptionError names the option). */
export function resolveSynthOptions(options: Pick<SynthesizeOptions, "ratio" | "maxAttempts" | "concurrency" | "temperature" | "maxTokens" | "seed" | "limit">) {
    const k = options.ratio ?? synthDefaults.ratio;
    checkOption(isInt(k, 1), "ratio", "an integer >= 1", k);
    const maxAttempts = options.maxAttempts ?? 2 * k;
    checkOption(isInt(maxAttempts, 1), "maxAttempts", "an integer >= 1", maxAttempts);
    if (maxAttempts < k)
        throw new OptionError(["maxAttempts", "ratio"], ([a, r]) => `${a} (${maxAttempts}) must be at least ${r} (${k})`);
    if (options.concurrency !== undefined)
        checkOption(isInt(options.concurrency, 1), "concurrency", "an integer >= 1", options.concurrency);
    const temperature = {...defaultTemperatures, ...options.temperature};
    // the answer is sampled three times: the votes must be independent samples
    checkOption(isNum(temperature.answer, Number.MIN_VALUE, 2), "temperature", "a number in (0, 2]", temperature.answer);
    const maxTokens = {...defaultMaxTokens, ...options.maxTokens};
    for (const n of Object.values(maxTokens))
        checkOption(isInt(n, 1), "maxTokens", "a positive integer", n);
    if (options.seed !== undefined)
        checkOption(isInt(options.seed, 0, 2 ** 32 - 1), "seed", "an integer in [0, 2^32)", options.seed);
    if (options.limit !== undefined)
        checkOption(isInt(options.limit, 1), "limit", "an integer >= 1", options.limit);
    return {k, maxAttempts, temperature, maxTokens};
}

function synthSettings(options: SynthesizeOptions): SynthSettings {
    const {k, maxAttempts, temperature, maxTokens} = resolveSynthOptions(options);
    const concurrency = positiveInt(options.concurrency ?? options.generator.concurrency, "concurrency");
    if (path.resolve(options.input) === path.resolve(options.output))
        throw new RangeError("the output must be a different file from the input");
    const generator = options.generator;
    const formatFor = (): PromptFormat => options.format === "json" || options.format === "lines" ? options.format
        : generator.structuredOutput === "none" ? "lines" : "json";
    return {k, maxAttempts, concurrency, temperature, maxTokens, generator, formatFor,
        baseSeed: options.seed ?? Math.floor(Math.random() * 2 ** 32)};
}

/**
 * One run over the parents: starts attempts up to the concurrency, records each outcome in the
 * store and keeps the counters (totals include earlier runs; *ThisRun counts this run only).
 */
class SynthesisRun {
    accepted: number;
    rejected: number;
    acceptedThisRun = 0;
    rejectedThisRun = 0;
    parentsDone = 0;
    shortfall = 0;
    parentsShort = 0;
    inFlight = 0;
    requests = 0;
    promptTokens = 0;
    completionTokens = 0;
    readonly reasons: Partial<Record<RejectionReason, number>>;
    readonly reasonsThisRun: Partial<Record<RejectionReason, number>> = {};
    readonly formats = new Set<string>();
    readonly acceptedBefore: number;
    readonly rejectedBefore: number;
    /** Accepted items counted towards the target: at most k per parent (an earlier run may have had a larger ratio). */
    readonly settledBefore: number;
    readonly running = new Set<Promise<void>>();
    fatal: unknown;

    constructor(private readonly options: SynthesizeOptions, private readonly s: SynthSettings, private readonly store: SyntheticStore,
        readonly states: ParentState[], private readonly seen: Set<string>, readonly stop: AbortController) {
        this.reasons = {...store.recovery.reasons};
        this.acceptedBefore = states.reduce((sum, p) => sum + p.accepted, 0);
        this.rejectedBefore = states.reduce((sum, p) => sum + p.used.size - p.accepted, 0);
        this.accepted = this.acceptedBefore;
        this.rejected = this.rejectedBefore;
        this.settledBefore = states.reduce((sum, p) => sum + Math.min(p.accepted, s.k), 0);
    }

    finishIfDone(p: ParentState): void {
        if (p.done || p.inFlight.size > 0)
            return;
        if (p.accepted >= this.s.k || p.used.size >= this.s.maxAttempts) {
            p.done = true;
            this.parentsDone++;
            if (p.accepted < this.s.k) {
                this.shortfall += this.s.k - p.accepted;
                this.parentsShort++;
            }
        }
    }

    progress(): void {
        this.options.onProgress?.({
            parents: this.states.length, parentsDone: this.parentsDone, target: this.states.length * this.s.k,
            settled: this.settledBefore + this.acceptedThisRun + this.shortfall, accepted: this.accepted, rejected: this.rejected,
            acceptedThisRun: this.acceptedThisRun, rejectedThisRun: this.rejectedThisRun, inFlight: this.inFlight,
        });
    }

    /** Keeps `concurrency` attempts running, parents in order, until every parent is done or the run stops. */
    async drive(): Promise<void> {
        let cursor = 0;
        for (;;) {
            if (!this.stop.signal.aborted) {
                while (cursor < this.states.length && this.states[cursor].done)
                    cursor++;
                for (let i = cursor; i < this.states.length && this.running.size < this.s.concurrency; i++)
                    while (this.running.size < this.s.concurrency && this.canStart(this.states[i]))
                        this.start(this.states[i]);
            }
            if (this.running.size === 0)
                break;
            await Promise.race(this.running);
        }
    }

    private canStart(p: ParentState): boolean {
        return !p.done && p.accepted + p.inFlight.size < this.s.k && p.used.size + p.inFlight.size < this.s.maxAttempts;
    }

    private start(p: ParentState): void {
        while (p.used.has(p.nextAttempt) || p.inFlight.has(p.nextAttempt))
            p.nextAttempt++;
        const attempt = p.nextAttempt++;
        p.inFlight.add(attempt);
        this.inFlight++;
        const format = this.s.formatFor();
        this.formats.add(promptVersion(format));
        const ctx: AttemptContext = {
            generator: this.s.generator, format, temperature: this.s.temperature, maxTokens: this.s.maxTokens, seen: this.seen,
            signal: this.stop.signal, seed: deriveSeed(this.s.baseSeed, p.item.id, attempt),
            onResult: (r) => {
                this.requests++;
                this.promptTokens += r.promptTokens;
                this.completionTokens += r.completionTokens;
            },
        };
        const task = this.attempt(p, attempt, ctx);
        this.running.add(task);
        task.finally(() => this.running.delete(task));
    }

    private setFatal(err: unknown): void {
        if (this.fatal === undefined && !this.stop.signal.aborted) {
            this.fatal = err;
            this.stop.abort(err);
        }
    }

    private async attempt(p: ParentState, attempt: number, ctx: AttemptContext): Promise<void> {
        // the attempt stays "in flight" until its outcome is on disk, so that no other
        // attempt of this parent starts on counts that are about to change
        try {
            let outcome: AttemptOutcome;
            try {
                outcome = await synthesizeOne(p.item, attempt, ctx);
            } catch (err) {
                this.setFatal(err);
                return;
            }
            if (this.stop.signal.aborted && !outcome.accepted && outcome.reason === "request-failed")
                return;  // possibly cut short by the stop, not a real outcome (finished ones are still kept)
            await this.record(p, attempt, outcome);
        } catch (err) {
            this.setFatal(err);  // a failed write: stop everything (the files hold whole lines only)
        } finally {
            p.inFlight.delete(attempt);
            this.inFlight--;
            this.finishIfDone(p);
            this.progress();
        }
    }

    private async record(p: ParentState, attempt: number, outcome: AttemptOutcome): Promise<void> {
        if (outcome.accepted) {
            await this.store.appendItem(outcome.item);
            p.accepted++;
            this.accepted++;
            this.acceptedThisRun++;
        } else {
            await this.store.appendRejection({parent_id: p.item.id, attempt, reason: outcome.reason, detail: outcome.detail,
                ...(outcome.question !== undefined ? {question: outcome.question} : {}),
                ...(outcome.votes !== undefined && outcome.votes.length > 0 ? {votes: outcome.votes} : {})});
            this.rejected++;
            this.rejectedThisRun++;
            this.reasons[outcome.reason] = (this.reasons[outcome.reason] ?? 0) + 1;
            this.reasonsThisRun[outcome.reason] = (this.reasonsThisRun[outcome.reason] ?? 0) + 1;
        }
        p.used.add(attempt);
    }

    summary(started: number): SynthSummary {
        const rec = this.store.recovery;
        return {
            input: this.options.input,
            output: this.options.output,
            journal: this.store.journal,
            generator: this.s.generator.name,
            promptVersions: [...this.formats].sort(),
            ratio: this.s.k,
            maxAttempts: this.s.maxAttempts,
            parents: this.states.length,
            target: this.states.length * this.s.k,
            accepted: this.accepted,
            rejected: this.rejected,
            acceptedThisRun: this.acceptedThisRun,
            rejectedThisRun: this.rejectedThisRun,
            reasons: this.reasons,
            reasonsThisRun: this.reasonsThisRun,
            parentsShort: this.parentsShort,
            resumed: {previousRuns: rec.runs, acceptedBefore: this.acceptedBefore, rejectedBefore: this.rejectedBefore,
                droppedTornLines: rec.droppedTornLines},
            requests: this.requests,
            promptTokens: this.promptTokens,
            completionTokens: this.completionTokens,
            seconds: (Date.now() - started) / 1000,
        };
    }
}

/**
 * Generates synthetic items for every perturbed item of `input` into `output`, resuming from what
 * earlier runs wrote. Throws on a fatal generator error (after recording everything finished so
 * far); the output then stays valid and a re-run continues.
 */
export async function synthesize(options: SynthesizeOptions): Promise<SynthSummary> {
    const started = Date.now();
    const settings = synthSettings(options);
    const parents = await readParents(options.input, options.limit);
    const store = await SyntheticStore.open(options.output);
    const rec = store.recovery;
    try {
        await store.appendRun({started: new Date(started).toISOString(), input: path.resolve(options.input), generator: settings.generator.name,
            prompt_version: promptVersion(settings.formatFor()), ratio: settings.k, max_attempts: settings.maxAttempts});
        const seen = new Set(rec.questionKeys);
        for (const p of parents)
            seen.add(questionKey(p.question));
        const states: ParentState[] = parents.map((item) => {
            const acc = rec.accepted.get(item.id) ?? new Set<number>();
            const rej = rec.rejected.get(item.id) ?? new Set<number>();
            const used = new Set([...acc, ...rej]);
            return {item, accepted: acc.size, used, inFlight: new Set(), nextAttempt: 0, done: false};
        });
        const stop = new AbortController();
        const run = new SynthesisRun(options, settings, store, states, seen, stop);
        states.forEach((p) => run.finishIfDone(p));
        const onAbort = () => stop.abort(options.signal!.reason);
        options.signal?.addEventListener("abort", onAbort, {once: true});
        if (options.signal?.aborted)
            onAbort();
        run.progress();
        try {
            await run.drive();
        } finally {
            options.signal?.removeEventListener("abort", onAbort);
        }
        if (run.fatal !== undefined)
            throw run.fatal;
        if (stop.signal.aborted)
            throw stop.signal.reason;
        run.progress();
        return run.summary(started);
    } finally {
        await store.close();
    }
}
