// Training examples from task items (CoT distillation, "distilling step-by-step"): each item gives
// a label example (the gold continuation the task's evaluation scores, after the task's context)
// and, for the cot task, a rationale example, each marked by its task prefix (ts/data/prompt.ts). Tokenization matches the evaluation's (lm-evaluation-harness _encode_pair):
// the target's tokens are those of prompt + target after the prompt's own tokens.
import type {TaskItem} from "../data/task-item.js";
import {labelExample, rationaleExample, type PromptExample, type PromptOptions} from "../data/prompt.js";
import type {LoadedModel} from "../model.js";
import {native} from "../native.js";

export type TrainTask = "cot" | "label";
export type ExampleKind = "label" | "rationale";

/** A task item with an optional loss weight (an item's `weight` field in JSONL; default 1). */
export interface WeightedItem {
    item: TaskItem;
    weight: number;
}

export interface EncodedExample {
    /** Index of the item in the training set. */
    item: number;
    kind: ExampleKind;
    /** Prompt tokens (BOS first when the model adds one), truncated to the input length. */
    prompt: Int32Array;
    /** Target tokens (EOS last unless truncated away). */
    target: Int32Array;
    /** Per-example weight (the item's). */
    weight: number;
}

export interface EncodeOptions extends PromptOptions {
    task: TrainTask;
    /** Prompt tokens kept, at most (paper: 64). Longer prompts lose their middle. */
    maxInputLength: number;
    /** Target tokens kept, at most (paper: 128), EOS included. */
    maxTargetLength: number;
    /** Append EOS to every target so the model learns to stop (default true). */
    appendEos?: boolean;
}

/** The examples an item yields for a task; throws naming the item when it lacks what the task needs. */
export function itemExamples(item: TaskItem, task: TrainTask, prompt: PromptOptions = {}): {kind: ExampleKind; example: PromptExample}[] {
    if (item.answer === undefined)
        throw new Error(`item "${item.id}" has no answer; training needs labelled items`);
    const out: {kind: ExampleKind; example: PromptExample}[] = [{kind: "label", example: labelExample(item, prompt)}];
    if (task === "cot") {
        if (item.rationale === undefined || item.rationale.trim() === "")
            throw new Error(`item "${item.id}" has no rationale; --task cot needs one per item (or use --task label)`);
        out.push({kind: "rationale", example: rationaleExample(item, prompt)});
    }
    return out;
}

/** Tokenizes examples for training. */
export class ExampleEncoder {
    private readonly bos: number;
    private readonly eos: number;
    private readonly addBos: boolean;

    constructor(private readonly model: LoadedModel, private readonly options: EncodeOptions) {
        if (!Number.isInteger(options.maxInputLength) || options.maxInputLength < 1)
            throw new RangeError(`maxInputLength must be a positive integer (got ${options.maxInputLength})`);
        if (!Number.isInteger(options.maxTargetLength) || options.maxTargetLength < 1)
            throw new RangeError(`maxTargetLength must be a positive integer (got ${options.maxTargetLength})`);
        const info = native().modelVocabInfo(model.handle);
        this.bos = info.bos;
        this.eos = info.eos;
        this.addBos = info.addBos && info.bos >= 0;
    }

    private tokens(text: string): number[] {
        const t = Array.from(this.model.tokenize(text, {addSpecial: false, parseSpecial: false}));
        return this.addBos ? [this.bos, ...t] : t;
    }

    encode(ex: PromptExample): {prompt: Int32Array; target: Int32Array} {
        // the harness moves the prompt's trailing whitespace to the target
        let prompt = ex.prompt, target = ex.target;
        const stripped = prompt.replace(/\s+$/u, "");
        if (stripped.length < prompt.length) {
            target = prompt.slice(stripped.length) + target;
            prompt = stripped;
        }
        const whole = this.tokens(prompt + target);
        let p = this.tokens(prompt);
        let t = whole.slice(p.length);
        if (t.length === 0)
            throw new Error(`the target ${JSON.stringify(ex.target)} has no tokens of its own after the prompt`);
        if (this.options.appendEos !== false && this.eos >= 0)
            t.push(this.eos);
        const maxIn = this.options.maxInputLength;
        if (p.length > maxIn) {
            // keep the head (BOS, task prefix, start of the question) and the tail (the answer cue)
            const head = Math.max(1, Math.floor(maxIn / 4));
            p = [...p.slice(0, head), ...p.slice(p.length - (maxIn - head))];
        }
        if (t.length > this.options.maxTargetLength)
            t = t.slice(0, this.options.maxTargetLength);
        return {prompt: Int32Array.from(p), target: Int32Array.from(t)};
    }

