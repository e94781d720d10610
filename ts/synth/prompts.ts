// The three prompts of PPC-GPT's synthetic-data step (METHOD.md step 2, paper appendix B),
// rewritten in our own words: question generation with its rules, a step-by-step answer ending in
// one capital letter, and a short rationale following one worked example. Each comes in two reply
// formats: JSON (enforced by a grammar or response_format) and the paper's plain line format.
// Changing any text here changes PROMPT_VERSION, which is recorded in every synthetic item.
import type {TaskItem} from "../data/task-item.js";
import type {ChatMessage, JsonSchema} from "./generator.js";

export const PROMPT_VERSION = "ppc-synth-1";

export type PromptFormat = "json" | "lines";

/** The version string written into items: the prompt set and the reply format. */
export function promptVersion(format: PromptFormat): string {
    return `${PROMPT_VERSION}/${format}`;
}

/** Marker that ends a rationale in the line format. */
export const RATIONALE_END = "<end>";

export const limits = {
    minQuestionWords: 3,
    minChoices: 2,
    maxChoices: 5,
    questionChars: 1000,
    choiceChars: 300,
    solutionChars: 2500,
    rationaleChars: 800,
} as const;

/** A generated question with its choices labelled A, B, C... */
export interface DraftQuestion {
    question: string;
    choices: {label: string; text: string}[];
}

const teacher = "You are a careful, experienced teacher who writes and solves multiple-choice questions.";

function choiceLines(choices: {label: string; text: string}[]): string {
    return choices.map((c) => `${c.label}) ${c.text}`).join("\n");
}

export function questionMessages(parent: TaskItem, format: PromptFormat): ChatMessage[] {
    const reply = format === "json"
        ? `Reply with one JSON object and nothing else:
{"question": "<your new question>", "choices": ["<first choice>", "<second choice>", ...]}`
        : `Reply with exactly these three lines and nothing else:
CREATED QUESTION AND CHOICES:
Question: <your new question>
Choices: ["<first choice>", "<second choice>", ...]`;
    return [
        {role: "system", content: teacher},
        {role: "user", content: `Below is a multiple-choice question. Some of its words were replaced on purpose, so read it for its topic and intent rather than its exact wording.

Write ONE new multiple-choice question on the same topic, then check it against every rule below by solving it yourself, and fix it until it passes:
1. It asks exactly one thing, and exactly one of its choices is right.
2. Answering it takes a few steps of reasoning and some common or commonsense knowledge.
3. It agrees with common sense and everyday experience.
4. A student can answer it without seeing the question below: restate any number, condition or background it relies on.
5. It does not contain or hint at its own solution.
6. It is new: do not copy the question below.
7. It has ${limits.minChoices} to ${limits.maxChoices} choices (4 is usual), all different, listed without letters.

Question: ${parent.question}
Choices:
${choiceLines(parent.choices)}

${reply}`},
    ];
}

export function answerMessages(q: DraftQuestion, format: PromptFormat): ChatMessage[] {
    const letters = q.choices.map((c) => c.label).join(", ");
    const reply = format === "json"
        ? `Reply with one JSON object and nothing else:
{"solution": "<your step-by-step solution>", "final_answer": "<one letter: ${letters}>"}`
        : `Reply in exactly this format:
SOLUTION: <your step-by-step solution>
FINAL ANSWER: <one capital letter: ${letters}>`;
    return [
        {role: "system", content: teacher},
        {role: "user", content: `Solve this multiple-choice question. Reason step by step, bring in common and commonsense knowledge where it helps, and finish with your final choice written as a single capital letter.

Question: ${q.question}
Choices:
${choiceLines(q.choices)}

${reply}`},
    ];
}

const example = {
    question: "A metal spoon is left standing in a pot of hot soup. Why does its handle soon feel hot?",
    choices: [
        {label: "A", text: "the soup makes the spoon heavier"},
        {label: "B", text: "metal conducts heat from the soup along the spoon"},
        {label: "C", text: "steam freezes on the handle"},
        {label: "D", text: "the spoon produces its own heat"},
    ],
    answer: "B",
    rationale: "Metals are good conductors of heat, so heat moves from the hot soup into the spoon and along it until the handle is warm as well.",
};

export function rationaleMessages(q: DraftQuestion, answer: string, format: PromptFormat): ChatMessage[] {
    const answerText = (d: DraftQuestion, label: string) => `${label}) ${d.choices.find((c) => c.label === label)?.text ?? ""}`;
    const exampleReply = format === "json" ? JSON.stringify({rationale: example.rationale}) : `Rationale: ${example.rationale} ${RATIONALE_END}`;
    const reply = format === "json"
        ? `Reply with one JSON object and nothing else: {"rationale": "<your brief explanation>"}`
        : `Reply with the rationale only, on one line starting with "Rationale:", and finish it with ${RATIONALE_END}`;
    return [
        {role: "system", content: teacher},
        {role: "user", content: `You are given a multiple-choice question and its right answer. Explain in a few clear, correct words why that answer is right. Write in English and follow the style of the example exactly.

Example:
Question: ${example.question}
Choices:
${choiceLines(example.choices)}
Answer: ${answerText(example, example.answer)}
${exampleReply}

Now explain this one:
Question: ${q.question}
Choices:
${choiceLines(q.choices)}
Answer: ${answerText(q, answer)}

${reply}`},
    ];
}

/** JSON schemas for the three replies. String lengths bound the grammar so a wandering model still closes its JSON. */
export const questionSchema: JsonSchema = {
    type: "object",
    properties: {
        question: {type: "string", minLength: 1, maxLength: limits.questionChars},
        choices: {
            type: "array",
            items: {type: "string", minLength: 1, maxLength: limits.choiceChars},
            minItems: limits.minChoices,
            maxItems: limits.maxChoices,
        },
    },
    required: ["question", "choices"],
    additionalProperties: false,
};

export function answerSchema(labels: string[]): JsonSchema {
    return {
        type: "object",
        properties: {
            solution: {type: "string", maxLength: limits.solutionChars},
            final_answer: {type: "string", enum: labels},
        },
        required: ["solution", "final_answer"],
        additionalProperties: false,
    };
}

export const rationaleSchema: JsonSchema = {
    type: "object",
    properties: {
        rationale: {type: "string", minLength: 1, maxLength: limits.rationaleChars},
    },
    required: ["rationale"],
    additionalProperties: false,
};
