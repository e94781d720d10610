// Dataset loaders on every original file in the shared data folder (row counts from its README),
// and malformed input: each error names the file and the line.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {datasets, loadArc, loadCommonsenseQa, loadFinloraSentiment, loadFiqaPosts, loadOpenBookQa, loadPhraseBank, loadTask,
    taskFile} from "../../ts/data/loaders/index.js";
import {readTaskItems} from "../../ts/data/jsonl.js";
import {taskItemProblem, type TaskItem} from "../../ts/data/task-item.js";
import {hasShared, sharedPath, tempDir} from "../helpers.js";

const sharedTest = hasShared ? test : test.skip;
const data = (...p: string[]) => sharedPath("data", ...p);

function checkSchema(t: import("ava").ExecutionContext, items: TaskItem[], file: string): void {
    const ids = new Set<string>();
    for (const item of items) {
        const problem = taskItemProblem(item);
        if (problem)
            t.fail(`${file}: item ${item.id}: ${problem}`);
        ids.add(item.id);
    }
    t.is(ids.size, items.length, `${file}: ids are unique`);
}

sharedTest("ARC: row counts, 3 to 5 choices, numeric labels kept", async (t) => {
    const counts: Record<string, number> = {
        "ARC-Easy-Train": 2251, "ARC-Easy-Dev": 570, "ARC-Easy-Test": 2376,
        "ARC-Challenge-Train": 1119, "ARC-Challenge-Dev": 299, "ARC-Challenge-Test": 1172,
    };
    for (const [name, n] of Object.entries(counts)) {
        const file = data("arc", `${name}.jsonl`);
        const items = await loadArc(file, name.includes("Easy") ? "arc-easy" : "arc-challenge");
        t.is(items.length, n, name);
        checkSchema(t, items, file);
        const sizes = new Set(items.map((x) => x.choices.length));
        t.true([...sizes].every((k) => k >= 3 && k <= 5), `${name}: ${[...sizes]}`);
        t.true(items.every((x) => x.answer !== undefined));
        const numeric = items.filter((x) => x.choices[0].label === "1");
        t.true(numeric.length > 0, `${name} has items labelled 1..4`);
        t.true(numeric.every((x) => /^[1-5]$/.test(x.answer!)));
        t.is(items[0].source?.line, 1);
    }
    // The first test item, field by field against the raw line.
    const raw = JSON.parse(fs.readFileSync(data("arc", "ARC-Easy-Test.jsonl"), "utf8").split("\n")[0]);
    const first = (await loadTask("arc-easy"))[0];
    t.is(first.id, raw.id);
    t.is(first.question, raw.question.stem);
    t.deepEqual(first.choices, raw.question.choices.map((c: {label: string; text: string}) => ({label: c.label, text: c.text})));
    t.is(first.answer, raw.answerKey);
    t.is(taskFile("arc-challenge", {split: "validation"}), data("arc", "ARC-Challenge-Dev.jsonl"));
});

sharedTest("OpenBookQA and CommonsenseQA: row counts, answers, unlabelled test", async (t) => {
    for (const [file, n] of [["OpenBookQA_train.jsonl", 4957], ["dev.jsonl", 500], ["test.jsonl", 500],
        ["additional_train_complete.jsonl", 4957], ["additional_dev_complete.jsonl", 500], ["additional_test_complete.jsonl", 500]] as const) {
        const items = await loadOpenBookQa(data("openbookqa", file));
        t.is(items.length, n, file);
        checkSchema(t, items, file);
        t.true(items.every((x) => x.choices.length === 4 && x.answer !== undefined));
        if (file.startsWith("additional"))
            t.true(items.every((x) => typeof x.source?.fact1 === "string"), `${file} keeps fact1`);
    }
    for (const [file, n] of [["train.jsonl", 9741], ["valid.jsonl", 1221], ["test.jsonl", 1140]] as const) {
        const items = await loadCommonsenseQa(data("commonsenseqa", file));
        t.is(items.length, n, file);
        checkSchema(t, items, file);
        t.true(items.every((x) => x.choices.length === 5 && typeof x.source?.question_concept === "string"));
        t.is(items.filter((x) => x.answer !== undefined).length, file === "test.jsonl" ? 0 : n, `${file} answers`);
    }
    t.is((await loadTask("commonsenseqa")).length, 1221, "default split: validation");
    t.is((await loadTask("openbookqa")).length, 500);
});

