// The synthetic-data pipeline end to end against a real local OpenAI-compatible server with
// scripted replies: votes, malformed replies, duplicates, format fallback, restarts and resumes.
import fs from "node:fs";
import path from "node:path";
import test, {type ExecutionContext} from "ava";
import type {SyntheticItem, TaskItem} from "../../ts/data/task-item.js";
import {taskItemProblem} from "../../ts/data/task-item.js";
import {OptionError} from "../../ts/options.js";
import {synthDefaults} from "../../ts/synth/defaults.js";
import {resolveSynthOptions, synthesize, type SynthesizeOptions} from "../../ts/synth/pipeline.js";
import {createRemoteGenerator} from "../../ts/synth/remote.js";
import {SyntheticStore} from "../../ts/synth/store.js";
import {tempDir} from "../helpers.js";
import {ScriptedChatServer, Teacher, type RecordedRequest, type Reply} from "./openai-server.js";

const parents: TaskItem[] = [
    {id: "obqa-1", question: "The sun is responsible for", choices: [{label: "A", text: "puppies learning tricks"}, {label: "B", text: "plants sprouting"}]},
    {id: "obqa-2", question: "Which of these conducts electricity?", choices: [{label: "A", text: "wood"}, {label: "B", text: "copper"}, {label: "C", text: "glass"}]},
    {id: "obqa-3", question: "What do bees make?", choices: [{label: "1", text: "honey"}, {label: "2", text: "silk"}]},
];

function writeInput(dir: string, items: TaskItem[] = parents): string {
    const file = path.join(dir, "perturbed.jsonl");
    fs.writeFileSync(file, items.map((i) => JSON.stringify(i)).join("\n") + "\n");
    return file;
}

function readOutput(file: string): SyntheticItem[] {
    const text = fs.readFileSync(file, "utf8");
    if (text !== "")
        return text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as SyntheticItem);
    return [];
}

function readJournal(file: string): any[] {
    return fs.readFileSync(file, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
}

/** Every item is a valid task item with three agreeing votes, an answer among its choices, and provenance. */
function checkItems(t: ExecutionContext, items: SyntheticItem[], k: number) {
    const ids = new Set<string>();
    const questions = new Set<string>();
    const perParent = new Map<string, number>();
    for (const item of items) {
        t.is(taskItemProblem(item), undefined, item.id);
        t.is(item.votes.length, 3);
        t.true(item.votes.every((v) => v === item.answer), `${item.id} votes ${item.votes}`);
        t.true(item.choices.some((c) => c.label === item.answer));
        t.true(item.choices.length >= 2 && item.choices.length <= 5);
        t.truthy(item.rationale);
        t.regex(item.prompt_version, /^ppc-synth-1\/(json|lines)$/);
        t.regex(item.generator, /^openai:teacher@127\.0\.0\.1:\d+$/);
        t.true(parents.some((p) => p.id === item.parent_id));
        t.false(ids.has(item.id), `id ${item.id} written twice`);
        ids.add(item.id);
        t.false(questions.has(item.question), `question written twice: ${item.question}`);
        questions.add(item.question);
        perParent.set(item.parent_id, (perParent.get(item.parent_id) ?? 0) + 1);
    }
    for (const [p, n] of perParent)
        t.true(n <= k, `${p} has ${n} items, more than ${k}`);
}

async function serve(t: ExecutionContext, script: (r: RecordedRequest) => Reply | Promise<Reply>): Promise<ScriptedChatServer> {
    const server = await ScriptedChatServer.start(script);
    t.teardown(() => server.stop());
    return server;
}

function options(server: ScriptedChatServer, dir: string, extra: Partial<SynthesizeOptions> = {}): SynthesizeOptions {
    return {
        input: writeInput(dir),
        output: path.join(dir, "synthetic.jsonl"),
        generator: createRemoteGenerator({baseUrl: server.baseUrl, model: "teacher", retryBaseMs: 20, retryMaxMs: 200, concurrency: 4}),
        ratio: 2,
        seed: 1,
        ...extra,
    };
}

test("every perturbed item gets k synthetic items with three agreeing votes and a rationale", async (t) => {
    const dir = tempDir(t);
    const teacher = new Teacher();
    const server = await serve(t, (r) => teacher.reply(r));
    const progress: number[] = [];
    const summary = await synthesize(options(server, dir, {ratio: 3, onProgress: (p) => progress.push(p.settled)}));
    const items = readOutput(path.join(dir, "synthetic.jsonl"));
    t.is(items.length, 9);
    checkItems(t, items, 3);
    for (const p of parents)
        t.is(items.filter((i) => i.parent_id === p.id).length, 3);
    t.true(items.every((i) => i.answer === "B" && i.prompt_version === "ppc-synth-1/json"));
    t.deepEqual(items[0].choices.map((c) => c.label), ["A", "B", "C", "D"]);
    t.is(summary.accepted, 9);
    t.is(summary.rejected, 0);
    t.is(summary.target, 9);
    t.is(server.of("question").length, 9);
    t.is(server.of("answer").length, 27);
    t.is(server.of("rationale").length, 9);
    t.is(summary.requests, 45);
    t.is(progress[progress.length - 1], 9);
    // the question prompt shows the perturbed item; the answer prompt the new question with lettered choices
    t.regex(server.of("question")[0].body.messages[1].content, /Question: .*\nChoices:\nA\) /);
    t.true(server.of("answer").every((r) => r.body.temperature > 0));
    const journal = readJournal(path.join(dir, "synthetic.jsonl.journal"));
    t.deepEqual(journal.map((j) => j.type), ["run"]);
    t.false(fs.existsSync(path.join(dir, "synthetic.jsonl.lock")));
});

