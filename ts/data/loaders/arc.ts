// AI2 ARC (Easy / Challenge) and OpenBookQA: `{id, question: {stem, choices: [{text, label}]}, answerKey}`
// per line. ARC has 3 to 5 choices and sometimes numeric labels "1".."4", kept as they are.
// OpenBookQA's extra fields (fact1, humanScore, clarity… in additional_*_complete.jsonl) go to `source`.
import type {TaskItem} from "../task-item.js";
import {checkAnswer, choicesField, DataError, objectField, readJsonlObjects, stringField} from "./common.js";

export interface Ai2LoadOptions {
    /** Dataset name recorded in `source.dataset`. */
    dataset: string;
    /** Items without `answerKey` are allowed (test files without answers). Default false. */
    allowUnlabelled?: boolean;
    /** Strip leading whitespace of `answerKey`, as lm-evaluation-harness does for OpenBookQA. */
    lstripAnswerKey?: boolean;
    /** Extra top-level fields copied into `source` (e.g. "fact1"). */
    extraFields?: string[];
}

/** Reads a file in the ARC / OpenBookQA / CommonsenseQA layout into task items. */
export async function loadAi2Jsonl(file: string, options: Ai2LoadOptions): Promise<TaskItem[]> {
    const items: TaskItem[] = [];
    const ids = new Set<string>();
    for await (const {row, line} of readJsonlObjects(file)) {
        const id = stringField(row, "id", file, line);
        if (id === "")
            throw new DataError(file, line, "\"id\" is empty");
        if (ids.has(id))
            throw new DataError(file, line, `id "${id}" appears twice`);
        ids.add(id);
        const q = objectField(row, "question", file, line);
        const question = stringField(q, "stem", file, line, "question.");
        const choices = choicesField(q, file, line, "question.");
        const source: Record<string, unknown> = {dataset: options.dataset, file, line};
        if (typeof q.question_concept === "string")
            source.question_concept = q.question_concept;
        for (const key of options.extraFields ?? []) {
            if (row[key] !== undefined)
                source[key] = row[key];
        }
        const item: TaskItem = {id, question, choices, source};
        if (row.answerKey === undefined || row.answerKey === null || row.answerKey === "") {
            if (!options.allowUnlabelled)
                throw new DataError(file, line, "\"answerKey\" is missing");
        } else {
            let key = stringField(row, "answerKey", file, line);
            if (options.lstripAnswerKey)
                key = key.trimStart();
            item.answer = checkAnswer(key, choices, file, line);
        }
        items.push(item);
    }
    return items;
}

/** ARC-Easy / ARC-Challenge (`ARC-{Easy,Challenge}-{Train,Dev,Test}.jsonl`). */
export function loadArc(file: string, dataset: "arc-easy" | "arc-challenge" = "arc-easy"): Promise<TaskItem[]> {
    return loadAi2Jsonl(file, {dataset});
}

/** OpenBookQA (`OpenBookQA_train.jsonl`, `dev.jsonl`, `test.jsonl`, `additional_*_complete.jsonl`). */
export function loadOpenBookQa(file: string): Promise<TaskItem[]> {
    return loadAi2Jsonl(file, {
        dataset: "openbookqa",
        lstripAnswerKey: true,
        extraFields: ["fact1", "humanScore", "clarity", "turkIdAnonymized"],
    });
}

/** CommonsenseQA (`train.jsonl`, `valid.jsonl`, and `test.jsonl` whose items have no answer). */
export function loadCommonsenseQa(file: string): Promise<TaskItem[]> {
    return loadAi2Jsonl(file, {dataset: "commonsenseqa", allowUnlabelled: true});
}
