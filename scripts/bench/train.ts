// Benchmark: LoRA training steps of the native engine against, in the same run, (a) a plain PyTorch
// LoRA loop on the same model and tokens (scripts/bench/train_torch.py, when python3 with torch is
// installed: Debian's python3-torch with libopenblas0-pthread), (b) the compute-bound limit: the fp32
// GEMM rate measured now (numpy / torch.matmul) divided by the FLOPs of a token, and (c) llama.cpp's
// full fine-tuning (`llama-finetune`, built from the same source) where its binary exists. Models are
// generated llama models (n_embd 1024, n_ff 2816, vocab 32000): 6 layers in F32 (the main
// comparison), Q8_0 and Q4_K (PyTorch cannot train them directly), and 16 layers in F32; at 1 and 4
// sequences (of `--ctx` tokens) per optimizer step. Each tool runs as its own process: steady-state
// tokens/s from the progress it prints (first step excluded: warm-up) and peak RSS (GNU time).
//
//   node dist/scripts/bench/train.js [--ctx 256] [--steps 3] [--threads 2] [--dir bench-out]
//       [--cases 6:f32:1,6:f32:4,6:q8_0:4,6:q4_K:4,16:f32:1,16:f32:4] [--python /usr/bin/python3]
//       [--finetune build/bench-tools/bin/llama-finetune] [--json]
//
// Build the llama-finetune anchor once (optional): cmake -S .cache/llama.cpp-<v> -B build/bench-tools \
//   -DLLAMA_BUILD_EXAMPLES=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF && cmake --build build/bench-tools --target llama-finetune
import {spawn, spawnSync} from "node:child_process";
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
const steps = Number(arg("--steps", "3"));
const threads = Number(arg("--threads", "2"));
const dir = path.resolve(arg("--dir", path.join(root, "bench-out")));
const finetune = path.resolve(arg("--finetune", path.join(root, "build", "bench-tools", "bin", "llama-finetune")));
const python = arg("--python", "/usr/bin/python3");
const torchScript = path.join(root, "scripts", "bench", "train_torch.py");
const width = {embedding: 1024, heads: 16, feedForward: 2816, vocab: 32000};
const lora = {r: 8, loraAlpha: 32, dropout: 0.1, targetModules: ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]};

interface Case {layers: number; type: string; seqs: number}
const cases: Case[] = arg("--cases", "6:f32:1,6:f32:4,6:q8_0:4,6:q4_K:4,16:f32:1,16:f32:4").split(",").map((c) => {
    const [layers, type, seqs] = c.split(":");
    return {layers: Number(layers), type, seqs: Number(seqs)};
});

function modelPath(layers: number, type: string): string {
    return path.join(dir, `train-bench-${layers}L-${width.embedding}-${type}.gguf`);
}

/** `n` windows of ctx + 1 tokens with stride ctx/2, as llama-finetune cuts its text (common_opt_dataset_init). */
function windows(tokens: Int32Array, n: number): Int32Array[] {
    const stride = ctx / 2;
    return Array.from({length: n}, (_, i) => tokens.subarray(i * stride, i * stride + ctx + 1));
}