    /** Every example of every item, in item order (label first). */
    encodeItems(items: WeightedItem[]): EncodedExample[] {
        const out: EncodedExample[] = [];
        items.forEach(({item, weight}, i) => {
            const prompt = {format: this.options.format, labelPrefix: this.options.labelPrefix, rationalePrefix: this.options.rationalePrefix};
            for (const {kind, example} of itemExamples(item, this.options.task, prompt)) {
                const {prompt, target} = this.encode(example);
                out.push({item: i, kind, prompt, target, weight});
            }
        });
        return out;
    }
}

/** Sequences packed into one native training call (several sequences per llama.cpp batch). */
export interface MicroBatch {
    tokens: Int32Array;
    positions: Int32Array;
    seqIds: Int32Array;
    /** Next-token target per position; -1 where no loss is taken (the prompt). */
    targets: Int32Array;
    /** Loss weight per position. */
    weights: Float32Array;
}

/** Tokens an example occupies: prompt and target, less the last target token (only ever a label). */
export function exampleLength(ex: EncodedExample): number {
    return ex.prompt.length + ex.target.length - 1;
}

/**
 * Packs examples into micro-batches of at most `maxTokens` tokens and `maxSequences` sequences
 * (first fit, longest first). `tokenWeight[i]` weights every target token of examples[i].
 */
export function packMicroBatches(examples: EncodedExample[], tokenWeight: number[], maxTokens: number,
    maxSequences: number): MicroBatch[] {
    const order = examples.map((_, i) => i).sort((a, b) => exampleLength(examples[b]) - exampleLength(examples[a]) || a - b);
    const bins: {members: number[]; tokens: number}[] = [];
    for (const i of order) {
        const n = exampleLength(examples[i]);
        if (n > maxTokens)
            throw new Error(`an example of ${n} tokens does not fit a micro-batch of ${maxTokens} tokens; raise the micro-batch size`);
        const bin = bins.find((b) => b.tokens + n <= maxTokens && b.members.length < maxSequences);
        if (bin) {
            bin.members.push(i);
            bin.tokens += n;
        } else {
            bins.push({members: [i], tokens: n});
        }
    }
    return bins.map((bin) => {
        const mb: MicroBatch = {
            tokens: new Int32Array(bin.tokens),
            positions: new Int32Array(bin.tokens),
            seqIds: new Int32Array(bin.tokens),
            targets: new Int32Array(bin.tokens).fill(-1),
            weights: new Float32Array(bin.tokens),
        };
        let at = 0;
        bin.members.forEach((i, seq) => {
            const ex = examples[i];
            const P = ex.prompt.length, L = exampleLength(ex);
            for (let k = 0; k < L; k++) {
                mb.tokens[at + k] = k < P ? ex.prompt[k] : ex.target[k - P];
                mb.positions[at + k] = k;
                mb.seqIds[at + k] = seq;
                // position k predicts token k + 1; the loss counts where that token is a target
                if (k + 1 >= P) {
                    mb.targets[at + k] = ex.target[k + 1 - P];
                    mb.weights[at + k] = tokenWeight[i];
                }
            }
            at += L;
        });
        return mb;
    });
}

/**
 * Token weights of one optimizer step: L = sum over tasks of taskWeight * (mean target-token
 * cross-entropy of the task over the step's examples), each example's tokens also scaled by its
 * item's weight. So the cot task gives L_label + lambda * L_rationale.
 */
export function stepTokenWeights(examples: EncodedExample[], taskWeight: Record<ExampleKind, number>): number[] {
    const count: Record<ExampleKind, number> = {label: 0, rationale: 0};
    for (const ex of examples)
        count[ex.kind] += ex.target.length;
    return examples.map((ex) => taskWeight[ex.kind] * ex.weight / count[ex.kind]);
}
