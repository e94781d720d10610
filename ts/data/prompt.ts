// Prompt formats shared by every stage that turns a task item into model input: evaluation,
// Block-Influence scoring, training (CoT distillation, "distilling step-by-step") and generation.
// One format per task: the label example's target is exactly what the task's evaluation scores
// (the gold continuation after the task's context, as lm-evaluation-harness formats it), so that
// training optimises what evaluation measures. The two training tasks are told apart by a prefix
// in front of the same context; the label prefix is recorded in the trained adapter (and the model
// after merging) and `eval` puts it in front of every context.
import {readGguf} from "../gguf/read.js";
import {sentimentInstructions} from "./loaders/sentiment.js";
import type {TaskItem} from "./task-item.js";

/** Version of these formats; recorded in outputs so runs can be compared. */
export const promptFormatVersion = "ppc-2";

export const labelTaskPrefix = "[label] ";
export const rationaleTaskPrefix = "[rationale] ";

/** The task formats: one per evaluation task (ts/eval/tasks.ts), named as the task. */
export const taskFormatNames = ["arc-easy", "arc-challenge", "openbookqa", "commonsenseqa", "fiqa-sa", "financial-phrasebank", "mc"] as const;
export type TaskFormatName = typeof taskFormatNames[number];
export const defaultTaskFormat: TaskFormatName = "mc";

/** One multiple-choice request: the harness scores `context` + `delimiter + choices[i]` for each i. */
export interface FormattedItem {
    context: string;
    /** doc_to_choice: the choice strings, without the delimiter (acc_norm divides by their length). */
    choices: string[];
    /** Put between the context and each choice (" " for every task here). */
    delimiter: string;
    /** Index of the correct choice; undefined for unlabelled items. */
    gold: number | undefined;
}

function goldIndex(item: TaskItem): number | undefined {
    if (item.answer === undefined)
        return undefined;
    const i = item.choices.findIndex((c) => c.label === item.answer);
    if (i < 0)
        throw new Error(`item ${item.id}: answer "${item.answer}" is not one of the choice labels`);
    return i;
}

/** "Question: {question}\nAnswer:" + " {choice text}" (arc_easy, arc_challenge; our `mc`). */
function questionAnswer(item: TaskItem): FormattedItem {
    return {context: `Question: ${item.question}\nAnswer:`, choices: item.choices.map((c) => c.text), delimiter: " ", gold: goldIndex(item)};
}

/** openbookqa: the question stem alone as context, " {choice text}" continuations. */
function stemOnly(item: TaskItem): FormattedItem {
    return {context: item.question, choices: item.choices.map((c) => c.text), delimiter: " ", gold: goldIndex(item)};
}

/** commonsense_qa: the choices listed as "A. text" lines; the continuations are the letters. */
function lettered(item: TaskItem): FormattedItem {
    const lines = item.choices.map((c) => `${c.label}. ${c.text}`).join("\n");
    return {context: `Question: ${item.question.trim()}\n${lines}\nAnswer:`, choices: item.choices.map((c) => c.label), delimiter: " ", gold: goldIndex(item)};
}

/** FinLoRA's sentiment prompt; the continuations are the class names. */
function sentiment(fallback: string) {
    return (item: TaskItem): FormattedItem => {
        const instruction = typeof item.source?.instruction === "string" ? item.source.instruction : fallback;
        return {
            context: `Instruction: ${instruction}\nInput: ${item.question}\nAnswer:`,
            choices: item.choices.map((c) => c.text),
            delimiter: " ",
            gold: goldIndex(item),
        };
    };
}

/** Each task's context and continuations (docs/eval.md shows them). */
export const taskFormats: Record<TaskFormatName, (item: TaskItem) => FormattedItem> = {
    "arc-easy": questionAnswer,
    "arc-challenge": questionAnswer,
    openbookqa: stemOnly,
    commonsenseqa: lettered,
    "fiqa-sa": sentiment(sentimentInstructions.tweet),
    "financial-phrasebank": sentiment(sentimentInstructions.news),
    mc: questionAnswer,
};

