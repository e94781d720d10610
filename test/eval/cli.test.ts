// `ppc-gpt eval` and `ppc-gpt perplexity` as a user runs them: real processes, exit codes, JSON,
// the --out file, and bad input.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {evaluate} from "../../ts/eval/evaluate.js";
import {perplexity} from "../../ts/eval/perplexity.js";
import {cliPath, hasShared, stories260K, tempDir, runCli} from "../helpers.js";

const sharedTest = hasShared ? test : test.skip;

const cli = (args: string[]) => runCli(args);

sharedTest("eval --json prints the summary and --out writes one line per item", async (t) => {
    const dir = tempDir(t);
    const out = path.join(dir, "items.jsonl");
    const r = await cli(["eval", stories260K, "--task", "arc-challenge", "--limit", "6", "--seed", "3", "--json", "--out", out]);
    t.is(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout);
    t.deepEqual(Object.keys(summary).sort(), ["acc", "acc_norm", "acc_norm_stderr", "acc_stderr", "n", "prompt_prefix", "task"]);
    t.is(summary.task, "arc-challenge");
    t.is(summary.n, 6);
    t.true(r.stderr.split("\n").some((l) => l.startsWith("{") && JSON.parse(l).event === "progress"), "JSON progress on stderr");

    const lines = fs.readFileSync(out, "utf8").trim().split("\n").map((l) => JSON.parse(l));
    t.is(lines.length, 6);
    for (const l of lines) {
        for (const key of ["id", "context", "continuations", "loglikelihoods", "pred", "gold"])
            t.true(key in l, key);
        t.is(l.continuations.length, l.loglikelihoods.length);
        t.true(l.context.startsWith("Question: ") && l.context.endsWith("\nAnswer:"));
    }
    // The same numbers as the library computes.
    const lib = await evaluate(stories260K, {task: "arc-challenge", limit: 6, seed: 3});
    t.deepEqual(lines.map((l) => l.id), lib.items.map((x) => x.id));
    t.deepEqual(lines.map((l) => l.loglikelihoods), lib.items.map((x) => x.loglikelihoods));
    t.is(summary.acc, lib.acc);
    t.is(summary.acc_norm_stderr, lib.acc_norm_stderr);
    t.is(summary.acc, lines.reduce((a, l) => a + (l.pred === l.gold ? 1 : 0), 0) / 6);

    const human = await cli(["eval", stories260K, "--task", "openbookqa", "--limit", "3"]);
    t.is(human.code, 0, human.stderr);
    t.regex(human.stdout, /task\s+n\s+acc\s+acc_stderr\s+acc_norm\s+acc_norm_stderr/);
    t.regex(human.stdout, /openbookqa\s+3\s/);
    t.regex(human.stdout, /items\/s/);

    const one = await cli(["eval", stories260K, "--task", "fiqa-sa", "--limit", "1", "--json"]);
    t.is(one.code, 0, one.stderr);
    t.is(JSON.parse(one.stdout).acc_stderr, null, "one item: no standard error");
});

