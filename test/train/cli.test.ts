// `ppc-gpt train` and `ppc-gpt merge` as separate processes: JSON output and JSON-lines progress,
// exit codes 0/1/2, errors that name the file, line, item or option.
import fs from "node:fs";
import path from "node:path";
import test, {type ExecutionContext} from "ava";
import {loadModel} from "../../ts/model.js";
import {native} from "../../ts/native.js";
import {readLoraAdapter} from "../../ts/train/adapter.js";
import {cliPath, hasShared, maxRelativeDiff, stories260K, tempDir, runCli} from "../helpers.js";
import {makeModel} from "./helpers.js";


const cli = (args: string[]) => runCli(args);

function items(n: number): object[] {
    return Array.from({length: n}, (_, i) => ({
        id: `q${i}`,
        question: `Ben has ${i % 3 + 1} red balls. How many balls does Ben have?`,
        choices: [{label: "A", text: "one"}, {label: "B", text: "two"}, {label: "C", text: "three"}],
        answer: "ABC"[i % 3],
        rationale: `Ben has ${["one", "two", "three"][i % 3]} balls, so the answer is ${"ABC"[i % 3]}.`,
    }));
}

function writeJsonl(file: string, values: object[]): string {
    fs.writeFileSync(file, values.map((v) => JSON.stringify(v)).join("\n") + "\n");
    return file;
}