// --- worker: the engine's training steps, `seqs` windows per step as one micro-batch, one JSON line per step ---
if (process.argv.includes("--worker")) {
    const model = arg("--model", ""), windowsFile = arg("--windows", "");
    const seqs = Number(arg("--seqs", "1"));
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ppc-bench-train-"));
    try {
        const g = await readGguf(model);
        const adapter = path.join(tmp, "init.gguf");
        await writeLoraAdapter(adapter, initLoraAdapter(g, lora, 1));
        const all = (JSON.parse(fs.readFileSync(windowsFile, "utf8")) as {windows: number[][]}).windows;
        const trainer = await LoraTrainer.open(model, adapter, {contextSize: ctx * seqs, sequences: seqs, threads});
        for (let step = 0; step < steps + 1; step++) {
            const rows = Array.from({length: seqs}, (_, s) => all[(step * seqs + s) % all.length]);
            const n = ctx * seqs;
            const batch = {
                tokens: Int32Array.from(rows.flatMap((w) => w.slice(0, ctx))),
                positions: Int32Array.from({length: n}, (_, k) => k % ctx),
                seqIds: Int32Array.from({length: n}, (_, k) => Math.floor(k / ctx)),
                targets: Int32Array.from(rows.flatMap((w) => w.slice(1, ctx + 1))),
                weights: new Float32Array(n).fill(1 / n),
            };
            const r = await trainer.step([batch], {lr: 1e-4, dropout: lora.dropout, dropoutSeed: step});
            process.stdout.write(JSON.stringify({step: step + 1, loss: r.loss}) + "\n");
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
    /** Loss of the first step (the base model's: B starts at 0), to check that both tools compute the same thing. */
    firstLoss?: number;
    failure?: string;
}

/**
 * Runs a command under GNU time; `progress(line)` returns {step, loss?} when a line reports a step.
 * The time of each report is taken here, as lines arrive.
 */
function measure(cmd: string[], tokensPerStep: number, progress: (line: string) => {step: number; loss?: number} | undefined,
    env: NodeJS.ProcessEnv = process.env): Promise<RunResult> {
    return new Promise((resolve) => {
        const child = spawn("/usr/bin/time", ["-f", "__peak_rss_kib %M", ...cmd], {stdio: ["ignore", "pipe", "pipe"], env});
        const marks: {step: number; t: number}[] = [];
        let firstLoss: number | undefined;
        let tail = "";
        let log = "";
        const onData = (chunk: Buffer) => {
            const text = (tail + chunk.toString("utf8")).replace(/\r/g, "\n");
            const lines = text.split("\n");
            tail = lines.pop() ?? "";
            for (const line of lines) {
                const p = progress(line);
                if (p !== undefined && marks.at(-1)?.step !== p.step) {
                    marks.push({step: p.step, t: performance.now()});
                    if (p.step === 1)
                        firstLoss = p.loss;
                }
            }
            log += text.slice(-4096);
        };
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
            resolve({ok: true, rssMiB, firstLoss, tokensPerSecond: (last.step - first.step) * tokensPerStep / ((last.t - first.t) / 1000)});
        });
    });
}

const jsonStep = (line: string) => {
    try {
        const j = JSON.parse(line) as {step?: number; loss?: number};
        return typeof j.step === "number" ? {step: j.step, loss: j.loss} : undefined;
    } catch {
        return undefined;
    }
};

/** FLOPs of one trained token: forward + input-gradient of every frozen matmul (2 + 2 per weight), attention over
 * the whole context (QK and PV: 4·ctx·n_embd forward, twice that backward), LoRA (forward, input and A/B gradients). */
function flopsPerToken(layers: number): number {
    const e = width.embedding, f = width.feedForward;
    const matmul = layers * (4 * e * e + 3 * e * f) + e * width.vocab;
    const attention = layers * 12 * ctx * e;
    const loraSites = layers * (4 * (e + e) + 2 * (e + f) + (f + e));
    return 4 * matmul + attention + 6 * lora.r * loraSites;
}

const pythonHasTorch = spawnSync(python, ["-c", "import torch, numpy"], {stdio: "ignore"}).status === 0;
const env = {...process.env, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads)};

fs.mkdirSync(dir, {recursive: true});
const words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park", "with", "big", "red", "ball", "she", "he",
    "was", "happy", "day", "little", "girl", "found", "tree", "sun"];
let seed = 12345;
const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;

