// JSON Lines in and out: errors name the file and line; whole-file writes are atomic; appends
// (for resumable jobs) write whole lines only, and a torn last line is detected on reading.
import fs from "node:fs";
import readline from "node:readline";
import {taskItemProblem, type TaskItem} from "./task-item.js";
import {writeFileDurableWith} from "../durable-file.js";

/** A bad input data file, with the file and (1-based) line it concerns. */
export class DataError extends Error {
    override name = "DataError";
    constructor(readonly file: string, readonly line: number | undefined, message: string) {
        super(`${file}${line !== undefined ? `:${line}` : ""}: ${message}`);
    }
}

/** Streams the JSON values of a JSONL file; blank lines are skipped. */
export async function* readJsonl(file: string): AsyncGenerator<{value: unknown; line: number}> {
    let stream: fs.ReadStream;
    try {
        await fs.promises.access(file, fs.constants.R_OK);
        if ((await fs.promises.stat(file)).isDirectory())
            throw new Error("it is a folder, not a file");
        stream = fs.createReadStream(file, {encoding: "utf8"});
    } catch (err) {
        throw new DataError(file, undefined, `cannot read: ${(err as Error).message}`);
    }
    const lines = readline.createInterface({input: stream, crlfDelay: Infinity});
    let n = 0;
    for await (const line of lines) {
        n++;
        // a UTF-8 byte order mark (files saved by Windows tools) is not part of the first value
        const text = n === 1 && line.charCodeAt(0) === 0xfeff ? line.slice(1) : line;
        if (text.trim() === "")
            continue;
        let value: unknown;
        try {
            value = JSON.parse(text);
        } catch (err) {
            throw new DataError(file, n, `not valid JSON (${(err as Error).message})`);
        }
        yield {value, line: n};
    }
}

/** Reads a whole JSONL file of task items, validating each line. */
export async function readTaskItems(file: string): Promise<TaskItem[]> {
    const items: TaskItem[] = [];
    for await (const {value, line} of readJsonl(file)) {
        const problem = taskItemProblem(value);
        if (problem)
            throw new DataError(file, line, problem);
        items.push(value as TaskItem);
    }
    return items;
}

/** Writes values as JSONL atomically and durably (durable-file.ts), streamed in 1 MiB chunks. */
export async function writeJsonlAtomic(file: string, values: Iterable<unknown>): Promise<void> {
    await writeFileDurableWith(file, async (fh) => {
        let chunk = "";
        for (const v of values) {
            chunk += JSON.stringify(v) + "\n";
            if (chunk.length > 1 << 20) {
                await fh.write(chunk);
                chunk = "";
            }
        }
        if (chunk)
            await fh.write(chunk);
    });
}