sharedTest("FiQA-SA: FinLoRA test file classes, FiQA_post.json scores mapped to 3 classes", async (t) => {
    const test235 = await loadTask("fiqa-sa");
    t.is(test235.length, 235);
    checkSchema(t, test235, "finlora_fiqa_test.jsonl");
    const byClass = (items: TaskItem[]) => {
        const c: Record<string, number> = {};
        for (const x of items) {
            const text = x.choices.find((ch) => ch.label === x.answer)!.text;
            c[text] = (c[text] ?? 0) + 1;
        }
        return c;
    };
    t.deepEqual(byClass(test235), {positive: 141, negative: 76, neutral: 18});
    t.deepEqual(test235[0].choices, [{label: "A", text: "negative"}, {label: "B", text: "neutral"}, {label: "C", text: "positive"}]);
    t.true(test235.every((x) => !x.question.includes("Instruction:") && x.question.length > 0));

    const posts = await loadTask("fiqa-sa", {split: "train"});
    const raw = JSON.parse(fs.readFileSync(data("fiqa", "FiQA_post.json"), "utf8")) as Record<string, {sentence: string; info: {sentiment_score: string}[]}>;
    t.is(posts.length, Object.values(raw).reduce((a, p) => a + p.info.length, 0));
    t.is(Object.keys(raw).length, 675);
    const expected: Record<string, number> = {};
    for (const p of Object.values(raw)) {
        for (const i of p.info) {
            const s = Number(i.sentiment_score);
            const c = s < -0.1 ? "negative" : s > 0.1 ? "positive" : "neutral";
            expected[c] = (expected[c] ?? 0) + 1;
        }
    }
    t.deepEqual(byClass(posts), expected);
    checkSchema(t, posts, "FiQA_post.json");
    const first = posts[0];
    t.is(first.question, raw[first.id].sentence);
    t.is(typeof first.source?.line, "number");
});

sharedTest("Financial PhraseBank: ISO-8859-1 sentence@label files and the FinLoRA test file", async (t) => {
    for (const [name, n] of [["50", 4846], ["66", 4217], ["75", 3453], ["All", 2264]] as const) {
        const file = data("financial_phrasebank", `Sentences_${name}Agree.txt`);
        const items = await loadPhraseBank(file);
        t.is(items.length, n, name);
        checkSchema(t, items, file);
        // An independent parse: latin1 bytes, CRLF lines, label after the last '@'.
        const lines = fs.readFileSync(file).toString("latin1").split("\r\n").filter((l) => l !== "");
        t.is(lines.length, n);
        for (const [i, line] of lines.entries()) {
            const at = line.lastIndexOf("@");
            t.is(items[i].question, line.slice(0, at).trim());
            t.is(items[i].choices.find((c) => c.label === items[i].answer)!.text, line.slice(at + 1));
        }
        t.false(items.some((x) => x.question.includes("\uFFFD") || x.question.includes("\r")));
        t.true(items.some((x) => /[\u00C0-\u00FF]/.test(x.question)), "latin-1 letters decoded");
    }
    const fpb = await loadTask("financial-phrasebank");
    t.is(fpb.length, 1212);
    checkSchema(t, fpb, "finlora_fpb_test.jsonl");
    t.is((await loadTask("financial-phrasebank", {split: "allagree"})).length, 2264);
    t.is(Object.keys(datasets["financial-phrasebank"].splits).length, 5);
});