/** Formats an item in a task's format; throws on an unknown format name. */
export function formatItem(item: TaskItem, format: TaskFormatName = defaultTaskFormat): FormattedItem {
    const f = taskFormats[format];
    if (!f)
        throw new Error(`unknown task format "${format}"; formats: ${taskFormatNames.join(", ")}`);
    return f(item);
}

/** Question and lettered choices (the synthetic-data prompts show items this way). */
export function formatInput(item: TaskItem): string {
    return `${item.question.trim()}\nChoices:\n${item.choices.map((c) => `(${c.label}) ${c.text.trim()}`).join("\n")}`;
}

export interface PromptExample {
    /** Model input, ending where the target starts. */
    prompt: string;
    /** The text the model should produce. */
    target: string;
}

export interface PromptOptions {
    /** The task whose format the examples take (default "mc"). */
    format?: TaskFormatName;
    /** Put before the context of label examples (default "[label] "; "" for none). */
    labelPrefix?: string;
    /** Put before the context of rationale examples (default "[rationale] "). */
    rationalePrefix?: string;
}

/** Task A: the gold continuation the task's evaluation scores, after the task's context. */
export function labelExample(item: TaskItem, options: PromptOptions = {}): PromptExample {
    if (item.answer === undefined)
        throw new Error(`item ${item.id} has no answer`);
    const f = formatItem(item, options.format);
    return {prompt: `${options.labelPrefix ?? labelTaskPrefix}${f.context}`, target: `${f.delimiter}${f.choices[f.gold!]}`};
}

/** Task B: the rationale, after the same context under the rationale prefix. */
export function rationaleExample(item: TaskItem, options: PromptOptions = {}): PromptExample {
    if (item.rationale === undefined)
        throw new Error(`item ${item.id} has no rationale`);
    const f = formatItem(item, options.format);
    return {prompt: `${options.rationalePrefix ?? rationaleTaskPrefix}${f.context}`, target: ` ${item.rationale.trim()}`};
}

/** GGUF metadata keys that record the prompt a model or adapter was trained with. */
export const promptMetadataKeys = {
    version: "ppc_gpt.prompt.version",
    format: "ppc_gpt.prompt.format",
    labelPrefix: "ppc_gpt.prompt.label_prefix",
} as const;

export interface PromptRecord {
    version?: string;
    format?: string;
    labelPrefix?: string;
}

/** The prompt record in a GGUF file's metadata (fields absent where the file records none). */
export async function readPromptRecord(file: string): Promise<PromptRecord> {
    const g = await readGguf(file, {maxArrayValues: 0});
    const str = (key: string) => {
        const v = g.value(key);
        return typeof v === "string" ? v : undefined;
    };
    return {version: str(promptMetadataKeys.version), format: str(promptMetadataKeys.format), labelPrefix: str(promptMetadataKeys.labelPrefix)};
}

/**
 * The label prefix evaluation puts before every context: the one recorded by the adapters (the
 * model's when no adapter records one); "" when none is recorded. Adapters that disagree are an error.
 */
export async function recordedLabelPrefix(model: string, adapters: string[] = []): Promise<string> {
    // a file that cannot be read records nothing here: loading it reports the problem properly
    const record = (file: string) => readPromptRecord(file).catch((): PromptRecord => ({}));
    let prefix = (await record(model)).labelPrefix;
    let from: string | undefined;
    for (const a of adapters) {
        const p = (await record(a)).labelPrefix;
        if (p === undefined)
            continue;
        if (from !== undefined && p !== prefix)
            throw new Error(`the adapters ${from} and ${a} were trained with different label prefixes ` +
                `(${JSON.stringify(prefix)} and ${JSON.stringify(p)}); give the prefix to use (--prompt-prefix)`);
        prefix = p;
        from = a;
    }
    return prefix ?? "";
}
