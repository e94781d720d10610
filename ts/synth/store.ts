// Resumable output of the synthetic-data run. The output JSONL holds the accepted items; a journal
// beside it (<out>.journal) holds one line per rejected attempt and per run. Both are only ever
// appended to, one whole line per write followed by fsync, so a killed run leaves at most a torn
// last line, which the next run detects and cuts off. The output is the record of accepted
// attempts (each item carries its attempt number in source.attempt), the journal of rejected
// ones: a re-run skips every attempt recorded in either and never writes an item twice.
// A lock file (<out>.lock, holding the pid) keeps two runs off the same output.
import fs from "node:fs";
import path from "node:path";
import {DataError} from "../data/jsonl.js";
import type {SyntheticItem} from "../data/task-item.js";
import {questionKey, type RejectionReason} from "./validate.js";

export interface RejectionRecord {
    type: "rejected";
    parent_id: string;
    attempt: number;
    reason: RejectionReason;
    detail: string;
    /** The generated question, when the attempt got that far (for inspection). */
    question?: string;
    votes?: string[];
}

export interface RunRecord {
    type: "run";
    started: string;
    input: string;
    generator: string;
    prompt_version: string;
    ratio: number;
    max_attempts: number;
}

export type JournalRecord = RejectionRecord | RunRecord;

/** What earlier runs left: attempts done per parent, questions already used, reasons counted. */
export interface StoreRecovery {
    /** Attempt numbers with an accepted item, per parent id. */
    accepted: Map<string, Set<number>>;
    /** Attempt numbers rejected, per parent id. */
    rejected: Map<string, Set<number>>;
    /** Duplicate keys of the questions of every accepted item. */
    questionKeys: Set<string>;
    acceptedItems: number;
    rejectedAttempts: number;
    reasons: Partial<Record<RejectionReason, number>>;
    /** Files whose torn last line (from a killed run) was cut off. */
    droppedTornLines: string[];
    runs: number;
}

export function journalPath(output: string): string {
    return `${output}.journal`;
}

export function lockPath(output: string): string {
    return `${output}.lock`;
}

function processAlive(pid: number): boolean {
    try {
        process.kill(pid, 0);
        return true;
    } catch (err) {
        return (err as NodeJS.ErrnoException).code === "EPERM";
    }
}

/** Takes <out>.lock; a lock left by a dead process is taken over. */
async function takeLock(file: string): Promise<void> {
    for (let tries = 0; tries < 3; tries++) {
        try {
            await fs.promises.writeFile(file, `${process.pid}\n`, {flag: "wx"});
            return;
        } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== "EEXIST")
                throw new Error(`${file}: cannot create the lock file: ${(err as Error).message}`);
        }
        const pid = Number((await fs.promises.readFile(file, "utf8").catch(() => "")).trim());
        if (Number.isInteger(pid) && pid > 0 && processAlive(pid))
            throw new Error(`${file}: another run (pid ${pid}) is writing this output; wait for it to finish, ` +
                `or delete the lock file if that process is not ppc-gpt`);
        await fs.promises.rm(file, {force: true});  // stale: its process is gone
    }
    throw new Error(`${file}: cannot take the lock`);
}

/**
 * Reads a JSONL file this store wrote, cutting off a torn last line (no final newline) in place.
 * Returns the parsed lines; a corrupt complete line is an error naming the file and line.
 */
async function recoverLines(file: string, dropped: string[]): Promise<{value: Record<string, unknown>; line: number}[]> {
    let buf: Buffer;
    try {
        buf = await fs.promises.readFile(file);
    } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT")
            return [];
        throw new DataError(file, undefined, `cannot read: ${(err as Error).message}`);
    }
    let end = buf.length;
    if (end > 0 && buf[end - 1] !== 0x0a) {
        end = buf.lastIndexOf(0x0a) + 1;  // 0 when the only line is torn
        await fs.promises.truncate(file, end);
        dropped.push(file);
    }
    const out: {value: Record<string, unknown>; line: number}[] = [];
    const lines = buf.subarray(0, end).toString("utf8").split("\n");
    for (let i = 0; i < lines.length; i++) {
        if (lines[i].trim() === "")
            continue;
        let value: unknown;
        try {
            value = JSON.parse(lines[i]);
        } catch (err) {
            throw new DataError(file, i + 1, `not valid JSON (${(err as Error).message}); this file was not written by ppc-gpt synth ` +
                `or was edited: choose another output or repair the line`);
        }
        if (!value || typeof value !== "object" || Array.isArray(value))
            throw new DataError(file, i + 1, "not a JSON object");
        out.push({value: value as Record<string, unknown>, line: i + 1});
    }
    return out;
}

