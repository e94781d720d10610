// Prompt formats of the evaluation tasks, as lm-evaluation-harness defines them: for each item the
// context (doc_to_text), the choice strings (doc_to_choice), the gold index (doc_to_target) and the
// target delimiter put between context and choice. docs/eval.md documents each format.
import type {DatasetName} from "../data/loaders/index.js";
import {taskFormatNames, taskFormats, type FormattedItem, type TaskFormatName} from "../data/prompt.js";
import type {TaskItem} from "../data/task-item.js";

// The formats live in ts/data/prompt.ts, where training takes them too (one format per task).
export const evalTaskNames = taskFormatNames;
export type EvalTaskName = TaskFormatName;

export type {FormattedItem};

export interface EvalTaskSpec {
    name: EvalTaskName;
    dataset: DatasetName;
    /** The lm-evaluation-harness task this one reproduces (or "-" for ours). */
    harnessTask: string;
    /** Metrics lm-evaluation-harness reports for the task (acc_norm is computed for every task). */
    harnessMetrics: ("acc" | "acc_norm")[];
    format(item: TaskItem): FormattedItem;
}

export const evalTasks: Record<EvalTaskName, EvalTaskSpec> = {
    "arc-easy": {name: "arc-easy", dataset: "arc-easy", harnessTask: "arc_easy", harnessMetrics: ["acc", "acc_norm"], format: taskFormats["arc-easy"]},
    "arc-challenge": {name: "arc-challenge", dataset: "arc-challenge", harnessTask: "arc_challenge", harnessMetrics: ["acc", "acc_norm"], format: taskFormats["arc-challenge"]},
    openbookqa: {name: "openbookqa", dataset: "openbookqa", harnessTask: "openbookqa", harnessMetrics: ["acc", "acc_norm"], format: taskFormats.openbookqa},
    commonsenseqa: {name: "commonsenseqa", dataset: "commonsenseqa", harnessTask: "commonsense_qa", harnessMetrics: ["acc"], format: taskFormats.commonsenseqa},
    "fiqa-sa": {name: "fiqa-sa", dataset: "fiqa-sa", harnessTask: "-", harnessMetrics: ["acc", "acc_norm"], format: taskFormats["fiqa-sa"]},
    "financial-phrasebank": {name: "financial-phrasebank", dataset: "financial-phrasebank", harnessTask: "-", harnessMetrics: ["acc", "acc_norm"], format: taskFormats["financial-phrasebank"]},
    mc: {name: "mc", dataset: "mc", harnessTask: "-", harnessMetrics: ["acc", "acc_norm"], format: taskFormats.mc},
};