// --- the compute-bound limit: fp32 GEMM measured now, in the shape of a 4-sequence step's FFN matmul; measured
// again after the training runs, and the better of the two taken (a limit; the machine may be shared) ---
type Gemm = {numpy?: number; torch?: number};
const hasNumpy = pythonHasTorch || spawnSync(python, ["-c", "import numpy"], {stdio: "ignore"}).status === 0;
function measureGemm(): Gemm {
    if (!hasNumpy)
        return {};
    process.stderr.write("fp32 GEMM rate...\n");
    const out = spawnSync(python, [torchScript, "gemm", "--m", String(4 * ctx), "--k", String(width.embedding), "--n",
        String(width.feedForward), "--threads", String(threads)], {env, encoding: "utf8"});
    return out.status === 0 ? (JSON.parse(out.stdout.trim().split("\n").at(-1)!) as {gflops: Gemm}).gflops : {};
}
const gemmRuns: Gemm[] = [measureGemm()];
const gemmOf = (g: Gemm[]) => Math.max(0, ...g.flatMap((x) => [x.numpy ?? 0, x.torch ?? 0]));
let gemmGflops = gemmOf(gemmRuns);

interface Row {case: Case; params: number; engine?: RunResult; torch?: RunResult; finetune?: RunResult; limit?: number}
const rows: Row[] = [];
for (const c of cases) {
    const model = modelPath(c.layers, c.type);
    if (!fs.existsSync(model)) {
        process.stderr.write(`generating ${path.basename(model)}...\n`);
        await writeSyntheticModel(model, {architecture: "llama", layers: c.layers, ...width, kvHeads: width.heads, type: c.type,
            contextLength: 4096});
    }
    const g = await readGguf(model);
    const params = g.tensors.reduce((s, t) => s + t.nElements, 0);

    // the same token windows for every tool: (steps + 1) steps of `seqs` windows
    const nWindows = (steps + 1) * c.seqs;
    const vocab = await loadModel(model, {vocabOnly: true});
    const need = nWindows * (ctx / 2) + ctx + 2;
    const parts: string[] = [];
    while (vocab.tokenize(parts.join(" ")).length < need)
        parts.push(...Array.from({length: 64}, () => words[Math.floor(rand() * words.length)]));
    while (vocab.tokenize(parts.slice(0, -1).join(" ")).length >= need)
        parts.pop();
    const tokens = vocab.tokenize(parts.join(" "));
    vocab.close();
    const text = path.join(dir, `train-bench-${c.layers}L-${c.seqs}s.txt`);
    fs.writeFileSync(text, parts.join(" "));
    const windowsFile = path.join(dir, `train-bench-${c.layers}L-${c.seqs}s.json`);
    fs.writeFileSync(windowsFile, JSON.stringify({windows: windows(tokens, nWindows).map((w) => Array.from(w))}));

    const row: Row = {case: c, params, limit: gemmGflops > 0 ? gemmGflops * 1e9 / flopsPerToken(c.layers) : undefined};
    const tokensPerStep = ctx * c.seqs;
    process.stderr.write(`${c.layers} layers ${c.type}, ${c.seqs} seq/step: ppc-gpt LoRA engine...\n`);
    row.engine = await measure([process.execPath, fileURLToPath(import.meta.url), "--worker", "--model", model, "--windows", windowsFile,
        "--seqs", String(c.seqs), "--ctx", String(ctx), "--steps", String(steps), "--threads", String(threads)], tokensPerStep, jsonStep);
    if (pythonHasTorch && c.type === "f32") {
        process.stderr.write(`${c.layers} layers ${c.type}, ${c.seqs} seq/step: PyTorch LoRA loop...\n`);
        row.torch = await measure([python, torchScript, "loop", "--model", model, "--windows", windowsFile, "--seqs", String(c.seqs),
            "--steps", String(steps + 1), "--threads", String(threads), "--r", String(lora.r), "--alpha", String(lora.loraAlpha),
            "--dropout", String(lora.dropout)], tokensPerStep, jsonStep, env);
    }
    if (fs.existsSync(finetune) && c.type === "f32" && c.seqs === 1 && c.layers <= 6) {
        process.stderr.write(`${c.layers} layers ${c.type}: llama-finetune...\n`);
        row.finetune = await measure([finetune, "-m", model, "-f", text, "-c", String(ctx), "-b", String(ctx), "-ub", String(ctx), "-t",
            String(threads), "-epochs", "1", "-val-split", "0", "-ngl", "0", "-o", path.join(dir, "finetuned.gguf")], ctx, (line) => {
            const m = /^train: .*data=(\d+)\/(\d+)/.exec(line.trim());
            return m ? {step: Number(m[1])} : undefined;
        });
        fs.rmSync(path.join(dir, "finetuned.gguf"), {force: true});
    }
    rows.push(row);
}

