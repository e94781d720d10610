// The GPU suite (`npm run test:gpu`, on a machine with an NVIDIA GPU and the CUDA build): Block
// Influence, evaluation, generation and LoRA training with every layer offloaded, each checked
// against the same pass on the CPU build in a child process (passes.ts, reference.ts) and, where
// the GPU computes something of ours, against a plain double-precision computation.
//
// It is not part of `npm test` (CI has no GPU): on a machine without a CUDA device it fails at once
// rather than pass without having run anything.
import fs from "node:fs";
import path from "node:path";
import test from "ava";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {BatchGenerator} from "../../ts/generate/batch-generator.js";
import {loadModel} from "../../ts/model.js";
import {native} from "../../ts/native.js";
import {nativeCandidates} from "../../ts/native-loader.js";
import {scoreLayers} from "../../ts/prune/block-influence.js";
import {Random} from "../../ts/random.js";
import {hasShared, maxRelativeDiff, runCli, stories260K, tempDir} from "../helpers.js";
import {reference} from "../prune/reference.js";
import {makeAdapter, microBatch, randomSequence} from "../train/helpers.js";
import {plainBatch, runOnCpu, runPass, type Pass} from "./passes.js";

const ALL = 999;

/** The CPU build the references run on: PPC_GPT_CPU_NATIVE, else the first CPU candidate the loader knows. */
function cpuBinary(): string {
    if (process.env.PPC_GPT_CPU_NATIVE)
        return path.resolve(process.env.PPC_GPT_CPU_NATIVE);
    const c = nativeCandidates().find((x) => !x.cuda && fs.existsSync(x.path));
    if (!c)
        throw new Error("no CPU build of the addon to compare with: set PPC_GPT_CPU_NATIVE");
    return c.path;
}

test.before(() => {
    if (!hasShared)
        throw new Error("the GPU suite needs the shared fixtures (PPC_SHARED_DIR)");
    const info = native().systemInfo();
    const gpus = info.devices.filter((d) => /^CUDA/i.test(d.name));
    if (!info.cuda || gpus.length === 0)
        throw new Error(`the GPU suite needs a CUDA build of the addon and a CUDA device (loaded: cuda=${info.cuda}, devices: ` +
            `${info.devices.map((d) => d.name).join(", ") || "none"})`);
});

/** ||a - b|| / ||b|| in double precision. */
function relativeL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
    let d = 0, n = 0;
    for (let i = 0; i < b.length; i++) {
        d += (a[i] - b[i]) ** 2;
        n += b[i] ** 2;
    }
    return Math.sqrt(d / n);
}

const texts = [
    "Once upon a time, there was a little girl named Lily. She liked to play in the park with her big red ball.",
    "One day, a boy named Tim found a shiny stone near the river and showed it to his mom.",
    "The sun was warm and the birds sang in the tall green trees.",
];

async function generatedModel(t: import("ava").ExecutionContext, type: string, layers = 6): Promise<string> {
    const file = path.join(tempDir(t), `model-${type}.gguf`);
    await writeSyntheticModel(file, {architecture: "llama", layers, embedding: 512, heads: 8, kvHeads: 4, feedForward: 1024, vocab: 2000, type});
    return file;
}

for (const gpuLayers of [ALL, 3]) {
    test(`Block Influence on the GPU (${gpuLayers === ALL ? "every layer" : "3 of 6 layers"} offloaded) equals a double-precision computation`,
        async (t) => {
            const file = await generatedModel(t, "f32");
            const model = await loadModel(file, {gpuLayers});
            try {
                const rng = new Random(5);
                // one sequence per decode: the dump and the scoring pass run the same graph
                const seqs = [70, 33, 128].map((n) => ({tokens: Int32Array.from({length: n}, () => 3 + rng.nextInt(1990))}));
                const ref = await reference(model, seqs);  // hidden states dumped on the same device
                const s = await scoreLayers(model, seqs, {maxBatchTokens: 128, maxSequences: 1});
                t.is(s.tokens, 231);
                // llama.cpp offloads the last layers; the token embeddings stay on the host and are moved
                // to the GPU once, so every offloaded block is scored by the CUDA kernel: 3 decodes
                t.is(s.deviceSteps, 3 * (gpuLayers === ALL ? 6 : gpuLayers), "blocks scored on the device");
                for (const k of ["bi", "angular", "contribution"] as const) {
                    const d = maxRelativeDiff(s[k], ref[k]);
                    t.log(`${k}: max diff / scale ${d.toExponential(2)}`);
                    t.true(d < 1e-4, `${k}: ${s[k].join(", ")} vs ${ref[k].join(", ")}`);
                }
            } finally {
                model.close();
            }
        });
}

