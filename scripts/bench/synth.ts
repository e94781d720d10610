// Benchmark: embedded generation (the synthetic-data backend) with 4 parallel sequences on one
// context against one request at a time, same model, prompts, seeds, token budget and threads,
// in one run. Completion tokens per second over the whole run (prompts included); target >= 2x.
//
//   node dist/scripts/bench/synth.js [--requests 16] [--max-tokens 128] [--threads 2] [--parallel 4]
//                                    [--rounds 3] [--model file.gguf] [--dir bench-out] [--grammar] [--small]
//
// Models: stories260K, a generated 25M llama (q8_0) and a generated 310M llama (f16; --small skips
// it, it takes a few minutes a round on 2 cores). How much batching can gain depends on the
// model: llama.cpp's own llama-batched-bench gains 1.1x (260K) and 1.3x (25M) for 4 sequences on
// this CPU, where a step is dominated by fixed costs, and 2.5x on the 310M model.
//
// The two modes alternate for --rounds rounds and the median of each is reported, so that load
// from other processes on the machine hits both alike. CPU seconds (user + system of this process)
// are reported too: on an oversubscribed machine they show the work saved by batching.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {writeSyntheticModel} from "../../ts/gguf/synthetic.js";
import {createEmbeddedGenerator} from "../../ts/synth/embedded.js";
import type {GenerateRequest} from "../../ts/synth/generator.js";
import {answerSchema} from "../../ts/synth/prompts.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const arg = (name: string, def: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : def;
};
const requests = Number(arg("--requests", "16"));
const maxTokens = Number(arg("--max-tokens", "128"));
const threads = Number(arg("--threads", "2"));
const parallel = Number(arg("--parallel", "4"));
const rounds = Number(arg("--rounds", "3"));
const grammar = process.argv.includes("--grammar");
const dir = path.resolve(arg("--dir", path.join(root, "bench-out")));
const shared = process.env.PPC_SHARED_DIR ?? path.resolve(root, "..", "shared");
fs.mkdirSync(dir, {recursive: true});

const models: {name: string; file: string}[] = [];
if (process.argv.includes("--model")) {
    models.push({name: path.basename(arg("--model", "")), file: arg("--model", "")});
} else {
    const stories = path.join(shared, "models", "stories260K.gguf");
    if (fs.existsSync(stories))
        models.push({name: "stories260K (real, 0.3M)", file: stories});
    const synthetic = path.join(dir, "synth-bench-llama-25M-q8_0.gguf");
    if (!fs.existsSync(synthetic)) {
        process.stderr.write("generating a 25M-parameter llama (q8_0, random weights)...\n");
        await writeSyntheticModel(synthetic, {architecture: "llama", layers: 8, embedding: 512, heads: 8, kvHeads: 4,
            feedForward: 1536, vocab: 2048, type: "q8_0", contextLength: 4096});
    }
    models.push({name: "llama 25M q8_0 (random)", file: synthetic});
    if (!process.argv.includes("--small")) {
        const large = path.join(dir, "bi-bench-310M-f16.gguf");  // the bi benchmark's model
        if (!fs.existsSync(large)) {
            process.stderr.write("generating a 310M-parameter llama (f16, random weights)...\n");
            await writeSyntheticModel(large, {architecture: "llama", layers: 24, embedding: 1024, heads: 16, kvHeads: 8,
                feedForward: 3072, vocab: 4096, type: "f16"});
        }
        models.push({name: "llama 310M f16 (random)", file: large});
    }
}

const topics = ["the sun", "magnets", "rain", "bees", "ice", "volcanoes", "the moon", "plants", "sound", "friction", "clouds",
    "batteries", "fossils", "tides", "seeds", "shadows"];
const request = (i: number): GenerateRequest => ({
    messages: [{role: "system", content: "You are a careful teacher who writes multiple-choice questions."},
        {role: "user", content: `Write a new multiple-choice question about ${topics[i % topics.length]} and solve it step by step.`}],
    temperature: 0.8,
    maxTokens,
    seed: 1000 + i,
    jsonSchema: grammar ? {name: "answer", schema: answerSchema(["A", "B", "C", "D"])} : undefined,
});

interface Result {
    seconds: number;
    cpuSeconds: number;
    tokens: number;
}

async function measure(file: string, sequences: number): Promise<Result> {
    const gen = await createEmbeddedGenerator({modelPath: file, sequences, threads, contextSize: 2048});
    try {
        await gen.generate({...request(0), maxTokens: 8});  // warm-up: first decode, grammar compile
        const t0 = process.hrtime.bigint();
        const cpu0 = process.cpuUsage();
        const results = await Promise.all(Array.from({length: requests}, (_, i) => gen.generate(request(i))));
        const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
        const cpu = process.cpuUsage(cpu0);
        return {seconds, cpuSeconds: (cpu.user + cpu.system) / 1e6, tokens: results.reduce((a, r) => a + r.completionTokens, 0)};
    } finally {
        await gen.close();
    }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows: string[][] = [];
for (const m of models) {
    const one: Result[] = [], many: Result[] = [];
    for (let r = 0; r < rounds; r++) {
        one.push(await measure(m.file, 1));
        many.push(await measure(m.file, parallel));
    }
    const tps = (rs: Result[]) => median(rs.map((r) => r.tokens / r.seconds));
    const cpuPerToken = (rs: Result[]) => median(rs.map((r) => r.cpuSeconds / r.tokens * 1000));
    const tps1 = tps(one), tpsN = tps(many);
    rows.push([m.name, "1 at a time", String(median(one.map((r) => r.tokens))), tps1.toFixed(0), "1.00x", cpuPerToken(one).toFixed(2)]);
    rows.push([m.name, `${parallel} sequences`, String(median(many.map((r) => r.tokens))), tpsN.toFixed(0), `${(tpsN / tps1).toFixed(2)}x`,
        cpuPerToken(many).toFixed(2)]);
}

const header = ["model", "mode", "tokens", "tokens/s (median)", "vs 1", "CPU ms/token"];
const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
const line = (r: string[]) => r.map((x, c) => x.padEnd(widths[c])).join("  ").trimEnd();
process.stdout.write(`synth bench: ${requests} requests x ${maxTokens} max tokens, temperature 0.8, ${threads} thread(s), ` +
    `median of ${rounds} alternating rounds` +
    `${grammar ? ", JSON-schema grammar" : ""}; ${os.cpus()[0]?.model ?? "cpu"} x${os.availableParallelism()}, ${new Date().toISOString().slice(0, 10)}\n`);
process.stdout.write([line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n") + "\n");
