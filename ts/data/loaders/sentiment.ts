// Financial sentiment as three-choice task items: FiQA-2018 task 1 (raw microblog posts with
// sentiment scores), Financial PhraseBank (`sentence@label` lines) and FinLoRA's instruction-format
// test files (`{context, target}`). Every item gets the same choices, A negative / B neutral /
// C positive, so that the sentiment tasks run through the same multiple-choice machinery.
import fs from "node:fs";
import type {TaskChoice, TaskItem} from "../task-item.js";
import {DataError, readJsonlObjects, stringField} from "./common.js";

export const sentimentClasses = ["negative", "neutral", "positive"] as const;
export type SentimentClass = typeof sentimentClasses[number];

export const sentimentChoices: readonly TaskChoice[] = sentimentClasses.map((text, i) => ({label: "ABC"[i], text}));

/** FinLoRA's instructions; FiQA posts are tweets, PhraseBank sentences are news. */
export const sentimentInstructions = {
    tweet: "What is the sentiment of this tweet? Please choose an answer from {negative/neutral/positive}.",
    news: "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.",
} as const;

/** The usual 3-class mapping of FiQA's continuous scores: < -0.1 negative, > 0.1 positive, else neutral. */
export function fiqaScoreClass(score: number): SentimentClass {
    return score < -0.1 ? "negative" : score > 0.1 ? "positive" : "neutral";
}

function sentimentItem(id: string, text: string, cls: SentimentClass, source: Record<string, unknown>): TaskItem {
    return {
        id,
        question: text,
        choices: sentimentChoices.map((c) => ({...c})),
        answer: sentimentChoices[sentimentClasses.indexOf(cls)].label,
        source,
    };
}

/** 1-based line of the first occurrence of `needle` in `text` (for errors inside one JSON document). */
function lineOf(text: string, needle: string): number | undefined {
    const at = text.indexOf(needle);
    if (at < 0)
        return undefined;
    let line = 1;
    for (let i = 0; i < at; i++)
        if (text.charCodeAt(i) === 10)
            line++;
    return line;
}

/**
 * FiQA-2018 task 1 posts (`FiQA_post.json`: `{id: {sentence, info: [{snippets, sentiment_score,
 * target, aspects}]}}`): one item per (post, target); the id is the post id, with `-k` appended
 * when a post has several targets.
 */
export async function loadFiqaPosts(file: string): Promise<TaskItem[]> {
    let text: string;
    try {
        text = await fs.promises.readFile(file, "utf8");
    } catch (err) {
        throw new DataError(file, undefined, `cannot read: ${(err as Error).message}`);
    }
    let doc: unknown;
    try {
        doc = JSON.parse(text);
    } catch (err) {
        const m = /position (\d+)/.exec((err as Error).message);
        const line = m ? text.slice(0, Number(m[1])).split("\n").length : undefined;
        throw new DataError(file, line, `not valid JSON (${(err as Error).message})`);
    }
    if (!doc || typeof doc !== "object" || Array.isArray(doc))
        throw new DataError(file, 1, "expected one JSON object of posts keyed by id");
    const items: TaskItem[] = [];
    for (const [id, post] of Object.entries(doc as Record<string, unknown>)) {
        const line = lineOf(text, JSON.stringify(id) + ":") ?? lineOf(text, JSON.stringify(id));
        const fail = (msg: string) => new DataError(file, line, `post "${id}": ${msg}`);
        if (!post || typeof post !== "object" || Array.isArray(post))
            throw fail("must be an object {sentence, info}");
        const p = post as Record<string, unknown>;
        if (typeof p.sentence !== "string")
            throw fail("\"sentence\" must be a string");
        if (!Array.isArray(p.info) || p.info.length === 0)
            throw fail("\"info\" must be a non-empty array");
        for (const [k, infoRaw] of p.info.entries()) {
            if (!infoRaw || typeof infoRaw !== "object")
                throw fail(`info[${k}] must be an object`);
            const info = infoRaw as Record<string, unknown>;
            const rawScore = info.sentiment_score;
            const score = typeof rawScore === "number" ? rawScore : typeof rawScore === "string" && rawScore.trim() !== "" ? Number(rawScore) : NaN;
            if (!Number.isFinite(score) || score < -1 || score > 1)
                throw fail(`info[${k}].sentiment_score must be a number in [-1, 1] (got ${JSON.stringify(rawScore)})`);
            items.push(sentimentItem(p.info.length > 1 ? `${id}-${k}` : id, p.sentence, fiqaScoreClass(score), {
                dataset: "fiqa-sa", file, line, post_id: id, sentiment_score: score,
                target: info.target, aspects: info.aspects, snippets: info.snippets, instruction: sentimentInstructions.tweet,
            }));
        }
    }
    return items;
}