test("disagreeing votes, malformed replies, bad choices and duplicates are rejected and counted by reason", async (t) => {
    const dir = tempDir(t);
    // question replies in turn: split votes, malformed JSON, one choice, a copy of the parent, a repeat, then good ones
    const special = [
        JSON.stringify({question: "Which is warmer, [split] ice, water or steam?", choices: ["ice", "water", "steam"]}),
        "{\"question\": \"Why do birds",
        JSON.stringify({question: "Only one choice?", choices: ["yes"]}),
        JSON.stringify({question: "The sun is responsible for", choices: ["x", "y"]}),
        JSON.stringify({question: "A repeated question?", choices: ["x", "y"]}),
        JSON.stringify({question: "A repeated question?", choices: ["x", "y"]}),
    ];
    let q = 0;
    const teacher = new Teacher();
    const server = await serve(t, (r) => r.role === "question" && q < special.length ? {content: special[q++]} : teacher.reply(r));
    // one attempt at a time, in parent order: obqa-1 takes the six special questions and one good one
    const summary = await synthesize(options(server, dir, {ratio: 2, maxAttempts: 7, concurrency: 1}));
    const items = readOutput(path.join(dir, "synthetic.jsonl"));
    checkItems(t, items, 2);
    t.deepEqual(summary.reasonsThisRun, {"votes-disagree": 1, "question-unparseable": 1, "invalid-choices": 1, "duplicate-question": 2});
    t.is(summary.rejectedThisRun, 5);
    t.is(summary.acceptedThisRun, 6);
    t.is(items.length, 6);
    t.true(items.some((i) => i.question === "A repeated question?"));
    const rejections = readJournal(path.join(dir, "synthetic.jsonl.journal")).filter((j) => j.type === "rejected");
    t.is(rejections.length, 5);
    const split = rejections.find((j) => j.reason === "votes-disagree");
    t.deepEqual([...split.votes].sort(), ["A", "B", "C"]);
    t.regex(rejections.find((j) => j.reason === "question-unparseable").detail, /Why do birds/);
    t.is(summary.parentsShort, 0);
});

test("a parent that runs out of attempts stops short of k and the shortfall is reported", async (t) => {
    const dir = tempDir(t);
    const server = await serve(t, (r) => r.role === "question" ? {content: "Once upon a time there was a little dog.", finishReason: "length"}
        : {status: 500});
    const summary = await synthesize(options(server, dir, {ratio: 2, maxAttempts: 3}));
    t.is(summary.accepted, 0);
    t.is(summary.rejected, 9);
    t.deepEqual(summary.reasons, {"question-truncated": 9});
    t.is(summary.parentsShort, 3);
    t.is(server.requests.length, 9);
    t.is(readOutput(path.join(dir, "synthetic.jsonl")).length, 0);
});