gemmRuns.push(measureGemm());
gemmGflops = gemmOf(gemmRuns);
for (const row of rows)
    row.limit = gemmGflops > 0 ? gemmGflops * 1e9 / flopsPerToken(row.case.layers) : undefined;
const gemm = {numpy: Math.max(0, ...gemmRuns.map((g) => g.numpy ?? 0)), torch: Math.max(0, ...gemmRuns.map((g) => g.torch ?? 0))};

let kernel = "";
try {
    kernel = fs.readFileSync("/proc/sys/kernel/osrelease", "utf8").trim();
} catch { /* informational */ }
const load = os.loadavg().map((l) => l.toFixed(1)).join(" ");
const fmt = (r?: RunResult) => !r ? "–" : r.ok ? `${r.tokensPerSecond!.toFixed(1)} tok/s, ${r.rssMiB!.toFixed(0)} MiB` : `failed: ${r.failure}`;
console.log(`LoRA training (r ${lora.r}, alpha ${lora.loraAlpha}, 7 projections, dropout ${lora.dropout}, AdamW), generated llama ` +
    `n_embd ${width.embedding}, n_ff ${width.feedForward}, vocab ${width.vocab}; context ${ctx}, ${steps} measured steps after 1 warm-up, ` +
    `${threads} threads`);
console.log(`machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? "unknown"}, Linux ${kernel}, ${new Date().toISOString()}, ` +
    `load average at the end ${load}`);
console.log(`fp32 GEMM [${4 * ctx}x${width.embedding}]·[${width.embedding}x${width.feedForward}], best of before and after the runs: ` +
    (gemmGflops > 0 ? `numpy ${gemm.numpy?.toFixed(0) ?? "–"} GFLOPS, torch.matmul ${gemm.torch?.toFixed(0) ?? "–"} GFLOPS` : "not measured (no numpy)"));
if (!pythonHasTorch)
    console.log(`PyTorch anchor not run: ${python} cannot import torch (apt-get install python3-torch libopenblas0-pthread)`);
if (!fs.existsSync(finetune))
    console.log(`llama-finetune anchor not run: no binary at ${path.relative(root, finetune)} (see the header of this script)`);
console.log("| model | seq/step | ppc-gpt LoRA | PyTorch LoRA | ppc-gpt / PyTorch | limit (GEMM rate / FLOPs per token) | ppc-gpt / limit | first-step loss ppc-gpt / PyTorch | llama-finetune |");
console.log("|---|---|---|---|---|---|---|---|---|");
for (const r of rows) {
    const e = r.engine, t = r.torch;
    const ratio = e?.ok && t?.ok ? `${(e.tokensPerSecond! / t.tokensPerSecond!).toFixed(2)}× tok/s, ${(e.rssMiB! / t.rssMiB!).toFixed(2)}× RSS` : "–";
    const ofLimit = e?.ok && r.limit ? `${(100 * e.tokensPerSecond! / r.limit).toFixed(0)} %` : "–";
    const losses = e?.firstLoss !== undefined ? `${e.firstLoss.toFixed(4)} / ${t?.firstLoss?.toFixed(4) ?? "–"}` : "–";
    console.log(`| ${r.case.layers}L ${r.case.type} (${(r.params / 1e6).toFixed(0)}M) | ${r.case.seqs} | ${fmt(e)} | ${fmt(t)} | ${ratio} | ` +
        `${r.limit ? r.limit.toFixed(0) + " tok/s" : "–"} | ${ofLimit} | ${losses} | ${r.finetune ? fmt(r.finetune) : "–"} |`);
}
if (process.argv.includes("--json"))
    console.log(JSON.stringify({gemm: gemmRuns, rows}));
