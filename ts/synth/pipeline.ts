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

/**
 * Generates synthetic items for every perturbed item of `input` into `output`, resuming from what
 * earlier runs wrote. Throws on a fatal generator error (after recording everything finished so
 * far); the output then stays valid and a re-run continues.
 */
export async function synthesize(options: SynthesizeOptions): Promise<SynthSummary> {
    const started = Date.now();
    const k = positiveInt(options.ratio ?? synthDefaults.ratio, "ratio");
    const maxAttempts = positiveInt(options.maxAttempts ?? 2 * k, "maxAttempts");
    if (maxAttempts < k)
        throw new RangeError(`maxAttempts (${maxAttempts}) must be at least the ratio (${k})`);
    const concurrency = positiveInt(options.concurrency ?? options.generator.concurrency, "concurrency");
    const temperature = {...defaultTemperatures, ...options.temperature};
    if (!(temperature.answer > 0))
        throw new RangeError(`the answer temperature must be > 0 so that the three votes are independent samples (got ${temperature.answer})`);
    const maxTokens = {...defaultMaxTokens, ...options.maxTokens};
    if (path.resolve(options.input) === path.resolve(options.output))
        throw new RangeError("the output must be a different file from the input");
    const parents = await readParents(options.input, options.limit);
    const baseSeed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
    const generator = options.generator;
    const formatFor = (): PromptFormat => options.format === "json" || options.format === "lines" ? options.format
        : generator.structuredOutput === "none" ? "lines" : "json";

    const store = await SyntheticStore.open(options.output);
    const rec = store.recovery;
    try {
        await store.appendRun({started: new Date(started).toISOString(), input: path.resolve(options.input), generator: generator.name,
            prompt_version: promptVersion(formatFor()), ratio: k, max_attempts: maxAttempts});
        const seen = new Set(rec.questionKeys);
        for (const p of parents)
            seen.add(questionKey(p.question));
        const states: ParentState[] = parents.map((item) => {
            const acc = rec.accepted.get(item.id) ?? new Set<number>();
            const rej = rec.rejected.get(item.id) ?? new Set<number>();
            const used = new Set([...acc, ...rej]);
            return {item, accepted: acc.size, used, inFlight: new Set(), nextAttempt: 0, done: false};
        });
        const reasons: Partial<Record<RejectionReason, number>> = {...rec.reasons};
        const reasonsThisRun: Partial<Record<RejectionReason, number>> = {};
        const formats = new Set<string>();
        let acceptedThisRun = 0, rejectedThisRun = 0, parentsDone = 0, shortfall = 0, parentsShort = 0, inFlight = 0;
        let requests = 0, promptTokens = 0, completionTokens = 0;
        const acceptedBefore = states.reduce((s, p) => s + p.accepted, 0);
        const rejectedBefore = states.reduce((s, p) => s + p.used.size - p.accepted, 0);
        let accepted = acceptedBefore, rejected = rejectedBefore;
        // accepted items counted towards the target: at most k per parent (an earlier run may have had a larger ratio)
        const settledBefore = states.reduce((s, p) => s + Math.min(p.accepted, k), 0);

        const finishIfDone = (p: ParentState) => {
            if (p.done || p.inFlight.size > 0)
                return;
            if (p.accepted >= k || p.used.size >= maxAttempts) {
                p.done = true;
                parentsDone++;
                if (p.accepted < k) {
                    shortfall += k - p.accepted;
                    parentsShort++;
                }
            }
        };
        states.forEach(finishIfDone);
        const progress = () => options.onProgress?.({
            parents: states.length, parentsDone, target: states.length * k,
            settled: settledBefore + acceptedThisRun + shortfall, accepted, rejected, acceptedThisRun, rejectedThisRun, inFlight,
        });

        const stop = new AbortController();
        const onAbort = () => stop.abort(options.signal!.reason);
        options.signal?.addEventListener("abort", onAbort, {once: true});
        if (options.signal?.aborted)
            onAbort();
        let fatal: unknown;

        const canStart = (p: ParentState) => !p.done && p.accepted + p.inFlight.size < k && p.used.size + p.inFlight.size < maxAttempts;
        const running = new Set<Promise<void>>();
        const start = (p: ParentState) => {
            while (p.used.has(p.nextAttempt) || p.inFlight.has(p.nextAttempt))
                p.nextAttempt++;
            const attempt = p.nextAttempt++;
            p.inFlight.add(attempt);
            inFlight++;
            const format = formatFor();
            formats.add(promptVersion(format));
            const ctx: AttemptContext = {
                generator, format, temperature, maxTokens, seen, signal: stop.signal,
                seed: deriveSeed(baseSeed, p.item.id, attempt),
                onResult: (r) => {
                    requests++;
                    promptTokens += r.promptTokens;
                    completionTokens += r.completionTokens;
                },
            };
            const setFatal = (err: unknown) => {
                if (fatal === undefined && !stop.signal.aborted) {
                    fatal = err;
                    stop.abort(err);
                }
            };
            const task = (async () => {
                // the attempt stays "in flight" until its outcome is on disk, so that no other
                // attempt of this parent starts on counts that are about to change
                try {
                    let outcome: AttemptOutcome;
                    try {
                        outcome = await synthesizeOne(p.item, attempt, ctx);
                    } catch (err) {
                        setFatal(err);
                        return;
                    }
                    if (stop.signal.aborted && !outcome.accepted && outcome.reason === "request-failed")
                        return;  // possibly cut short by the stop, not a real outcome (finished ones are still kept)
                    if (outcome.accepted) {
                        await store.appendItem(outcome.item);
                        p.accepted++;
                        accepted++;
                        acceptedThisRun++;
                    } else {
                        await store.appendRejection({parent_id: p.item.id, attempt, reason: outcome.reason, detail: outcome.detail,
                            ...(outcome.question !== undefined ? {question: outcome.question} : {}),
                            ...(outcome.votes !== undefined && outcome.votes.length > 0 ? {votes: outcome.votes} : {})});
                        rejected++;
                        rejectedThisRun++;
                        reasons[outcome.reason] = (reasons[outcome.reason] ?? 0) + 1;
                        reasonsThisRun[outcome.reason] = (reasonsThisRun[outcome.reason] ?? 0) + 1;
                    }
                    p.used.add(attempt);
                } catch (err) {
                    setFatal(err);  // a failed write: stop everything (the files hold whole lines only)
                } finally {
                    p.inFlight.delete(attempt);
                    inFlight--;
                    finishIfDone(p);
                    progress();
                }
            })();
            running.add(task);
            task.finally(() => running.delete(task));
        };

        progress();
        let cursor = 0;
        try {
            for (;;) {
                if (!stop.signal.aborted) {
                    while (cursor < states.length && states[cursor].done)
                        cursor++;
                    for (let i = cursor; i < states.length && running.size < concurrency; i++)
                        while (running.size < concurrency && canStart(states[i]))
                            start(states[i]);
                }
                if (running.size === 0)
                    break;
                await Promise.race(running);
            }
        } finally {
            options.signal?.removeEventListener("abort", onAbort);
        }
        if (fatal !== undefined)
            throw fatal;
        if (stop.signal.aborted)
            throw stop.signal.reason;
        progress();

        return {
            input: options.input,
            output: options.output,
            journal: store.journal,
            generator: generator.name,
            promptVersions: [...formats].sort(),
            ratio: k,
            maxAttempts,
            parents: states.length,
            target: states.length * k,
            accepted,
            rejected,
            acceptedThisRun,
            rejectedThisRun,
            reasons,
            reasonsThisRun,
            parentsShort,
            resumed: {previousRuns: rec.runs, acceptedBefore, rejectedBefore, droppedTornLines: rec.droppedTornLines},
            requests,
            promptTokens,
            completionTokens,
            seconds: (Date.now() - started) / 1000,
        };
    } finally {
        await store.close();
    }
}
