// Readers for the three replies. Each accepts JSON (what the schema asks for, also inside a
// ```json fence or surrounded by prose) and falls back to the paper's plain line format
// ("Question: ... / Choices: [...]", "FINAL ANSWER: B", "Rationale: ... <end>"), so a server that
// ignores response_format, or a model prompted in the line format, is still understood.
import type {FinishReason} from "./generator.js";
import {limits, RATIONALE_END, type DraftQuestion} from "./prompts.js";
import {reject, tidy, type Checked} from "./validate.js";

/** A reply without the reasoning block some models write first (<think>...</think>). */
export function stripReasoning(text: string): string {
    const closed = text.replace(/<think(?:ing)?>[\s\S]*?<\/think(?:ing)?>/gi, "");
    // an unterminated block (cut at the token limit) hides everything after it
    return closed.replace(/<think(?:ing)?>[\s\S]*$/i, "").trim();
}

/** The JSON object in a reply: the whole text, a fenced block, or the outermost {...}. */
export function extractJsonObject(text: string): Record<string, unknown> | undefined {
    const candidates = [text.trim()];
    const fence = /```(?:json|JSON)?\s*([\s\S]*?)```/.exec(text);
    if (fence)
        candidates.push(fence[1].trim());
    const first = text.indexOf("{"), last = text.lastIndexOf("}");
    if (first >= 0 && last > first)
        candidates.push(text.slice(first, last + 1));
    for (const c of candidates) {
        if (!c.startsWith("{"))
            continue;
        try {
            const v = JSON.parse(c);
            if (v && typeof v === "object" && !Array.isArray(v))
                return v as Record<string, unknown>;
        } catch {
            // try the next candidate
        }
    }
    return undefined;
}

/** A property looked up by name, ignoring case, spaces, underscores and dashes. */
function field(o: Record<string, unknown>, ...names: string[]): unknown {
    const norm = (s: string) => s.toLowerCase().replace(/[\s_-]+/g, "");
    const wanted = new Set(names.map(norm));
    for (const [k, v] of Object.entries(o))
        if (wanted.has(norm(k)))
            return v;
    return undefined;
}

const letterPrefix = /^\s*[(\[]?([A-Z])[)\].:]\s+/;

/** Labels choices A, B, C...; keeps letters the model wrote itself ("A) text") when every choice has one. */
function labelChoices(texts: string[]): {label: string; text: string}[] {
    const prefixed = texts.map((t) => letterPrefix.exec(t));
    if (texts.length > 0 && prefixed.every((m) => m !== null))
        return texts.map((t, i) => ({label: prefixed[i]![1], text: t.slice(prefixed[i]![0].length)}));
    return texts.map((t, i) => ({label: String.fromCharCode(65 + i), text: t}));
}

/** Choices from JSON: ["x", "y"], [{"label": "A", "text": "x"}], or {"A": "x", "B": "y"}. */
function choicesFromJson(v: unknown): {label: string; text: string}[] | undefined {
    if (Array.isArray(v)) {
        if (v.every((c) => typeof c === "string"))
            return labelChoices(v as string[]);
        if (v.every((c) => c && typeof c === "object")) {
            const out = [];
            for (const c of v as Record<string, unknown>[]) {
                const label = field(c, "label", "letter", "key");
                const text = field(c, "text", "choice", "value");
                if (typeof label !== "string" || typeof text !== "string")
                    return undefined;
                out.push({label, text});
            }
            return out;
        }
        return undefined;
    }
    if (v && typeof v === "object" && Object.values(v).every((t) => typeof t === "string"))
        return Object.entries(v as Record<string, string>).map(([label, text]) => ({label, text}));
    return undefined;
}

