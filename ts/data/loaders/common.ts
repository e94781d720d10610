// Shared pieces of the dataset loaders: JSONL objects with file:line errors, field checks, and
// where the shared datasets live.
import path from "node:path";
import {fileURLToPath} from "node:url";
import {DataError, readJsonl} from "../jsonl.js";
import type {TaskChoice} from "../task-item.js";

export {DataError};

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");

/**
 * Folder of the original datasets: PPC_DATA_DIR, else PPC_SHARED_DIR/data, else ../shared/data
 * beside the package.
 */
export function defaultDataDir(): string {
    if (process.env.PPC_DATA_DIR)
        return path.resolve(process.env.PPC_DATA_DIR);
    if (process.env.PPC_SHARED_DIR)
        return path.resolve(process.env.PPC_SHARED_DIR, "data");
    return path.resolve(packageRoot, "..", "shared", "data");
}

/** Streams the JSON objects of a JSONL file; anything but an object is an error naming the line. */
export async function* readJsonlObjects(file: string): AsyncGenerator<{row: Record<string, unknown>; line: number}> {
    for await (const {value, line} of readJsonl(file)) {
        if (!value || typeof value !== "object" || Array.isArray(value))
            throw new DataError(file, line, "not a JSON object");
        yield {row: value as Record<string, unknown>, line};
    }
}

/** A string field, or a DataError naming the file, line and field. */
export function stringField(o: Record<string, unknown>, key: string, file: string, line: number, where = ""): string {
    const v = o[key];
    if (typeof v !== "string")
        throw new DataError(file, line, `"${where}${key}" must be a string${v === undefined ? " (missing)" : ""}`);
    return v;
}

export function objectField(o: Record<string, unknown>, key: string, file: string, line: number, where = ""): Record<string, unknown> {
    const v = o[key];
    if (!v || typeof v !== "object" || Array.isArray(v))
        throw new DataError(file, line, `"${where}${key}" must be an object${v === undefined ? " (missing)" : ""}`);
    return v as Record<string, unknown>;
}

/** `[{text, label}]` as ARC, OpenBookQA and CommonsenseQA write choices; labels must be unique. */
export function choicesField(q: Record<string, unknown>, file: string, line: number, where: string): TaskChoice[] {
    const raw = q.choices;
    if (!Array.isArray(raw) || raw.length === 0)
        throw new DataError(file, line, `"${where}choices" must be a non-empty array`);
    const seen = new Set<string>();
    return raw.map((c: unknown, i) => {
        if (!c || typeof c !== "object" || typeof (c as {label?: unknown}).label !== "string" ||
            typeof (c as {text?: unknown}).text !== "string")
            throw new DataError(file, line, `"${where}choices[${i}]" must be {"text": string, "label": string}`);
        const {label, text} = c as {label: string; text: string};
        if (label === "")
            throw new DataError(file, line, `"${where}choices[${i}].label" is empty`);
        if (seen.has(label))
            throw new DataError(file, line, `choice label "${label}" appears twice`);
        seen.add(label);
        return {label, text};
    });
}

/** Checks that `answer` is one of the choices' labels. */
export function checkAnswer(answer: string, choices: TaskChoice[], file: string, line: number, field = "answerKey"): string {
    if (!choices.some((c) => c.label === answer))
        throw new DataError(file, line, `"${field}" "${answer}" is not one of the choice labels (${choices.map((c) => c.label).join(", ")})`);
    return answer;
}