sharedTest("eval --task mc on a task-item file, --no-bos, --lora errors", async (t) => {
    const dir = tempDir(t);
    const items = path.join(dir, "items.jsonl");
    fs.writeFileSync(items, [
        {id: "1", question: "Who went to the park?", choices: [{label: "A", text: "Lily"}, {label: "B", text: "the moon"}], answer: "A"},
        {id: "2", question: "What was red?", choices: [{label: "A", text: "the ball"}, {label: "B", text: "the sky"}, {label: "C", text: "a cat"}], answer: "A"},
    ].map((x) => JSON.stringify(x)).join("\n"));
    const r = await cli(["eval", stories260K, "--task", "mc", "--data", items, "--json"]);
    t.is(r.code, 0, r.stderr);
    t.is(JSON.parse(r.stdout).n, 2);
    const noBos = await cli(["eval", stories260K, "--task", "mc", "--data", items, "--no-bos", "--out", path.join(dir, "nobos.jsonl")]);
    t.is(noBos.code, 0, noBos.stderr);
    t.regex(noBos.stdout, /bos\s+none/);
    const withBos = await evaluate(stories260K, {task: "mc", data: items});
    const lines = fs.readFileSync(path.join(dir, "nobos.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    t.notDeepEqual(lines.map((l) => l.loglikelihoods), withBos.items.map((x) => x.loglikelihoods), "BOS changes the scores");

    const badLora = await cli(["eval", stories260K, "--task", "mc", "--data", items, "--lora", path.join(dir, "missing.gguf")]);
    t.is(badLora.code, 1);
    t.regex(badLora.stderr, /missing\.gguf: llama\.cpp cannot load this LoRA adapter/);
});

sharedTest("eval: usage errors exit 2, failures exit 1 with the file and line", async (t) => {
    const dir = tempDir(t);
    const usage: [string[], RegExp][] = [
        [["eval", stories260K], /--task is required/],
        [["eval", stories260K, "--task", "mmlu"], /invalid|Allowed choices/i],
        [["eval", stories260K, "--task", "mc"], /--task mc needs --data/],
        [["eval", stories260K, "--task", "arc-easy", "--limit", "0"], /--limit must be a positive integer \(got "0"\)/],
        [["eval", stories260K, "--task", "arc-easy", "--limit", "1.5"], /--limit must be a positive integer/],
        [["eval", stories260K, "--task", "arc-easy", "--seed", "-1"], /--seed must be an integer/],
        [["eval", stories260K, "--task", "arc-easy", "--data", "x.jsonl", "--split", "dev"], /give --data or --split, not both/],
        [["eval", stories260K, "--task", "arc-easy", "--lora-scale", "2"], /--lora-scale goes with --lora/],
        [["eval", stories260K, "--task", "arc-easy", "--sequences", "300"], /--sequences must be an integer in \[1, 256\]/],
        [["eval", stories260K, "--task", "arc-easy", "--max-length", "1"], /--max-length must be an integer >= 2/],
    ];
    for (const [args, message] of usage) {
        const r = await cli(args);
        t.is(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message);
    }
    const bad = path.join(dir, "ARC-bad.jsonl");
    fs.writeFileSync(bad, '{"id":"a","question":{"stem":"Q","choices":[{"text":"x","label":"A"}]},"answerKey":"A"}\n{"id":"b","question":{"stem":"Q"}}\n');
    const failures: [string[], RegExp][] = [
        [["eval", path.join(dir, "none.gguf"), "--task", "arc-easy", "--limit", "1"], /none\.gguf/],
        [["eval", stories260K, "--task", "arc-easy", "--data", bad], /ARC-bad\.jsonl:2: "question\.choices" must be a non-empty array/],
        [["eval", stories260K, "--task", "arc-easy", "--data", path.join(dir, "nothing.jsonl")], /nothing\.jsonl: no such file/],
        [["eval", stories260K, "--task", "commonsenseqa", "--split", "test", "--limit", "2"], /CommonsenseQA's test split is unlabelled/],
        [["eval", stories260K, "--task", "arc-easy", "--split", "nope"], /has no split "nope"/],
        [["eval", stories260K, "--task", "arc-easy", "--limit", "1", "--out", path.join(dir, "no", "such", "dir.jsonl")], /dir\.jsonl: the folder .*such does not exist/],
    ];
    for (const [args, message] of failures) {
        const r = await cli(args);
        t.is(r.code, 1, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message);
    }
    const json = await cli(["eval", stories260K, "--task", "arc-easy", "--data", bad, "--json"]);
    t.is(json.code, 1);
    t.regex(JSON.parse(json.stdout).error, /ARC-bad\.jsonl:2/);
    t.deepEqual(fs.readdirSync(dir).sort(), ["ARC-bad.jsonl"], "nothing half-written");
    const help = await cli(["eval", "--help"]);
    t.is(help.code, 0);
    t.regex(help.stdout, /Examples:/);
    t.regex(help.stdout, /commonsense_qa/);
});

sharedTest("perplexity: JSON and table output equal the library; bad input", async (t) => {
    const dir = tempDir(t);
    const text = path.join(dir, "story.txt");
    const story = "Once upon a time, there was a little girl named Lily. She liked to play outside with her dog. One day they found a big red ball.";
    fs.writeFileSync(text, story);
    const r = await cli(["perplexity", stories260K, "--text", text, "--window", "16", "--json"]);
    t.is(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    const lib = await perplexity(stories260K, story, {window: 16});
    t.is(j.perplexity, lib.perplexity);
    t.is(j.tokens, lib.tokens);
    t.is(j.windows, lib.windows);
    t.true(j.perplexity > 1 && j.perplexity < 512);
    const human = await cli(["perplexity", stories260K, "--text", text]);
    t.is(human.code, 0, human.stderr);
    t.regex(human.stdout, /tokens\s+windows\s+perplexity/);

    const empty = path.join(dir, "empty.txt");
    fs.writeFileSync(empty, "  \n");
    const latin1 = path.join(dir, "latin1.txt");
    fs.writeFileSync(latin1, Buffer.from("Espa\u00f1a sold more.\n", "latin1"));
    const bom = path.join(dir, "bom.txt");
    fs.writeFileSync(bom, "\ufeffOnce upon a time.\n");
    const plain = path.join(dir, "plain.txt");
    fs.writeFileSync(plain, "Once upon a time.\n");
    // a byte order mark is not text: the file scores as the same text without it
    const withBom = await cli(["perplexity", stories260K, "--text", bom, "--json"]);
    const withoutBom = await cli(["perplexity", stories260K, "--text", plain, "--json"]);
    t.is(withBom.code, 0, withBom.stderr);
    t.deepEqual(JSON.parse(withBom.stdout).tokens, JSON.parse(withoutBom.stdout).tokens);
    t.is(JSON.parse(withBom.stdout).perplexity, JSON.parse(withoutBom.stdout).perplexity);
    const cases: [string[], number, RegExp][] = [
        [["perplexity", stories260K], 2, /--text <file> is required/],
        [["perplexity", stories260K, "--text", text, "--window", "8", "--stride", "9"], 2, /--stride must be a positive integer no larger than --window/],
        [["perplexity", stories260K, "--text", text, "--window", "0"], 2, /--window must be a positive integer/],
        [["perplexity", stories260K, "--text", path.join(dir, "missing.txt")], 1, /missing\.txt: cannot read/],
        [["perplexity", stories260K, "--text", empty], 1, /empty\.txt: the file is empty/],
        [["perplexity", stories260K, "--text", stories260K], 1, /stories260K\.gguf: not a text file \(a NUL byte at byte \d+\)/],
        [["perplexity", stories260K, "--text", latin1], 1, /latin1\.txt: not UTF-8 text \(byte 4 is 0xf1\); convert it first/],
        [["bi", stories260K, "--text", latin1], 1, /latin1\.txt: not UTF-8 text \(byte 4 is 0xf1\)/],
        [["perplexity", path.join(dir, "nope.gguf"), "--text", text], 1, /nope\.gguf/],
    ];
    for (const [args, code, message] of cases) {
        const c = await cli(args);
        t.is(c.code, code, `${args.join(" ")}: ${c.stderr}`);
        t.regex(c.stderr, message);
    }
});

sharedTest("eval and perplexity take --batch-tokens, the name bi and prune use, as --batch-size", async (t) => {
    const usage: [string[], RegExp][] = [
        [["eval", stories260K, "--task", "arc-easy", "--batch-tokens", "0"], /--batch-tokens must be a positive integer \(got "0"\)/],
        [["eval", stories260K, "--task", "arc-easy", "--batch-tokens", "64", "--batch-size", "32"], /--batch-size or --batch-tokens \(the same option\), not both/],
    ];
    for (const [args, message] of usage) {
        const r = await cli(args);
        t.is(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message);
    }
    const a = await cli(["eval", stories260K, "--task", "arc-easy", "--limit", "3", "--batch-tokens", "16", "--threads", "2", "--json"]);
    const b = await cli(["eval", stories260K, "--task", "arc-easy", "--limit", "3", "--batch-size", "16", "--threads", "2", "--json"]);
    t.is(a.code, 0, a.stderr);
    t.deepEqual(JSON.parse(a.stdout), JSON.parse(b.stdout));
});
