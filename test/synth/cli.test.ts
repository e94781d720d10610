// `ppc-gpt synth` as a real child process against a real local OpenAI-compatible server:
// kill -9 mid-run and resume, dead servers, bad input, usage errors, JSON output.
import {spawn, type ChildProcess} from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import test, {type ExecutionContext} from "ava";
import type {SyntheticItem, TaskItem} from "../../ts/data/task-item.js";
import {taskItemProblem} from "../../ts/data/task-item.js";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {cliPath, tempDir} from "../helpers.js";
import {ScriptedChatServer, Teacher} from "./openai-server.js";

interface Run {
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
}

function start(args: string[]): {child: ChildProcess; done: Promise<Run>} {
    const child = spawn(process.execPath, [cliPath, "synth", ...args], {stdio: ["ignore", "pipe", "pipe"],
        env: {...process.env, PPC_GPT_API_KEY: "", OPENAI_API_KEY: ""}});
    let stdout = "", stderr = "";
    child.stdout!.on("data", (d) => stdout += d);
    child.stderr!.on("data", (d) => stderr += d);
    const done = new Promise<Run>((resolve) => child.on("close", (code, signal) => resolve({code, signal, stdout, stderr})));
    return {child, done};
}

const cli = (args: string[]) => start(args).done;

function parentsFile(dir: string, n: number): string {
    const items: TaskItem[] = Array.from({length: n}, (_, i) => ({
        id: `arc-${i}`,
        question: `Perturbed question ${i} about plants and light?`,
        choices: [{label: "A", text: "roots"}, {label: "B", text: "leaves"}, {label: "C", text: "stones"}],
        answer: "B",
    }));
    const file = path.join(dir, "perturbed.jsonl");
    fs.writeFileSync(file, items.map((i) => JSON.stringify(i)).join("\n") + "\n");
    return file;
}

/** Complete lines parsed; a torn last line (no newline) is returned separately. */
function readLines(file: string): {items: SyntheticItem[]; torn: string} {
    const text = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
    const cut = text.lastIndexOf("\n") + 1;
    return {items: text.slice(0, cut).split("\n").filter(Boolean).map((l) => JSON.parse(l)), torn: text.slice(cut)};
}

async function serve(t: ExecutionContext, delayMs: number): Promise<ScriptedChatServer> {
    const teacher = new Teacher();
    const server = await ScriptedChatServer.start((r) => ({...teacher.reply(r), delayMs}));
    t.teardown(() => server.stop());
    return server;
}

async function deadPort(): Promise<number> {
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
    const port = (s.address() as net.AddressInfo).port;
    await new Promise<void>((r) => s.close(() => r()));
    return port;
}

test("killed with SIGKILL mid-run, the CLI resumes: the output parses and no item or attempt is generated twice", async (t) => {
    const dir = tempDir(t);
    const server = await serve(t, 40);
    const input = parentsFile(dir, 6);
    const out = path.join(dir, "synthetic.jsonl");
    const args = ["--in", input, "--out", out, "--base-url", server.baseUrl, "--remote-model", "teacher", "--ratio", "3",
        "--concurrency", "2", "--seed", "5", "--json"];

    const first = start(args);
    for (let i = 0; i < 600 && readLines(out).items.length < 4; i++)
        await new Promise((r) => setTimeout(r, 25));
    first.child.kill("SIGKILL");
    const killed = await first.done;
    t.is(killed.signal, "SIGKILL");
    const before = readLines(out);
    t.true(before.items.length >= 4 && before.items.length < 18, `first run wrote ${before.items.length} items`);
    t.true(fs.existsSync(`${out}.lock`));  // left behind by the killed process
    const questionsRun1 = server.of("question").length;

    const second = await cli(args);
    t.is(second.code, 0, second.stderr);
    const summary = JSON.parse(second.stdout);
    t.is(summary.accepted, 18);
    t.is(summary.rejected, 0);
    t.is(summary.resumed.previousRuns, 1);
    t.is(summary.resumed.acceptedBefore, before.items.length);
    t.is(summary.acceptedThisRun, 18 - before.items.length);
    t.is(summary.resumed.droppedTornLines.length, before.torn === "" ? 0 : 1);

    const after = readLines(out);
    t.is(after.torn, "");
    t.is(after.items.length, 18);
    t.deepEqual(after.items.slice(0, before.items.length), before.items);  // appended, never rewritten
    for (const item of after.items) {
        t.is(taskItemProblem(item), undefined);
        t.deepEqual(item.votes, ["B", "B", "B"]);
        t.is(item.prompt_version, "ppc-synth-1/json");
    }
    t.is(new Set(after.items.map((i) => i.id)).size, 18);
    t.is(new Set(after.items.map((i) => i.question)).size, 18);
    for (let p = 0; p < 6; p++)
        t.is(after.items.filter((i) => i.parent_id === `arc-${p}`).length, 3);
    // the second run generated exactly the missing questions, nothing that was already written
    t.is(server.of("question").length - questionsRun1, 18 - before.items.length);
    t.false(fs.existsSync(`${out}.lock`));
    // progress went to stderr as JSON lines, with the counts
    const events = second.stderr.split("\n").filter(Boolean).map((l) => JSON.parse(l));
    const last = events.filter((e) => e.event === "progress").pop();
    t.like(last, {stage: "synth", done: 18, total: 18, accepted: 18, rejected: 0});
});