test("malformed lines name the file and the line", async (t) => {
    const dir = tempDir(t);
    const write = (name: string, text: string | Buffer) => {
        const f = path.join(dir, name);
        fs.writeFileSync(f, text);
        return f;
    };
    const ok = JSON.stringify({id: "a", question: {stem: "Q?", choices: [{text: "x", label: "A"}, {text: "y", label: "B"}]}, answerKey: "A"});
    const arc = (second: string) => write("arc.jsonl", `${ok}\n\n${second}\n`);
    await t.throwsAsync(loadArc(arc("{not json")), {message: /arc\.jsonl:3: not valid JSON/});
    await t.throwsAsync(loadArc(arc("[1,2]")), {message: /arc\.jsonl:3: not a JSON object/});
    await t.throwsAsync(loadArc(arc(ok.replace('"answerKey":"A"', '"answerKey":"C"').replace('"id":"a"', '"id":"b"'))),
        {message: /arc\.jsonl:3: "answerKey" "C" is not one of the choice labels \(A, B\)/});
    await t.throwsAsync(loadArc(arc(ok.replace('"stem":"Q?",', '').replace('"id":"a"', '"id":"b"'))), {message: /arc\.jsonl:3: "question\.stem" must be a string \(missing\)/});
    await t.throwsAsync(loadArc(arc(ok.replace('"label":"B"', '"label":"A"').replace('"id":"a"', '"id":"b"'))), {message: /arc\.jsonl:3: choice label "A" appears twice/});
    await t.throwsAsync(loadArc(arc(ok)), {message: /arc\.jsonl:3: id "a" appears twice/});
    await t.throwsAsync(loadArc(arc(ok.replace(',"answerKey":"A"', '').replace('"id":"a"', '"id":"b"'))), {message: /arc\.jsonl:3: "answerKey" is missing/});
    await t.throwsAsync(loadArc(arc(ok.replace('"choices":[', '"choices":[{"text":5,"label":"Z"},').replace('"id":"a"', '"id":"b"'))),
        {message: /arc\.jsonl:3: "question\.choices\[0\]" must be \{"text": string, "label": string\}/});
    // OpenBookQA strips leading spaces of answerKey, as lm-evaluation-harness does.
    const obqa = write("obqa.jsonl", ok.replace('"answerKey":"A"', '"answerKey":" B"') + "\n");
    t.is((await loadOpenBookQa(obqa))[0].answer, "B");

    const fpb = write("Sentences_50Agree.txt", Buffer.from("Sales rose 5 % .@positive\r\nNo label here\r\n", "latin1"));
    await t.throwsAsync(loadPhraseBank(fpb), {message: /Sentences_50Agree\.txt:2: expected "sentence@label"/});
    const fpb2 = write("Sentences_66Agree.txt", Buffer.from("Caf\xe9 profits fell .@negative\r\nProfit was flat .@flat\r\n", "latin1"));
    await t.throwsAsync(loadPhraseBank(fpb2), {message: /Sentences_66Agree\.txt:2: label must be negative, neutral or positive \(got "flat"\)/});
    const good = await loadPhraseBank(write("Sentences_75Agree.txt", Buffer.from("Caf\xe9 profits fell .@negative\r\n", "latin1")));
    t.is(good[0].question, "Café profits fell .");
    t.is(good[0].id, "fpb-75-1");

    const ctx = "Instruction: What is the sentiment of this tweet? Please choose an answer from {negative/neutral/positive}.\nInput: up up up\nAnswer: ";
    const finlora = write("fin.jsonl", `${JSON.stringify({context: ctx, target: "positive"})}\n${JSON.stringify({context: ctx, target: "bullish"})}\n`);
    await t.throwsAsync(loadFinloraSentiment(finlora), {message: /fin\.jsonl:2: "target" must be negative, neutral or positive \(got "bullish"\)/});
    const finlora2 = write("fin2.jsonl", `${JSON.stringify({context: "What now?", target: "positive"})}\n`);
    await t.throwsAsync(loadFinloraSentiment(finlora2), {message: /fin2\.jsonl:1: "context" is not in FinLoRA's/});
    const finlora3 = write("fin3.jsonl", `${JSON.stringify({context: ctx})}\n`);
    await t.throwsAsync(loadFinloraSentiment(finlora3), {message: /fin3\.jsonl:1: "target" must be a string \(missing\)/});

    const posts = write("FiQA_post.json", '{\n  "1": {"sentence": "up", "info": [{"sentiment_score": "0.5"}]},\n  "2": {"sentence": "down",\n "info": [{"sentiment_score": "-7"}]}\n}\n');
    await t.throwsAsync(loadFiqaPosts(posts), {message: /FiQA_post\.json:3: post "2": info\[0\]\.sentiment_score must be a number in \[-1, 1\] \(got "-7"\)/});
    const posts2 = write("FiQA_post2.json", '{\n  "1": {"sentence": "up", "info": [{"sentiment_score": "0.5"}]},\n  "2": {"sentence": "down" "info": []}\n}\n');
    await t.throwsAsync(loadFiqaPosts(posts2), {message: /FiQA_post2\.json:3: not valid JSON/});
    const multi = await loadFiqaPosts(write("FiQA_post3.json", JSON.stringify({9: {sentence: "s", info: [{sentiment_score: "0.05"}, {sentiment_score: -0.5}]}})));
    t.deepEqual(multi.map((x) => [x.id, x.answer]), [["9-0", "B"], ["9-1", "A"]]);

    await t.throwsAsync(loadTask("arc-easy", {dataDir: dir}), {message: /ARC-Easy-Test\.jsonl: no such file/});
    await t.throwsAsync(loadTask("openbookqa", {split: "nope"}), {message: /dataset "openbookqa" has no split "nope"; splits: train, dev, test/});
    const item = JSON.stringify({id: "q", question: "Q?", choices: [{label: "A", text: "x"}], answer: "A"});
    await t.throwsAsync(loadTask("mc", {file: write("items.jsonl", `${item}\n\n{"id": "r"}\n`)}), {message: /items\.jsonl:3: "question" must be a string/});
});

test("a dataset's original layout where task items are expected is named, with the way out", async (t) => {
    const dir = tempDir(t);
    const write = (name: string, text: string) => {
        const f = path.join(dir, name);
        fs.writeFileSync(f, text);
        return f;
    };
    const ai2 = JSON.stringify({id: "Mercury_1", question: {stem: "Q?", choices: [{text: "x", label: "A"}, {text: "y", label: "B"}]}, answerKey: "A"});
    await t.throwsAsync(readTaskItems(write("arc.jsonl", `${ai2}\n`)),
        {message: /arc\.jsonl:1: "question" must be a string \(this line is in the AI2 layout of ARC\/OpenBookQA\/CommonsenseQA, .*--task <name>.*"Task items"\)/});
    const finlora = JSON.stringify({context: "Instruction: ... Answer:", target: "positive"});
    await t.throwsAsync(readTaskItems(write("fin.jsonl", `${finlora}\n`)), {message: /fin\.jsonl:1: "id" must be a non-empty string \(this line is in FinLoRA's \{context, target\} layout/});
    // other mistakes keep the plain message
    t.is(taskItemProblem({id: "q", question: 3, choices: []}), "\"question\" must be a string");
    t.is(taskItemProblem({id: "q", question: "Q?", choices: [{label: "A", text: "x"}]}), undefined);
});

test("JSONL: a UTF-8 byte order mark is skipped; a folder is named as one", async (t) => {
    const dir = tempDir(t);
    const item = {id: "q", question: "Q?", choices: [{label: "A", text: "x"}, {label: "B", text: "y"}], answer: "B"};
    const bom = path.join(dir, "bom.jsonl");
    fs.writeFileSync(bom, "\ufeff" + JSON.stringify(item) + "\r\n" + JSON.stringify({...item, id: "r"}) + "\r\n");
    t.deepEqual((await readTaskItems(bom)).map((x) => x.id), ["q", "r"]);
    // only a mark at the very start is one: elsewhere it stays an error naming the line
    const inner = path.join(dir, "inner.jsonl");
    fs.writeFileSync(inner, JSON.stringify(item) + "\n\ufeff" + JSON.stringify({...item, id: "r"}) + "\n");
    await t.throwsAsync(readTaskItems(inner), {message: /inner\.jsonl:2: not valid JSON/});
    await t.throwsAsync(readTaskItems(dir), {message: new RegExp(`${dir.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: cannot read: it is a folder, not a file`)});
});
