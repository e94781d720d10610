// ppc-gpt quantize: the refusals prune makes (not GGUF, truncated, output = input), usage errors,
// --json, and `bi --imatrix` giving the same matrix as `quantize --imatrix-data` from one pass.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import type {TaskItem} from "../../ts/data/task-item.js";
import {readGguf} from "../../ts/gguf/read.js";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {quantizeModel} from "../../ts/quantize/quantize.js";
import {fileHash} from "../gguf-fixtures.js";
import {runCli, tempDir} from "../helpers.js";

async function model(t: import("ava").ExecutionContext): Promise<{dir: string; input: string}> {
    const dir = tempDir(t);
    const input = path.join(dir, "in.gguf");
    await writeSyntheticModel(input, {architecture: "llama", layers: 2, embedding: 256, heads: 4, kvHeads: 2, feedForward: 256, vocab: 300});
    return {dir, input};
}

const leftovers = (dir: string, keep: string[]) => fs.readdirSync(dir).filter((f) => !keep.includes(f));

test("corrupt, truncated or identical-path inputs fail with prune's messages and leave nothing behind", async (t) => {
    const {dir, input} = await model(t);
    const valid = fs.readFileSync(input);
    const {info} = await readGguf(input);
    const out = path.join(dir, "out.gguf");
    const cases: [string, Buffer, RegExp][] = [
        ["text", Buffer.from("this is not a model\n"), /not a GGUF file/],
        ["header", valid.subarray(0, 60), /truncated or corrupt header/],
        ["data", valid.subarray(0, info.dataOffset + 100), /truncated or corrupt file: tensor/],
    ];
    for (const [label, bytes, message] of cases) {
        const bad = path.join(dir, `bad-${label}.gguf`);
        fs.writeFileSync(bad, bytes);
        const err = await t.throwsAsync(quantizeModel(bad, out, {type: "q8_0"}), undefined, label);
        t.regex(err!.message, message, label);
        t.true(err!.message.includes(bad), `${label}: names the file`);
        fs.rmSync(bad);
    }
    const hash = await fileHash(input);
    await t.throwsAsync(quantizeModel(input, input, {type: "q8_0"}), {message: /is the input file/});
    fs.symlinkSync(input, path.join(dir, "link.gguf"));
    await t.throwsAsync(quantizeModel(input, path.join(dir, "link.gguf"), {type: "q8_0"}), {message: /is the input file/});
    await t.throwsAsync(quantizeModel(input, path.join(dir, "missing", "o.gguf"), {type: "q8_0"}), {message: /folder .* does not exist/});
    await t.throwsAsync(quantizeModel(input, out, {type: "q9_z"}), {message: /unknown quantization type "q9_z"; known: .*q4_k_m/});
    // llama.cpp's own refusal, with its reason: an already quantized model is not requantized by default
    const q8 = path.join(dir, "q8.gguf");
    await quantizeModel(input, q8, {type: "q8_0"});
    await t.throwsAsync(quantizeModel(q8, out, {type: "q4_0"}), {message: /cannot quantize this model to q4_0: .*requantizing from type q8_0 is disabled/});
    t.false(fs.existsSync(out));
    t.is(await fileHash(input), hash);
    t.deepEqual(leftovers(dir, ["in.gguf", "link.gguf", "q8.gguf"]), []);
});

test("CLI: exit 2 for usage errors, 1 for bad input, --json result with progress lines", async (t) => {
    const {dir, input} = await model(t);
    const out = path.join(dir, "out.gguf");
    fs.writeFileSync(path.join(dir, "t.txt"), "hello\n");
    const usage = [
        [input, "--type", "q8_0"],
        [input, "-o", out],
        [input, "-o", out, "--type", "q9_z"],
        [input, "-o", out, "--type", "q4_k_m", "--imatrix", "a.gguf", "--imatrix-text", path.join(dir, "t.txt")],
        [input, "-o", out, "--type", "q4_k_m", "--imatrix-context", "64"],
        [input, "-o", out, "--type", "q4_k_m", "--imatrix-out", path.join(dir, "m.gguf")],
        [input, "-o", out, "--type", "q4_k_m", "--bogus"],
    ];
    for (const args of usage) {
        const r = await runCli(["quantize", ...args]);
        t.is(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    }
    fs.writeFileSync(path.join(dir, "bad.gguf"), "nope");
    const bad = await runCli(["quantize", path.join(dir, "bad.gguf"), "-o", out, "--type", "q8_0"]);
    t.is(bad.code, 1);
    t.regex(bad.stderr, /not a GGUF file/);
    const ok = await runCli(["quantize", input, "-o", out, "--type", "Q4_K_M", "--json"]);
    t.is(ok.code, 0, ok.stderr);
    const r = JSON.parse(ok.stdout).result;
    t.is(r.type, "q4_k_m");
    t.is(r.bytesOut, fs.statSync(out).size);
    t.true(r.bytesOut < r.bytesIn / 3);
    const events = ok.stderr.trim().split("\n").map((l) => JSON.parse(l));
    t.true(events.some((e) => e.event === "progress" && e.stage === "quantizing" && e.done === e.total));
    t.deepEqual(leftovers(dir, ["in.gguf", "out.gguf", "t.txt", "bad.gguf"]), []);
});

function items(n: number): TaskItem[] {
    const words = ["red", "blue", "green", "small", "big", "happy", "sad", "tall"];
    return Array.from({length: n}, (_, i) => ({
        id: `q${i}`,
        question: `Which word describes the ${words[i % 8]} ball in story ${i}?`,
        choices: ["A", "B", "C", "D"].map((label, j) => ({label, text: words[(i + j) % 8]})),
        answer: "ABCD"[i % 4],
        rationale: `The story says the ball is ${words[i % 8]}, so that is the answer.`,
    }));
}

test("bi --imatrix writes Block Influence and the task importance matrix from one pass; quantize --imatrix-data computes the same matrix", async (t) => {
    const {dir, input} = await model(t);
    const data = path.join(dir, "items.jsonl");
    fs.writeFileSync(data, items(6).map((x) => JSON.stringify(x)).join("\n") + "\n");
    const withMatrix = await runCli(["bi", input, "--data", data, "--json", "--imatrix", path.join(dir, "bi.imatrix.gguf"), "--threads", "2"]);
    t.is(withMatrix.code, 0, withMatrix.stderr);
    const plain = await runCli(["bi", input, "--data", data, "--json", "--threads", "2"]);
    t.deepEqual(JSON.parse(withMatrix.stdout).bi, JSON.parse(plain.stdout).bi);
    const q = await runCli(["quantize", input, "-o", path.join(dir, "q.gguf"), "--type", "q4_k_m", "--imatrix-data", data,
        "--imatrix-out", path.join(dir, "q.imatrix.gguf"), "--threads", "2"]);
    t.is(q.code, 0, q.stderr);
    t.true(fs.readFileSync(path.join(dir, "bi.imatrix.gguf")).equals(fs.readFileSync(path.join(dir, "q.imatrix.gguf"))));
    const m = await readGguf(path.join(dir, "bi.imatrix.gguf"));
    // every block weight matrix of both layers: q, k, v, output, gate, up, down
    t.is(m.tensors.filter((x) => x.name.endsWith(".in_sum2")).length, 2 * 7);
    const out = await readGguf(path.join(dir, "q.gguf"));
    t.is(out.value("ppc_gpt.quantization.imatrix"), "task");
    t.is(out.value("quantize.imatrix.entries_count"), 14);
});