test("a server without structured output gets the paper's line format", async (t) => {
    const dir = tempDir(t);
    const teacher = new Teacher();
    const server = await serve(t, (r) => r.body.response_format ? {status: 400, body: {error: {message: "response_format not supported"}}}
        : teacher.reply(r));
    const summary = await synthesize(options(server, dir, {ratio: 2, concurrency: 1}));
    const items = readOutput(path.join(dir, "synthetic.jsonl"));
    t.is(items.length, 6);
    checkItems(t, items, 2);
    // the first attempt began with JSON prompts; once the server refused response_format, the rest used lines
    t.is(items[0].prompt_version, "ppc-synth-1/json", JSON.stringify(items.map((i) => i.prompt_version)));
    t.true(items.slice(1).every((i) => i.prompt_version === "ppc-synth-1/lines"));
    t.deepEqual(summary.promptVersions, ["ppc-synth-1/json", "ppc-synth-1/lines"]);
    const linesPrompts = server.of("rationale").filter((r) => /Reply with the rationale only/.test(r.body.messages[1].content));
    t.is(linesPrompts.length, 5);
    t.true(linesPrompts.every((r) => JSON.stringify(r.body.stop) === "[\"<end>\"]" && r.body.response_format === undefined));
    t.regex(server.requests[server.requests.length - 1].body.messages[1].content, /<end>/);
});

test("a server restarted mid-run is ridden over by retries; nothing is lost or written twice", async (t) => {
    const dir = tempDir(t);
    const teacher = new Teacher();
    let restarted = false;
    const server = await serve(t, (r) => teacher.reply(r));
    server.script = (r) => {
        if (r.n === 12 && !restarted) {
            restarted = true;
            // go down hard (open connections cut) and come back 600 ms later on the same port
            setImmediate(async () => {
                await server.stop();
                await new Promise((res) => setTimeout(res, 600));
                await server.restart();
            });
            return {hang: true};
        }
        return {...teacher.reply(r), delayMs: 5};
    };
    const generator = createRemoteGenerator({baseUrl: server.baseUrl, model: "teacher", retryBaseMs: 100, retryMaxMs: 400, concurrency: 4});
    const summary = await synthesize(options(server, dir, {ratio: 3, generator}));
    t.true(restarted);
    t.true(generator.stats.failures.network >= 1);
    const items = readOutput(path.join(dir, "synthetic.jsonl"));
    t.is(items.length, 9);
    checkItems(t, items, 3);
    t.is(summary.accepted, 9);
    t.is(summary.rejected, 0);
});

test("a fatal error mid-run keeps the files valid; the next run resumes without repeating an attempt", async (t) => {
    const dir = tempDir(t);
    const teacher = new Teacher();
    let allowed = 20;
    const server = await serve(t, (r) => --allowed >= 0 ? {...teacher.reply(r), delayMs: 5} : {status: 401, body: {error: {message: "key revoked"}}});
    const opts = options(server, dir, {ratio: 4});
    await t.throwsAsync(synthesize(opts), {message: /HTTP 401 \(key revoked\)/});
    const first = readOutput(opts.output);
    t.true(first.length >= 1 && first.length < 12, `first run wrote ${first.length}`);
    checkItems(t, first, 4);
    t.false(fs.existsSync(`${opts.output}.lock`));

    allowed = Infinity;
    const before = server.of("question").length;
    const summary = await synthesize({...opts, generator: createRemoteGenerator({baseUrl: server.baseUrl, model: "teacher", concurrency: 4})});
    const items = readOutput(opts.output);
    t.is(items.length, 12);
    checkItems(t, items, 4);
    t.deepEqual(items.slice(0, first.length), first);  // appended, never rewritten
    t.is(summary.resumed.previousRuns, 1);
    t.is(summary.resumed.acceptedBefore, first.length);
    t.is(summary.acceptedThisRun, 12 - first.length);
    // the second run asked only for the questions still missing
    t.is(server.of("question").length - before, 12 - first.length);
    // attempt numbers per parent are unique across both runs
    for (const p of parents) {
        const attempts = items.filter((i) => i.parent_id === p.id).map((i) => (i.source as any).attempt);
        t.is(new Set(attempts).size, attempts.length);
    }
});

