// Checks on generated items: the reasons an attempt is rejected, question and choice validation,
// the duplicate key, and the three-vote agreement rule.
import {limits, type DraftQuestion} from "./prompts.js";

/** Why an attempt produced no synthetic item; counted in the run summary. */
export const rejectionReasons = [
    "question-unparseable",   // the question reply has no question and choices in either format
    "question-truncated",     // ... because the reply hit the token limit
    "invalid-question",       // empty, too short (under 3 words) or too long question text
    "invalid-choices",        // not 2-5 choices, labels not unique capital letters, empty or repeated choice texts
    "duplicate-question",     // same question as the parent or as another generated question
    "answer-unparseable",     // a vote without a final letter
    "answer-truncated",       // ... because the reply hit the token limit
    "answer-not-a-choice",    // a vote's letter is not one of the labels
    "votes-disagree",         // the three final letters differ
    "rationale-unparseable",  // empty or overlong rationale
    "rationale-truncated",    // no end marker: the reply hit the token limit
    "request-failed",         // the server refused or garbled a request (not a transient failure)
] as const;

export type RejectionReason = typeof rejectionReasons[number];

export type Checked<T> = {ok: true; value: T} | {ok: false; reason: RejectionReason; detail: string};

export function reject<T>(reason: RejectionReason, detail: string): Checked<T> {
    return {ok: false, reason, detail};
}

/** Whitespace collapsed and trimmed. */
export function tidy(text: string): string {
    return text.replace(/\s+/g, " ").trim();
}

/** Key for duplicate detection: case, punctuation and spacing ignored. */
export function questionKey(text: string): string {
    return text.toLowerCase().normalize("NFKC").replace(/[^\p{L}\p{N}]+/gu, " ").trim();
}

export function validateDraft(d: DraftQuestion): Checked<DraftQuestion> {
    const question = tidy(d.question);
    if (question === "")
        return reject("invalid-question", "empty question");
    // a degenerate reply ("Yes!", "Hi,") is no question; every real one has a few words
    if ((question.match(/\p{L}+/gu) ?? []).length < limits.minQuestionWords)
        return reject("invalid-question", `question has fewer than ${limits.minQuestionWords} words: ${JSON.stringify(question)}`);
    if (question.length > limits.questionChars)
        return reject("invalid-question", `question longer than ${limits.questionChars} characters`);
    const n = d.choices.length;
    if (n < limits.minChoices || n > limits.maxChoices)
        return reject("invalid-choices", `${n} choices (need ${limits.minChoices} to ${limits.maxChoices})`);
    const labels = new Set<string>();
    const texts = new Set<string>();
    const choices = [];
    for (const c of d.choices) {
        const label = c.label.trim();
        const text = tidy(c.text);
        if (!/^[A-Z]$/.test(label))
            return reject("invalid-choices", `choice label ${JSON.stringify(c.label)} is not one capital letter`);
        if (labels.has(label))
            return reject("invalid-choices", `choice label ${label} appears twice`);
        labels.add(label);
        if (text === "")
            return reject("invalid-choices", `choice ${label} is empty`);
        if (text.length > limits.choiceChars)
            return reject("invalid-choices", `choice ${label} is longer than ${limits.choiceChars} characters`);
        const key = questionKey(text) || text;
        if (texts.has(key))
            return reject("invalid-choices", `choice ${label} repeats another choice`);
        texts.add(key);
        choices.push({label, text});
    }
    return {ok: true, value: {question, choices}};
}

/** Three votes must name the same label; returns the agreed label. */
export function agreeVotes(votes: string[], labels: string[]): Checked<string> {
    const bad = votes.find((v) => !labels.includes(v));
    if (bad !== undefined)
        return reject("answer-not-a-choice", `vote ${bad} is not one of ${labels.join(", ")}`);
    if (votes.some((v) => v !== votes[0]))
        return reject("votes-disagree", `votes ${votes.join(", ")}`);
    return {ok: true, value: votes[0]};
}
