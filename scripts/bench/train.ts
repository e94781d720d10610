// Benchmark: LoRA training steps of the native engine against llama.cpp's full fine-tuning
// (`llama-finetune`, built from the same llama.cpp source) on the same generated F32 llama model
// (>= 100M parameters), context, threads and text, in one run, each as its own process.
// Measured: steady-state training tokens/s (from the progress each tool prints, first step
// excluded: it includes warm-up) and peak RSS (GNU time). llama-finetune's graphs are sized for
// inference and it aborts on deeper models: the anchor is tried on each depth of --depths, its
// abort is recorded, and the comparison is made on the deepest model it survives; the engine is
// also run on the deepest model of the list.
//
//   node dist/scripts/bench/train.js [--depths 16,8,6,5] [--ctx 256] [--steps 4] [--threads 2] [--dir bench-out]
//       [--finetune build/bench-tools/bin/llama-finetune]
//
// Build the anchor once: cmake -S .cache/llama.cpp-<v> -B build/bench-tools -DLLAMA_BUILD_EXAMPLES=ON \
//   -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF && cmake --build build/bench-tools --target llama-finetune
import {spawn} from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {readGguf} from "../../ts/gguf/read.js";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {loadModel} from "../../ts/model.js";
import {initLoraAdapter, writeLoraAdapter} from "../../ts/train/adapter.js";
import {LoraTrainer} from "../../ts/train/trainer.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const arg = (name: string, def: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : def;
};
const ctx = Number(arg("--ctx", "256"));
const steps = Number(arg("--steps", "4"));
const threads = Number(arg("--threads", "2"));
const dir = path.resolve(arg("--dir", path.join(root, "bench-out")));
const finetune = path.resolve(arg("--finetune", path.join(root, "build", "bench-tools", "bin", "llama-finetune")));
const depths = arg("--depths", "16,8,6,5").split(",").map(Number).sort((a, b) => b - a);
const width = {embedding: 1024, heads: 16, feedForward: 2816, vocab: 32000};

function modelPath(layers: number): string {
    return path.join(dir, `train-bench-${layers}L-${width.embedding}.gguf`);
}

/** Windows of `ctx` tokens with stride ctx/2, as llama-finetune cuts its text (common_opt_dataset_init). */
function windows(tokens: Int32Array, n: number): Int32Array[] {
    const stride = ctx / 2;
    return Array.from({length: n}, (_, i) => tokens.subarray(i * stride, i * stride + ctx + 1));
}

// --- worker: the engine's training steps, one JSON line per step ---
if (process.argv.includes("--worker")) {
    const model = arg("--model", ""), textFile = arg("--text", "");
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ppc-bench-train-"));
    try {
        const g = await readGguf(model);
        const adapter = path.join(tmp, "init.gguf");
        await writeLoraAdapter(adapter, initLoraAdapter(g, {r: 8, loraAlpha: 32, targetModules: ["attn_q", "attn_k", "attn_v",
            "attn_output", "ffn_gate", "ffn_up", "ffn_down"]}, 1));
        const vocab = await loadModel(model, {vocabOnly: true});
        const tokens = vocab.tokenize(fs.readFileSync(textFile, "utf8"));
        vocab.close();
        const trainer = await LoraTrainer.open(model, adapter, {contextSize: ctx, sequences: 1, threads});
        for (const [i, w] of windows(tokens, steps + 1).entries()) {
            const batch = {tokens: w.slice(0, ctx), positions: Int32Array.from({length: ctx}, (_, k) => k), seqIds: new Int32Array(ctx),
                targets: w.slice(1, ctx + 1), weights: new Float32Array(ctx).fill(1 / ctx)};
            const r = await trainer.step([batch], {lr: 1e-4, dropout: 0.1, dropoutSeed: i});
            process.stdout.write(JSON.stringify({step: i + 1, loss: r.loss}) + "\n");
        }
        trainer.close();
    } finally {
        fs.rmSync(tmp, {recursive: true, force: true});
    }
    process.exit(0);
}

interface RunResult {
    ok: boolean;
    /** Steady-state tokens/s, first step excluded. */
    tokensPerSecond?: number;
    rssMiB?: number;
    failure?: string;
}

/**
 * Runs a command under GNU time; `progress(line)` returns the number of steps done when a line
 * reports one. The time of each report is taken here, as lines arrive.
 */
function measure(cmd: string[], progress: (line: string) => number | undefined): Promise<RunResult> {
    return new Promise((resolve) => {
        const child = spawn("/usr/bin/time", ["-f", "__peak_rss_kib %M", ...cmd], {stdio: ["ignore", "pipe", "pipe"]});
        const marks: {step: number; t: number}[] = [];
        let tail = "";
        const onData = (chunk: Buffer) => {
            const text = (tail + chunk.toString("utf8")).replace(/\r/g, "\n");
            const lines = text.split("\n");
            tail = lines.pop() ?? "";
            for (const line of lines) {
                const step = progress(line);
                if (step !== undefined && marks.at(-1)?.step !== step)
                    marks.push({step, t: performance.now()});
            }
            log += text.slice(-4096);
        };
        let log = "";
        child.stdout.on("data", onData);
        child.stderr.on("data", onData);
        child.on("close", (code) => {
            const rss = /__peak_rss_kib (\d+)/.exec(log + tail);
            const rssMiB = rss ? Number(rss[1]) / 1024 : undefined;
            if (code !== 0) {
                const assert = /GGML_ASSERT\([^\n]*\) failed/.exec(log);
                return resolve({ok: false, rssMiB, failure: assert ? assert[0] : `exit code ${code}: ${log.slice(-300)}`});
            }
            if (marks.length < 2)
                return resolve({ok: false, rssMiB, failure: "fewer than two progress reports"});
            const first = marks[0], last = marks.at(-1)!;
            resolve({ok: true, rssMiB, tokensPerSecond: (last.step - first.step) * ctx / ((last.t - first.t) / 1000)});
        });
    });
}

