// Benchmark: the same passes on the GPU (the CUDA build, every layer offloaded) and on the CPU (the
// CPU build, every core), in one run, each in its own child process: Block Influence, multiple-choice
// scoring (eval), greedy generation and LoRA training steps. Tokens per second and the GPU / CPU ratio.
//
//   node dist/scripts/bench/gpu.js [--runs 2] [--dir bench-out] [--cpu-native FILE] [--gpu-native FILE] [--quick]
//
// The binaries default to the loader's candidates (the first CPU one and the first CUDA one); a
// machine with a GPU and the CUDA package installed next to the CPU package has both. Models are
// generated into --dir: a 24-layer 1024-wide llama in F16 (310M parameters; BI, eval, generation)
// and the 6-layer F32 llama of `bench:train` (vocab 32000; training). --quick uses 2-layer 256-wide
// models instead: a check of the harness, not a measurement.
import {execFileSync, spawn} from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {BatchGenerator} from "../../ts/generate/batch-generator.js";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {loadModel} from "../../ts/model.js";
import {native, type NativeMicroBatch} from "../../ts/native.js";
import {nativeCandidates} from "../../ts/native-loader.js";
import {initLoraAdapter, writeLoraAdapter} from "../../ts/train/adapter.js";
import {readGguf} from "../../ts/gguf/read.js";
import {LoraTrainer} from "../../ts/train/trainer.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const arg = (name: string, def: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : def;
};
const passes = ["bi", "eval", "generate", "train"] as const;
type PassName = typeof passes[number];

const dir = path.resolve(arg("--dir", path.join(root, "bench-out")));
const quick = process.argv.includes("--quick");
const inferenceModel = path.join(dir, quick ? "gpu-bench-quick-f16.gguf" : "gpu-bench-310M-f16.gguf");
// the file name and options of bench:train's 6-layer F32 model, so that both benchmarks share it in --dir
const trainModel = path.join(dir, quick ? "gpu-bench-quick-f32.gguf" : "train-bench-6L-1024-f32.gguf");
const trainAdapter = trainModel.replace(/\.gguf$/, ".adapter.gguf");

/** A deterministic token stream in [3, vocab). */
function tokens(n: number, seed: number, vocab: number): Int32Array {
    return Int32Array.from({length: n}, (_, i) => 3 + ((seed * 7919 + i * 104729) % (vocab - 3)));
}

/** One pass, timed after a warm-up; best of `runs`. Runs in the worker process. */
async function runPass(pass: PassName, gpuLayers: number, runs: number): Promise<{tokens: number; seconds: number}> {
    const best = async (once: () => Promise<number>) => {
        await once();  // warm-up: weights paged in or uploaded, kernels loaded
        let seconds = Infinity, n = 0;
        for (let r = 0; r < runs; r++) {
            const t0 = process.hrtime.bigint();
            n = await once();
            seconds = Math.min(seconds, Number(process.hrtime.bigint() - t0) / 1e9);
        }
        return {tokens: n, seconds};
    };
    if (pass === "train") {
        const trainer = await LoraTrainer.open(trainModel, trainAdapter, {contextSize: 1024, sequences: 4, gpuLayers});
        try {
            const n = trainer.info.nVocab;
            // 4 sequences of 256 tokens, a loss on every position
            const t = tokens(1024, 11, n);
            const mb: NativeMicroBatch = {tokens: t, positions: Int32Array.from(t, (_, i) => i % 256), seqIds: Int32Array.from(t, (_, i) => Math.floor(i / 256)),
                targets: Int32Array.from(t, (_, i) => t[(i + 1) % t.length]), weights: new Float32Array(t.length).fill(1)};
            return await best(async () => {
                await trainer.step([mb], {lr: 1e-4});
                return t.length;
            });
        } finally {
            trainer.close();
        }
    }
    const model = await loadModel(inferenceModel, {gpuLayers});
    try {
        const vocab = model.info.nVocab;
        if (pass === "bi") {
            // 16 sequences of 256 tokens, 2048 tokens per decode
            const seqs = Array.from({length: 16}, (_, s) => ({tokens: tokens(256, s, vocab)}));
            return await best(async () => {
                await native().layerScores(model.handle, seqs, {maxBatchTokens: 2048, maxSequences: 8, capture: true});
                return 16 * 256;
            });
        }
        if (pass === "eval") {
            // 64 items: a 96-token context and 4 choices of 8 tokens each
            const requests = Array.from({length: 64}, (_, i) => ({context: tokens(96, 100 + i, vocab),
                continuations: Array.from({length: 4}, (_, k) => tokens(8, 1000 + 4 * i + k, vocab))}));
            const scorer = await native().LoglikScorer.open(model.handle, {contextSize: 4096, batchSize: 2048, sequences: 32});
            try {
                return await best(async () => {
                    await scorer.score(requests);
                    return 64 * (96 + 4 * 8);
                });
            } finally {
                scorer.close();
            }
        }
        // generate: 8 greedy replies of up to 128 tokens decoded together (each side counts the tokens it generated)
        const generator = await BatchGenerator.open(model, {sequences: 8, contextSize: 256});
        try {
            return await best(async () => {
                const replies = await Promise.all(Array.from({length: 8}, (_, s) =>
                    generator.generate({prompt: tokens(32, 500 + s, vocab), maxTokens: 128})));
                return replies.reduce((a, r) => a + r.completionTokens, 0);
            });
        } finally {
            await generator.close();
        }
    } finally {
        model.close();
    }
}