test("a torn last line left by a crash is cut off and its attempt redone; a third run does nothing", async (t) => {
    const dir = tempDir(t);
    const teacher = new Teacher();
    const server = await serve(t, (r) => teacher.reply(r));
    const opts = options(server, dir, {ratio: 2});
    await synthesize(opts);
    const whole = fs.readFileSync(opts.output, "utf8");
    const lines = whole.split("\n").filter(Boolean);
    // simulate a crash in the middle of writing the last item
    fs.writeFileSync(opts.output, lines.slice(0, -1).join("\n") + "\n" + lines[lines.length - 1].slice(0, 40));
    const lost = JSON.parse(lines[lines.length - 1]) as SyntheticItem;
    const summary = await synthesize(opts);
    t.deepEqual(summary.resumed.droppedTornLines, [opts.output]);
    t.is(summary.acceptedThisRun, 1);
    const items = readOutput(opts.output);
    t.is(items.length, 6);
    checkItems(t, items, 2);
    t.is(items[5].id, lost.id);  // the same attempt number, generated again

    const n = server.requests.length;
    const again = await synthesize(opts);
    t.is(server.requests.length, n);
    t.is(again.acceptedThisRun + again.rejectedThisRun, 0);
    t.is(again.accepted, 6);
    t.is(again.resumed.previousRuns, 2);
});

test("two runs cannot write one output; a lock left by a dead process is taken over", async (t) => {
    const dir = tempDir(t);
    const out = path.join(dir, "synthetic.jsonl");
    const store = await SyntheticStore.open(out);
    await t.throwsAsync(SyntheticStore.open(out), {message: new RegExp(`another run \\(pid ${process.pid}\\)`)});
    await store.close();
    fs.writeFileSync(`${out}.lock`, "999999999\n");  // no such process
    const again = await SyntheticStore.open(out);
    t.is(fs.readFileSync(`${out}.lock`, "utf8").trim(), String(process.pid));
    await again.close();
});

test("outputs that were not written by synth, and bad inputs, are refused with file and line", async (t) => {
    const dir = tempDir(t);
    const server = await serve(t, () => ({content: "unused"}));
    const opts = options(server, dir);
    fs.writeFileSync(opts.output, JSON.stringify({id: "x", question: "q", choices: []}) + "\n");
    await t.throwsAsync(synthesize(opts), {message: /synthetic\.jsonl:1: not a synthetic item written by ppc-gpt synth/});
    fs.writeFileSync(opts.output, "{\"id\": 1}\n{broken\n");
    await t.throwsAsync(synthesize(opts), {message: /synthetic\.jsonl:2: not valid JSON/});
    fs.rmSync(opts.output);

    const input = path.join(dir, "bad.jsonl");
    fs.writeFileSync(input, JSON.stringify(parents[0]) + "\n{\"id\": \"q\", \"question\": \"x\"}\n");
    await t.throwsAsync(synthesize({...opts, input}), {message: /bad\.jsonl:2: "choices" must be a non-empty array/});
    fs.writeFileSync(input, JSON.stringify(parents[0]) + "\n" + JSON.stringify(parents[0]) + "\n");
    await t.throwsAsync(synthesize({...opts, input}), {message: /repeats the id "obqa-1"/});
    await t.throwsAsync(synthesize({...opts, output: opts.input}), {message: /different file/});
    await t.throwsAsync(synthesize({...opts, ratio: 0}), {instanceOf: RangeError});
    await t.throwsAsync(synthesize({...opts, temperature: {answer: 0}}), {message: /temperature must be a number in \(0, 2\]/});
    t.is(server.requests.length, 0);
});

test("resolveSynthOptions fills synthDefaults and rejects an out-of-range option with an OptionError naming it", (t) => {
    const r = resolveSynthOptions({});
    t.is(r.k, synthDefaults.ratio);
    t.is(r.maxAttempts, 2 * synthDefaults.ratio);
    for (const [o, options] of [[{ratio: 0}, ["ratio"]], [{maxAttempts: 0}, ["maxAttempts"]], [{ratio: 4, maxAttempts: 2}, ["maxAttempts", "ratio"]],
        [{concurrency: 0}, ["concurrency"]], [{temperature: {answer: 0}}, ["temperature"]], [{temperature: {answer: 2.5}}, ["temperature"]],
        [{maxTokens: {answer: 0}}, ["maxTokens"]], [{seed: -1}, ["seed"]], [{limit: 0}, ["limit"]]] as const) {
        const err = t.throws(() => resolveSynthOptions(o), {instanceOf: OptionError}, JSON.stringify(o));
        t.deepEqual(err?.options, options);
    }
});
