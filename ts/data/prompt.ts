// Prompt formats shared by every stage that turns a task item into model input: Block-Influence
// scoring, training (CoT distillation, "distilling step-by-step") and generation. The two tasks are
// marked by a prefix in the input, as the multi-task loss needs.
import type {TaskItem} from "./task-item.js";

/** Version of these formats; recorded in outputs so runs can be compared. */
export const promptFormatVersion = "ppc-1";

export const labelTaskPrefix = "[label] ";
export const rationaleTaskPrefix = "[rationale] ";

/** Question and lettered choices, the input part of every example. */
export function formatInput(item: TaskItem): string {
    return `${item.question.trim()}\nChoices:\n${item.choices.map((c) => `(${c.label}) ${c.text.trim()}`).join("\n")}`;
}

export interface PromptExample {
    /** Model input, ending where the target starts. */
    prompt: string;
    /** The text the model should produce. */
    target: string;
}

/** Task A: predict the label. */
export function labelExample(item: TaskItem): PromptExample {
    if (item.answer === undefined)
        throw new Error(`item ${item.id} has no answer`);
    return {prompt: `${labelTaskPrefix}${formatInput(item)}\nAnswer:`, target: ` ${item.answer}`};
}

/** Task B: generate the rationale. */
export function rationaleExample(item: TaskItem): PromptExample {
    if (item.rationale === undefined)
        throw new Error(`item ${item.id} has no rationale`);
    return {prompt: `${rationaleTaskPrefix}${formatInput(item)}\nExplanation:`, target: ` ${item.rationale.trim()}`};
}