/** Items of a bracketed list written as JSON or Python (['a', "b's", 'c']); undefined if not a list. */
export function parseListLiteral(text: string): string[] | undefined {
    const t = text.trim();
    if (!t.startsWith("[") || !t.endsWith("]"))
        return undefined;
    try {
        const v = JSON.parse(t);
        if (Array.isArray(v) && v.every((x) => typeof x === "string" || typeof x === "number"))
            return v.map(String);
    } catch {
        // Python-style quoting: scan it below
    }
    const items: string[] = [];
    let i = 1;
    const skip = () => {
        while (i < t.length - 1 && /[\s,]/.test(t[i]))
            i++;
    };
    skip();
    while (i < t.length - 1) {
        const q = t[i];
        if (q === "'" || q === "\"" || q === "’" || q === "‘") {
            const close = q === "‘" ? "’" : q;
            let s = "";
            i++;
            for (; i < t.length - 1; i++) {
                if (t[i] === "\\" && i + 1 < t.length - 1) {
                    s += t[++i];
                    continue;
                }
                // a closing quote only counts before a separator: "children's toys" keeps its apostrophe
                if (t[i] === close && /^\s*(,|$)/.test(t.slice(i + 1, t.length - 1)))
                    break;
                s += t[i];
            }
            if (i >= t.length - 1)
                return undefined;  // unterminated string
            i++;
            items.push(s);
        } else {
            // unquoted item: up to the next comma
            const end = t.indexOf(",", i);
            const stop = end < 0 || end > t.length - 1 ? t.length - 1 : end;
            items.push(t.slice(i, stop).trim());
            i = stop;
        }
        skip();
    }
    return items;
}

/** Choices written as text: a list literal, "A) x B) y" on one or more lines, or one choice per line. */
export function parseChoicesText(text: string): {label: string; text: string}[] | undefined {
    const t = text.trim();
    if (t === "")
        return undefined;
    const list = parseListLiteral(t);
    if (list)
        return labelChoices(list);
    // "A) x B) y C) z": only markers in sequence A, B, C... count, so "U.S. " inside a choice is text
    const markers: RegExpMatchArray[] = [];
    for (const m of t.matchAll(/(?:^|\s)[(\[]?([A-Z])[)\].:]\s+/g))
        if (m[1] === String.fromCharCode(65 + markers.length))
            markers.push(m);
    if (markers.length >= 2 && t.slice(0, markers[0].index).trim() === "") {
        const out = [];
        for (let k = 0; k < markers.length; k++) {
            const start = markers[k].index! + markers[k][0].length;
            const end = k + 1 < markers.length ? markers[k + 1].index! : t.length;
            out.push({label: markers[k][1], text: t.slice(start, end).trim().replace(/[;,]$/, "")});
        }
        return out;
    }
    const lines = t.split(/\r?\n/).map((l) => l.replace(/^\s*[-*•]\s*/, "").trim()).filter(Boolean);
    return lines.length >= 2 ? labelChoices(lines) : undefined;
}

export function parseQuestionReply(reply: string, finishReason: FinishReason): Checked<DraftQuestion> {
    const text = stripReasoning(reply);
    const truncated = finishReason === "length";
    const json = extractJsonObject(text);
    if (json) {
        const question = field(json, "question", "new question", "created question");
        const choices = choicesFromJson(field(json, "choices", "options"));
        if (typeof question === "string" && choices)
            return {ok: true, value: {question, choices}};
    }
    // The paper's line format: "Question: ..." then "Choices: ..." (markers possibly in bold).
    const clean = text.replace(/\*\*/g, "");
    const qm = /(?:^|\n)\s*Question\s*:\s*/i.exec(clean);
    const cm = qm ? /(?:^|\n|\s)Choices\s*:\s*/i.exec(clean.slice(qm.index + qm[0].length)) : null;
    if (qm && cm) {
        const qStart = qm.index + qm[0].length;
        const question = clean.slice(qStart, qStart + cm.index);
        const choices = parseChoicesText(clean.slice(qStart + cm.index + cm[0].length));
        if (choices)
            return {ok: true, value: {question, choices}};
    }
    const what = json ? "JSON without a question and a list of choices"
        : text.trim().startsWith("{") ? "incomplete JSON" : "neither JSON nor the Question:/Choices: format";
    return reject(truncated ? "question-truncated" : "question-unparseable", `${what}${truncated ? " (reply cut at the token limit)" : ""}: ${preview(reply)}`);
}

