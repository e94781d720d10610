// Benchmark: `ppc-gpt quantize` against `llama-quantize` of the same llama.cpp (built once by the
// tests' helper into build/llama-tools), in one run: wall time (median of N warm runs) and peak
// RSS of each as separate processes, same thread count, on generated f16 models; then the task cost
// of q4_k_m with and without a task importance matrix on the pretrained model available here
// (stories260K): ARC-Easy accuracy (acc, acc_norm) and perplexity on held-out ARC-Easy questions.
//
//   node dist/scripts/bench/quantize.js [--runs 3] [--threads 2] [--sizes 0.1,0.5] [--dir bench-out]
//                                       [--calibration 256] [--eval-limit 300]
import {execFileSync, spawnSync} from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {loadArc} from "../../ts/data/loaders/arc.js";
import {evaluate} from "../../ts/eval/evaluate.js";
import {perplexity} from "../../ts/eval/perplexity.js";
import {writeSyntheticModel, type SyntheticModelOptions} from "../../ts/gguf/synthetic.js";
import {loadModel} from "../../ts/model.js";
import {taskImatrix} from "../../ts/quantize/collect.js";
import {quantizeModel, quantizationOverrides, overrideKvArguments} from "../../ts/quantize/quantize.js";
import {llamaTools} from "../../test/llama-tools.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const arg = (name: string, def: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : def;
};
const runs = Number(arg("--runs", "3"));
const threads = Number(arg("--threads", "2"));
const dir = path.resolve(arg("--dir", path.join(root, "bench-out")));
const shared = process.env.PPC_SHARED_DIR ?? path.resolve(root, "..", "shared");
fs.mkdirSync(dir, {recursive: true});

// f16 llama layouts, 8 layers, GQA: n_embd 1024 / ff 2816 is ~100 MiB; n_embd 2048 / ff 5632 is ~420 MiB.
const shapes: Record<string, SyntheticModelOptions> = {
    "0.1": {architecture: "llama", layers: 8, embedding: 1024, heads: 16, kvHeads: 4, feedForward: 2816, vocab: 4096, type: "f16"},
    "0.5": {architecture: "llama", layers: 8, embedding: 2048, heads: 16, kvHeads: 4, feedForward: 5632, vocab: 4096, type: "f16"},
};
const sizes = arg("--sizes", "0.1,0.5").split(",");