function addTo(map: Map<string, Set<number>>, key: string, n: number): boolean {
    let s = map.get(key);
    if (!s)
        map.set(key, s = new Set());
    if (s.has(n))
        return false;
    s.add(n);
    return true;
}

/** The synthesis output folder: crash-safe journal of accepted items and rejections, resumable. */
export class SyntheticStore {
    private chain: Promise<void> = Promise.resolve();
    private closed = false;

    private constructor(readonly output: string, readonly journal: string, readonly lock: string,
        private readonly out: fs.promises.FileHandle, private readonly jour: fs.promises.FileHandle,
        readonly recovery: StoreRecovery) {}

    /** Locks the output, recovers what earlier runs wrote, and opens both files for appending. */
    static async open(output: string): Promise<SyntheticStore> {
        const dir = path.dirname(path.resolve(output));
        try {
            await fs.promises.access(dir, fs.constants.W_OK);
        } catch {
            throw new Error(`${output}: the folder ${dir} does not exist or is not writable`);
        }
        const lock = lockPath(output);
        await takeLock(lock);
        try {
            const journal = journalPath(output);
            const recovery: StoreRecovery = {accepted: new Map(), rejected: new Map(), questionKeys: new Set(), acceptedItems: 0,
                rejectedAttempts: 0, reasons: {}, droppedTornLines: [], runs: 0};
            for (const {value, line} of await recoverLines(output, recovery.droppedTornLines)) {
                const attempt = (value.source as Record<string, unknown> | undefined)?.attempt;
                if (typeof value.id !== "string" || typeof value.parent_id !== "string" || typeof value.question !== "string" ||
                    !Number.isInteger(attempt))
                    throw new DataError(output, line, "not a synthetic item written by ppc-gpt synth (needs id, parent_id, question and " +
                        "source.attempt); choose another output file");
                if (!addTo(recovery.accepted, value.parent_id, attempt as number))
                    throw new DataError(output, line, `attempt ${attempt} of parent "${value.parent_id}" appears twice`);
                recovery.questionKeys.add(questionKey(value.question));
                recovery.acceptedItems++;
            }
            for (const {value, line} of await recoverLines(journal, recovery.droppedTornLines)) {
                if (value.type === "run") {
                    recovery.runs++;
                } else if (value.type === "rejected" && typeof value.parent_id === "string" && Number.isInteger(value.attempt)) {
                    // an attempt both accepted and rejected cannot happen; if the files were mixed up, the item wins
                    if (!recovery.accepted.get(value.parent_id)?.has(value.attempt as number) &&
                        addTo(recovery.rejected, value.parent_id, value.attempt as number)) {
                        recovery.rejectedAttempts++;
                        const reason = value.reason as RejectionReason;
                        recovery.reasons[reason] = (recovery.reasons[reason] ?? 0) + 1;
                    }
                } else {
                    throw new DataError(journal, line, "not a ppc-gpt synth journal record");
                }
            }
            const out = await fs.promises.open(output, "a");
            const jour = await fs.promises.open(journal, "a");
            return new SyntheticStore(output, journal, lock, out, jour, recovery);
        } catch (err) {
            await fs.promises.rm(lock, {force: true});
            throw err;
        }
    }

    private append(fh: fs.promises.FileHandle, value: unknown): Promise<void> {
        if (this.closed)
            return Promise.reject(new Error(`${this.output}: store is closed`));
        const line = JSON.stringify(value) + "\n";
        // one write per whole line, then fsync, in order: a kill leaves at most a torn last line
        const next = this.chain.then(async () => {
            await fh.write(line);
            await fh.sync();
        });
        this.chain = next.catch(() => undefined);
        return next;
    }

    appendItem(item: SyntheticItem): Promise<void> {
        return this.append(this.out, item);
    }

    appendRejection(record: Omit<RejectionRecord, "type">): Promise<void> {
        return this.append(this.jour, {type: "rejected", ...record});
    }

    appendRun(record: Omit<RunRecord, "type">): Promise<void> {
        return this.append(this.jour, {type: "run", ...record});
    }

    /** Waits for pending writes, closes the files and releases the lock. */
    async close(): Promise<void> {
        if (this.closed)
            return;
        await this.chain;
        this.closed = true;
        await this.out.close();
        await this.jour.close();
        await fs.promises.rm(this.lock, {force: true});
    }
}