/** The choice letter in an answer value: "B", "(B)", "B) text", "**B**", "Option B". */
export function answerLetter(value: string): string | undefined {
    const v = value.replace(/[*"'`]/g, "").trim();
    const m = /^(?:(?:option|choice|answer)\s+)?[(\[]?([A-Z])(?![A-Za-z])/i.exec(v);
    if (!m)
        return undefined;
    // a bare lower-case letter is only accepted after a keyword ("option b"), never as a word ("a cat")
    if (m[1] !== m[1].toUpperCase() && !/^(option|choice|answer)\s/i.test(v))
        return undefined;
    return m[1].toUpperCase();
}

export function parseAnswerReply(reply: string, finishReason: FinishReason): Checked<{letter: string; solution: string}> {
    const text = stripReasoning(reply);
    const truncated = finishReason === "length";
    const json = extractJsonObject(text);
    if (json) {
        const final = field(json, "final answer", "answer", "final choice", "choice");
        const solution = field(json, "solution", "reasoning", "explanation");
        if (typeof final === "string") {
            const letter = answerLetter(final);
            if (letter)
                return {ok: true, value: {letter, solution: typeof solution === "string" ? solution : ""}};
        }
    }
    const markers = [...text.matchAll(/final\s+answer\s*(?:is)?\s*[:：=\-]?\s*/gi)];
    if (markers.length > 0) {
        const last = markers[markers.length - 1];
        const letter = answerLetter(text.slice(last.index! + last[0].length, last.index! + last[0].length + 40).split("\n")[0]);
        if (letter) {
            const sm = /SOLUTION\s*:\s*/i.exec(text);
            const solution = text.slice(sm ? sm.index + sm[0].length : 0, last.index).trim();
            return {ok: true, value: {letter, solution}};
        }
    }
    const bare = /^[(\[]?([A-Z])[)\].]?$/.exec(text.trim());
    if (bare)
        return {ok: true, value: {letter: bare[1], solution: ""}};
    return reject(truncated ? "answer-truncated" : "answer-unparseable", `no final letter${truncated ? " (reply cut at the token limit)" : ""}: ${preview(reply)}`);
}

export function parseRationaleReply(reply: string, finishReason: FinishReason): Checked<string> {
    const text = stripReasoning(reply);
    const json = extractJsonObject(text);
    let body: string | undefined;
    let ended = finishReason !== "length";
    if (json && typeof field(json, "rationale", "explanation") === "string") {
        body = field(json, "rationale", "explanation") as string;
        ended = true;  // a complete JSON object is a complete reply
    } else {
        body = text;
        const end = body.indexOf(RATIONALE_END);
        if (end >= 0) {
            body = body.slice(0, end);
            ended = true;
        }
        body = body.replace(/^[\s*]*Rationale\s*:\s*\**/i, "");
    }
    const endAt = body.indexOf(RATIONALE_END);
    if (endAt >= 0)
        body = body.slice(0, endAt);
    const rationale = tidy(body);
    if (!ended)
        return reject("rationale-truncated", `no ${RATIONALE_END} before the token limit: ${preview(reply)}`);
    if (rationale === "")
        return reject("rationale-unparseable", `empty rationale: ${preview(reply)}`);
    if (rationale.length > 2 * limits.rationaleChars)
        return reject("rationale-unparseable", `rationale longer than ${2 * limits.rationaleChars} characters`);
    return {ok: true, value: rationale};
}

function preview(text: string): string {
    const t = tidy(text);
    return JSON.stringify(t.length > 120 ? `${t.slice(0, 120)}…` : t);
}
