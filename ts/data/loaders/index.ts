// One entry point for every dataset: `loadTask(name, {split, file})` reads the original files in
// the shared data folder (or any file in the same format) into task items.
import fs from "node:fs";
import path from "node:path";
import {readTaskItems} from "../jsonl.js";
import type {TaskItem} from "../task-item.js";
import {loadArc, loadCommonsenseQa, loadOpenBookQa} from "./arc.js";
import {DataError, defaultDataDir} from "./common.js";
import {loadFinloraSentiment, loadFiqaPosts, loadPhraseBank} from "./sentiment.js";

export {defaultDataDir, DataError};
export {loadAi2Jsonl, loadArc, loadCommonsenseQa, loadOpenBookQa} from "./arc.js";
export type {Ai2LoadOptions} from "./arc.js";
export {fiqaScoreClass, loadFinloraSentiment, loadFiqaPosts, loadPhraseBank, sentimentChoices, sentimentClasses,
    sentimentInstructions} from "./sentiment.js";
export type {SentimentClass} from "./sentiment.js";

export const datasetNames = ["arc-easy", "arc-challenge", "openbookqa", "commonsenseqa", "fiqa-sa", "financial-phrasebank", "mc"] as const;
export type DatasetName = typeof datasetNames[number];

interface DatasetSpec {
    description: string;
    defaultSplit?: string;
    /** Split name -> file relative to the data folder. */
    splits: Record<string, string>;
    /** Split aliases (e.g. validation -> dev). */
    aliases?: Record<string, string>;
    load(file: string): Promise<TaskItem[]>;
}

const ai2Aliases = {validation: "dev", valid: "dev"};

/** An AI2 ARC set (Easy or Challenge): the same file names and loader, but for the set's name. */
function arcDataset(set: "Easy" | "Challenge", name: "arc-easy" | "arc-challenge"): DatasetSpec {
    const file = (split: string) => `arc/ARC-${set}-${split}.jsonl`;
    return {
        description: `AI2 ARC, ${set} set`,
        defaultSplit: "test",
        splits: {train: file("Train"), dev: file("Dev"), test: file("Test")},
        aliases: ai2Aliases,
        load: (f) => loadArc(f, name),
    };
}

export const datasets: Record<DatasetName, DatasetSpec> = {
    "arc-easy": arcDataset("Easy", "arc-easy"),
    "arc-challenge": arcDataset("Challenge", "arc-challenge"),
    openbookqa: {
        description: "OpenBookQA (main)",
        defaultSplit: "test",
        splits: {train: "openbookqa/OpenBookQA_train.jsonl", dev: "openbookqa/dev.jsonl", test: "openbookqa/test.jsonl"},
        aliases: ai2Aliases,
        load: loadOpenBookQa,
    },
    commonsenseqa: {
        description: "CommonsenseQA v1.11 (the test split has no answers; lm-evaluation-harness evaluates on validation)",
        defaultSplit: "validation",
        splits: {train: "commonsenseqa/train.jsonl", validation: "commonsenseqa/valid.jsonl", test: "commonsenseqa/test.jsonl"},
        aliases: {dev: "validation", valid: "validation"},
        load: loadCommonsenseQa,
    },
    "fiqa-sa": {
        description: "FiQA-2018 task 1 sentiment, 3 classes (test: FinLoRA's test file; train: FiQA_post.json scores mapped to classes)",
        defaultSplit: "test",
        splits: {train: "fiqa/FiQA_post.json", test: "fiqa/finlora_fiqa_test.jsonl"},
        load: (f) => f.toLowerCase().endsWith(".json") ? loadFiqaPosts(f) : loadFinloraSentiment(f, "fiqa-sa"),
    },
    "financial-phrasebank": {
        description: "Financial PhraseBank v1.0 (test: FinLoRA's test file; 50agree…allagree: the annotator-agreement files)",
        defaultSplit: "test",
        splits: {
            test: "financial_phrasebank/finlora_fpb_test.jsonl",
            "50agree": "financial_phrasebank/Sentences_50Agree.txt",
            "66agree": "financial_phrasebank/Sentences_66Agree.txt",
            "75agree": "financial_phrasebank/Sentences_75Agree.txt",
            allagree: "financial_phrasebank/Sentences_AllAgree.txt",
        },
        aliases: {all: "50agree", train: "50agree"},
        load: (f) => f.toLowerCase().endsWith(".txt") ? loadPhraseBank(f) : loadFinloraSentiment(f, "financial-phrasebank", "fpb-test"),
    },
    mc: {
        description: "any JSONL file in the internal task-item schema",
        splits: {},
        load: readTaskItems,
    },
};

export interface LoadTaskOptions {
    /** Split name (see `datasets[name].splits`); default: the split lm-evaluation-harness evaluates. */
    split?: string;
    /** Read this file (in the dataset's original format) instead of the split's shared file. */
    file?: string;
    /** Folder of the original datasets; default `defaultDataDir()`. */
    dataDir?: string;
}

/** The file `loadTask` reads for a dataset and split. */
export function taskFile(name: DatasetName, options: LoadTaskOptions = {}): string {
    const spec = datasets[name];
    if (!spec)
        throw new Error(`unknown dataset "${name}"; known: ${datasetNames.join(", ")}`);
    if (options.file)
        return options.file;
    if (name === "mc")
        throw new Error("dataset \"mc\" reads a task-item JSONL file: give its path (file / --data)");
    const wanted = (options.split ?? spec.defaultSplit ?? "").toLowerCase();
    const split = spec.aliases?.[wanted] ?? wanted;
    const rel = spec.splits[split];
    if (!rel)
        throw new Error(`dataset "${name}" has no split "${options.split}"; splits: ${Object.keys(spec.splits).join(", ")}`);
    return path.join(options.dataDir ?? defaultDataDir(), rel);
}

/** Loads a dataset split (or `file`) as task items. Errors name the file and line. */
export async function loadTask(name: DatasetName, options: LoadTaskOptions = {}): Promise<TaskItem[]> {
    const file = taskFile(name, options);
    if (!fs.existsSync(file))
        throw new DataError(file, undefined, `no such file${options.file ? "" : ` (data folder: ${options.dataDir ?? defaultDataDir()}; set PPC_DATA_DIR or give a file)`}`);
    return datasets[name].load(file);
}
