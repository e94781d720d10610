// The client's private data: task-item JSONL or any dataset the loaders know, in its original
// format; split into what is perturbed and uploaded (and later used for label retraining) and a
// held-out part that only the client's evaluation sees.
import crypto from "node:crypto";
import fs from "node:fs";
import {readTaskItems} from "../../data/jsonl.js";
import {datasetNames, datasets, loadTask, taskFile, type DatasetName} from "../../data/loaders/index.js";
import type {TaskItem} from "../../data/task-item.js";
import {jobItemSchema} from "../protocol.js";

export interface PrivateDataOptions {
    /** A file: task-item JSONL, or the original format of `task` when both are given. */
    data?: string;
    /** A dataset the loaders know (arc-easy, openbookqa, …). */
    task?: DatasetName;
    /** Split of `task` (default "train"). */
    split?: string;
    /** First N items only (after the held-out part is set aside). */
    limit?: number;
    /** Held-out evaluation items: a file (task format or JSONL), else `evalSplit` of `task`, else `holdout` of the data. */
    evalData?: string;
    /** Split of `task` evaluated (default: the split lm-evaluation-harness evaluates, e.g. ARC's test). */
    evalSplit?: string;
    /** Share of the private items held out for evaluation when there is no other held-out source (default 0.2). */
    holdout?: number;
    /** At most this many held-out items (default 200). */
    evalLimit?: number;
    dataDir?: string;
}

export interface PrivateData {
    /** Perturbed and uploaded; with their answers, the client's label-retraining set. */
    train: TaskItem[];
    /** Never uploaded: the S/C evaluation set. */
    heldOut: TaskItem[];
    /** What was read, for reports. */
    source: {train: string; heldOut: string};
    /** The task whose prompt format evaluation uses ("mc" for task-item JSONL). */
    evalTask: DatasetName;
}

function checkTask(task: string | undefined): DatasetName | undefined {
    if (task === undefined)
        return undefined;
    if (!(datasetNames as readonly string[]).includes(task))
        throw new RangeError(`--task: unknown dataset "${task}"; known: ${datasetNames.join(", ")}`);
    return task as DatasetName;
}

/** Stable split by original id: the same items are held out on every run. */
function heldOutById(id: string, share: number): boolean {
    const h = crypto.createHash("sha256").update(`ppc-gpt/holdout/v1\n${id}`).digest();
    return h.readUInt32BE(0) / 2 ** 32 < share;
}

async function readSource(file: string | undefined, task: DatasetName | undefined, split: string | undefined, dataDir?: string):
    Promise<{items: TaskItem[]; name: string}> {
    if (file !== undefined && (task === undefined || task === "mc"))
        return {items: await readTaskItems(file), name: file};
    const t = task!;
    const o = {file, split, dataDir};
    return {items: await loadTask(t, o), name: file ?? `${t}/${split ?? datasets[t].defaultSplit ?? ""} (${taskFile(t, o)})`};
}

/** Loads the private training items and the held-out evaluation items. */
export async function loadPrivateData(o: PrivateDataOptions): Promise<PrivateData> {
    const task = checkTask(o.task);
    if (o.data === undefined && task === undefined)
        throw new RangeError("give the private data: --data FILE (task-item JSONL, or a dataset file with --task) or --task NAME [--split S]");
    if (task === "mc" && o.data === undefined)
        throw new RangeError("--task mc reads a task-item JSONL file: give it with --data");
    if (o.holdout !== undefined && !(o.holdout > 0 && o.holdout < 1))
        throw new RangeError(`--holdout must be in (0, 1) (got ${o.holdout})`);
    const train = await readSource(o.data, task, o.data === undefined ? o.split ?? "train" : undefined, o.dataDir);
    let items = train.items;
    let heldOut: TaskItem[];
    let heldOutName: string;
    if (o.evalData !== undefined || (task !== undefined && task !== "mc" && o.data === undefined && o.holdout === undefined)) {
        const ev = await readSource(o.evalData, task, o.evalData === undefined ? o.evalSplit : undefined, o.dataDir);
        heldOut = ev.items;
        heldOutName = ev.name;
        // An item in both sets would be trained on and then scored: keep it out of the evaluation.
        const trainIds = new Set(items.map((x) => x.id));
        heldOut = heldOut.filter((x) => !trainIds.has(x.id));
    } else {
        const share = o.holdout ?? 0.2;
        heldOut = items.filter((x) => heldOutById(x.id, share));
        items = items.filter((x) => !heldOutById(x.id, share));
        heldOutName = `${Math.round(share * 100)}% of ${train.name} (by id)`;
    }
    if (o.limit !== undefined)
        items = items.slice(0, o.limit);
    heldOut = heldOut.filter((x) => x.answer !== undefined).slice(0, o.evalLimit ?? 200);
    if (items.length === 0)
        throw new RangeError(`${train.name}: no private items left to upload`);
    checkUploadable(items, train.name);
    return {train: items, heldOut, source: {train: train.name, heldOut: heldOutName}, evalTask: task ?? "mc"};
}

const choiceSchema = jobItemSchema.properties.choices;

/** The protocol's limits on an item, checked before anything is perturbed; errors name the item. */
export function checkUploadable(items: readonly TaskItem[], file: string): void {
    for (const [i, it] of items.entries()) {
        const where = `${file}: item ${i + 1} (${it.id})`;
        if (it.question.trim() === "")
            throw new RangeError(`${where}: the question is empty`);
        if (it.question.length > jobItemSchema.properties.question.maxLength)
            throw new RangeError(`${where}: the question has ${it.question.length} characters (at most ${jobItemSchema.properties.question.maxLength})`);
        if (it.choices.length < choiceSchema.minItems || it.choices.length > choiceSchema.maxItems)
            throw new RangeError(`${where}: ${it.choices.length} choices (a job item has ${choiceSchema.minItems} to ${choiceSchema.maxItems})`);
        for (const c of it.choices) {
            if (c.label.length < 1 || c.label.length > choiceSchema.items.properties.label.maxLength)
                throw new RangeError(`${where}: choice label ${JSON.stringify(c.label)} must have 1 to ${choiceSchema.items.properties.label.maxLength} characters`);
            if (c.text.length > choiceSchema.items.properties.text.maxLength)
                throw new RangeError(`${where}: choice ${c.label} has ${c.text.length} characters (at most ${choiceSchema.items.properties.text.maxLength})`);
        }
    }
}

/** sha256 of a file (for the state fingerprint); undefined when it does not exist. */
export function fileDigest(file: string | undefined): string | undefined {
    if (file === undefined || !fs.existsSync(file))
        return undefined;
    return crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex");
}