const finloraContext = /^Instruction: (.*)\nInput: ([\s\S]*)\nAnswer: ?$/;

/**
 * FinLoRA's sentiment test files (`finlora_fiqa_test.jsonl`, `finlora_fpb_test.jsonl`):
 * `{context: "Instruction: …\nInput: <text>\nAnswer: ", target: "negative"|"neutral"|"positive"}`.
 * The instruction is kept in `source.instruction` so that the prompt can be rebuilt exactly.
 */
export async function loadFinloraSentiment(file: string, dataset = "fiqa-sa", idPrefix = dataset): Promise<TaskItem[]> {
    const items: TaskItem[] = [];
    for await (const {row, line} of readJsonlObjects(file)) {
        const context = stringField(row, "context", file, line);
        const target = stringField(row, "target", file, line).trim().toLowerCase();
        const m = finloraContext.exec(context);
        if (!m)
            throw new DataError(file, line, "\"context\" is not in FinLoRA's \"Instruction: …\\nInput: …\\nAnswer: \" format");
        if (!(sentimentClasses as readonly string[]).includes(target))
            throw new DataError(file, line, `"target" must be negative, neutral or positive (got ${JSON.stringify(row.target)})`);
        items.push(sentimentItem(`${idPrefix}-${line}`, m[2], target as SentimentClass, {dataset, file, line, instruction: m[1]}));
    }
    return items;
}

/**
 * Financial PhraseBank (`Sentences_{50,66,75,All}Agree.txt`): one `sentence@label` per line,
 * ISO-8859-1, CRLF. The label is after the last "@".
 */
export async function loadPhraseBank(file: string): Promise<TaskItem[]> {
    let bytes: Buffer;
    try {
        bytes = await fs.promises.readFile(file);
    } catch (err) {
        throw new DataError(file, undefined, `cannot read: ${(err as Error).message}`);
    }
    const text = bytes.toString("latin1");
    const lines = text.split("\n");
    const items: TaskItem[] = [];
    const base = /Sentences_(\w+?)Agree/i.exec(file)?.[1]?.toLowerCase();
    const idPrefix = `fpb${base ? `-${base}` : ""}`;
    for (let i = 0; i < lines.length; i++) {
        const raw = lines[i].endsWith("\r") ? lines[i].slice(0, -1) : lines[i];
        if (raw.trim() === "")
            continue;
        const at = raw.lastIndexOf("@");
        if (at < 0)
            throw new DataError(file, i + 1, "expected \"sentence@label\" (no \"@\")");
        const sentence = raw.slice(0, at).trim();
        const label = raw.slice(at + 1).trim();
        if (!(sentimentClasses as readonly string[]).includes(label))
            throw new DataError(file, i + 1, `label must be negative, neutral or positive (got "${label}")`);
        if (sentence === "")
            throw new DataError(file, i + 1, "empty sentence");
        items.push(sentimentItem(`${idPrefix}-${i + 1}`, sentence, label as SentimentClass, {
            dataset: "financial-phrasebank", file, line: i + 1, instruction: sentimentInstructions.news,
        }));
    }
    return items;
}