test("Block Influence: the GPU's scores and layer order match the CPU build's (bi CLI, stories260K and an F16 model)", async (t) => {
    const dir = tempDir(t);
    const textFile = path.join(dir, "texts.txt");
    fs.writeFileSync(textFile, texts.join("\n") + "\n");
    const f16 = await generatedModel(t, "f16", 8);
    for (const model of [stories260K, f16]) {
        const run = async (env: NodeJS.ProcessEnv, extra: string[]) => {
            const r = await runCli(["bi", model, "--text", textFile, "--json", ...extra], {env});
            t.is(r.code, 0, r.stderr);
            return JSON.parse(r.stdout) as {bi: number[]};
        };
        const gpu = await run(process.env, ["--gpu-layers", String(ALL)]);
        const cpu = await run({...process.env, PPC_GPT_NATIVE: cpuBinary()}, []);
        const d = maxRelativeDiff(gpu.bi, cpu.bi);
        t.log(`${path.basename(model)}: BI max diff / scale ${d.toExponential(2)}`);
        t.true(d < 1e-2, `${gpu.bi.join(", ")} vs ${cpu.bi.join(", ")}`);
        // the order prune acts on, wherever two layers are further apart than the tolerance
        const scale = Math.max(...cpu.bi.map(Math.abs));
        for (let i = 0; i < cpu.bi.length; i++)
            for (let j = 0; j < cpu.bi.length; j++)
                if (cpu.bi[i] < cpu.bi[j] - 2e-2 * scale)
                    t.true(gpu.bi[i] < gpu.bi[j], `layers ${i} and ${j} swapped`);
    }
});

test("eval on the GPU: the CPU build's log-likelihoods and predictions (arc-easy, stories260K)", async (t) => {
    const dir = tempDir(t);
    const run = async (env: NodeJS.ProcessEnv, extra: string[], out: string) => {
        const r = await runCli(["eval", stories260K, "--task", "arc-easy", "--limit", "60", "-o", out, "--json", ...extra], {env});
        t.is(r.code, 0, r.stderr);
        return fs.readFileSync(out, "utf8").trim().split("\n").map((l) => JSON.parse(l) as {loglikelihoods: number[]; pred: number});
    };
    const gpu = await run(process.env, ["--gpu-layers", String(ALL)], path.join(dir, "gpu.jsonl"));
    const cpu = await run({...process.env, PPC_GPT_NATIVE: cpuBinary()}, [], path.join(dir, "cpu.jsonl"));
    t.is(gpu.length, 60);
    t.is(cpu.length, 60);
    let worst = 0;
    for (let i = 0; i < cpu.length; i++) {
        const g = gpu[i].loglikelihoods, c = cpu[i].loglikelihoods;
        for (let k = 0; k < c.length; k++) {
            const d = Math.abs(g[k] - c[k]);
            worst = Math.max(worst, d / Math.max(1, Math.abs(c[k])));
            t.true(d <= 1e-2 * Math.max(1, Math.abs(c[k])), `item ${i} choice ${k}: ${g[k]} vs ${c[k]}`);
        }
        // a prediction may only differ where the CPU's best two choices are within the tolerance
        const sorted = [...c].sort((a, b) => b - a);
        if (sorted[0] - sorted[1] > 2e-2 * Math.max(1, Math.abs(sorted[0])))
            t.is(gpu[i].pred, cpu[i].pred, `item ${i}`);
    }
    t.log(`log-likelihoods: max |GPU - CPU| / max(1, |CPU|) = ${worst.toExponential(2)}`);
});