test("train --json writes an adapter llama.cpp loads; merge folds it in", async (t) => {
    if (!hasShared)
        return t.pass("shared fixtures absent");
    const dir = tempDir(t);
    const data = writeJsonl(path.join(dir, "items.jsonl"), items(12));
    const adapter = path.join(dir, "adapter.gguf");
    const r = await cli(["train", stories260K, "--data", data, "-o", adapter, "--steps", "3", "--batch", "4", "--lr", "1e-3",
        "--val-split", "0.25", "--micro-batch-tokens", "160", "--threads", "2", "--json"]);
    t.is(r.code, 0, r.stderr);
    const result = JSON.parse(r.stdout);
    t.is(result.steps, 3);
    t.is(result.items, 9);
    t.is(result.validationItems, 3);
    t.is(result.history.length, 3);
    t.true(Number.isFinite(result.validation.loss));
    const events = r.stderr.trim().split("\n").map((l) => JSON.parse(l));
    t.is(events.filter((e) => e.event === "progress" && e.stage === "train").length, 3);
    t.true(events.some((e) => e.event === "eval"));
    t.is((await readLoraAdapter(adapter)).tensors.length, 70);

    const merged = path.join(dir, "merged.gguf");
    const m = await cli(["merge", stories260K, adapter, "-o", merged, "--json"]);
    t.is(m.code, 0, m.stderr);
    t.is(JSON.parse(m.stdout).merged.length, 35);
    const model = await loadModel(merged);
    const tokens = model.tokenize("Once upon a time");
    model.close();
    const a = await native().loraLogits(merged, [], tokens, {threads: 2});
    const b = await native().loraLogits(stories260K, [{path: adapter}], tokens, {threads: 2});
    t.true(maxRelativeDiff(a, b) < 1e-4);

    const human = await cli(["merge", stories260K, adapter, "-o", path.join(dir, "m2.gguf")]);
    t.is(human.code, 0);
    t.regex(human.stdout, /merged\s+35 tensors \(rank 8, alpha 32/);
});

test("train: usage errors exit 2, bad data exits 1 naming the file, line or item", async (t) => {
    const dir = tempDir(t);
    const model = await makeModel(t);
    const good = writeJsonl(path.join(dir, "good.jsonl"), items(4));
    const o = path.join(dir, "out.gguf");
    const usage: [string[], RegExp][] = [
        [["train", model, "--data", good], /-o\/--output/],
        [["train", model, "--data", good, "-o", o, "--steps", "0"], /--steps must be a positive integer/],
        [["train", model, "--data", good, "-o", o, "--steps", "2", "--epochs", "1"], /--steps or --epochs/],
        [["train", model, "--data", good, "-o", o, "--resume"], /--resume needs --checkpoint-dir/],
        [["train", model, "--data", good, "-o", o, "--lora-dropout", "1.5"], /--lora-dropout must be a number in \[0, 0.99\]/],
        [["train", model, "--data", good, "-o", o, "--task", "summary"], /task/],
        [["merge", model, "adapter.gguf"], /-o\/--output/],
    ];
    for (const [args, message] of usage) {
        const r = await cli(args);
        t.is(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message);
    }

    const noRationale = writeJsonl(path.join(dir, "no-rationale.jsonl"), [...items(2), {...items(3)[2], rationale: undefined}]);
    const badJson = path.join(dir, "bad.jsonl");
    fs.writeFileSync(badJson, `${JSON.stringify(items(1)[0])}\n{"id": "x", "question": \n`);
    const badWeight = writeJsonl(path.join(dir, "weight.jsonl"), [items(1)[0], {...items(2)[1], weight: -1}]);
    const noChoices = writeJsonl(path.join(dir, "choices.jsonl"), [{id: "z", question: "?", choices: []}]);
    const failures: [string[], RegExp][] = [
        [["train", model, "--data", noRationale, "-o", o], /item "q2" has no rationale/],
        [["train", model, "--data", badJson, "-o", o], /bad\.jsonl:2: not valid JSON/],
        [["train", model, "--data", badWeight, "-o", o], /weight\.jsonl:2: "weight" must be a non-negative number/],
        [["train", model, "--data", noChoices, "-o", o], /choices\.jsonl:1: "choices" must be a non-empty array/],
        [["train", model, "--data", path.join(dir, "missing.jsonl"), "-o", o], /missing\.jsonl: cannot read/],
        [["train", model, "--data", good, "-o", o, "--target-modules", "attn_qkv"], /attn_qkv.*block matrices are: .*attn_q/],
        [["train", model, "--data", good, "-o", o, "--checkpoint-dir", path.join(dir, "none"), "--resume"], /checkpoint\.json: cannot read/],
        [["train", path.join(dir, "nope.gguf"), "--data", good, "-o", o], /nope\.gguf/],
        [["merge", model, good, "-o", o], /good\.jsonl/],
    ];
    for (const [args, message] of failures) {
        const r = await cli(args);
        t.is(r.code, 1, `${args.join(" ")}: ${r.stderr}`);
        t.regex(r.stderr, message);
    }
    const json = await cli(["train", model, "--data", noRationale, "-o", o, "--json"]);
    t.is(json.code, 1);
    t.regex(JSON.parse(json.stdout).error, /no rationale/);
    t.false(fs.existsSync(o));
});

test("train --help teaches with examples", async (t) => {
    const r = await cli(["train", "--help"]);
    t.is(r.code, 0);
    t.regex(r.stdout, /L_label \+ λ·L_rationale/);
    t.regex(r.stdout, /Examples:\n\s+ppc-gpt train/);
});

test("merge refuses an output that is its base model or adapter, and leaves both as they were", async (t) => {
    const {dir, model, adapter} = await modelAndAdapter(t);
    const link = path.join(dir, "link.gguf");
    fs.symlinkSync(model, link);
    const before = [fs.readFileSync(model), fs.readFileSync(adapter)];
    for (const [output, what] of [[model, "base model"], [link, "base model"], [adapter, "adapter"]] as const) {
        const r = await cli(["merge", model, adapter, "-o", output]);
        t.is(r.code, 1, r.stderr);
        t.regex(r.stderr, new RegExp(`the output .* is the ${what}`));
        t.notRegex(r.stderr, /\n\s+at /);
    }
    t.true(fs.readFileSync(model).equals(before[0]!));
    t.true(fs.readFileSync(adapter).equals(before[1]!));
    t.true(fs.lstatSync(link).isSymbolicLink());
});

test("train --batch-size is --batch (the name run, client and the job spec use)", async (t) => {
    const dir = tempDir(t);
    const model = await makeModel(t);
    const data = writeJsonl(path.join(dir, "items.jsonl"), items(12));
    const o = path.join(dir, "out.gguf");
    const r = await cli(["train", model, "--data", data, "--task", "label", "-o", o, "--epochs", "1", "--batch-size", "4", "--threads", "2", "--json"]);
    t.is(r.code, 0, r.stderr);
    t.is(JSON.parse(r.stdout).steps, 3, "12 items, 4 per step, one epoch");
    const usage: [string[], RegExp][] = [
        [["--batch-size", "0"], /--batch-size must be a positive integer \(got "0"\)/],
        [["--batch", "4", "--batch-size", "8"], /--batch or --batch-size \(the same option\), not both/],
    ];
    for (const [args, message] of usage) {
        const u = await cli(["train", model, "--data", data, "-o", path.join(dir, "u.gguf"), ...args]);
        t.is(u.code, 2, `${args.join(" ")}: ${u.stderr}`);
        t.regex(u.stderr, message);
    }
});

test("train: a checkpoint folder that holds a checkpoint needs --resume; the checkpoint is left as it was", async (t) => {
    const dir = tempDir(t);
    const model = await makeModel(t);
    const data = writeJsonl(path.join(dir, "items.jsonl"), items(4));
    const ckpt = path.join(dir, "ckpt");
    const args = ["train", model, "--data", data, "--task", "label", "-o", path.join(dir, "a.gguf"), "--steps", "2", "--batch", "2",
        "--checkpoint-dir", ckpt, "--threads", "2"];
    const first = await cli(args);
    t.is(first.code, 0, first.stderr);
    const before = fs.readFileSync(path.join(ckpt, "checkpoint.json"), "utf8");
    const again = await cli(args);
    t.is(again.code, 2, again.stderr);
    t.regex(again.stderr, /ckpt holds a checkpoint: add --resume to continue it, or give another --checkpoint-dir/);
    t.is(fs.readFileSync(path.join(ckpt, "checkpoint.json"), "utf8"), before);
    const resumed = await cli([...args, "--resume"]);
    t.is(resumed.code, 0, resumed.stderr);
});

/** A model and a one-step adapter of it, in a fresh folder. */
async function modelAndAdapter(t: ExecutionContext): Promise<{dir: string; model: string; adapter: string}> {
    const dir = tempDir(t);
    const model = await makeModel(t);
    const data = writeJsonl(path.join(dir, "items.jsonl"), items(4));
    const adapter = path.join(dir, "adapter.gguf");
    const trained = await cli(["train", model, "--data", data, "--task", "label", "-o", adapter, "--steps", "1", "--batch", "4", "--threads", "2"]);
    t.is(trained.code, 0, trained.stderr);
    return {dir, model, adapter};
}

test("inspect names a LoRA adapter as one, with how to use it", async (t) => {
    const {dir, model, adapter} = await modelAndAdapter(t);
    const r = await cli(["inspect", adapter]);
    t.is(r.code, 1, r.stderr);
    t.regex(r.stderr, /adapter\.gguf is a LoRA adapter \(general\.type "adapter", \d+ tensors\), not a model: apply it with `ppc-gpt eval <base> --lora/);
    const ok = await cli(["inspect", model]);
    t.is(ok.code, 0, ok.stderr);
});

test("merge names swapped arguments and a model given as the adapter (exit 2)", async (t) => {
    const {dir, model, adapter} = await modelAndAdapter(t);
    const o = path.join(dir, "merged.gguf");
    const swapped = await cli(["merge", adapter, model, "-o", o]);
    t.is(swapped.code, 2, swapped.stderr);
    t.regex(swapped.stderr, /the arguments are <base> <adapter>: .*adapter\.gguf is the adapter and .* the model; swap them/);
    const twice = await cli(["merge", model, model, "-o", o]);
    t.is(twice.code, 2, twice.stderr);
    t.regex(twice.stderr, /is not a LoRA adapter \(general\.type (missing|"model")\)/);
    t.false(fs.existsSync(o));
});
