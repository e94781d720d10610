import test from "ava";
import {answerLetter, extractJsonObject, parseAnswerReply, parseChoicesText, parseListLiteral, parseQuestionReply,
    parseRationaleReply} from "../../ts/synth/parse.js";
import {answerMessages, answerSchema, questionMessages, rationaleMessages} from "../../ts/synth/prompts.js";
import {wireSchema} from "../../ts/synth/remote.js";
import {agreeVotes, questionKey, validateDraft, type RejectionReason} from "../../ts/synth/validate.js";

const abcd = (texts: string[]) => texts.map((text, i) => ({label: "ABCDE"[i], text}));

test("question reply: JSON, fenced JSON, JSON inside prose, and other JSON shapes", (t) => {
    const want = {question: "Which gas do plants take in?", choices: abcd(["oxygen", "carbon dioxide", "helium"])};
    const json = JSON.stringify({question: want.question, choices: ["oxygen", "carbon dioxide", "helium"]});
    for (const text of [json, "```json\n" + json + "\n```", `Sure! Here it is:\n${json}\nHope this helps.`]) {
        const r = parseQuestionReply(text, "stop");
        t.true(r.ok, text);
        if (r.ok)
            t.deepEqual(r.value, want);
    }
    const labelled = parseQuestionReply(JSON.stringify({Question: want.question,
        choices: [{label: "A", text: "oxygen"}, {label: "B", text: "carbon dioxide"}, {label: "C", text: "helium"}]}), "stop");
    t.deepEqual(labelled.ok && labelled.value, want);
    const map = parseQuestionReply(JSON.stringify({question: want.question, choices: {A: "oxygen", B: "carbon dioxide", C: "helium"}}), "stop");
    t.deepEqual(map.ok && map.value, want);
    const prefixed = parseQuestionReply(JSON.stringify({question: want.question, choices: ["A) oxygen", "B) carbon dioxide", "C) helium"]}), "stop");
    t.deepEqual(prefixed.ok && prefixed.value, want);
});

test("question reply: the paper's line format with Python and JSON lists and lettered choices", (t) => {
    const cases = [
        "CREATED QUESTION AND CHOICES:\nQuestion: Where do bees live?\nChoices: ['a hive', \"a child's toy box\", 'the sea']",
        "CREATED QUESTION AND CHOICES:\nQuestion: Where do bees live?\nChoices: [\"a hive\", \"a child's toy box\", \"the sea\"]",
        "**Question:** Where do bees live?\n**Choices:** A) a hive B) a child's toy box C) the sea",
        "Question: Where do bees live?\nChoices:\nA. a hive\nB. a child's toy box\nC. the sea",
    ];
    for (const text of cases) {
        const r = parseQuestionReply(text, "stop");
        t.true(r.ok, text);
        if (r.ok)
            t.deepEqual(r.value, {question: "Where do bees live?", choices: abcd(["a hive", "a child's toy box", "the sea"])}, text);
    }
});

test("choice lists: python quoting, escapes, unquoted items, and letters only in sequence", (t) => {
    t.deepEqual(parseListLiteral("['it\\'s', 'b, c', \"d\"]"), ["it's", "b, c", "d"]);
    t.deepEqual(parseListLiteral("[red, green , blue]"), ["red", "green", "blue"]);
    t.is(parseListLiteral("['unterminated, 'x"), undefined);
    t.is(parseListLiteral("not a list"), undefined);
    // "U.S. " must not split a choice: only A, B, C... in order are markers
    t.deepEqual(parseChoicesText("A) the U.S. Navy B) the army"), abcd(["the U.S. Navy", "the army"]));
});

test("question reply: malformed and truncated replies are rejected with the right reason", (t) => {
    const bad = parseQuestionReply("{\"question\": \"Why is the sky", "stop");
    t.false(bad.ok);
    t.is(!bad.ok && bad.reason, "question-unparseable");
    const cut = parseQuestionReply("{\"question\": \"Why is the sky", "length");
    t.is(!cut.ok && cut.reason, "question-truncated");
    const story = parseQuestionReply("Once upon a time, there was a little girl named Lily.", "stop");
    t.is(!story.ok && story.reason, "question-unparseable");
    const noChoices = parseQuestionReply(JSON.stringify({question: "Why?", choices: 3}), "stop");
    t.is(!noChoices.ok && noChoices.reason, "question-unparseable");
});

test("answer reply: letters from JSON and from FINAL ANSWER lines; the last marker wins", (t) => {
    const cases: [string, string][] = [
        [JSON.stringify({solution: "x", final_answer: "C"}), "C"],
        [JSON.stringify({solution: "x", final_answer: "(D) the sea"}), "D"],
        ["SOLUTION: first A looks right, but no.\nFINAL ANSWER: B", "B"],
        ["SOLUTION: think\n**Final Answer:** **C**", "C"],
        ["Final answer is A. Wait, recheck.\nFINAL ANSWER: E", "E"],
        ["FINAL ANSWER: Option b", "B"],
        ["B", "B"],
    ];
    for (const [text, letter] of cases) {
        const r = parseAnswerReply(text, "stop");
        t.true(r.ok, text);
        t.is(r.ok && r.value.letter, letter, text);
    }
    t.is(answerLetter("a cat"), undefined);  // a lower-case word is not a letter
    t.is(answerLetter("Because"), undefined);
    const none = parseAnswerReply("SOLUTION: the sun is hot.\nFINAL ANSWER: the sun", "stop");
    t.is(!none.ok && none.reason, "answer-unparseable");
    const cut = parseAnswerReply("SOLUTION: the sun is hot and", "length");
    t.is(!cut.ok && cut.reason, "answer-truncated");
});