test("greedy generation on the GPU: every token is the CPU build's argmax, up to near-ties", async (t) => {
    const model = await loadModel(stories260K, {gpuLayers: ALL});
    const prompts = texts.map((s) => model.tokenize(s.slice(0, 40)));
    let replies: Int32Array[];
    const generator = await BatchGenerator.open(model, {sequences: 3, contextSize: 256});
    try {
        replies = (await Promise.all(prompts.map((prompt) => generator.generate({prompt, maxTokens: 48})))).map((r) => r.tokens);
    } finally {
        await generator.close();
        model.close();
    }
    const sequences = prompts.map((p, i) => [...p, ...replies[i]]);
    const cpu = await runOnCpu({kind: "logits", model: stories260K, sequences}, cpuBinary(), tempDir(t));
    const nVocab = cpu.logits![0].length / sequences[0].length;
    let checked = 0;
    for (let s = 0; s < sequences.length; s++) {
        t.true(replies[s].length > 0, `reply ${s} is empty`);
        const logits = cpu.logits![s];
        for (let j = 0; j < replies[s].length; j++) {
            const row = prompts[s].length - 1 + j;   // the position that predicts reply token j
            let best = -Infinity;
            for (let v = 0; v < nVocab; v++)
                best = Math.max(best, logits[row * nVocab + v]);
            const chosen = logits[row * nVocab + replies[s][j]];
            t.true(chosen >= best - 0.1, `sequence ${s} token ${j}: logit ${chosen}, CPU argmax ${best}`);
            checked++;
        }
    }
    t.log(`${checked} generated tokens checked`);
});

/** A model, an adapter with non-zero A and B, and micro-batches of unequal sequences. */
async function trainingCase(t: import("ava").ExecutionContext, type: string) {
    const model = await generatedModel(t, type, 4);
    const adapter = path.join(tempDir(t), `adapter-${type}.gguf`);
    await makeAdapter(model, adapter, {r: 8, alpha: 16, aScale: 0.05, bScale: 0.05});
    const rng = new Random(31);
    const batches = [
        microBatch([randomSequence(rng, 61, 2000, 3, 1), randomSequence(rng, 40, 2000, 2, 0.5)]),
        microBatch([randomSequence(rng, 100, 2000, 3, 1)]),
    ].map(plainBatch);
    return {model, adapter, batches};
}

for (const type of ["f32", "f16", "q8_0", "q4_K"]) {
    test(`LoRA gradients on the GPU match the CPU build's (${type} base, every layer offloaded)`, async (t) => {
        const c = await trainingCase(t, type);
        for (const dropout of [0, 0.2]) {
            const pass: Pass = {kind: "gradients", model: c.model, adapter: c.adapter, batches: c.batches, contextSize: 128, sequences: 2,
                dropout, dropoutSeed: 7};
            const gpu = await runPass(pass, ALL);
            const cpu = await runOnCpu(pass, cpuBinary(), tempDir(t));
            const lossDiff = Math.abs(gpu.loss! - cpu.loss!) / Math.abs(cpu.loss!);
            const gradDiff = Math.max(...cpu.gradients!.map((g, i) => relativeL2(gpu.gradients![i], g)));
            t.log(`dropout ${dropout}: loss ${gpu.loss} vs ${cpu.loss} (rel ${lossDiff.toExponential(2)}), worst tensor ` +
                `||dg||/||g|| ${gradDiff.toExponential(2)}`);
            // ggml's cuBLAS handles use TF32 for F32 matmuls and F16 accumulation for F16 weights; quantized
            // bases round activations to q8_1 for the GPU's kernels, the CPU's to q8_0/q8_K: all move the
            // results by ~1e-3 per matmul, where a wrong kernel is off by O(1)
            const [lossTol, gradTol] = {f32: [2e-3, 3e-2], f16: [3e-3, 5e-2]}[type] ?? [2e-2, 1.5e-1];
            t.true(lossDiff < lossTol, `loss ${gpu.loss} vs ${cpu.loss}`);
            t.true(gradDiff < gradTol, `gradients: ${gradDiff}`);
        }
    });
}

test("LoRA training on the GPU follows the CPU build's loss curve (20 AdamW steps, f16 base)", async (t) => {
    const c = await trainingCase(t, "f16");
    const pass: Pass = {kind: "train", model: c.model, adapter: c.adapter, batches: c.batches, contextSize: 128, sequences: 2, steps: 20, lr: 2e-3};
    const gpu = await runPass(pass, ALL);
    const cpu = await runOnCpu(pass, cpuBinary(), tempDir(t));
    t.log(`loss GPU ${gpu.losses!.map((x) => x.toFixed(3)).join(" ")}`);
    t.log(`loss CPU ${cpu.losses!.map((x) => x.toFixed(3)).join(" ")}`);
    const first = cpu.losses![0], last = cpu.losses!.at(-1)!;
    t.true(last < 0.9 * first, "the CPU run learns");
    for (let i = 0; i < cpu.losses!.length; i++)
        t.true(Math.abs(gpu.losses![i] - cpu.losses![i]) <= 0.02 * (first - last) + 1e-3 * first, `step ${i}: ${gpu.losses![i]} vs ${cpu.losses![i]}`);
});