if (process.argv.includes("--worker")) {
    const result = await runPass(arg("--worker", "bi") as PassName, Number(arg("--gpu-layers", "0")), Number(arg("--runs", "2")));
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exit(0);
}

// ------------------------------------------------------------------ the run

function binaries(): {cpu: string; gpu: string} {
    const candidates = nativeCandidates().filter((c) => fs.existsSync(c.path));
    const cpu = arg("--cpu-native", "") || candidates.find((c) => !c.cuda)?.path;
    const gpu = arg("--gpu-native", "") || candidates.find((c) => c.cuda)?.path;
    if (!cpu || !gpu)
        throw new Error(`needs a CPU and a CUDA build of the addon (found: ${candidates.map((c) => c.label).join(", ") || "none"}); ` +
            "pass --cpu-native and --gpu-native");
    return {cpu: path.resolve(cpu), gpu: path.resolve(gpu)};
}

async function worker(pass: PassName, binary: string, gpuLayers: number, runs: number): Promise<{tokens: number; seconds: number}> {
    const child = spawn(process.execPath, [fileURLToPath(import.meta.url), "--worker", pass, "--gpu-layers", String(gpuLayers), "--runs", String(runs),
        "--dir", dir, ...(quick ? ["--quick"] : [])], {env: {...process.env, PPC_GPT_NATIVE: binary}, stdio: ["ignore", "pipe", "inherit"]});
    let out = "";
    child.stdout.on("data", (d: Buffer) => { out += d.toString(); });
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    if (code !== 0)
        throw new Error(`${pass} on ${binary} failed (exit ${code})`);
    return JSON.parse(out.trim().split("\n").at(-1)!) as {tokens: number; seconds: number};
}

const runs = Number(arg("--runs", "2"));
const {cpu, gpu} = binaries();
fs.mkdirSync(dir, {recursive: true});
if (!fs.existsSync(inferenceModel)) {
    process.stderr.write("generating a 310M-parameter llama (f16)...\n");
    await writeSyntheticModel(inferenceModel, quick
        ? {architecture: "llama", layers: 2, embedding: 256, heads: 4, kvHeads: 2, feedForward: 512, vocab: 4096, type: "f16"}
        : {architecture: "llama", layers: 24, embedding: 1024, heads: 16, kvHeads: 8, feedForward: 3072, vocab: 4096, type: "f16"});
}
if (!fs.existsSync(trainModel)) {
    process.stderr.write("generating the 6-layer f32 training model...\n");
    await writeSyntheticModel(trainModel, quick
        ? {architecture: "llama", layers: 2, embedding: 256, heads: 4, kvHeads: 4, feedForward: 512, vocab: 4096, type: "f32"}
        : {architecture: "llama", layers: 6, embedding: 1024, heads: 16, kvHeads: 16, feedForward: 2816, vocab: 32000, type: "f32", contextLength: 4096});
}
if (!fs.existsSync(trainAdapter))
    await writeLoraAdapter(trainAdapter, initLoraAdapter(await readGguf(trainModel),
        {r: 8, loraAlpha: 16, targetModules: ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]}, 1));

let gpuName = "unknown GPU";
try {
    gpuName = execFileSync("nvidia-smi", ["--query-gpu=name,driver_version", "--format=csv,noheader"], {encoding: "utf8"}).trim();
} catch {
    // no nvidia-smi: the table still says which binaries ran
}
const rows: string[] = [];
for (const pass of passes) {
    const c = await worker(pass, cpu, 0, runs);
    const g = await worker(pass, gpu, 999, runs);
    const tpsC = c.tokens / c.seconds, tpsG = g.tokens / g.seconds;
    rows.push(`| ${pass} | ${c.tokens} | ${tpsC.toFixed(0)} | ${tpsG.toFixed(0)} | ${(tpsG / tpsC).toFixed(1)}× |`);
    process.stderr.write(`${pass}: CPU ${tpsC.toFixed(0)} tok/s, GPU ${tpsG.toFixed(0)} tok/s\n`);
}
console.log(`GPU: ${gpuName}; CPU: ${os.availableParallelism()} x ${os.cpus()[0]?.model ?? "unknown"}; ${new Date().toISOString()}; best of ${runs} after a warm-up`);
console.log(`CPU build: ${cpu}; CUDA build: ${gpu}`);
console.log("| pass | tokens | CPU tokens/s (anchor) | GPU tokens/s | GPU / CPU |");
console.log("|---|---|---|---|---|");
for (const r of rows)
    console.log(r);