test("rationale reply: JSON, end marker, stop sequence, truncation, emptiness", (t) => {
    const j = parseRationaleReply(JSON.stringify({rationale: "Heat flows into the metal. <end>"}), "stop");
    t.deepEqual(j.ok && j.value, "Heat flows into the metal.");
    const m = parseRationaleReply("Rationale: Heat flows into the metal. <end> and then more text", "length");
    t.deepEqual(m.ok && m.value, "Heat flows into the metal.");
    const s = parseRationaleReply("Rationale: Heat flows into the metal.", "stop");  // the server cut at the stop string
    t.deepEqual(s.ok && s.value, "Heat flows into the metal.");
    const cut = parseRationaleReply("Rationale: Heat flows into", "length");
    t.is(!cut.ok && cut.reason, "rationale-truncated");
    const empty = parseRationaleReply("Rationale: <end>", "stop");
    t.is(!empty.ok && empty.reason, "rationale-unparseable");
});

test("reasoning blocks are ignored: braces and markers inside <think> do not count", (t) => {
    const q = parseQuestionReply("<think>maybe {\"question\": \"draft\"} no...</think>\n" +
        JSON.stringify({question: "Which metal is magnetic?", choices: ["iron", "gold"]}), "stop");
    t.deepEqual(q.ok && q.value.choices.map((c) => c.text), ["iron", "gold"]);
    const a = parseAnswerReply("<think>FINAL ANSWER: A? no, wait</think>\nSOLUTION: iron is magnetic.\nFINAL ANSWER: B", "stop");
    t.is(a.ok && a.value.letter, "B");
    const cut = parseAnswerReply("<think>FINAL ANSWER: A is tempting but the long chain of", "length");
    t.is(!cut.ok && cut.reason, "answer-truncated");
});

test("extractJsonObject ignores arrays and broken candidates", (t) => {
    t.is(extractJsonObject("[1, 2]"), undefined);
    t.deepEqual(extractJsonObject("noise {\"a\": 1} noise"), {a: 1});
    t.is(extractJsonObject("{broken"), undefined);
});

test("validation: 2-5 choices, capital unique labels, distinct non-empty texts", (t) => {
    const ok = validateDraft({question: "  Why   is ice cold? ", choices: abcd(["it is frozen", " it is hot "])});
    t.deepEqual(ok.ok && ok.value, {question: "Why is ice cold?", choices: abcd(["it is frozen", "it is hot"])});
    const cases: [Parameters<typeof validateDraft>[0], RejectionReason][] = [
        [{question: "Which one is it?", choices: abcd(["only one"])}, "invalid-choices"],
        [{question: "Which one is it?", choices: abcd(["1", "2", "3", "4", "5", "6"])}, "invalid-choices"],
        [{question: "Which one is it?", choices: [{label: "A", text: "x"}, {label: "A", text: "y"}]}, "invalid-choices"],
        [{question: "Which one is it?", choices: [{label: "1", text: "x"}, {label: "2", text: "y"}]}, "invalid-choices"],
        [{question: "Which one is it?", choices: abcd(["Same thing", "same  thing!"])}, "invalid-choices"],
        [{question: "Which one is it?", choices: abcd(["x", "  "])}, "invalid-choices"],
        [{question: "   ", choices: abcd(["x", "y"])}, "invalid-question"],
        [{question: "Yes!", choices: abcd(["x", "y"])}, "invalid-question"],
        [{question: "x".repeat(5000), choices: abcd(["x", "y"])}, "invalid-question"],
    ];
    for (const [draft, reason] of cases) {
        const r = validateDraft(draft);
        t.is(!r.ok && r.reason, reason, JSON.stringify(draft).slice(0, 80));
    }
    t.is(questionKey("What is  the Sun?"), questionKey("what is the sun"));
    t.not(questionKey("What is the Sun?"), questionKey("What is the Moon?"));
});

test("votes: three equal labels agree; otherwise disagree or not a choice", (t) => {
    t.deepEqual(agreeVotes(["B", "B", "B"], ["A", "B", "C"]), {ok: true, value: "B"});
    const split = agreeVotes(["B", "C", "B"], ["A", "B", "C"]);
    t.is(!split.ok && split.reason, "votes-disagree");
    const outside = agreeVotes(["E", "E", "E"], ["A", "B", "C"]);
    t.is(!outside.ok && outside.reason, "answer-not-a-choice");
});

test("prompts carry the rules, the letters and the worked example; the wire schema drops length keywords", (t) => {
    const parent = {id: "p", question: "Which sense do ears serve?", choices: abcd(["sight", "hearing"])};
    const q = questionMessages(parent, "json").map((m) => m.content).join("\n");
    t.regex(q, /exactly one of its choices is right/);
    t.regex(q, /without seeing the question below/);
    t.regex(q, /A\) sight\nB\) hearing/);
    t.regex(questionMessages(parent, "lines")[1].content, /CREATED QUESTION AND CHOICES:\nQuestion: .*\nChoices: /);
    const draft = {question: "Q?", choices: abcd(["x", "y", "z"])};
    t.regex(answerMessages(draft, "lines")[1].content, /FINAL ANSWER: <one capital letter: A, B, C>/);
    const r = rationaleMessages(draft, "C", "lines")[1].content;
    t.regex(r, /Example:[\s\S]*Rationale: Metals are good conductors[\s\S]*<end>[\s\S]*Answer: C\) z/);
    const wire = JSON.stringify(wireSchema(answerSchema(["A", "B"])));
    t.false(wire.includes("maxLength"));
    t.true(wire.includes("\"enum\":[\"A\",\"B\"]"));
});