test("a dead server ends the run with exit 1, a clear message, and intact files", async (t) => {
    const dir = tempDir(t);
    const input = parentsFile(dir, 2);
    const out = path.join(dir, "synthetic.jsonl");
    const port = await deadPort();
    const r = await cli(["--in", input, "--out", out, "--base-url", `http://127.0.0.1:${port}/v1`, "--remote-model", "m", "--retries", "1"]);
    t.is(r.code, 1);
    t.regex(r.stderr, new RegExp(`ppc-gpt synth: error: http://127\\.0\\.0\\.1:${port}/v1/chat/completions: gave up after 2 tries: .*ECONNREFUSED`));
    t.regex(r.stderr, /run the same command again to continue/);
    t.is(fs.readFileSync(out, "utf8"), "");
    t.false(fs.existsSync(`${out}.lock`));

    const j = await cli(["--in", input, "--out", out, "--base-url", `http://127.0.0.1:${port}`, "--remote-model", "m", "--retries", "0", "--json"]);
    t.is(j.code, 1);
    const err = JSON.parse(j.stdout);
    t.false(err.usage);
    t.regex(err.error, /ECONNREFUSED/);
});

test("a rejected API key stops the run at once with exit 1", async (t) => {
    const dir = tempDir(t);
    const server = await ScriptedChatServer.start(() => ({status: 401, body: {error: {message: "Incorrect API key provided"}}}));
    t.teardown(() => server.stop());
    const r = await cli(["--in", parentsFile(dir, 3), "--out", path.join(dir, "o.jsonl"), "--base-url", server.baseUrl,
        "--remote-model", "m", "--api-key-env", "MY_KEY"]);
    t.is(r.code, 1);
    t.regex(r.stderr, /HTTP 401 \(Incorrect API key provided\): check the API key \(environment variable MY_KEY\)/);
    t.true(server.requests.length <= 8);  // only the requests already in flight, no retries
});

test("bad input files fail with exit 1 naming the file and line", async (t) => {
    const dir = tempDir(t);
    const server = await serve(t, 0);
    const base = ["--base-url", server.baseUrl, "--remote-model", "m", "--out", path.join(dir, "o.jsonl")];
    const bad = path.join(dir, "bad.jsonl");
    fs.writeFileSync(bad, JSON.stringify({id: "a", question: "q?", choices: [{label: "A", text: "x"}]}) + "\n{\"id\": \"b\",\n");
    let r = await cli(["--in", bad, ...base]);
    t.is(r.code, 1);
    t.regex(r.stderr, /bad\.jsonl:2: not valid JSON/);
    fs.writeFileSync(bad, JSON.stringify({id: "a", question: "q?", choices: [{label: "A", text: "x"}], answer: "Z"}) + "\n");
    r = await cli(["--in", bad, ...base]);
    t.is(r.code, 1);
    t.regex(r.stderr, /bad\.jsonl:1: "answer" must be one of the choice labels \(A\)/);
    r = await cli(["--in", path.join(dir, "missing.jsonl"), ...base]);
    t.is(r.code, 1);
    t.regex(r.stderr, /missing\.jsonl: cannot read/);
    fs.writeFileSync(bad, "");
    r = await cli(["--in", bad, ...base]);
    t.is(r.code, 1);
    t.regex(r.stderr, /bad\.jsonl: no items/);
    r = await cli(["--in", parentsFile(dir, 1), "--out", path.join(dir, "o.jsonl"), "--model", path.join(dir, "nope.gguf")]);
    t.is(r.code, 1);
    t.regex(r.stderr, /--model .*nope\.gguf: no such file/);
    fs.writeFileSync(path.join(dir, "fake.gguf"), "this is not a gguf file");
    r = await cli(["--in", parentsFile(dir, 1), "--out", path.join(dir, "o.jsonl"), "--model", path.join(dir, "fake.gguf")]);
    t.is(r.code, 1);
    t.regex(r.stderr, /fake\.gguf: not a GGUF file/);
    // a truncated model is named with what is wrong, before the loader (whose message is "failed to load model") sees it
    const whole = path.join(dir, "whole.gguf"), cut = path.join(dir, "cut.gguf");
    await writeSyntheticModel(whole, {architecture: "llama", layers: 2, embedding: 32, heads: 4, kvHeads: 2, feedForward: 48, vocab: 300, seed: 1});
    fs.writeFileSync(cut, fs.readFileSync(whole).subarray(0, fs.statSync(whole).size - 1000));
    r = await cli(["--in", parentsFile(dir, 1), "--out", path.join(dir, "o.jsonl"), "--model", cut]);
    t.is(r.code, 1);
    t.regex(r.stderr, /cut\.gguf: truncated or corrupt file: tensor '.+' .* runs past the end of the file/);
    t.notRegex(r.stderr, /node-llama-cpp|failed to load model/);
    t.false(fs.existsSync(path.join(dir, "o.jsonl")));
    t.is(server.requests.length, 0);
});

