// Prompt formats of the evaluation tasks, as lm-evaluation-harness defines them: for each item the
// context (doc_to_text), the choice strings (doc_to_choice), the gold index (doc_to_target) and the
// target delimiter put between context and choice. docs/eval.md documents each format.
import type {DatasetName} from "../data/loaders/index.js";
import {sentimentInstructions} from "../data/loaders/sentiment.js";
import type {TaskItem} from "../data/task-item.js";

export const evalTaskNames = ["arc-easy", "arc-challenge", "openbookqa", "commonsenseqa", "fiqa-sa", "financial-phrasebank", "mc"] as const;
export type EvalTaskName = typeof evalTaskNames[number];

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

export interface EvalTaskSpec {
    name: EvalTaskName;
    dataset: DatasetName;
    /** The lm-evaluation-harness task this one reproduces (or "-" for ours). */
    harnessTask: string;
    /** Metrics lm-evaluation-harness reports for the task (acc_norm is computed for every task). */
    harnessMetrics: ("acc" | "acc_norm")[];
    format(item: TaskItem): FormattedItem;
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

export const evalTasks: Record<EvalTaskName, EvalTaskSpec> = {
    "arc-easy": {name: "arc-easy", dataset: "arc-easy", harnessTask: "arc_easy", harnessMetrics: ["acc", "acc_norm"], format: questionAnswer},
    "arc-challenge": {name: "arc-challenge", dataset: "arc-challenge", harnessTask: "arc_challenge", harnessMetrics: ["acc", "acc_norm"], format: questionAnswer},
    openbookqa: {name: "openbookqa", dataset: "openbookqa", harnessTask: "openbookqa", harnessMetrics: ["acc", "acc_norm"], format: stemOnly},
    commonsenseqa: {name: "commonsenseqa", dataset: "commonsenseqa", harnessTask: "commonsense_qa", harnessMetrics: ["acc"], format: lettered},
    "fiqa-sa": {name: "fiqa-sa", dataset: "fiqa-sa", harnessTask: "-", harnessMetrics: ["acc", "acc_norm"], format: sentiment(sentimentInstructions.tweet)},
    "financial-phrasebank": {name: "financial-phrasebank", dataset: "financial-phrasebank", harnessTask: "-", harnessMetrics: ["acc", "acc_norm"], format: sentiment(sentimentInstructions.news)},
    mc: {name: "mc", dataset: "mc", harnessTask: "-", harnessMetrics: ["acc", "acc_norm"], format: questionAnswer},
};