fs.mkdirSync(dir, {recursive: true});
if (!fs.existsSync(finetune))
    throw new Error(`llama-finetune not found at ${finetune}; build it as the header of this file says`);

// text for steps + 1 windows (llama-finetune: ndata = (n_tokens - ctx - 1) / stride)
const words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park", "with", "big", "red", "ball", "she", "he",
    "was", "happy", "day", "little", "girl", "found", "tree", "sun"];
let seed = 12345;
const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;

const cli = fileURLToPath(import.meta.url);
const rows: string[] = [];
let anchorDepth: number | undefined;
const results: Record<string, unknown>[] = [];
for (const layers of depths) {
    const model = modelPath(layers);
    if (!fs.existsSync(model)) {
        process.stderr.write(`generating ${path.basename(model)}...\n`);
        await writeSyntheticModel(model, {architecture: "llama", layers, ...width, heads: width.heads, kvHeads: width.heads,
            type: "f32", contextLength: 4096});
    }
    const g = await readGguf(model);
    const params = g.tensors.reduce((s, t) => s + t.nElements, 0);
    const vocab = await loadModel(model, {vocabOnly: true});
    const stride = ctx / 2, need = (steps + 1) * stride + ctx + 2;
    const parts: string[] = [];
    while (vocab.tokenize(parts.join(" ")).length < need)
        parts.push(...Array.from({length: 64}, () => words[Math.floor(rand() * words.length)]));
    while (vocab.tokenize(parts.slice(0, -1).join(" ")).length >= need)
        parts.pop();
    vocab.close();
    const text = path.join(dir, `train-bench-${layers}L.txt`);
    fs.writeFileSync(text, parts.join(" "));

    const runAnchor = anchorDepth === undefined || layers === anchorDepth;
    const runEngine = layers === depths[0];
    let anchor: RunResult | undefined;
    if (runAnchor) {
        process.stderr.write(`${layers} layers: llama-finetune...\n`);
        anchor = await measure([finetune, "-m", model, "-f", text, "-c", String(ctx), "-b", String(ctx), "-ub", String(ctx), "-t",
            String(threads), "-epochs", "1", "-val-split", "0", "-ngl", "0", "-o", path.join(dir, "finetuned.gguf")],
        (line) => {
            const m = /^train: .*data=(\d+)\/(\d+)/.exec(line.trim());
            return m ? Number(m[1]) : undefined;
        });
        fs.rmSync(path.join(dir, "finetuned.gguf"), {force: true});
        if (anchor.ok)
            anchorDepth = layers;
    }
    let engine: RunResult | undefined;
    if (runEngine || (anchor?.ok ?? false)) {
        process.stderr.write(`${layers} layers: ppc-gpt LoRA engine...\n`);
        engine = await measure([process.execPath, cli, "--worker", "--model", model, "--text", text, "--ctx", String(ctx),
            "--steps", String(steps), "--threads", String(threads)], (line) => {
            try {
                return (JSON.parse(line) as {step: number}).step;
            } catch {
                return undefined;
            }
        });
    }
    const fmt = (r?: RunResult) => !r ? "-" : r.ok ? `${r.tokensPerSecond!.toFixed(1)} tok/s, ${r.rssMiB!.toFixed(0)} MiB`
        : `aborted: ${r.failure}`;
    const ratio = anchor?.ok && engine?.ok
        ? `${(engine.tokensPerSecond! / anchor.tokensPerSecond!).toFixed(2)}× tok/s, ${(engine.rssMiB! / anchor.rssMiB!).toFixed(2)}× RSS` : "";
    rows.push(`| ${layers} | ${(params / 1e6).toFixed(0)}M | ${fmt(anchor)} | ${fmt(engine)} | ${ratio} |`);
    results.push({layers, params, anchor, engine});
    if (anchorDepth !== undefined && layers !== depths[0] && layers <= anchorDepth)
        break;
}

let kernel = "";
try {
    kernel = fs.readFileSync("/proc/sys/kernel/osrelease", "utf8").trim();
} catch { /* informational */ }
console.log(`LoRA training (r 8, alpha 32, 7 projections, dropout 0.1) vs llama-finetune (full F32 fine-tuning, AdamW)`);
console.log(`generated llama, n_embd ${width.embedding}, n_ff ${width.feedForward}, vocab ${width.vocab}, F32; context ${ctx}, ` +
    `${steps} measured steps after 1 warm-up, ${threads} threads`);
console.log(`machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? "unknown"}, Linux ${kernel}, ${new Date().toISOString().slice(0, 10)}`);
console.log("| layers | params | llama-finetune | ppc-gpt LoRA | ppc-gpt / llama-finetune |");
console.log("|---|---|---|---|---|");
for (const r of rows)
    console.log(r);
if (process.argv.includes("--json"))
    console.log(JSON.stringify(results));