/** Runs a command under GNU time: wall seconds and peak RSS in KiB. */
function measure(cmd: string[], out: string): {seconds: number; rssKiB: number} {
    fs.rmSync(out, {force: true});
    spawnSync("sync");
    const r = spawnSync("/usr/bin/time", ["-f", "%e %M", ...cmd], {encoding: "utf8", maxBuffer: 64 << 20});
    if (r.status !== 0)
        throw new Error(`${cmd.join(" ")} failed: ${r.stderr.slice(-2000)}`);
    const [seconds, rss] = r.stderr.trim().split("\n").at(-1)!.split(" ").map(Number);
    return {seconds, rssKiB: rss};
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const cli = path.join(root, "dist", "ts", "cli", "main.js");
const tools = await llamaTools();

async function speed(): Promise<void> {
    console.log(`\n| model | type | ppc-gpt quantize s | llama-quantize s | ratio | ppc-gpt peak RSS MiB | llama-quantize peak RSS MiB | identical |`);
    console.log("|---|---|---|---|---|---|---|---|");
    for (const size of sizes) {
        const options = shapes[size];
        if (!options)
            throw new Error(`--sizes: one of ${Object.keys(shapes).join(", ")} (got ${size})`);
        const model = path.join(dir, `quantize-bench-${size}G-f16.gguf`);
        if (!fs.existsSync(model))
            await writeSyntheticModel(model, options);
        for (const type of ["q8_0", "q4_k_m"]) {
            const ours = path.join(dir, "ours.gguf"), theirs = path.join(dir, "theirs.gguf");
            const kv = overrideKvArguments(quantizationOverrides(type));
            const a: {seconds: number; rssKiB: number}[] = [], b: {seconds: number; rssKiB: number}[] = [];
            for (let i = 0; i < runs + 1; i++) {  // the first round warms the page cache
                const x = measure([process.execPath, cli, "quantize", model, "-o", ours, "--type", type, "--threads", String(threads)], ours);
                const y = measure([tools.quantize, ...kv, model, theirs, type.toUpperCase(), String(threads)], theirs);
                if (i > 0) {
                    a.push(x);
                    b.push(y);
                }
            }
            const identical = fs.readFileSync(ours).equals(fs.readFileSync(theirs));
            const ta = median(a.map((r) => r.seconds)), tb = median(b.map((r) => r.seconds));
            console.log(`| ${path.basename(model)} (${(fs.statSync(model).size / 2 ** 20).toFixed(0)} MiB) | ${type} | ${ta.toFixed(2)} | ${tb.toFixed(2)} | ` +
                `${(ta / tb).toFixed(3)} | ${(Math.max(...a.map((r) => r.rssKiB)) / 1024).toFixed(0)} | ` +
                `${(Math.max(...b.map((r) => r.rssKiB)) / 1024).toFixed(0)} | ${identical ? "yes" : "NO"} |`);
            fs.rmSync(ours, {force: true});
            fs.rmSync(theirs, {force: true});
        }
    }
}

async function taskCost(): Promise<void> {
    const base = path.join(shared, "models", "stories260K.gguf");
    const arcDir = path.join(shared, "data", "arc");
    if (!fs.existsSync(base) || !fs.existsSync(arcDir)) {
        console.log("\n(task cost skipped: ../shared models or ARC data missing)");
        return;
    }
    const calibration = (await loadArc(path.join(arcDir, "ARC-Easy-Train.jsonl"))).slice(0, Number(arg("--calibration", "256")));
    const heldOut = (await loadArc(path.join(arcDir, "ARC-Easy-Test.jsonl"))).slice(0, 400).map((i) => i.question).join("\n");
    const m = await loadModel(base, {threads});
    const {matrix} = await taskImatrix(m, calibration, "ARC-Easy-Train.jsonl");
    m.close();
    const variants = [
        {name: "unquantized (f32)", file: base},
        {name: "q4_k_m, no imatrix", file: path.join(dir, "stories260K-q4_k_m.gguf")},
        {name: "q4_k_m, task imatrix", file: path.join(dir, "stories260K-q4_k_m-task.gguf")},
    ];
    await quantizeModel(base, variants[1].file, {type: "q4_k_m", threads});
    await quantizeModel(base, variants[2].file, {type: "q4_k_m", threads, imatrix: {matrix, kind: "task", file: "ARC-Easy-Train.jsonl"}});
    const limit = Number(arg("--eval-limit", "300"));
    console.log(`\nstories260K, task imatrix from ${calibration.length} ARC-Easy train items; ARC-Easy validation (first ${limit}); ` +
        "perplexity on 400 held-out ARC-Easy test questions");
    console.log("| model | size KiB | acc | acc_norm | perplexity |");
    console.log("|---|---|---|---|---|");
    for (const v of variants) {
        const e = await evaluate(v.file, {task: "arc-easy", limit, threads});
        const p = await perplexity(v.file, heldOut, {threads});
        console.log(`| ${v.name} | ${(fs.statSync(v.file).size / 1024).toFixed(0)} | ${e.acc.toFixed(4)} ± ${e.acc_stderr.toFixed(4)} | ` +
            `${e.acc_norm.toFixed(4)} | ${p.perplexity.toFixed(3)} |`);
    }
}

let kernel = "";
try {
    kernel = execFileSync("uname", ["-r"], {encoding: "utf8"}).trim();
} catch { /* informational */ }
console.log(`machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? "unknown"}, Linux ${kernel}, ${new Date().toISOString().slice(0, 10)}; ` +
    `${threads} threads, median of ${runs} warm runs`);
await speed();
await taskCost();