test("usage errors exit 2 with a hint", async (t) => {
    const dir = tempDir(t);
    const input = parentsFile(dir, 1);
    const out = path.join(dir, "o.jsonl");
    const cases: [string[], RegExp][] = [
        [["--in", input, "--out", out], /choose the generator/],
        [["--in", input, "--out", out, "--model", "x.gguf", "--base-url", "http://h/v1"], /choose the generator/],
        [["--in", input, "--out", out, "--base-url", "http://h/v1"], /--base-url needs --remote-model/],
        [["--out", out, "--model", "x.gguf"], /--in .* and --out .* are required/],
        [["--in", input, "--out", out, "--model", "x.gguf", "--ratio", "0"], /--ratio must be an integer >= 1 \(got "0"\)/],
        [["--in", input, "--out", out, "--model", "x.gguf", "--ratio", "4", "--max-attempts", "2"], /--max-attempts \(2\) must be at least --ratio \(4\)/],
        [["--in", input, "--out", out, "--model", "x.gguf", "--temperature", "0"], /--temperature must be a number in \(0, 2\]/],
        [["--in", input, "--out", out, "--base-url", "not a url", "--remote-model", "m"], /is not a URL/],
        [["--in", input, "--out", input, "--base-url", "http://127.0.0.1:9/v1", "--remote-model", "m"], /different file from the input/],
    ];
    for (const [args, message] of cases) {
        const r = await cli(args);
        t.is(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message);
        t.regex(r.stderr, /Try 'ppc-gpt synth --help'/);
    }
    const bad = await cli(["--in", input, "--out", out, "--model", "x.gguf", "--format", "yaml"]);
    t.is(bad.code, 2);
    const help = await cli(["--help"]);
    t.is(help.code, 0);
    t.regex(help.stdout, /Examples:\n {2}ppc-gpt synth --in perturbed\.jsonl/);
});

test("human summary lists rejection reasons (line format server, disagreeing votes)", async (t) => {
    const dir = tempDir(t);
    const teacher = new Teacher((req) => `Question ${req.n} [split] which is right?`);
    const server = await ScriptedChatServer.start((r) => teacher.reply(r));
    t.teardown(() => server.stop());
    const out = path.join(dir, "o.jsonl");
    const r = await cli(["--in", parentsFile(dir, 2), "--out", out, "--base-url", server.baseUrl, "--remote-model", "teacher",
        "--ratio", "1", "--max-attempts", "2", "--format", "lines"]);
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout, /accepted {6}0 this run, 0 of 2 in all/);
    t.regex(r.stdout, /rejected {6}4 this run, 4 in all \(2 items ran out of attempts before 1\)/);
    t.regex(r.stdout, /rejection reason +this run +all runs\n-+ +-+ +-+\nvotes-disagree +4 +4/);
    t.true(server.requests.every((q) => q.body.response_format === undefined));
    const journal = fs.readFileSync(`${out}.journal`, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
    t.is(journal.filter((j) => j.reason === "votes-disagree").length, 4);
});

test("--k is --ratio (the paper's k, the name run, client and the job spec use)", async (t) => {
    const dir = tempDir(t);
    const input = parentsFile(dir, 2);
    const out = path.join(dir, "o.jsonl");
    for (const [args, message] of [
        [["--k", "0"], /--k must be an integer >= 1 \(got "0"\)/],
        [["--k", "2", "--ratio", "3"], /--ratio or --k \(the same option\), not both/],
    ] as [string[], RegExp][]) {
        const r = await cli(["--in", input, "--out", out, "--model", "x.gguf", ...args]);
        t.is(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message);
    }
    const server = await serve(t, 0);
    const r = await cli(["--in", input, "--out", out, "--base-url", server.baseUrl, "--remote-model", "m", "--k", "1", "--json"]);
    t.is(r.code, 0, r.stderr);
    t.is(JSON.parse(r.stdout).ratio, 1);
    const items = fs.readFileSync(out, "utf8").trim().split("\n").map((l) => JSON.parse(l) as SyntheticItem);
    t.true(items.length <= 2, "at most k = 1 item per perturbed item");
    t.true(items.every((x) => taskItemProblem(x) === undefined));
});
